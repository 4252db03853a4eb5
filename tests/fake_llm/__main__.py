"""``python -m tests.fake_llm --host 127.0.0.1 --port 8765``: run the fake LLM server."""

from tests.fake_llm.server import main

if __name__ == "__main__":
    main()
