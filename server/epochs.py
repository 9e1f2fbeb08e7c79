"""Key epochs: the server key ``b`` and, per identifier type, the table ``T = E(b, H(y))``.

The key exists only in this process's memory; a restart is a new epoch. Between rotations,
consent changes are applied to the live table incrementally: the registry records every
user whose matchability may have changed (``user_changes``), and before each session
starts the epoch re-reads exactly those users' contributions. A session then works on an
immutable snapshot, so a revocation committed before it started is never counted in it.

A client that keeps an old table could still answer a later session with entries that
have since been revoked; the table values stay valid until the key changes. Rotating
soon after a revocation (``rotate_after_revocation``) bounds how long that can last.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from psi import Key
from psi.identifiers import ID_TYPES
from psi.parallel import Executor
from psi.points import as_points
from psi.protocol import shuffled

from . import store
from .consent import iter_table_points, table_points

log = logging.getLogger(__name__)

__all__ = ["Epoch", "EpochManager", "TableSnapshot"]


@dataclass(frozen=True)
class TableSnapshot:
    """One immutable version of a table: the epoch's base rows minus removals, plus
    additions. Sessions hold a snapshot for their whole duration."""

    base: np.ndarray  # (m0, 32), shuffled at epoch start
    dead: np.ndarray  # (m0,) bool, True where the row was removed since
    added: np.ndarray  # (k, 32)
    version: int

    @property
    def size(self) -> int:
        return len(self.base) - int(np.count_nonzero(self.dead)) + len(self.added)

    def chunks(self, rows: int) -> Iterator[np.ndarray]:
        """The live rows in chunks of at most ``rows``."""
        for start in range(0, len(self.base), rows):
            chunk = self.base[start : start + rows]
            dead = self.dead[start : start + rows]
            yield chunk[~dead] if dead.any() else chunk
        for start in range(0, len(self.added), rows):
            yield self.added[start : start + rows]


@dataclass
class _Table:
    id_type: str
    snapshot: TableSnapshot
    index_keys: np.ndarray  # first 8 bytes of each base row, sorted
    index_pos: np.ndarray  # base position of each key
    added_pos: dict[bytes, int] = field(default_factory=dict)

    @classmethod
    def build(cls, id_type: str, rows: np.ndarray) -> _Table:
        """Index shuffled rows, dropping repeats (a value shared by several users)."""
        keys = np.ascontiguousarray(rows[:, :8]).view(np.uint64).ravel()
        order = np.argsort(keys)
        keys = keys[order]
        same = np.flatnonzero(keys[1:] == keys[:-1])
        if len(same):
            first, second = order[same], order[same + 1]
            repeat = second[(rows[first] == rows[second]).all(axis=1)]
            if len(repeat):
                rows = np.delete(rows, repeat, axis=0)
                return cls.build(id_type, rows)
        snap = TableSnapshot(rows, np.zeros(len(rows), dtype=bool), np.empty((0, 32), np.uint8), 0)
        return cls(id_type, snap, keys, order)

    def _base_positions(self, rows: np.ndarray) -> np.ndarray:
        """Base position of each row, or -1 where the row is not in the base table."""
        if not len(rows):
            return np.empty(0, dtype=np.int64)
        keys = np.ascontiguousarray(rows[:, :8]).view(np.uint64).ravel()
        lo = np.searchsorted(self.index_keys, keys, side="left")
        hi = np.searchsorted(self.index_keys, keys, side="right")
        out = np.full(len(rows), -1, dtype=np.int64)
        for i in np.flatnonzero(hi > lo):
            for pos in self.index_pos[lo[i] : hi[i]]:
                if np.array_equal(self.snapshot.base[pos], rows[i]):
                    out[i] = pos
        return out

    def update(self, present: np.ndarray, absent: np.ndarray) -> tuple[int, int]:
        """Make the rows of ``present`` live and those of ``absent`` dead. Returns counts
        of rows actually added and removed."""
        snap = self.snapshot
        dead = snap.dead.copy()
        added = list(snap.added)
        added_pos = dict(self.added_pos)
        removed_n = added_n = 0
        for pos, row in zip(self._base_positions(absent), absent):
            if pos >= 0 and not dead[pos]:
                dead[pos] = True
                removed_n += 1
            elif pos < 0 and row.tobytes() in added_pos:
                added[added_pos.pop(row.tobytes())] = None
                removed_n += 1
        for pos, row in zip(self._base_positions(present), present):
            if pos >= 0:
                if dead[pos]:
                    dead[pos] = False
                    added_n += 1
            elif row.tobytes() not in added_pos:
                added_pos[row.tobytes()] = len(added)
                added.append(row)
                added_n += 1
        if not (added_n or removed_n):
            return 0, 0
        kept = [r for r in added if r is not None]
        self.added_pos = {r.tobytes(): i for i, r in enumerate(kept)}
        new_added = np.vstack(kept) if kept else np.empty((0, 32), np.uint8)
        self.snapshot = TableSnapshot(snap.base, dead, new_added, snap.version + 1)
        return added_n, removed_n


class Epoch:
    """One key and its tables. ``epoch_id`` is random, so epochs cannot be linked."""

    def __init__(self, key: Key, tables: dict[str, _Table], synced_seq: int, started: float):
        self.epoch_id = secrets.token_hex(8)
        self.key = key
        self.tables = tables
        self.synced_seq = synced_seq
        self.started = started
        self.revoked_since: float | None = None


class EpochManager:
    """Builds epochs, applies consent changes before each session, and rotates keys."""

    def __init__(
        self,
        db_path: str,
        cap: int = 1,
        workers: int | None = None,
        executor: Executor | None = None,
        period: float = 24 * 3600.0,
        rotate_after_revocation: float = 3600.0,
        clock=time.monotonic,
    ) -> None:
        if cap < 1:
            raise ValueError("the per-user identifier cap must be at least 1")
        self.db_path = db_path
        self.cap = cap
        self.workers = workers
        self.executor = executor
        self.period = period
        self.rotate_after_revocation = rotate_after_revocation
        self.clock = clock
        self._lock = threading.Lock()
        self._rotating = threading.Lock()
        self._epoch: Epoch | None = None

    @property
    def sensitivity(self) -> int:
        """At most ``cap`` identifiers of one type per user are in a table."""
        return self.cap

    def build(self) -> Epoch:
        """A new epoch from the registry as of now (one X25519 per table entry).

        Rows of every type stream from one scan of the registry into the pool, so
        reading overlaps exponentiating.
        """
        key = Key.generate()
        conn = store.connect(self.db_path)
        try:
            conn.execute("BEGIN")  # one read snapshot for the sequence and the tables
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM user_changes").fetchone()[0]
            types: deque[str] = deque()

            def chunks() -> Iterator[np.ndarray]:
                for id_type, chunk in iter_table_points(conn, self.cap):
                    types.append(id_type)
                    yield chunk

            parts: dict[str, list[np.ndarray]] = {t: [] for t in ID_TYPES}
            blinded = key.apply_chunks(chunks(), self.workers, executor=self.executor, check=False)
            for out in blinded:
                parts[types.popleft()].append(out)
            tables = {}
            for id_type, done in parts.items():
                rows = np.concatenate(done) if done else np.empty((0, 32), np.uint8)
                done.clear()
                # Rebinding frees the unshuffled copy before indexing adds its arrays, so
                # the peak holds two copies of the table, not three.
                rows = shuffled(rows)
                tables[id_type] = _Table.build(id_type, rows)
            conn.execute("COMMIT")
        finally:
            conn.close()
        epoch = Epoch(key, tables, seq, self.clock())
        log.info(
            "epoch %s built: %s",
            epoch.epoch_id,
            ", ".join(f"{t}={tab.snapshot.size}" for t, tab in tables.items()),
        )
        return epoch

    def start(self) -> Epoch:
        epoch = self.build()
        with self._lock:
            self._epoch = epoch
        return epoch

    @property
    def current(self) -> Epoch | None:
        return self._epoch

    def _sync(self, epoch: Epoch) -> None:
        """Apply registry changes committed since the epoch last looked (caller holds
        the lock)."""
        conn = store.connect(self.db_path)
        try:
            conn.execute("BEGIN")
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM user_changes").fetchone()[0]
            if seq == epoch.synced_seq:
                conn.execute("COMMIT")
                return
            users = [
                u
                for (u,) in conn.execute(
                    "SELECT DISTINCT user_id FROM user_changes WHERE seq > ? AND seq <= ?",
                    (epoch.synced_seq, seq),
                )
            ]
            removed_total = 0
            for id_type, table in epoch.tables.items():
                present, absent = self._affected(conn, id_type, users)
                present_rows = epoch.key.apply(present, self.workers, executor=self.executor, check=False)
                absent_rows = epoch.key.apply(absent, self.workers, executor=self.executor, check=False)
                added, removed = table.update(present_rows, absent_rows)
                removed_total += removed
                if added or removed:
                    log.info("epoch %s %s table: +%d -%d", epoch.epoch_id, id_type, added, removed)
            conn.execute("COMMIT")
        finally:
            conn.close()
        epoch.synced_seq = seq
        if removed_total and epoch.revoked_since is None:
            epoch.revoked_since = self.clock()

    def _affected(self, conn, id_type: str, users: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """Hashed points whose table membership may have changed, split by whether they
        belong in the table now. A value can be shared by several users, so membership is
        decided over every owner of each affected value."""
        values: set[bytes] = set()
        for i in range(0, len(users), 900):
            part = users[i : i + 900]
            q = "SELECT value_hash FROM identifiers WHERE id_type = ? AND user_id IN (%s)" % (
                ",".join("?" * len(part))
            )
            values.update(h for (h,) in conn.execute(q, [id_type, *part]))
        if not values:
            return np.empty((0, 32), np.uint8), np.empty((0, 32), np.uint8)
        owners: set[str] = set()
        value_list = sorted(values)
        for i in range(0, len(value_list), 900):
            part = value_list[i : i + 900]
            q = "SELECT user_id FROM identifiers WHERE id_type = ? AND value_hash IN (%s)" % (
                ",".join("?" * len(part))
            )
            owners.update(u for (u,) in conn.execute(q, [id_type, *part]))
        hashes, points = table_points(conn, id_type, self.cap, sorted(owners))
        present = points[np.array([h in values for h in hashes], dtype=bool)]
        absent_hashes = sorted(values.difference(hashes))
        absent = []
        for i in range(0, len(absent_hashes), 900):
            part = absent_hashes[i : i + 900]
            q = "SELECT DISTINCT point FROM identifiers WHERE id_type = ? AND value_hash IN (%s)"
            q %= ",".join("?" * len(part))
            absent += [p for (p,) in conn.execute(q, [id_type, *part])]
        return present, as_points(b"".join(absent))

    def snapshot(self, id_type: str) -> tuple[Epoch, TableSnapshot]:
        """The current epoch and its table for ``id_type``, up to date with every change
        committed before this call."""
        with self._lock:
            epoch = self._epoch
            if epoch is None:
                raise RuntimeError("no epoch yet: the server is still starting")
            self._sync(epoch)
            return epoch, epoch.tables[id_type].snapshot

    def rotation_due(self) -> bool:
        epoch = self._epoch
        if epoch is None:
            return False
        now = self.clock()
        if now - epoch.started >= self.period:
            return True
        return epoch.revoked_since is not None and now - epoch.revoked_since >= self.rotate_after_revocation

    def rotate(self) -> Epoch:
        """Build a new epoch and switch to it; the old key is dropped from this manager
        (sessions already running keep their reference until they end)."""
        with self._rotating:
            new = self.build()
            with self._lock:
                old, self._epoch = self._epoch, new
                # Changes committed while the new epoch was building are applied now.
                self._sync(new)
            if old is not None:
                log.info("epoch %s replaced by %s", old.epoch_id, new.epoch_id)
            return new
