"""The platform's party: one session as a state machine with no I/O.

``receive`` takes each client message and returns the messages to send back; ``table``
yields the single-use table ``T'`` as it is computed. The live set of matchable points
(``TableSource``), the budget and audit (``Ledger``) and where the exponentiations run
(an executor) are injected, so the gRPC service, the tests and the benchmarks drive the
same code. The pump calls ``receive`` from one thread and iterates ``table`` from
another: the two touch disjoint state.

The session key ``s`` is drawn per session and dropped with it, so no entry of ``T'``
can be linked to another session's table. The noise of both releases (the count, and the
table size through its padding) is drawn at ``Open``, before any count exists, and the
budget is charged and audited then too: from ``Accepted`` on, a session is charged
whatever happens.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

import numpy as np

from psi_proto.v2 import matcher_pb2 as pb

from ..errors import InvalidPointError
from ..identifiers import ID_TYPES
from ..intersection import GroupIndex, is_strictly_sorted
from ..keys import CHUNK, Key
from ..noise import EPSILON_RESOLUTION, RandomSource, Release, SessionNoise, epsilon_fraction
from ..parallel import Executor
from ..to_curve import hash_to_curve
from .common import (
    MAX_GROUP_SIZE,
    POINT,
    PROTOCOL_VERSION,
    TRUNCATED,
    SessionError,
    random_permutation,
    unpack,
)
from .policy import Policy

__all__ = ["ArrayTable", "Ledger", "Policy", "ServerSession", "SessionRecord", "TableSnapshot", "TableSource"]


class TableSnapshot(Protocol):
    """The distinct matchable points of the requested types, fixed for one session."""

    size: int

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Hashed points ``H(y)`` of the given rows (indices in ``range(size)``), (k, 32)."""
        ...


class TableSource(Protocol):
    identifiers_per_user: int  # the most identifiers of one type a user adds to a table

    def snapshot(self, id_types: Sequence[str]) -> TableSnapshot:
        """Up to date with every change committed before the call."""
        ...


@dataclass(frozen=True)
class SessionRecord:
    """What the audit log keeps of a session, written when it is charged."""

    session_id: str
    id_types: tuple[str, ...]
    n_groups: int
    n_items: int
    table_size: int
    epsilon_micro: int
    sensitivity: int
    threshold: int
    noise: bool


class Ledger(Protocol):
    """The advertiser's budget and the audit log, bound to one advertiser."""

    def open(self, record: SessionRecord) -> float:
        """Charge the session and record it, atomically; returns the budget left.
        Raises ``SessionError`` (``RESOURCE_EXHAUSTED``/``budget``, ``UNAVAILABLE``)
        having charged nothing."""
        ...

    def release(self, session_id: str, release: Release) -> None:
        """Record what is about to be released; raises ``SessionError`` if it cannot."""
        ...


class ArrayTable:
    """A fixed table from arrays of hashed points per type (tests and benchmarks; the
    server's is the registry's live set)."""

    def __init__(self, points: dict[str, np.ndarray], identifiers_per_user: int = 1) -> None:
        self._points = points
        self.identifiers_per_user = identifiers_per_user

    def snapshot(self, id_types: Sequence[str]) -> _Rows:
        parts = [self._points[t] for t in id_types if t in self._points]
        rows = np.concatenate(parts) if parts else np.empty((0, POINT), np.uint8)
        first = np.ascontiguousarray(rows[:, :8]).view(np.uint64).ravel()
        if len(np.unique(first)) < len(rows):  # rare: compare whole rows
            rows = np.unique(rows, axis=0)
        return _Rows(rows)


class _Rows:
    def __init__(self, rows: np.ndarray) -> None:
        self._rows = rows
        self.size = len(rows)

    def take(self, rows: np.ndarray) -> np.ndarray:
        return self._rows[rows]


def _pad_message(count: int) -> list[bytes]:
    # Hashes of fresh random values: dummies are exactly what the table entry of an
    # identifier no one holds would be.
    return [b"pad\x00" + os.urandom(32) for _ in range(count)]


