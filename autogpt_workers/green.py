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
``select`` first). Calls that hold the process in C code for a while (the local embedding model's encoding,
the embedded store's SQLite calls: an exact vector scan, a busy wait on a writer) are ``offload``-ed: under gevent
they run on a real thread of gevent's pool while the greenlet waits, as they did beside the other threads before.
gRPC (weaviate-client's queries) is told to wait through gevent (``init_gevent``).
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import ParamSpec, TypeVar

POOLS = ("threads", "gevent")
DEFAULT_POOL = "gevent"  # ``Settings.think_pool``'s default (a test holds them equal)
_patched: list[bool] = [False]

P = ParamSpec("P")
T = TypeVar("T")


def requested_pool(
    argv: Sequence[str], environ: Mapping[str, str], dotenv: Callable[[], Mapping[str, str | None]]
) -> str | None:
    """The think pool this command line asks for (``worker --queue think [--pool P]``), or None for any other
    command. ``--pool`` wins over ``AUTOGPT_THINK_POOL`` in the environment, which wins over ``.env`` (``dotenv``,
    read only when it is needed), which wins over the default."""
    args = list(argv[1:])
    if not args or args[0] != "worker":
        return None
    queue = _option(args, "--queue")
    if queue != "think":
        return None
    return (_option(args, "--pool") or environ.get("AUTOGPT_THINK_POOL") or dotenv().get("AUTOGPT_THINK_POOL")
            or DEFAULT_POOL)


def _option(args: Sequence[str], name: str) -> str | None:
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def patch_if_asked(argv: Sequence[str]) -> bool:
    """Patch for gevent if this process is a think worker on the gevent pool. Returns whether it patched."""
    if requested_pool(argv, os.environ, _read_dotenv) != "gevent":
        return False
    patch()
    return True


def _read_dotenv() -> Mapping[str, str | None]:
    if not os.path.exists(".env"):
        return {}
    from dotenv import dotenv_values

    return dotenv_values(".env")


def patch() -> None:
    if _patched[0]:
        return
    from gevent import monkey

    monkey.patch_all()
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()  # psycopg2's waits go through gevent's hub (its C code would block the whole process)
    try:  # gRPC's C core (weaviate-client's queries) waits through gevent too
        from grpc.experimental import gevent as grpc_gevent
    except ImportError:  # pragma: no cover - grpcio comes with weaviate-client
        pass
    else:
        grpc_gevent.init_gevent()
    _patched[0] = True


def patched() -> bool:
    return _patched[0]


def native_local() -> threading.local:
    """A thread-local object keyed by the OS thread even under gevent (whose patched ``threading.local`` is per
    greenlet, and whose locks hung when two native threads contended for one): for the state of ``offloaded`` code.
    Offloaded code must not wait on gevent's locks either (a logging handler's is one: no log lines in there)."""
    if _patched[0]:
        from gevent import monkey

        local_type: type[threading.local] = monkey.get_original("threading", "local")
        return local_type()
    return threading.local()


def offload(fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
    """``fn(*args, **kwargs)``; in a gevent-patched process, on a real OS thread of the hub's pool (a few threads,
    kept), the calling greenlet waiting cooperatively. Exceptions are raised in the caller."""
    if not _patched[0]:
        return fn(*args, **kwargs)
    from gevent import get_hub

    result: T = get_hub().threadpool.apply(fn, args, kwargs)
    return result


def offloaded(fn: Callable[P, T]) -> Callable[P, T]:
    """Decorate a call that blocks in C code: ``offload`` it under gevent, call it directly otherwise."""

    @functools.wraps(fn)
    def call(*args: P.args, **kwargs: P.kwargs) -> T:
        return offload(fn, *args, **kwargs)

    return call
