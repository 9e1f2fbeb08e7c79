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


# Each id type's code in ``MatchableRows.types``.
_TYPE_CODES = {t: i for i, t in enumerate(ID_TYPES)}


def _chosen(where: str, cap: int) -> str:
    """Rows ``(id_type, identifier id, value_hash)`` that belong in the tables, from the
    ``matchable`` view.

    Each user contributes at most ``cap`` identifiers of a type (the noise sensitivity):
    the earliest recorded ones. Grouping by ``(user_id, id_type)`` follows the identifiers'
    unique index, so one scan in user order serves every type. The common cap of one needs
    only a grouped minimum, cheaper than a window.
    """
    if cap == 1:
        # SQLite takes bare columns of a MIN() aggregate from the row holding the minimum.
        return f"""
SELECT id_type, MIN(identifier_id) AS id, value_hash
  FROM matchable {where}
 GROUP BY user_id, id_type"""
    return f"""
SELECT id_type, id, value_hash FROM (
    SELECT id_type, identifier_id AS id, value_hash,
           ROW_NUMBER() OVER (PARTITION BY user_id, id_type ORDER BY identifier_id) AS rank
      FROM matchable {where}
) WHERE rank <= :cap"""


def _table_query(where: str, cap: int) -> str:
    """Rows ``(identifier id, id_type, point)`` of the tables (see ``_chosen``)."""
    # The point is fetched per chosen row in a scalar subquery rather than by a join: a
    # join would make SQLite compute every chosen row before returning the first.
    return f"""
SELECT c.id, c.id_type,
       (SELECT p.point FROM points AS p
         WHERE p.id_type = c.id_type AND p.value_hash = c.value_hash)
  FROM ({_chosen(where, cap)}) AS c
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
        return cls(
            np.fromiter((r[0] for r in rows), np.int64, len(rows)),
            np.fromiter((_TYPE_CODES[r[1]] for r in rows), np.uint8, len(rows)),
            as_points(b"".join(r[2] for r in rows)),
        )


def read_matchable(conn: sqlite3.Connection, cap: int, batch: int = 65536) -> MatchableRows:
    """Every identifier that belongs in a table. The caller holds a read transaction:
    the rows and their points are read in two passes that must see one snapshot.

    Read in batches into arrays sized for every identifier the registry holds: pages the
    matchable rows do not fill are never touched, so never resident, and nothing is
    copied to join the batches.
    """
    (most,) = conn.execute("SELECT COUNT(*) FROM identifiers").fetchone()
    ids, types = np.empty(most, np.int64), np.empty(most, np.uint8)
    values = np.empty(most, "S32")  # compared as SQLite compares blobs, byte by byte
    n = 0
    cur = conn.execute(_chosen("", cap), {"cap": cap})
    while rows := cur.fetchmany(batch):
        k = len(rows)
        types[n : n + k] = np.fromiter((_TYPE_CODES[r[0]] for r in rows), np.uint8, k)
        ids[n : n + k] = np.fromiter((r[1] for r in rows), np.int64, k)
        values[n : n + k] = np.frombuffer(b"".join(r[2] for r in rows), "S32")
        n += k
    ids, types, values = ids[:n], types[:n], values[:n]
    # The points are read in their own key order and matched to the rows sorted the same
    # way: looking each row's point up in no order costs about three times as much.
    points = np.empty((n, 32), np.uint8)
    for c, id_type in enumerate(ID_TYPES):
        rows_of_type = np.flatnonzero(types == c)
        order = rows_of_type[np.argsort(values[rows_of_type], kind="stable")]
        wanted = values[order]
        found = 0
        cur = conn.execute(
            "SELECT value_hash, point FROM points WHERE id_type = ? ORDER BY value_hash", (id_type,)
        )
        while len(wanted) > found and (chunk := cur.fetchmany(batch)):
            keys = np.frombuffer(b"".join(r[0] for r in chunk), "S32")
            hi = int(np.searchsorted(wanted, keys[-1], "right"))
            at = np.searchsorted(keys, wanted[found:hi])
            if not np.array_equal(keys[at], wanted[found:hi]):
                raise RuntimeError("a matchable identifier's value has no stored point")
            chunk_points = np.frombuffer(b"".join(r[1] for r in chunk), np.uint8).reshape(-1, 32)
            points[order[found:hi]] = chunk_points[at]
            found = hi
        if found != len(wanted):
            raise RuntimeError("a matchable identifier's value has no stored point")
    return MatchableRows(ids, types, points)


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
