"""Bulk steps on a Dask distributed cluster (the optional ``consent-psi[dask]`` extra).

``DaskExecutor`` is an executor in the sense of ``psi.parallel``: hashing, ``Key.apply``
and the protocol's table exponentiation accept it as ``executor=`` and run one task per
numpy chunk on the cluster's workers. ``executor_from_spec`` turns the command-line
``--executor`` value into an executor.

What Dask does with task arguments (checked against distributed 2026.8):

- ``Client.submit`` pickles the function and its arguments (numpy arrays as pickle-5
  buffers) and sends them to the scheduler. The scheduler unpickles the graph and keeps
  each task's specification, function and arguments, in memory for as long as the task
  exists: until every client has released its future. It keeps it so that it can send
  the task again when a worker dies.
- The scheduler pickles the specification again for the worker that runs the task. The
  worker keeps it in memory with the task's state until the scheduler tells it to forget
  the task, which happens once the future is released. So the secret scalar lives in the
  client, the scheduler and the worker running the task (another one too if the first
  dies or the scheduler moves a queued task to balance load), in memory only, for the
  life of one chunk's future: ``psi.parallel.imap`` releases each future as soon as its
  result is read, and keeps at most two per worker thread alive.
- Distributed never writes a task's specification to disk (cluster dumps from
  ``Client.dump_cluster_state`` leave it out too). Spilling concerns only the
  worker's data store, which holds task *results* (and scattered data): under memory
  pressure (``distributed.worker.memory.target``, 60% of the limit by default, or
  ``.spill``, 70%) the worker writes the least recently used results to
  ``<local-directory>/storage``. A key is an argument, never a result, and this module
  never scatters. Results are blinded or hashed points; hashed points are as sensitive as
  the identifiers they encode, which is a reason to set both thresholds to ``False`` on
  remote workers (docs/cluster.md). Process memory can still reach swap or a core dump,
  as in any process.
- Task keys are shown everywhere: dashboard, task stream, events and logs. With
  ``pure=True`` (the default of ``Client.submit``) the key is ``tokenize(function,
  arguments)``, a deterministic digest of the arguments, secret scalar included.
- A worker logs a task that raises as ``Compute Failed`` with ``repr`` of the task, and
  the client logs ``Failed to serialize`` with the same ``repr`` when an argument cannot
  be pickled; that ``repr`` lists the arguments when the key is short enough.
- When a worker dies, the scheduler sends the tasks it held to other workers without
  using ``retries``; a task whose workers died more than
  ``distributed.scheduler.allowed-failures`` (3) times fails with ``KilledWorker``.
  ``retries`` only re-runs tasks that raised.
- Any client that reaches the scheduler can read a live task's specification
  (``Scheduler.get_runspec``, behind ``Client.recreate_error_locally``) and run code on
  every worker (``Client.run``). Access to the cluster is access to the keys: keep it on
  a trusted network, with TLS and client certificates where that network is shared.

How this module keeps keys out of names, logs and the dashboard:

- Each task gets a fresh random key, ``<function name>-<uuid4 hex>``; no argument is
  ever tokenized, and two runs over the same chunk get unrelated keys.
- Arguments travel inside a ``_Sealed`` object whose ``repr`` is fixed, so a task's
  ``repr`` in a log line shows no argument, whatever the key length.
- ``psi.keys.Key`` refuses pickling, so only the raw scalar can travel, and only as an
  argument of ``_apply_chunk``; it is never scattered or published as a dataset, where
  it would become spillable data with a name.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any, Self

from .parallel import InlineExecutor, ProcessExecutor, cpu_count, get_executor

__all__ = ["DaskExecutor", "executor_from_spec"]

_INSTALL_HINT = "the Dask executor needs the dask extra: pip install 'consent-psi[dask]'"
_SPEC_FORMS = (
    "'local', 'local:N', 'dask://HOST:PORT', 'dask+tls://HOST:PORT', 'dask-local' or "
    "'dask-local:N' (N a positive integer)"
)


# Seconds one reconnection attempt (or one question to the scheduler) may take in the
# watcher: short, so that close() is never kept waiting long by a cluster that is down.
_RECONNECT_TIMEOUT = 5.0


def _import_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return distributed


class _Sealed:
    """A task's function and arguments behind a constant ``repr``."""

    __slots__ = ("args", "fn")

    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        self.fn = fn
        self.args = args

    def __repr__(self) -> str:
        return "<sealed arguments>"


