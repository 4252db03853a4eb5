"""Python's cyclic garbage collector, set for a long-lived server process (a worker, the API).

Two documented uses of the ``gc`` module, applied once the process has started (``tune``):

- ``gc.freeze()``: the objects start-up made (imports, Celery, SQLAlchemy, openai; about 350,000 in a think
  worker) move to the permanent generation, which no collection walks again. Without it every full collection
  went through all of them, about 0.25 s each in a think worker under load.
- a higher threshold for the youngest generation (``gc_young_threshold``; Python's default is 700). The count is
  container objects allocated less those freed, so a worker in flight on dozens of steps at once crossed 700
  many times a step, and each time its steps' live objects were walked and promoted, to be walked again by the
  older generations' collections. Objects freed by reference counting, most of a step's, never wait for the
  collector; only reference cycles do, so the threshold bounds the cyclic garbage left between collections.

Measured with ``python -m bench.profile_run --tasks 50 --latency 0`` (README, Benchmarks): the think workers spent
1.5 to 1.6 s of every 20 s in the collector at Python's defaults, 0.36 to 0.37 s with these settings.
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
