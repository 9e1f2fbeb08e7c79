"""The live matchable set: the hashed point ``H(y)`` of every matchable identifier, in
memory, kept current with the registry.

Every session's table is drawn from it, blinded under the session's own key, so nothing
here is secret beyond the registry itself. Before each session the set applies every
change committed to the registry since it last looked (the registry logs, per
identifier row, each change that can alter whether it belongs in a table), so a
revocation committed before a session opens is never in that session's table.

Layout. Distinct points live in *slots*: a base array built at start (or at compaction),
the rows read from the registry themselves when no two users share a value, and a small
array of slots added since. Each slot counts the identifier rows that
currently contribute it (a value several users share is one table entry); a slot with
no contributor is not in any table. Slots never change once written, so a session's
snapshot is just the list of live slots of its types and references to the arrays.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from psi.identifiers import ID_TYPES

from . import store
from .registry.tables import (
    MatchableRows,
    change_log_position,
    changed_identifiers,
    matchable_of_users,
    prune_change_log,
    read_matchable,
)

log = logging.getLogger(__name__)

__all__ = ["LiveSet", "LiveSnapshot"]

# Changes applied one by one up to this share of the set; beyond it, rebuilding from the
# registry is cheaper.
REBUILD_SHARE = 0.25
# Slots added or retired since the base was built, as a share of it, before compaction.
COMPACT_SHARE = 0.25
# The change log is pruned once this many applied entries have accumulated.
PRUNE_EVERY = 100_000


def _keys(points: np.ndarray) -> np.ndarray:
    """The first 8 bytes of each point as an integer: enough to find it, almost always
    alone (distinct points share them with probability about n^2 / 2^65)."""
    return np.ascontiguousarray(points[:, :8]).view(np.uint64).ravel()


@dataclass(frozen=True)
class LiveSnapshot:
    """The distinct matchable points of some types, as of one moment."""

    base: np.ndarray  # (B, 32) points of the base slots
    extra: np.ndarray  # (E, 32) points of the slots added since
    slots: np.ndarray  # live slots, in slot order

    @property
    def size(self) -> int:
        return len(self.slots)

    def take(self, rows: np.ndarray) -> np.ndarray:
        slots = self.slots[rows]
        in_base = slots < len(self.base)
        out = np.empty((len(slots), 32), np.uint8)
        out[in_base] = self.base[slots[in_base]]
        out[~in_base] = self.extra[slots[~in_base] - len(self.base)]
        return out


class _Index:
    """Slots and the identifier rows that contribute them. Mutated under the set's lock."""

    def __init__(self, rows: MatchableRows) -> None:
        points, ids, types = rows.points, rows.ids, rows.types
        keys = _keys(points)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        del keys
        # A new slot starts wherever the point differs from the previous one in key order.
        new = np.ones(len(order), dtype=bool)
        new[1:] = sorted_keys[1:] != sorted_keys[:-1]
        # Rows sharing a first word (rare, and almost always one value of several users):
        # order each run by the whole point, so identical points are adjacent, then
        # compare whole points.
        for i in np.flatnonzero(~new):
            if i == 1 or sorted_keys[i - 2] != sorted_keys[i]:  # a run starts at i - 1
                stop = i + 1
                while stop < len(order) and sorted_keys[stop] == sorted_keys[i]:
                    stop += 1
                run = order[i - 1 : stop]
                order[i - 1 : stop] = sorted(run, key=lambda r: points[r].tobytes())
                for j in range(i, stop):
                    new[j] = not np.array_equal(points[order[j]], points[order[j - 1]])
        if new.all():  # every point distinct, as almost always: the rows are the slots
            self.base, self.types = points, types
            self.base_keys, self.key_slots = sorted_keys, order
            row_slot = None
        else:
            # Slots are numbered in the row order of each point's first row, so the base
            # is one gather of the rows that stay.
            first = order[new]
            keep = np.sort(first)
            rank = np.empty(len(order), dtype=np.int64)
            rank[keep] = np.arange(len(keep))
            self.key_slots = rank[first]
            row_slot = np.empty(len(order), dtype=np.int64)
            row_slot[order] = self.key_slots[np.cumsum(new) - 1]
            self.base, self.types = np.ascontiguousarray(points[keep]), types[keep]
            self.base_keys = sorted_keys[new]
            del first, keep, rank, order, sorted_keys
        by_id = np.argsort(ids, kind="stable")
        self.base_ids = ids[by_id]
        if row_slot is None:
            self.refs = np.ones(len(self.base), dtype=np.int32)
            self.base_id_slots = by_id
        else:
            self.refs = np.bincount(row_slot, minlength=len(self.base)).astype(np.int32)
            self.base_id_slots = row_slot[by_id]
        del by_id, row_slot
        self.extra = np.empty((0, 32), np.uint8)
        self.extra_slots: dict[bytes, int] = {}  # point -> slot, for slots added since
        self.id_slots: dict[int, int] = {}  # identifier row -> slot (-1: none), since

    @property
    def n_slots(self) -> int:
        return len(self.base) + len(self.extra)

    def slot_of_id(self, ids: np.ndarray) -> np.ndarray:
        """Each identifier row's slot now, or -1."""
        pos = np.searchsorted(self.base_ids, ids)
        found = pos < len(self.base_ids)
        found[found] = self.base_ids[pos[found]] == ids[found]
        out = np.full(len(ids), -1, dtype=np.int64)
        out[found] = self.base_id_slots[pos[found]]
        for i, ident in enumerate(ids.tolist()):
            if ident in self.id_slots:
                out[i] = self.id_slots[ident]
        return out

    def slot_of_point(self, point: np.ndarray) -> int:
        """The point's slot, or -1."""
        key = _keys(point[None])[0]
        lo = np.searchsorted(self.base_keys, key, side="left")
        hi = np.searchsorted(self.base_keys, key, side="right")
        for slot in self.key_slots[lo:hi]:
            if np.array_equal(self.base[slot], point):
                return int(slot)
        return self.extra_slots.get(point.tobytes(), -1)

    def apply(self, affected: np.ndarray, now: MatchableRows) -> tuple[int, int]:
        """Make ``now`` the contribution of every identifier row in ``affected`` (rows not
        in ``now`` contribute nothing). Returns how many slots came alive and died."""
        affected = np.union1d(affected, now.ids)
        old = self.slot_of_id(affected)
        old = old[old >= 0]
        new = np.empty(len(now.ids), dtype=np.int64)
        added: list[np.ndarray] = []
        added_types: list[int] = []
        for i, (point, code) in enumerate(zip(now.points, now.types.tolist())):
            slot = self.slot_of_point(point)
            if slot < 0:
                slot = self.n_slots + len(added)
                self.extra_slots[point.tobytes()] = slot
                added.append(point)
                added_types.append(code)
            new[i] = slot
        if added:
            self.extra = np.concatenate([self.extra, np.stack(added)])
            self.types = np.concatenate([self.types, np.array(added_types, np.uint8)])
            self.refs = np.concatenate([self.refs, np.zeros(len(added), np.int32)])
        touched = np.union1d(old, new)
        before = self.refs[touched] > 0
        np.subtract.at(self.refs, old, 1)
        np.add.at(self.refs, new, 1)
        after = self.refs[touched] > 0
        self.id_slots.update(dict.fromkeys(affected.tolist(), -1))
        self.id_slots.update(zip(now.ids.tolist(), new.tolist()))
        return int(np.count_nonzero(after & ~before)), int(np.count_nonzero(before & ~after))

    def needs_compaction(self) -> bool:
        return len(self.extra) + len(self.id_slots) > COMPACT_SHARE * len(self.base) + 10_000

    def rows(self) -> MatchableRows:
        """Every contributing identifier row now, for a rebuild without the registry."""
        overridden = np.fromiter(self.id_slots, np.int64, len(self.id_slots))
        keep = ~np.isin(self.base_ids, overridden)
        ids = [self.base_ids[keep]]
        slots = [self.base_id_slots[keep]]
        live = [(i, s) for i, s in self.id_slots.items() if s >= 0]
        ids.append(np.array([i for i, _ in live], np.int64))
        slots.append(np.array([s for _, s in live], np.int64))
        ids_all, slots_all = np.concatenate(ids), np.concatenate(slots)
        points = np.concatenate([self.base, self.extra])
        return MatchableRows(ids_all, self.types[slots_all], points[slots_all])

    def snapshot(self, codes: list[int]) -> LiveSnapshot:
        live = (self.refs > 0) & np.isin(self.types, codes)
        return LiveSnapshot(self.base, self.extra, np.flatnonzero(live))