def _open(sealed: _Sealed) -> Any:
    return sealed.fn(*sealed.args)


class DaskExecutor:
    """Runs tasks on a Dask cluster: the scheduler at ``address``, or a private one.

    Without ``address`` it starts a ``LocalCluster`` on 127.0.0.1 with ``n_workers``
    single-threaded worker processes (all cores by default) and no dashboard, and shuts
    it down on ``close()``. ``security`` (a ``distributed.Security``) applies to
    ``tls://`` addresses; when omitted, Dask's configuration supplies it.
    ``retries`` re-runs a task that raised, on any worker; tasks lost with a dead worker
    are rescheduled by the scheduler in any case. ``timeout`` (seconds) bounds the wait
    for the scheduler, at first and again after losing it (Dask's
    ``distributed.comm.timeouts.connect``, 30 s by default, when None).

    A long-lived caller (the server) calls ``watch``: the executor then checks the
    cluster in the background, reconnects to a scheduler that went away once it is
    back, and reports each change of ``available()``. Without ``watch``, a lost
    scheduler fails the running job and every later one.
    """

    def __init__(
        self,
        address: str | None = None,
        *,
        n_workers: int | None = None,
        security: Any = None,
        retries: int = 2,
        timeout: float | None = None,
    ) -> None:
        distributed = _import_distributed()
        if address is not None and n_workers is not None:
            raise ValueError("n_workers applies only to a local cluster (no address)")
        if address is None and security is not None:
            raise ValueError("security applies only to a remote scheduler (an address)")
        if n_workers is not None and n_workers < 1:
            raise ValueError(f"n_workers must be at least 1, got {n_workers}")
        if address is not None and address.startswith("tls://") and security is None:
            security = distributed.Security()
            if not (security.tls_ca_file and security.tls_client_cert):
                # distributed would fail later with an unhelpful TypeError
                raise ValueError(
                    f"{address} needs TLS credentials in Dask's configuration: "
                    "distributed.comm.tls.ca-file, .client.cert and .client.key (for "
                    "example DASK_DISTRIBUTED__COMM__TLS__CA_FILE=ca.pem)"
                )
        self.retries = retries
        self._distributed = distributed
        self._security = security
        self._up = True  # as of the last check
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None
        self._listeners: list[Callable[[bool], None]] = []
        self._cluster = None
        if address is None:
            self._cluster = distributed.LocalCluster(
                n_workers=n_workers or cpu_count(),
                threads_per_worker=1,
                processes=True,
                host="127.0.0.1",
                scheduler_port=0,
                dashboard_address=None,
                # the scheduler serves health, metrics and info pages even without a
                # dashboard; a random loopback port keeps it off the well-known 8787
                scheduler_kwargs={"dashboard_address": "127.0.0.1:0"},
            )
            address = self._cluster.scheduler_address
        try:
            # not the default client: other Dask code in this process must not pick up
            # a cluster that receives secret keys
            waiting = {} if timeout is None else {"timeout": timeout}
            self.client = distributed.Client(
                address, security=security, set_as_default=False, **waiting
            )
        except BaseException:
            if self._cluster is not None:
                self._cluster.close()
            raise
        self.address = address

    @property
    def workers(self) -> int:
        """Worker threads in the cluster now (at least 1: tasks queue until one joins)."""
        self._check_connected()
        # asked each time: workers join, leave and are restarted while the executor lives
        return max(1, sum(self.client.nthreads().values()))

    def _check_connected(self) -> None:
        # A client that lost its scheduler first retries for ``timeout`` seconds, then
        # closes; calls on it would fail with AttributeError from deep inside distributed.
        if self.client.status != "running":
            raise ConnectionError(f"the Dask scheduler at {self.address} is not reachable")

    def available(self) -> bool:
        """Whether tasks can run now: the scheduler is connected and has a worker.

        A lost connection shows at once; workers leaving or joining, and a reconnection,
        as of ``watch``'s last check.
        """
        return self.client.status == "running" and self._up

    def watch(self, on_change: Callable[[bool], None], interval: float = 1.0) -> None:
        """Call ``on_change(available)`` at each change of ``available()``, from a daemon
        thread that checks the cluster every ``interval`` seconds until ``close()``
        (the first call's interval is kept).

        When the scheduler is gone for longer than distributed's own reconnection
        window (``timeout``), its client closes for good; the watcher then connects a
        new client as soon as a scheduler answers at the same address again.
        """
        self._listeners.append(on_change)
        if self._watcher is None:
            self._watcher = threading.Thread(
                target=self._watch, args=(interval,), daemon=True, name="dask-watch"
            )
            self._watcher.start()

    def _watch(self, interval: float) -> None:
        reported = self.available()
        while not self._closed.wait(interval):
            self._up = self._check()
            now = self.available()
            if now != reported:
                reported = now
                for on_change in list(self._listeners):
                    on_change(now)

    def _check(self) -> bool:
        if self.client.status in ("closing", "closed"):
            try:
                client = self._distributed.Client(
                    self.address,
                    security=self._security,
                    timeout=_RECONNECT_TIMEOUT,
                    set_as_default=False,
                )
            except (OSError, TimeoutError):
                return False
            if self._closed.is_set():
                client.close()
                return False
            self.client = client
        if self.client.status != "running":
            return False  # distributed is reconnecting on its own
        try:
            nthreads = self.client.nthreads(callback_timeout=_RECONNECT_TIMEOUT)
        except (OSError, TimeoutError, AttributeError):
            return False
        return sum(nthreads.values()) > 0

    def submit(self, fn: Callable[..., Any], /, *args: Any):
        """Run ``fn(*args)`` on a worker; returns a ``distributed.Future``."""
        self._check_connected()
        name = getattr(fn, "__name__", type(fn).__name__)
        return self.client.submit(
            _open,
            _Sealed(fn, args),
            key=f"{name}-{uuid.uuid4().hex}",
            pure=False,
            retries=self.retries,
        )

    def close(self) -> None:
        self._closed.set()
        if self._watcher is not None:
            self._watcher.join()
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DaskExecutor({self.address!r})"


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit()


