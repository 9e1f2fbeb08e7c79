"""Where bulk work runs: inline, a local process pool, or (optionally) a Dask cluster.

Every bulk step of the protocol is a pure function over one numpy chunk, so an executor
only needs ``submit(fn, *args) -> future`` and ``workers``. ``imap`` streams chunks
through an executor in order with a bounded number in flight, which is what lets a
caller overlap a download with the work on what has already arrived.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.forkserver
import multiprocessing.spawn
import os
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from typing import Any, Protocol

__all__ = [
    "Executor",
    "InlineExecutor",
    "Pipeline",
    "ProcessExecutor",
    "cpu_count",
    "get_executor",
    "imap",
    "start_workers",
    "task_bounds",
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


_starting = threading.local()
_stdlib_preparation_data = multiprocessing.spawn.get_preparation_data


def _preparation_data(name: str) -> dict[str, Any]:
    """What multiprocessing sends a new child, minus the parent's ``__main__`` for pool
    workers.

    A child started by ``spawn`` or ``forkserver`` normally runs the parent's main script
    (or module) again before its first task, so that functions defined there can be
    unpickled. Pool tasks are functions of this package only, so for its workers that
    re-run is pure harm: a script without an ``if __name__ == "__main__"`` guard would
    start its work again in every worker, which multiprocessing stops with a
    bootstrapping ``RuntimeError`` (and the pool breaks), and ``python - < script``
    names a main file ``<stdin>`` that does not exist. Other children of the process
    keep the standard behaviour: the flag is set only while a pool worker starts.
    """
    data = _stdlib_preparation_data(name)
    if getattr(_starting, "worker", False):
        data.pop("init_main_from_name", None)
        data.pop("init_main_from_path", None)
    return data


# multiprocessing has no public way to start a child without the parent's __main__.
# These are the narrowest hooks it has: every start method asks this function for the
# child's preparation data, and _WorkerProcess below marks its own starts.
multiprocessing.spawn.get_preparation_data = _preparation_data


class _WorkerProcess(multiprocessing.context.ForkServerProcess):
    @staticmethod
    def _Popen(process_obj):
        _starting.worker = True
        try:
            return multiprocessing.context.ForkServerProcess._Popen(process_obj)
        finally:
            _starting.worker = False


class _WorkerContext(multiprocessing.context.ForkServerContext):
    Process = _WorkerProcess


def _exit_with_parent() -> None:
    """Worker initializer: exit as soon as the process that owns the pool is gone.

    An idle worker otherwise waits for its next task forever after its owner is killed
    (``kill -9`` leaves no chance to shut the pool down), and the forkserver, which
    exits with its last child, and the resource tracker, which exits when the last of
    them closes its pipe, stay with it. The parent's sentinel becomes readable exactly
    when the parent process ends.
    """
    parent = multiprocessing.parent_process()
    if parent is None:  # pragma: no cover - always set in a pool worker
        return

    def wait() -> None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)

    threading.Thread(target=wait, daemon=True, name="exit-with-parent").start()


# Workers fork from a server that has imported these once, so each starts in
# milliseconds instead of importing numpy, gmpy2 and cryptography again. (A name that
# no longer imports would only be skipped: the test suite checks them.)
PRELOAD = ("psi.keys", "psi.to_curve")


class ProcessExecutor:
    """A local process pool.

    Workers are started with ``forkserver``, never ``fork``: the server process runs gRPC
    threads, and forking a threaded process can deadlock the child. They do not run the
    caller's ``__main__`` again, so a script needs no ``if __name__ == "__main__"``
    guard, and they exit by themselves when the process that started them dies.
    """

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or cpu_count()
        context = _WorkerContext()
        context.set_forkserver_preload(list(PRELOAD))
        self._pool = ProcessPoolExecutor(
            max_workers=self.workers, mp_context=context, initializer=_exit_with_parent
        )

    def submit(self, fn: Callable[..., Any], /, *args: Any) -> Future:
        return self._pool.submit(fn, *args)

    def start(self) -> None:
        """Start every worker in the background and return at once, so that they are up
        when the first tasks come (the pool otherwise starts one per task that finds
        none idle, and the first waits for the forkserver's imports)."""

        def spawn() -> None:
            try:
                for _ in range(self.workers):
                    self._pool.submit(int)
            except RuntimeError:  # shut down meanwhile
                pass

        threading.Thread(target=spawn, name="pool-start", daemon=True).start()

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


def start_workers(executor: Executor) -> None:
    """Start a local pool's workers in the background (``ProcessExecutor.start``); other
    executors have nothing to start."""
    if isinstance(executor, ProcessExecutor):
        executor.start()


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


def task_bounds(items: int, workers: int, limit: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each task splitting ``items`` over ``workers``: at most
    ``limit`` items each, then shrinking as the work runs out (each takes a ``2 *
    workers``-th of what is left, down to a 32nd of ``limit``). Workers take the next
    task as they come free, and on a shared machine they do not run at the same speed:
    with equal tasks one could still be busy with a whole task when the others ended,
    with these only a short one."""
    least = max(1, limit // 32)
    bounds, start = [], 0
    while start < items:
        size = min(limit, max(least, -(-(items - start) // (2 * workers))))
        bounds.append((start, min(items, start + size)))
        start += size
    return bounds


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


class Pipeline:
    """Push-based ``imap``: tasks are submitted as their inputs arrive (from the network,
    say) and results come back in submission order.

    ``push`` never waits for a task unless ``in_flight`` are outstanding, so a caller that
    feeds chunks as they arrive keeps the executor busy while it reads the next one.
    """

    def __init__(self, executor: Executor, fn: Callable[..., Any], *fixed: Any, in_flight: int | None = None) -> None:
        self._executor = executor
        self._fn = fn
        self._fixed = fixed
        self._limit = in_flight or 2 * max(1, executor.workers)
        self._pending: deque = deque()

    def push(self, *args: Any) -> list[Any]:
        """Submit one task; returns the results that are ready, oldest first."""
        self._pending.append(self._executor.submit(self._fn, *self._fixed, *args))
        ready = []
        while self._pending and (len(self._pending) > self._limit or self._pending[0].done()):
            ready.append(self._pending.popleft().result())
        return ready

    def finish(self) -> list[Any]:
        """Wait for every outstanding task; their results, oldest first."""
        results = []
        while self._pending:
            results.append(self._pending.popleft().result())
        return results

    def cancel(self) -> None:
        while self._pending:
            self._pending.popleft().cancel()
