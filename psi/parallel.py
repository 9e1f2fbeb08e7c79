"""Where bulk work runs: inline, a local process pool, or (optionally) a Dask cluster.

Every bulk step of the protocol is a pure function over one numpy chunk, so an executor
only needs ``submit(fn, *args) -> future`` and ``workers``. ``imap`` streams chunks
through an executor in order with a bounded number in flight, which is what lets a
caller overlap a download with the work on what has already arrived.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.forkserver
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol

__all__ = [
    "Executor",
    "InlineExecutor",
    "ProcessExecutor",
    "chunk_size",
    "cpu_count",
    "get_executor",
    "imap",
]


class Executor(Protocol):
    """Anything with ``submit`` returning an object with ``result()``."""

    workers: int

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Any: ...


def cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        return os.cpu_count() or 1


class InlineExecutor:
    """Runs each task in the calling thread when submitted: one worker, no copies."""

    workers = 1

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        future: Future = Future()
        try:
            future.set_result(fn(*args))
        except BaseException as exc:  # delivered through result(), like a pool
            future.set_exception(exc)
        return future


class ProcessExecutor:
    """A local process pool.

    Workers are started with ``forkserver``, never ``fork``: the server process runs gRPC
    threads, and forking a threaded process can deadlock the child.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or cpu_count()
        context = multiprocessing.get_context("forkserver")
        # Workers fork from a server that has imported the core once, so each starts in
        # milliseconds instead of importing numpy, gmpy2 and cryptography again.
        context.set_forkserver_preload(["psi.keys", "psi.hash_to_curve"])
        self._pool = ProcessPoolExecutor(max_workers=self.workers, mp_context=context)

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        return self._pool.submit(fn, *args)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


_pools: dict[int, ProcessExecutor] = {}
_pools_lock = threading.Lock()


def get_executor(workers: int | None = None) -> InlineExecutor | ProcessExecutor:
    """Shared executor for ``workers`` processes (all cores when None; inline for 1)."""
    count = workers if workers is not None else cpu_count()
    if count < 1:
        raise ValueError(f"workers must be at least 1, got {count}")
    if count == 1:
        return InlineExecutor()
    with _pools_lock:
        pool = _pools.get(count)
        if pool is None:
            pool = _pools[count] = ProcessExecutor(count)
        return pool


@atexit.register
def _shutdown_pools() -> None:
    with _pools_lock:
        started = bool(_pools)
        for pool in _pools.values():
            pool.shutdown()
        _pools.clear()
    if started:
        # Wait for the forkserver too, so that it does not outlive this process and the
        # workers' CPU time and memory are accounted to it. multiprocessing offers no
        # public call for this.
        server = getattr(multiprocessing.forkserver, "_forkserver", None)
        if server is not None and hasattr(server, "_stop"):
            server._stop()


def chunk_size(items: int, workers: int, limit: int) -> int:
    """Items per task to split ``items`` over ``workers``: at most ``limit``, and a
    multiple of ``workers`` tasks (two per worker at least), so that the workers share
    the work evenly to the end instead of one finishing a last short round alone."""
    tasks = workers * max(2, -(-items // (limit * workers)))
    return max(1, -(-items // tasks))


def imap(
    executor: Executor,
    fn: Callable[..., Any],
    args: Iterable[tuple],
    in_flight: int | None = None,
) -> Iterator[Any]:
    """Ordered, lazily consumed ``map`` with at most ``in_flight`` tasks outstanding."""
    limit = in_flight or 2 * max(1, executor.workers)
    pending: deque = deque()
    try:
        for item in args:
            pending.append(executor.submit(fn, *item))
            if len(pending) >= limit:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()
