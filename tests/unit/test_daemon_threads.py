import threading
import time

from autogpt_workers.daemon_threads import DaemonThreads


def test_threads_are_reused_daemons_and_grow_only_to_the_peak_in_flight() -> None:
    pool = DaemonThreads("t")
    gate = threading.Event()
    started = threading.Semaphore(0)
    seen: list[threading.Thread] = []

    def job() -> None:
        seen.append(threading.current_thread())
        started.release()
        gate.wait(5)

    for _ in range(3):
        pool.submit(job)
    for _ in range(3):
        assert started.acquire(timeout=5)
    assert pool.size == 3 and all(t.daemon for t in seen)
    gate.set()
    _wait_idle(pool, 3)

    done = threading.Semaphore(0)
    for _ in range(20):  # sequential calls after the peak: no new thread
        pool.submit(done.release)
        assert done.acquire(timeout=5)
        _wait_idle(pool, 3)
    assert pool.size == 3


def _wait_idle(pool: DaemonThreads, n: int) -> None:
    deadline = time.monotonic() + 5
    while pool.idle < n and time.monotonic() < deadline:
        time.sleep(0.001)
    assert pool.idle == n


def test_a_failing_job_does_not_lose_its_thread() -> None:
    pool = DaemonThreads("t")
    done = threading.Event()

    def boom() -> None:
        raise RuntimeError("x")

    pool.submit(boom)
    pool.submit(done.set)
    assert done.wait(5)
    assert pool.size <= 2
