"""The advertiser's party: one session as a state machine with no I/O.

``open`` hashes and blinds the list and returns the opening message; ``receive`` takes
each server message and returns the messages to send back (lazily: a caller streams
them). Exponentiations run on an injected executor. The client never holds anything it
can test an identifier against: it sees the platform's identifiers only under a key used
for this one session, and only 16 bytes per table entry stay in memory.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from psi_proto.v2 import matcher_pb2 as pb

from ..errors import ProtocolError
from ..intersection import is_strictly_sorted, sort_rows, truncate
from ..keys import Key
from ..parallel import Executor
from ..to_curve import hash_to_curve_stream
from .common import MAX_GROUP_SIZE, POINT, PROTOCOL_VERSION, random_permutation

__all__ = ["ClientSession", "Outcome", "Progress"]

HASH_BATCH = 4096


class Progress(Protocol):
    """Where progress goes: one call to ``start`` per step, then ``advance``."""

    def start(self, step: str, total: int) -> None: ...
    def advance(self, step: str, amount: int) -> None: ...


class _Silent:
    def start(self, step: str, total: int) -> None:
        pass

    def advance(self, step: str, amount: int) -> None:
        pass


@dataclass(frozen=True)
class Outcome:
    noisy_count: int | None
    suppressed: bool
    threshold: int
    epsilon_spent: float
    budget_remaining: float
    noise: bool
    session_id: str
    table_size: int
    sensitivity: int


class ClientSession:
    """One session: ``NEW`` → ``AWAIT_ACCEPTED`` → ``TABLE`` → ``AWAIT_RESULT`` → ``DONE``.

    ``items`` are distinct encoded identifiers and ``groups`` the customer (0 to
    ``n_groups - 1``) each belongs to. Raises ``ProtocolError`` for anything the server
    sends that breaks the protocol.
    """

    def __init__(
        self,
        items: Sequence[bytes],
        groups: np.ndarray,
        n_groups: int,
        id_types: Sequence[str],
        epsilon: float,
        executor: Executor,
        *,
        min_table_size: int = 1000,
        progress: Progress | None = None,
        new_key=Key.generate,
    ) -> None:
        groups = np.asarray(groups, dtype=np.int64)
        if len(groups) != len(items) or not len(items):
            raise ValueError("every item needs a group, and the list cannot be empty")
        sizes = np.bincount(groups, minlength=n_groups) if groups.min() >= 0 else None
        if sizes is None or len(sizes) != n_groups or sizes.min() < 1:
            raise ValueError(f"groups must number every customer 0..{n_groups - 1}")
        if sizes.max() > MAX_GROUP_SIZE:
            raise ValueError(f"a customer holds {sizes.max()} items, above {MAX_GROUP_SIZE}")
        self._items, self._groups, self.n_groups = items, groups, n_groups
        self.id_types = tuple(id_types)
        self.epsilon = epsilon
        self._executor = executor
        self.min_table_size = min_table_size
        self._progress = progress or _Silent()
        self._key = new_key()
        self.state = "NEW"
        # True once the server has accepted, so charged, the session.
        self.charged = False
        self.outcome: Outcome | None = None

    def open(self) -> pb.ClientMessage:
        """Hash and blind the list (groups in a random order), then the opening message."""
        if self.state != "NEW":
            raise RuntimeError("a session opens once")
        rank = random_permutation(self.n_groups)[self._groups]
        order = np.argsort(rank, kind="stable")
        self._sizes = np.bincount(rank, minlength=self.n_groups)
        del rank
        items = [self._items[i] for i in order]
        del order
        progress = self._progress
        progress.start("hashing", len(items))
        batches = (items[i : i + HASH_BATCH] for i in range(0, len(items), HASH_BATCH))
        hashed = []
        for part in hash_to_curve_stream(batches, executor=self._executor):
            hashed.append(part)
            progress.advance("hashing", len(part))
        progress.start("blinding", len(items))
        blinded = []
        for part in self._key.apply_chunks(hashed, executor=self._executor, check=False):
            blinded.append(part)
            progress.advance("blinding", len(part))
        self._blinded = np.concatenate(blinded)
        self.state = "AWAIT_ACCEPTED"
        return pb.ClientMessage(
            open=pb.Open(
                protocol_version=PROTOCOL_VERSION,
                id_types=self.id_types,
                n_groups=self.n_groups,
                n_items=len(items),
                epsilon=self.epsilon,
            )
        )

    # -- server messages ------------------------------------------------------------

    def receive(self, msg: pb.ServerMessage) -> Iterable[pb.ClientMessage]:
        """The messages to send in reply (an iterator to stream, possibly empty)."""
        got = msg.WhichOneof("round")
        expected = {"AWAIT_ACCEPTED": "accepted", "TABLE": "table", "AWAIT_RESULT": "result"}
        if expected.get(self.state) != got:
            raise ProtocolError(f"the server sent {got or 'an empty message'} while the session was {self.state}")
        if got == "accepted":
            return self._accepted(msg.accepted)
        if got == "table":
            return self._table(msg.table)
        self._result(msg.result)
        return ()

    def _accepted(self, accepted: pb.Accepted) -> Iterator[pb.ClientMessage]:
        self.charged = True
        self.accepted = accepted
        if accepted.max_points_per_message < MAX_GROUP_SIZE or accepted.max_digests_per_message < 1:
            raise ProtocolError("the server's message limits are too small for the protocol")
        if accepted.table_size < self.min_table_size:
            raise ProtocolError(
                f"server table has {accepted.table_size} entries, below the client's floor of "
                f"{self.min_table_size}"
            )
        self._table_parts: list[np.ndarray] = []
        self._table_received = 0
        self._table_pipeline = self._key.pipeline(self._executor, check=True)
        self.state = "TABLE" if accepted.table_size else "AWAIT_RESULT"
        self._progress.start("downloading", accepted.table_size)
        self._progress.start("exponentiating", accepted.table_size)
        return self._items_messages(accepted.max_points_per_message)

    def _items_messages(self, limit: int) -> Iterator[pb.ClientMessage]:
        """``A`` in whole groups, at most ``limit`` points per message."""
        self._progress.start("uploading", len(self._blinded))
        ends = np.cumsum(self._sizes)
        group = 0
        while group < self.n_groups:
            start = int(ends[group - 1]) if group else 0
            stop_group = int(np.searchsorted(ends, start + limit, side="right"))
            stop = int(ends[stop_group - 1])
            yield pb.ClientMessage(
                items=pb.Items(
                    points=self._blinded[start:stop].tobytes(),
                    group_sizes=self._sizes[group:stop_group].tolist(),
                )
            )
            self._progress.advance("uploading", stop - start)
            group = stop_group
        del self._blinded

    def _exponentiated(self, parts: list[np.ndarray]) -> None:
        for part in parts:
            self._table_parts.append(truncate(part))
            self._progress.advance("exponentiating", len(part))

    def _table(self, chunk: pb.Points) -> Iterator[pb.ClientMessage]:
        data = chunk.points
        if not data or len(data) % POINT:
            raise ProtocolError("the server sent a malformed table chunk")
        points = np.frombuffer(data, np.uint8).reshape(-1, POINT)
        self._table_received += len(points)
        if self._table_received > self.accepted.table_size:
            raise ProtocolError(
                f"the server sent more than the {self.accepted.table_size} table points it announced"
            )
        self._progress.advance("downloading", len(points))
        self._exponentiated(self._table_pipeline.push(points))
        if self._table_received < self.accepted.table_size:
            return iter(())
        self._exponentiated(self._table_pipeline.finish())
        self._progress.start("sorting", 1)
        returned = sort_rows(np.concatenate(self._table_parts))
        self._table_parts = []
        if not is_strictly_sorted(returned):
            raise ProtocolError("the server's table contains duplicate points")
        self._progress.advance("sorting", 1)
        self.state = "AWAIT_RESULT"
        return self._digest_messages(returned, self.accepted.max_digests_per_message)

    def _digest_messages(self, returned: np.ndarray, limit: int) -> Iterator[pb.ClientMessage]:
        self._progress.start("returning", len(returned))
        for i in range(0, len(returned), limit):
            part = returned[i : i + limit]
            yield pb.ClientMessage(returned=pb.Digests(digests=part.tobytes()))
            self._progress.advance("returning", len(part))

    def _result(self, result: pb.Result) -> None:
        self.outcome = Outcome(
            noisy_count=None if result.suppressed else int(result.noisy_count),
            suppressed=result.suppressed,
            threshold=int(result.threshold),
            epsilon_spent=result.epsilon_spent,
            budget_remaining=result.budget_remaining,
            noise=result.noise,
            session_id=self.accepted.session_id,
            table_size=int(self.accepted.table_size),
            sensitivity=int(self.accepted.sensitivity),
        )
        self.state = "DONE"

    def fail(self) -> None:
        pipeline = getattr(self, "_table_pipeline", None)
        if pipeline is not None:
            pipeline.cancel()
        if self.state != "DONE":
            self.state = "FAILED"
