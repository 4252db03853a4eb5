"""Fault injectors run by the harness while the load runs (the aimed kills are the workers' own crash hook, see
``autogpt_workers.crashpoints``). Each records what it did in the journal before (kills) or after (restarts,
with start and end) doing it, and stops early when the load is done."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import threading
import time
from collections.abc import Callable

from chaos.journal import Journal
from chaos.platform import Platform
from chaos.services import PrivateServices

KILL_SPAN = 0.6  # the share of the load's steps over which ``random_kills`` spreads its kills


def random_kills(platform: Platform, journal: Journal, stop: threading.Event, count: int,
                 gap_s: tuple[float, float] = (0.8, 2.5), rng: random.Random | None = None,
                 progress: Callable[[], float] | None = None) -> int:
    """SIGKILL ``count`` worker processes at random moments: a think worker, an act worker's pool child, or a whole
    act worker (its children die with it). Only workers that are consuming are targets (killing one still booting
    after the last kill tests nothing); the supervisor restarts dead workers.

    With ``progress`` (the share of the load's steps committed, 0 to 1), kill ``i`` of ``count`` also waits until
    that share reaches ``KILL_SPAN * i / (count + 1)``: the kills are spread over the load itself, so all of them land
    under load however fast the host runs it (a wall-clock pace alone raced the load, and lost on a fast host). The
    last part of the load is slack: a kill can wait there for a target that is consuming again (a CI run spread
    its kills over the whole load, waited out restarts, and ran out of load after 4 of 8)."""
    rng = rng or random.Random()
    done = 0
    while done < count and not stop.wait(rng.uniform(*gap_s)):
        if progress is not None and not _reached(progress, KILL_SPAN * (done + 1) / (count + 1), stop):
            break
        choice = rng.random()
        if choice < 0.45:
            targets = [p for p in platform.workers("think") if p.alive() and p.ready()]
            role = "think"
        else:
            targets = [p for p in platform.workers("act") if p.alive() and p.ready()]
            role = "act-child" if choice < 0.85 else "act"
        if not targets:
            continue
        proc = rng.choice(targets)
        assert proc.pid is not None
        if role == "act-child":
            children = proc.children()
            if not children:
                continue
            pids = [rng.choice(children)]
        else:
            pids = [proc.pid, *proc.children()]
        journal.write({"ts": time.time(), "kind": "sigkill", "window": "random", "role": role, "pids": pids,
                       "name": proc.name})
        for pid in pids if role != "act" else pids[:1]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        done += 1
    return done


def _reached(progress: Callable[[], float], share: float, stop: threading.Event, poll_s: float = 0.1) -> bool:
    """Wait until the load's progress reaches ``share``; False when the load ended first."""
    while progress() < share:
        if stop.wait(poll_s):
            return False
    return True


def service_restarts(services: PrivateServices, which: str, journal: Journal, stop: threading.Event, times: int,
                     first_after_s: float = 6.0, gap_s: float = 15.0,
                     progress: Callable[[], float] | None = None) -> int:
    """Restart PostgreSQL or RabbitMQ ``times`` times under load; each leaves the service running. With
    ``progress``, restart ``i`` also waits for ``i / (times + 1)`` of the load's steps (see ``random_kills``)."""
    service = services.postgres if which == "postgres" else services.rabbit
    done = 0
    wait = first_after_s
    while done < times and not stop.wait(wait):
        if progress is not None and not _reached(progress, (done + 1) / (times + 1), stop):
            break
        started = time.time()
        service.restart()
        journal.write({"ts": started, "end_ts": time.time(), "kind": f"{which}_restart", "window": "service"})
        done += 1
        wait = gap_s
    return done


def redis_flushes(services: PrivateServices, journal: Journal, stop: threading.Event, times: int,
                  gap_s: float = 3.0, progress: Callable[[], float] | None = None) -> int:
    """Flush Redis ``times`` times under load, paced like ``service_restarts``."""
    done = 0
    while done < times and not stop.wait(gap_s):
        if progress is not None and not _reached(progress, (done + 1) / (times + 1), stop):
            break
        services.redis.flush()
        journal.write({"ts": time.time(), "end_ts": time.time(), "kind": "redis_flush", "window": "service"})
        done += 1
    return done
