"""One match session, as a function from client messages to server messages.

Nothing here knows about gRPC: failures raise ``SessionError`` carrying a status code
name and a message, which the service turns into a gRPC status. Tests drive sessions
directly with lists of messages.
"""

from __future__ import annotations

import logging
import secrets
import sqlite3
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from psi import InvalidPointError, ProtocolError
from psi.identifiers import ID_TYPES
from psi.intersection import TRUNCATED, truncate
from psi.noise import EPSILON_RESOLUTION, Release, epsilon_fraction, release_count
from psi.parallel import Executor
from psi.protocol import PROTOCOL_VERSION
from psi.protocol import server as steps
from psi_proto.v1 import matcher_pb2 as pb

from . import budget, store
from .advertisers import Advertiser
from .epochs import EpochManager

log = logging.getLogger(__name__)

__all__ = ["Policy", "SessionError", "run_session"]


class SessionError(Exception):
    """Ends a session with a status. ``code`` is a ``grpc.StatusCode`` name; ``reason``
    a short machine-readable word the client maps to an exit code."""

    def __init__(self, code: str, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason


@dataclass(frozen=True)
class Policy:
    min_list_size: int = 100
    max_list_size: int = 10_000_000  # the server holds 16 bytes per item for the session
    threshold: int = 100
    epsilon_min: float = 0.01
    epsilon_max: float = 1.0
    noise: bool = True
    max_points_per_message: int = 16384
    max_digests_per_message: int = 32768


def _expect(msg: pb.ClientMessage | None, kind: str, stage: str) -> object:
    if msg is None:
        raise SessionError("INVALID_ARGUMENT", f"stream ended while waiting for {stage}")
    got = msg.WhichOneof("round")
    if got != kind:
        raise SessionError("INVALID_ARGUMENT", f"expected {stage}, got {got or 'an empty message'}")
    return getattr(msg, kind)


def _unpack(data: bytes, width: int, limit: int, what: str) -> np.ndarray:
    if not data:
        raise SessionError("INVALID_ARGUMENT", f"empty {what} message")
    if len(data) % width:
        raise SessionError(
            "INVALID_ARGUMENT", f"{what} message of {len(data)} bytes is not a multiple of {width}"
        )
    if len(data) // width > limit:
        raise SessionError(
            "INVALID_ARGUMENT", f"{what} message holds {len(data) // width} items, above the limit of {limit}"
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, width)


def check_open(open_msg: pb.Open, policy: Policy) -> Fraction:
    """Validate the opening message; returns the epsilon to charge, exactly."""
    if open_msg.protocol_version != PROTOCOL_VERSION:
        raise SessionError(
            "FAILED_PRECONDITION",
            f"protocol version {open_msg.protocol_version} is not supported (this server speaks {PROTOCOL_VERSION})",
        )
    if open_msg.id_type not in ID_TYPES:
        raise SessionError(
            "INVALID_ARGUMENT", f"unknown id_type (expected one of {', '.join(ID_TYPES)})"
        )
    if not policy.epsilon_min <= open_msg.epsilon <= policy.epsilon_max:  # NaN fails too
        raise SessionError(
            "OUT_OF_RANGE",
            f"epsilon {open_msg.epsilon:g} is outside the server's bounds "
            f"[{policy.epsilon_min:g}, {policy.epsilon_max:g}]",
            "epsilon",
        )
    if open_msg.n_items > policy.max_list_size:
        raise SessionError(
            "OUT_OF_RANGE",
            f"lists may hold at most {policy.max_list_size} identifiers, got {open_msg.n_items}",
            "list_too_large",
        )
    if open_msg.n_items < policy.min_list_size:
        raise SessionError(
            "FAILED_PRECONDITION",
            f"lists must hold at least {policy.min_list_size} distinct identifiers, got {open_msg.n_items}",
            "list_too_small",
        )
    return epsilon_fraction(open_msg.epsilon)


def run_session(
    requests: Iterator[pb.ClientMessage],
    advertiser: Advertiser,
    db_path: str,
    epochs: EpochManager,
    policy: Policy,
    workers: int | None = None,
    executor: Executor | None = None,
    cancelled: Callable[[], bool] = lambda: False,
) -> Iterator[pb.ServerMessage]:
    """Drive one session. Yields server messages; raises ``SessionError`` to end it.

    Nothing is charged unless the exact count was computed and the release is about to
    be sent; then the charge and the audit row commit before the result is yielded.
    """
    requests = iter(requests)
    open_msg = _expect(next(requests, None), "open", "an Open message")
    epsilon = check_open(open_msg, policy)
    epsilon_micro = round(epsilon * EPSILON_RESOLUTION)
    conn = store.connect(db_path)
    try:
        if budget.status(conn, advertiser).remaining_micro < epsilon_micro:
            raise SessionError(
                "RESOURCE_EXHAUSTED", "privacy budget exhausted for the current period", "budget"
            )
        if epochs.current is None:
            raise SessionError("UNAVAILABLE", "the server is still building its tables")
        epoch, table = epochs.snapshot(open_msg.id_type)
        session_id = secrets.token_hex(8)
        n = open_msg.n_items
        m = table.size
        yield pb.ServerMessage(
            accepted=pb.Accepted(
                session_id=session_id,
                epoch_id=epoch.epoch_id,
                table_size=m,
                max_points_per_message=policy.max_points_per_message,
                max_digests_per_message=policy.max_digests_per_message,
                epsilon=float(epsilon),
                sensitivity=epochs.sensitivity,
                threshold=policy.threshold if policy.noise else 0,
                noise=policy.noise,
            )
        )
        reader = _Reader(requests, n, m, policy, epoch.key, workers, executor)
        reader.start()
        for chunk in table.chunks(policy.max_points_per_message):
            if reader.failed.is_set() or cancelled():
                break
            yield pb.ServerMessage(table=pb.Points(points=chunk.tobytes()))
        distinct, exact = reader.result()
        if policy.noise:
            release = release_count(exact, epsilon, epochs.sensitivity, policy.threshold)
        else:
            release = Release(exact, False, 0)
        del exact
        if cancelled():
            raise SessionError("CANCELLED", "the client went away before the result")
        try:
            status = budget.charge(
                conn,
                advertiser,
                epsilon_micro,
                release,
                session_id=session_id,
                epoch_id=epoch.epoch_id,
                id_type=open_msg.id_type,
                n_items=distinct,
                sensitivity=epochs.sensitivity,
                noise=policy.noise,
            )
        except budget.BudgetExhausted as exc:
            raise SessionError("RESOURCE_EXHAUSTED", str(exc), "budget") from None
        except sqlite3.OperationalError:
            # the registry stayed locked past its timeout (a long import, a full disk):
            # the charge rolled back, so nothing is released and nothing was spent
            raise SessionError(
                "UNAVAILABLE", "the registry is busy; nothing was charged, retry later", "busy"
            ) from None
        log.info(
            "session %s advertiser=%s id_type=%s n=%d released%s",
            session_id, advertiser.name, open_msg.id_type, distinct,
            " (suppressed)" if release.suppressed else "",
        )
        yield pb.ServerMessage(
            result=pb.Result(
                suppressed=release.suppressed,
                noisy_count=release.noisy_count or 0,
                threshold=release.threshold,
                epsilon_spent=float(epsilon),
                budget_remaining=status.remaining,
                noise=policy.noise,
            )
        )
    finally:
        conn.close()


class _Reader(threading.Thread):
    """Reads the client's half of the stream while the table is being sent: blinds ``A``
    as it arrives (in the pool), then counts the returned digests as they arrive."""

    def __init__(self, requests, n, m, policy, key, workers, executor) -> None:
        super().__init__(daemon=True, name="session-reader")
        self.requests = requests
        self.n, self.m = n, m
        self.policy = policy
        self.key = key
        self.workers, self.executor = workers, executor
        self.failed = threading.Event()
        self._error: BaseException | None = None
        self._result: tuple[int, int] | None = None

    def _points(self) -> Iterator[np.ndarray]:
        received = 0
        while received < self.n:
            points = _expect(
                next(self.requests, None), "blinded", f"blinded points ({received} of {self.n} received)"
            )
            chunk = _unpack(points.points, 32, self.policy.max_points_per_message, "blinded points")
            received += len(chunk)
            if received > self.n:
                raise SessionError("INVALID_ARGUMENT", f"more blinded points than the {self.n} announced")
            yield chunk

    def _count(self) -> tuple[int, int]:
        try:
            parts = [
                truncate(out)
                for out in self.key.apply_chunks(
                    self._points(), self.workers, executor=self.executor, check=True
                )
            ]
        except InvalidPointError as exc:
            raise SessionError("INVALID_ARGUMENT", str(exc)) from None
        blinded = np.concatenate(parts) if parts else np.empty((0, TRUNCATED), np.uint8)
        counter = steps.ReturnedSetCounter(blinded, self.m)
        del parts, blinded
        distinct = counter.distinct_client_items
        if distinct < self.policy.min_list_size:
            raise SessionError(
                "FAILED_PRECONDITION",
                f"the list holds {distinct} distinct items, fewer than the minimum of "
                f"{self.policy.min_list_size}",
                "list_too_small",
            )
        try:
            while counter.received < self.m:
                digests = _expect(
                    next(self.requests, None),
                    "returned",
                    f"returned digests ({counter.received} of {self.m} received)",
                )
                counter.add(
                    _unpack(digests.digests, TRUNCATED, self.policy.max_digests_per_message, "returned digests")
                )
            return distinct, counter.finish()
        except ProtocolError as exc:
            raise SessionError("INVALID_ARGUMENT", str(exc)) from None

    def run(self) -> None:
        try:
            self._result = self._count()
        except BaseException as exc:  # handed to the session thread by result()
            self._error = exc
            self.failed.set()

    def result(self) -> tuple[int, int]:
        """``(distinct client items, exact intersection)``, or the reader's error."""
        self.join()
        if self._error is not None:
            raise self._error
        return self._result
