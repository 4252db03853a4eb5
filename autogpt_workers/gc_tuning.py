"""Python's cyclic garbage collector, set for a long-lived server process (a worker, the API).

Two documented uses of the ``gc`` module, applied once the process has started (``tune``):

- ``gc.freeze()``: the objects start-up made (imports, Celery, SQLAlchemy, openai; about 150,000 after a think
  worker's imports) move to the permanent generation, which no collection walks again.
- a higher threshold for the youngest generation (``gc_young_threshold``; Python's default is 700). The count is
  container objects allocated less those freed, so a worker with dozens of steps in flight crossed 700 on the
  steps' transient objects alone, 14 to 17 times a second, and each time promoted the live ones towards the
  oldest generation, whose full collections then came every 6 to 7 s. Objects freed by reference counting, most
  of a step's, never wait for the collector; only reference cycles do, so the threshold bounds the cyclic
  garbage left between collections.

Measured in the think workers with a ``gc.callbacks`` hook summing each collection's thread CPU time, during
``python -m bench.profile_run --tasks 50 --latency 0 --seconds 30`` (an ad-hoc hook, not kept): at Python's
defaults each process spent 0.93-0.96 s of CPU in the collector in 20 s, a full collection every 6 to 7 s at up
to 0.25 s each, the process's GIL held throughout; with these settings 0.05-0.16 s, one young collection every
10-15 s (up to 0.1 s). What still grows is the history cache (``runner._Records``, up to 50,000 steps), which
only a full collection walks.
"""

from __future__ import annotations

import gc


def tune(young_threshold: int) -> None:
    """Freeze what the process holds now and raise generation 0's threshold; ``young_threshold`` 0 leaves
    Python's collector as it is. Safe to call again (a later call freezes what was made since)."""
    if young_threshold <= 0:
        return
    gc.collect()  # what start-up left as garbage is freed, not frozen
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(young_threshold, older, oldest)
