"""The think worker's gevent pool: one process keeps hundreds of agents waiting on the LLM as greenlets, not threads.

A step's think phase is nearly all waiting (the LLM call, the ledger's round trips). With Celery's thread pool
each waiting agent is an OS thread, and at 500 agents in flight the threads' switches and their fight for the GIL
cost more CPU than the steps themselves (``make bench``, K = 500). Greenlets switch only where a call would wait.

gevent must patch the standard library (sockets, threads, locks, queues, ``select``, ``time.sleep``) before
anything else imports it, and psycopg2 must be told to wait through gevent (psycogreen). So the choice is read
from the command line and the environment (``AUTOGPT_THINK_POOL``, also from ``.env``) at the very top of
``autogpt_workers.cli``, before its imports; ``patch_if_asked`` does nothing for any other command.

What the patch changes for the rest of the code: ``threading`` is greenlets (the lease heartbeat, the supervisor,
the publish marks, the takeovers all run as greenlets of the one thread), so any call that blocks the process
without going through gevent stalls every agent: ``os.read`` on a pipe is one (``SignalWaker`` waits in
``select`` first).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

POOLS = ("threads", "gevent")
_patched: list[bool] = [False]


def requested_pool(argv: Sequence[str], environ: Mapping[str, str], dotenv: Mapping[str, str | None]) -> str | None:
    """The think pool this command line asks for (``worker --queue think [--pool P]``), or None for any other
    command. ``--pool`` wins over ``AUTOGPT_THINK_POOL`` in the environment, which wins over ``.env``."""
    args = list(argv[1:])
    if not args or args[0] != "worker":
        return None
    queue = _option(args, "--queue")
    if queue != "think":
        return None
    return _option(args, "--pool") or environ.get("AUTOGPT_THINK_POOL") or dotenv.get("AUTOGPT_THINK_POOL") or None


def _option(args: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def patch_if_asked(argv: Sequence[str]) -> bool:
    """Patch for gevent if this process is a think worker on the gevent pool. Returns whether it patched."""
    dotenv: Mapping[str, str | None] = {}
    if os.path.exists(".env"):
        from dotenv import dotenv_values

        dotenv = dotenv_values(".env")
    if requested_pool(argv, os.environ, dotenv) != "gevent":
        return False
    patch()
    return True


def patch() -> None:
    if _patched[0]:
        return
    from gevent import monkey

    monkey.patch_all()
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()  # psycopg2's waits go through gevent's hub (its C code would block the whole process)
    _patched[0] = True


def patched() -> bool:
    return _patched[0]
