"""``make bench`` (``python -m bench``): the platform's speed against a floor, a limit and a peer, in one run.

Every figure is measured on the local stack (real RabbitMQ, PostgreSQL, Redis, worker processes started with the
CLI, the project's fake LLM over HTTP) next to its reference measured in the same run, because this machine's
speed drifts. One module per figure; ``report`` prints the table and writes ``results.json`` and ``results.png``.

Modules
    params          what to run (full and ``--quick`` sizes)
    env, rabbit     the bench's own database and vhost, SQL and management-API helpers
    procs, stack    processes (platform, floor, fake LLM) and their CPU and RSS from /proc
    floor_app       the raw Celery continuation the platform is compared with
    floor, latency, cpu, throughput, submit_api, worker_memory, peer   one figure each
    peer_langgraph  the same scripted agent on LangGraph (run as a subprocess by ``peer``)
    report          the table, the JSON and the chart
"""
