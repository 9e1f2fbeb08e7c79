"""What the live matchable set reads from the registry: the identifiers that belong in
the tables (from the ``matchable`` view, under the per-user cap), and the change log
that says which of them may have changed since."""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import numpy as np

from psi.identifiers import ID_TYPES
from psi.points import as_points

from ..store import BUSY_TIMEOUT_S, transaction
from .sql import in_chunks

__all__ = [
    "MatchableRows",
    "change_log_position",
    "changed_identifiers",
    "matchable_of_users",
    "prune_change_log",
    "read_matchable",
]


# Pages SQLite may keep in memory while the whole matchable set is read (KiB).
READ_CACHE_KIB = 64 * 1024


def _table_query(where: str, cap: int) -> str:
    """Rows ``(identifier id, id_type, point)`` of the tables, from the ``matchable`` view.

    Each user contributes at most ``cap`` identifiers of a type (the noise sensitivity):
    the earliest recorded ones. Grouping by ``(user_id, id_type)`` follows the identifiers'
    unique index, so one scan in user order serves every type. The common cap of one needs
    only a grouped minimum, cheaper than a window.
    """
    if cap == 1:
        # SQLite takes a bare column of a MIN() aggregate from the row holding the minimum.
        chosen = f"""
SELECT id_type, MIN(identifier_id) AS id
  FROM matchable {where}
 GROUP BY user_id, id_type"""
    else:
        chosen = f"""
SELECT id_type, id FROM (
    SELECT id_type, identifier_id AS id,
           ROW_NUMBER() OVER (PARTITION BY user_id, id_type ORDER BY identifier_id) AS rank
      FROM matchable {where}
) WHERE rank <= :cap"""
    # The point is fetched per chosen row in a scalar subquery rather than by a join: a
    # join would make SQLite compute every chosen row before returning the first, and the
    # reader would wait for that instead of starting on the first batch.
    return f"""
SELECT c.id, c.id_type,
       (SELECT p.point FROM identifiers AS i
          JOIN points AS p ON p.id_type = i.id_type AND p.value_hash = i.value_hash
         WHERE i.id = c.id)
  FROM ({chosen}) AS c
"""


@dataclass
class MatchableRows:
    """Identifiers that belong in the tables: row ids, type codes (index in ``ID_TYPES``)
    and hashed points, aligned."""

    ids: np.ndarray
    types: np.ndarray
    points: np.ndarray

    @classmethod
    def of(cls, rows: list[tuple[int, str, bytes]]) -> MatchableRows:
        code = {t: i for i, t in enumerate(ID_TYPES)}
        return cls(
            np.fromiter((r[0] for r in rows), np.int64, len(rows)),
            np.fromiter((code[r[1]] for r in rows), np.uint8, len(rows)),
            as_points(b"".join(r[2] for r in rows)),
        )


def read_matchable(conn: sqlite3.Connection, cap: int, batch: int = 65536) -> MatchableRows:
    """Every identifier that belongs in a table.

    Read in batches into arrays sized for every identifier the registry holds: pages the
    matchable rows do not fill are never touched, so never resident, and nothing is
    copied to join the batches.
    """
    (most,) = conn.execute("SELECT COUNT(*) FROM identifiers").fetchone()
    out = MatchableRows(np.empty(most, np.int64), np.empty(most, np.uint8), np.empty((most, 32), np.uint8))
    n = 0
    # Each point is looked up by its value, in no order: a cache that keeps the points'
    # pages once read makes the read about a quarter faster.
    (cache,) = conn.execute("PRAGMA main.cache_size").fetchone()
    conn.execute(f"PRAGMA main.cache_size = -{READ_CACHE_KIB}")
    try:
        cur = conn.execute(_table_query("", cap), {"cap": cap})
        while rows := cur.fetchmany(batch):
            part = MatchableRows.of(rows)
            k = len(part.ids)
            out.ids[n : n + k], out.types[n : n + k], out.points[n : n + k] = part.ids, part.types, part.points
            n += k
    finally:
        conn.execute(f"PRAGMA main.cache_size = {cache}")
    return MatchableRows(out.ids[:n], out.types[:n], out.points[:n])


def matchable_of_users(conn: sqlite3.Connection, cap: int, users: list[str]) -> MatchableRows:
    """What these users contribute to the tables now."""
    query = _table_query("WHERE user_id IN ({names})", cap)
    return MatchableRows.of(list(in_chunks(conn, query, users, {"cap": cap})))


def change_log_position(conn: sqlite3.Connection) -> tuple[int, int]:
    """``(latest sequence number, first one still kept)`` of the identifier change log.

    A reader synced to a sequence number below ``first - 1`` has missed pruned changes.
    """
    (pruned,) = conn.execute("SELECT upto FROM identifier_changes_pruned").fetchone()
    (latest,) = conn.execute("SELECT MAX(seq) FROM identifier_changes").fetchone()
    return max(latest or 0, pruned), pruned + 1


def changed_identifiers(
    conn: sqlite3.Connection, after: int, upto: int
) -> tuple[np.ndarray, list[str]]:
    """Identifiers whose table membership may have changed in ``(after, upto]`` (the
    removed ones included), and the users of those that still exist."""
    ids = [
        i
        for (i,) in conn.execute(
            "SELECT DISTINCT identifier_id FROM identifier_changes WHERE seq > ? AND seq <= ?",
            (after, upto),
        )
    ]
    users = sorted(
        {
            u
            for (u,) in in_chunks(
                conn, "SELECT user_id FROM identifiers WHERE id IN ({names})", ids
            )
        }
    )
    return np.array(ids, dtype=np.int64), users


def prune_change_log(conn: sqlite3.Connection, upto: int) -> bool:
    """Drop the change log up to ``upto`` if the write lock is free now (never waits
    behind an import); True when pruned."""
    conn.execute("PRAGMA busy_timeout = 0")
    try:
        with transaction(conn):
            conn.execute("DELETE FROM identifier_changes WHERE seq <= ?", (upto,))
            conn.execute("UPDATE identifier_changes_pruned SET upto = MAX(upto, ?)", (upto,))
        return True
    except sqlite3.OperationalError:
        return False
    finally:
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
