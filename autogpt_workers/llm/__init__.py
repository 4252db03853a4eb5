"""Language-model adapters behind the loop's ``LLM`` protocol (``autogpt_workers.agent.types``).

- ``openai_chat``: any OpenAI-compatible chat-completions endpoint (the only module importing ``openai``);
- ``scripted``: a scripted model for tests and docs;
- ``pricing``: what a call cost.

Import the submodule you need; this package imports nothing eagerly, so using ``scripted`` never loads openai.
"""
