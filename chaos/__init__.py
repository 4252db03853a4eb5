"""The chaos suite: prove durability under faults.

``python -m chaos`` (``make chaos``) runs every scenario of ``chaos.scenarios`` twice against private PostgreSQL,
RabbitMQ and Redis instances (``chaos.services``) with real API, worker and reaper processes (``chaos.platform``)
and the fake OpenAI-compatible LLM; the checker (``chaos.checker``) reads the ledger, the LLM's request log and the
fault journal after each run and prints a table; any failed bar makes the exit code 1. ``--trimmed`` is the short
version ``make test`` runs (``tests/chaos/test_chaos_trimmed.py``).
"""
