"""Whether the server takes sessions now, as the gRPC health service reports it.

The server serves once its first tables are built, unless it is shutting down or its
executor cannot compute (a Dask cluster whose scheduler is unreachable or has no
worker). Sessions are admitted on the same condition, so while health says NOT_SERVING
a client is refused with UNAVAILABLE before anything is charged.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable

from grpc_health.v1 import health, health_pb2

from psi.protocol import SessionError

log = logging.getLogger(__name__)

__all__ = ["Availability"]

_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def _cluster_down() -> SessionError:
    return SessionError(
        "UNAVAILABLE",
        "the server cannot compute right now (its compute cluster is unreachable); "
        "nothing was charged, retry later",
        "unavailable",
    )


class Availability:
    """The server's serving state, published on ``servicer`` for the overall server ("")
    and for each of ``services``.

    An executor with ``available()`` and ``watch(on_change)`` (``psi.cluster.DaskExecutor``)
    is asked at each admission and watched for changes; any other executor is always
    available.
    """

    def __init__(
        self, servicer: health.HealthServicer, services: Iterable[str], executor: object = None
    ) -> None:
        self._servicer = servicer
        self._services = ("", *services)
        self._executor = executor
        self._executor_available = getattr(executor, "available", lambda: True)
        self._ready = False
        self._stopping = False
        self._lock = threading.Lock()
        self._publish()

    def ready(self) -> None:
        """The tables are built: serve, and from now on follow the executor's state (the
        build has just shown that it can compute)."""
        self._ready = True
        self._publish()
        watch = getattr(self._executor, "watch", None)
        if watch is not None:
            watch(self._executor_changed)

    def stopping(self) -> None:
        """Shutting down: never serve again."""
        self._stopping = True
        self._publish()

    def serving(self) -> bool:
        return self._ready and not self._stopping and self._executor_available()

    def refusal(self) -> SessionError | None:
        """Why a session cannot run now, or None when it can."""
        if self.serving():
            return None
        if self._ready and not self._stopping:
            return _cluster_down()
        return SessionError(
            "UNAVAILABLE", "the server is starting or stopping; nothing was charged, retry later"
        )

    def lost_cluster(self, charged: bool) -> SessionError | None:
        """Why a running session failed, when the cause is the executor having gone
        away while the server serves; None for any other failure (a shutdown included)."""
        if not self._ready or self._stopping or self._executor_available():
            return None
        if not charged:
            return _cluster_down()
        return SessionError(
            "UNAVAILABLE",
            "the server's compute cluster became unreachable; the session was charged",
            "unavailable",
        )

    def admit(self) -> None:
        """Raise the refusal, if any, as a ``SessionError``."""
        refusal = self.refusal()
        if refusal is not None:
            raise refusal

    def _executor_changed(self, available: bool) -> None:
        # called by the executor's watcher at each change only, so an outage is logged
        # once when it starts and once when it ends, not once per refused session
        self._publish()
        if self._stopping:
            return
        if available:
            log.warning("the compute cluster can run tasks again: sessions are accepted")
        else:
            log.error(
                "the compute cluster cannot run tasks (scheduler unreachable or no worker): "
                "sessions are refused, health is NOT_SERVING, until it is back"
            )

    def _publish(self) -> None:
        with self._lock:
            status = _SERVING if self.serving() else _NOT_SERVING
            for name in self._services:
                self._servicer.set(name, status)
