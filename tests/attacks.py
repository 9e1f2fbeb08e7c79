"""A deviating advertiser, as a client party the ordinary pumps can drive (over gRPC with
``psi_client.session.run``, or in process with ``psi.protocol.inprocess.run``).

It sends each candidate identifier as many copies, each under a key of its own and in a
group of its own, and spends its returned set on chosen table entries: for every chosen
entry ``t`` and every copy ``(c, k)`` it returns ``trunc16(E(a_ck, t))``. If ``t`` is the
table entry of candidate ``c``, all ``copies[c]`` groups of ``c`` count, so one user moves
the count by ``copies[c]`` instead of one: the amplification that let an advertiser single
out one user's entry when tables were reused. The rest of the returned set is honest
digests of filler identifiers no one holds, so the set has the size and order the
server checks.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from psi import Key, ProtocolError, hash_to_curve
from psi.intersection import sort_rows, truncate
from psi.protocol import Outcome
from psi_proto.v2 import matcher_pb2 as pb

__all__ = ["AmplifyingClient", "Chooser"]

# Which table positions to amplify, given this session's table and the previous one the
# attacker downloaded (or None), and how many it can afford.
Chooser = Callable[[np.ndarray, "np.ndarray | None", int], np.ndarray]


class AmplifyingClient:
    def __init__(
        self,
        candidates: list[bytes],
        copies: list[int],
        fillers: list[bytes],
        choose: Chooser,
        epsilon: float,
        previous: np.ndarray | None = None,
        replay: bool = False,
        id_type: str = "email",
    ) -> None:
        self.candidates, self.copies, self.fillers = candidates, copies, fillers
        self.choose, self.epsilon, self.previous, self.id_type = choose, epsilon, previous, id_type
        # Replay: answer from the previous download instead of this session's table.
        self.replay = replay
        self.state = "NEW"
        self.charged = False
        self.outcome: Outcome | None = None
        self.table: np.ndarray | None = None

    def open(self) -> pb.ClientMessage:
        hashed = hash_to_curve(self.candidates, workers=1)
        self._keys = [[Key.generate() for _ in range(n)] for n in self.copies]
        items = [key.apply(hashed[c : c + 1], workers=1, check=False)
                 for c, keys in enumerate(self._keys) for key in keys]
        self._filler_key = Key.generate()
        items.append(self._filler_key.apply(hash_to_curve(self.fillers, workers=1), workers=1, check=False))
        self._items = np.concatenate(items)
        self.state = "AWAIT_ACCEPTED"
        n = len(self._items)
        return pb.ClientMessage(open=pb.Open(protocol_version=2, id_types=[self.id_type], n_groups=n,
                                             n_items=n, epsilon=self.epsilon))

    def receive(self, msg: pb.ServerMessage):
        kind = msg.WhichOneof("round")
        if kind == "accepted":
            self.charged, self.accepted = True, msg.accepted
            self._parts: list[np.ndarray] = []
            self.state = "TABLE"
            step = msg.accepted.max_points_per_message
            return [pb.ClientMessage(items=pb.Items(points=self._items[i : i + step].tobytes(),
                                                    group_sizes=[1] * len(self._items[i : i + step])))
                    for i in range(0, len(self._items), step)]
        if kind == "table":
            self._parts.append(np.frombuffer(msg.table.points, np.uint8).reshape(-1, 32))
            if sum(map(len, self._parts)) < self.accepted.table_size:
                return []
            self.table = np.concatenate(self._parts)
            self.state = "AWAIT_RESULT"
            step = self.accepted.max_digests_per_message
            digests = self._digests()
            return [pb.ClientMessage(returned=pb.Digests(digests=digests[i : i + step].tobytes()))
                    for i in range(0, len(digests), step)]
        if kind == "result":
            r = msg.result
            self.outcome = Outcome(None if r.suppressed else int(r.noisy_count), r.suppressed, int(r.threshold),
                                   r.epsilon_spent, r.budget_remaining, r.noise, self.accepted.session_id,
                                   int(self.accepted.table_size), int(self.accepted.sensitivity))
            self.state = "DONE"
            return []
        raise ProtocolError(f"unexpected {kind}")

    def _digests(self) -> np.ndarray:
        size = len(self.table)  # the server wants exactly this many
        source = self.previous if self.replay else self.table
        per_entry = sum(self.copies)
        chosen = np.asarray(self.choose(source, self.previous, min(size, len(source)) // per_entry), np.int64)
        rows = [truncate(key.apply(source[chosen], workers=1, check=False))
                for keys in self._keys for key in keys]
        rest = np.setdiff1d(np.arange(len(source)), chosen)[: size - len(chosen) * per_entry]
        rows.append(truncate(self._filler_key.apply(source[rest], workers=1, check=False)))
        return sort_rows(np.concatenate(rows))

    def fail(self) -> None:
        if self.state != "DONE":
            self.state = "FAILED"


def random_positions(table: np.ndarray, previous, afford: int) -> np.ndarray:
    """No information about the table: any positions are as good as any other."""
    return np.random.default_rng().choice(len(table), size=afford, replace=False)


def last_positions(table: np.ndarray, previous, afford: int) -> np.ndarray:
    """The end of the table, where an earlier server appended the users who had just
    consented."""
    return np.arange(len(table) - afford, len(table))


def new_entries_last(table: np.ndarray, previous, afford: int) -> np.ndarray:
    """The diff: entries absent from the previous download, the last ones first (where an
    earlier server appended the entries of users who had just consented)."""
    seen = set() if previous is None else {bytes(r) for r in previous}
    new = [i for i in range(len(table)) if bytes(table[i]) not in seen]
    return np.array(new[::-1][:afford], dtype=np.int64)
