"""psi's shared process pool around one measurement: started before the clock, reaped after.

Pool workers are children of the forkserver, not of the measuring process, so their CPU
time and peak memory reach ``RUSAGE_CHILDREN`` only once the forkserver has reaped them
and has itself been waited for.
"""

from __future__ import annotations

import multiprocessing.forkserver
import time

from psi.parallel import get_executor

__all__ = ["reap", "warm_up"]


def _occupy(seconds: float) -> None:
    time.sleep(seconds)


def warm_up() -> None:
    """Start every worker now: the pool spawns workers lazily, one per busy submission,
    and each imports psi on arrival, which would otherwise land inside the timed run."""
    pool = get_executor()
    for future in [pool.submit(_occupy, 0.2) for _ in range(pool.workers)]:
        future.result()


def reap() -> None:
    """Stop the pool and the forkserver and wait for both."""
    pool = get_executor()
    if hasattr(pool, "shutdown"):
        pool.shutdown()
    # multiprocessing has no public call that waits for the forkserver; without this it
    # outlives the process unwaited and its children's usage is lost.
    multiprocessing.forkserver._forkserver._stop()
