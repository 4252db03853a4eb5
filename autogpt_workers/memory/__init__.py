"""Agent memory in four layers (working, short-term, long-term, episodic); ``memory.service`` tells how they meet.

Modules, one noun each: ``base`` (records and the ``VectorStore`` contract), ``embedded`` (SQLite + sqlite-vec,
the default), ``weaviate_store`` (production), ``embeddings`` (OpenAI-compatible client, Redis cache),
``local_embeddings`` (all-MiniLM-L6-v2 offline), ``longterm`` (text-level interface), ``shortterm`` (Redis),
``importance``, ``window`` (token window of the working context), ``service`` (what the agent and the commands
get), ``factory`` (built from the settings), ``errors``.

Importing this package imports no backend: the agent loop uses ``memory.window`` only.
"""