def _count(text: str, spec: str) -> int:
    if not _is_number(text) or int(text) < 1:
        raise ValueError(
            f"invalid executor {spec!r}: N must be a positive integer; "
            f"accepted forms: {_SPEC_FORMS}"
        )
    return int(text)


def _checked_address(text: str, spec: str) -> str:
    host, sep, port = text.rpartition(":")
    if (
        not sep
        or not host
        or any(c in host for c in "/@ ")
        or not _is_number(port)
        or not 0 < int(port) < 65536
    ):
        raise ValueError(
            f"invalid executor {spec!r}: expected HOST:PORT after the scheme; "
            f"accepted forms: {_SPEC_FORMS}"
        )
    return text


def executor_from_spec(
    spec: str | None,
) -> InlineExecutor | ProcessExecutor | DaskExecutor:
    """The executor named by a ``--executor`` value.

    ``None`` or ``local``: the shared local pool over all cores; ``local:N``: N local
    processes (inline for 1); ``dask://HOST:PORT``: the Dask scheduler at
    ``tcp://HOST:PORT``; ``dask+tls://HOST:PORT``: the same over TLS, with certificates
    from Dask's configuration; ``dask-local`` / ``dask-local:N``: a private Dask
    cluster on 127.0.0.1 with N worker processes (all cores by default).

    Local pools are shared and shut down at exit; a ``DaskExecutor`` belongs to the
    caller, who closes it. Raises ``ValueError`` for anything else.
    """
    if spec is None or spec == "local":
        return get_executor()
    if spec.startswith("local:"):
        return get_executor(_count(spec[len("local:") :], spec))
    if spec == "dask-local":
        return DaskExecutor()
    if spec.startswith("dask-local:"):
        return DaskExecutor(n_workers=_count(spec[len("dask-local:") :], spec))
    for prefix, scheme in (("dask://", "tcp://"), ("dask+tls://", "tls://")):
        if spec.startswith(prefix):
            return DaskExecutor(scheme + _checked_address(spec[len(prefix) :], spec))
    raise ValueError(f"invalid executor {spec!r}; accepted forms: {_SPEC_FORMS}")