class ServerSession:
    """One session: ``AWAIT_OPEN`` → ``ITEMS`` → ``DIGESTS`` → ``DONE``.

    Any rule broken raises ``SessionError``, after which the session is over.
    """

    def __init__(
        self,
        policy: Policy,
        tables: TableSource,
        ledger: Ledger,
        executor: Executor,
        *,
        new_key: Callable[[], Key] = Key.generate,
        rng: RandomSource | None = None,
    ) -> None:
        self.policy = policy
        self._tables = tables
        self._ledger = ledger
        self._executor = executor
        self._new_key = new_key
        self._rng = rng
        self.state = "AWAIT_OPEN"
        self.session_id = secrets.token_hex(8)
        self.charged = False  # from Accepted on, whatever happens
        self.id_types: tuple[str, ...] = ()

    # -- Open ------------------------------------------------------------------------

    def _check_open(self, msg: pb.Open) -> tuple[tuple[str, ...], Fraction]:
        policy = self.policy
        if msg.protocol_version != PROTOCOL_VERSION:
            raise SessionError(
                "FAILED_PRECONDITION",
                f"protocol version {msg.protocol_version} is not supported: this server speaks "
                f"version {PROTOCOL_VERSION} (psi.v2); upgrade psi-match",
            )
        id_types = tuple(msg.id_types)
        if not id_types or len(set(id_types)) != len(id_types) or not set(id_types) <= set(ID_TYPES):
            raise SessionError(
                "INVALID_ARGUMENT",
                f"id_types must be distinct values among {', '.join(ID_TYPES)}",
            )
        if not policy.epsilon_min <= msg.epsilon <= policy.epsilon_max:  # NaN fails too
            raise SessionError(
                "OUT_OF_RANGE",
                f"epsilon {msg.epsilon:g} is outside the server's bounds "
                f"[{policy.epsilon_min:g}, {policy.epsilon_max:g}]",
                "epsilon",
            )
        if msg.n_items > policy.max_list_size:
            raise SessionError(
                "OUT_OF_RANGE",
                f"lists may hold at most {policy.max_list_size} identifiers, got {msg.n_items}",
                "list_too_large",
            )
        if msg.n_groups < policy.min_list_size:
            raise SessionError(
                "FAILED_PRECONDITION",
                f"lists must hold at least {policy.min_list_size} customers, got {msg.n_groups}",
                "list_too_small",
            )
        if not msg.n_groups <= msg.n_items <= msg.n_groups * MAX_GROUP_SIZE:
            raise SessionError(
                "INVALID_ARGUMENT",
                f"{msg.n_items} items cannot form {msg.n_groups} groups of 1 to {MAX_GROUP_SIZE}",
            )
        return id_types, epsilon_fraction(msg.epsilon)

    def _open(self, msg: pb.Open) -> list[pb.ServerMessage]:
        id_types, epsilon = self._check_open(msg)
        self.id_types = id_types
        policy = self.policy
        self.sensitivity = self._tables.identifiers_per_user * len(id_types)
        self._snapshot = self._tables.snapshot(id_types)
        if policy.noise:
            draw = {"floor_seconds": policy.noise_floor_seconds}
            if self._rng is not None:
                draw["rng"] = self._rng
            noise = SessionNoise.draw(epsilon, self.sensitivity, **draw)
        else:
            noise = SessionNoise(0, 0)
        self._count_noise = noise.count
        self._padding = noise.padding
        self.table_size = self._snapshot.size + noise.padding
        self.threshold = policy.threshold if policy.noise else 0
        self.n_groups, self.n_items = msg.n_groups, msg.n_items
        self.epsilon_micro = round(epsilon * EPSILON_RESOLUTION)
        self.budget_remaining = self._ledger.open(
            SessionRecord(
                session_id=self.session_id,
                id_types=id_types,
                n_groups=msg.n_groups,
                n_items=msg.n_items,
                table_size=self.table_size,
                epsilon_micro=self.epsilon_micro,
                sensitivity=self.sensitivity,
                threshold=self.threshold,
                noise=policy.noise,
            )
        )
        self.charged = True
        self._key = self._new_key()
        self._items = self._key.pipeline(self._executor, check=True)
        # Filled as items arrive and are blinded: 20 bytes per item, allocated by the
        # operating system only as they are written.
        self._digests = np.empty((msg.n_items, TRUNCATED), np.uint8)
        self._groups = np.empty(msg.n_items, np.uint32)
        self._blinded_count = 0
        self._items_received = self._groups_received = 0
        self.state = "ITEMS"
        return [
            pb.ServerMessage(
                accepted=pb.Accepted(
                    session_id=self.session_id,
                    table_size=self.table_size,
                    max_points_per_message=policy.max_points_per_message,
                    max_digests_per_message=policy.max_digests_per_message,
                    epsilon=float(epsilon),
                    sensitivity=self.sensitivity,
                    threshold=self.threshold,
                    noise=policy.noise,
                    budget_remaining=self.budget_remaining,
                )
            )
        ]

    # -- A: the client's items, grouped by customer ------------------------------------

    def _blinded(self, parts: list[np.ndarray]) -> None:
        for part in parts:
            self._digests[self._blinded_count : self._blinded_count + len(part)] = part[:, :TRUNCATED]
            self._blinded_count += len(part)

    def _receive_items(self, msg: pb.Items) -> list[pb.ServerMessage]:
        points = unpack(msg.points, POINT, self.policy.max_points_per_message, "items")
        sizes = np.asarray(msg.group_sizes, dtype=np.int64)
        if not len(sizes) or sizes.min() < 1 or sizes.max() > MAX_GROUP_SIZE:
            raise SessionError(
                "INVALID_ARGUMENT", f"every group holds 1 to {MAX_GROUP_SIZE} items"
            )
        if int(sizes.sum()) != len(points):
            raise SessionError(
                "INVALID_ARGUMENT",
                f"group sizes add up to {int(sizes.sum())}, the message holds {len(points)} items",
            )
        if self._items_received + len(points) > self.n_items or self._groups_received + len(sizes) > self.n_groups:
            raise SessionError(
                "INVALID_ARGUMENT",
                f"more items or groups than the {self.n_items} items in {self.n_groups} groups announced",
            )
        self._groups[self._items_received : self._items_received + len(points)] = np.repeat(
            np.arange(self._groups_received, self._groups_received + len(sizes), dtype=np.uint32), sizes
        )
        self._items_received += len(points)
        self._groups_received += len(sizes)
        try:
            self._blinded(self._items.push(points))
            if self._items_received == self.n_items:
                self._blinded(self._items.finish())
        except InvalidPointError as exc:
            raise SessionError("INVALID_ARGUMENT", str(exc)) from None
        if self._items_received == self.n_items:
            if self._groups_received != self.n_groups:
                raise SessionError(
                    "INVALID_ARGUMENT",
                    f"{self._groups_received} groups sent, {self.n_groups} announced",
                )
            self._index_items()
            self.state = "DIGESTS"
            if not self.table_size:  # nothing to return: the count is zero
                return self._release()
        return []

    def _index_items(self) -> None:
        self._index = GroupIndex(self._digests, self._groups, self.n_groups)
        del self._digests, self._groups
        if self._index.has_repeats():
            raise SessionError("INVALID_ARGUMENT", "items repeat: every item belongs to exactly one group")
        self._digests_received = 0
        self._last: bytes | None = None

    # -- T': the single-use table -------------------------------------------------------

    def table(self) -> Iterator[pb.ServerMessage]:
        """``T'``: every matchable point under ``s`` and the padding's dummies, in an order
        drawn from the operating system's CSPRNG, streamed as it is computed."""
        if self.state == "AWAIT_OPEN":
            raise RuntimeError("the table exists only once the session is accepted")
        snapshot, m = self._snapshot, self._snapshot.size
        order = self._table_order(self.table_size)
        dummies = hash_to_curve(_pad_message(self._padding), executor=self._executor)

        # one task per message: as many points as Key.apply gives a task, if they fit
        step = min(CHUNK, self.policy.max_points_per_message)

        def chunks() -> Iterator[np.ndarray]:
            for start in range(0, self.table_size, step):
                rows = order[start : start + step]
                real = rows < m
                out = np.empty((len(rows), POINT), np.uint8)
                out[real] = snapshot.take(rows[real])
                out[~real] = dummies[rows[~real] - m]
                yield out

        for blinded in self._key.apply_chunks(chunks(), executor=self._executor, check=False):
            yield pb.ServerMessage(table=pb.Points(points=blinded.tobytes()))

    @staticmethod
    def _table_order(size: int) -> np.ndarray:
        # A CSPRNG order. A method of its own so that the attack tests' foil, a server
        # that keeps registry order, differs from this one in nothing else.
        return random_permutation(size)

    # -- R: the returned digests, and the release ----------------------------------------

    def _receive_digests(self, msg: pb.Digests) -> list[pb.ServerMessage]:
        rows = unpack(msg.digests, TRUNCATED, self.policy.max_digests_per_message, "returned digests")
        if self._digests_received + len(rows) > self.table_size:
            raise SessionError(
                "INVALID_ARGUMENT", f"returned set is larger than the table's {self.table_size} entries"
            )
        if not is_strictly_sorted(rows) or (self._last is not None and rows[0].tobytes() <= self._last):
            raise SessionError(
                "INVALID_ARGUMENT", "returned set is not strictly sorted (duplicates or reordering)"
            )
        self._last = rows[-1].tobytes()
        self._digests_received += len(rows)
        self._index.add(rows)
        if self._digests_received < self.table_size:
            return []
        return self._release()

    def _release(self) -> list[pb.ServerMessage]:
        release = Release.of(self._index.groups_hit, self._count_noise, self.threshold)
        del self._index
        self._ledger.release(self.session_id, release)
        self.state = "DONE"
        return [
            pb.ServerMessage(
                result=pb.Result(
                    suppressed=release.suppressed,
                    noisy_count=release.noisy_count or 0,
                    threshold=release.threshold,
                    epsilon_spent=self.epsilon_micro / EPSILON_RESOLUTION,
                    budget_remaining=self.budget_remaining,
                    noise=self.policy.noise,
                )
            )
        ]

    # -- dispatch ----------------------------------------------------------------------

    _EXPECTED = {
        "AWAIT_OPEN": ("open", "an Open message"),
        "ITEMS": ("items", "items"),
        "DIGESTS": ("returned", "returned digests"),
    }

    def receive(self, msg: pb.ClientMessage) -> list[pb.ServerMessage]:
        """The messages to send in reply to ``msg``; raises ``SessionError``."""
        try:
            if self.state not in self._EXPECTED:
                raise SessionError(
                    "INVALID_ARGUMENT", f"no message is expected once the session is {self.state.lower()}"
                )
            kind, what = self._EXPECTED[self.state]
            got = msg.WhichOneof("round")
            if got != kind:
                raise SessionError("INVALID_ARGUMENT", f"expected {what}, got {got or 'an empty message'}")
            if kind == "open":
                return self._open(msg.open)
            if kind == "items":
                return self._receive_items(msg.items)
            return self._receive_digests(msg.returned)
        except BaseException:
            self.fail()
            raise

    def end_of_stream(self) -> None:
        """The client closed its side: only an error unless the session is done."""
        if self.state != "DONE":
            _, what = self._EXPECTED.get(self.state, ("", "nothing"))
            self.fail()
            raise SessionError("INVALID_ARGUMENT", f"stream ended while waiting for {what}")

    def fail(self) -> None:
        """Stop: outstanding work is cancelled and nothing more is accepted."""
        items = getattr(self, "_items", None)
        if items is not None:
            items.cancel()
        if self.state != "DONE":
            self.state = "FAILED"