class LiveSet:
    """The registry's matchable points in memory; a ``TableSource`` for sessions."""

    def __init__(self, db_path: str, identifiers_per_user: int = 1) -> None:
        if identifiers_per_user < 1:
            raise ValueError("the per-user identifier cap must be at least 1")
        self.db_path = db_path
        self.identifiers_per_user = identifiers_per_user
        self._lock = threading.Lock()
        self._index: _Index | None = None
        self._seq = 0
        self._pruned_at = 0

    def build(self) -> None:
        """Read the whole set from the registry (at start, or when far behind)."""
        with self._lock:
            self._rebuild()

    def _rebuild(self) -> None:
        conn = store.connect(self.db_path)
        try:
            conn.execute("BEGIN")  # one read snapshot for the log position and the rows
            seq, _ = change_log_position(conn)
            rows = read_matchable(conn, self.identifiers_per_user)
            conn.execute("COMMIT")
        finally:
            conn.close()
        self._index = _Index(rows)
        self._seq = self._pruned_at = seq
        log.info("live set built: %s", self._describe())

    def _describe(self) -> str:
        index = self._index
        live = index.refs > 0
        return ", ".join(
            f"{t}={int(np.count_nonzero(live & (index.types == code)))}" for code, t in enumerate(ID_TYPES)
        )

    def _sync(self) -> None:
        """Apply every change committed since the last look (caller holds the lock)."""
        conn = store.connect(self.db_path)
        try:
            conn.execute("BEGIN")
            latest, first_kept = change_log_position(conn)
            if latest == self._seq:
                conn.execute("COMMIT")
                return
            if self._seq + 1 < first_kept:
                conn.execute("COMMIT")
                log.info("live set: changes were pruned past its position; rebuilding")
                self._rebuild()
                return
            changed, users = changed_identifiers(conn, self._seq, latest)
            if len(changed) > REBUILD_SHARE * self._index.n_slots + 10_000:
                conn.execute("COMMIT")
                self._rebuild()
                return
            now = matchable_of_users(conn, self.identifiers_per_user, users)
            conn.execute("COMMIT")
        finally:
            conn.close()
        alive, died = self._index.apply(changed, now)
        self._seq = latest
        if alive or died:
            log.info("live set: %d identifier rows changed, +%d -%d entries", len(changed), alive, died)
        if self._index.needs_compaction():
            self._index = _Index(self._index.rows())
        if self._seq - self._pruned_at >= PRUNE_EVERY:
            conn = store.connect(self.db_path)
            try:
                if prune_change_log(conn, self._seq):
                    self._pruned_at = self._seq
            finally:
                conn.close()

    def snapshot(self, id_types: Sequence[str]) -> LiveSnapshot:
        """The distinct matchable points of ``id_types``, current with every change
        committed before this call."""
        with self._lock:
            if self._index is None:
                raise RuntimeError("the live set is not built yet")
            self._sync()
            return self._index.snapshot([ID_TYPES.index(t) for t in id_types])
