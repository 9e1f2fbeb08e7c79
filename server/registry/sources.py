"""Where each registry change comes from, and when it took effect.

Every write to identifiers, purposes or consent runs inside ``recording``: one
transaction attributed to one source (an import file with its digest, a command, an
erasure). The schema's triggers stamp every purpose and consent change with that source,
and a change made without one fails, so the history cannot miss a write.

A source records two times. ``applied_at`` is taken inside its transaction, so it is no
later than the commit; ``committed_at`` is written just after the commit, so it is no
earlier. Sessions see a change from its commit on: a report that takes a change as
starting at ``applied_at`` and ending at ``committed_at`` can only over-count.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from ..store import transaction
from .times import now_utc

__all__ = ["KINDS", "Source", "recording"]

log = logging.getLogger(__name__)

KINDS = ("import", "cli", "erase")


@dataclass(frozen=True)
class Source:
    kind: str  # one of KINDS
    name: str  # the import's file name or label, or the command's label
    digest: bytes | None = None  # SHA-256 of an imported file

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"a change source is one of {', '.join(KINDS)}")


@contextmanager
def recording(conn: sqlite3.Connection, source: Source, immediate: bool = True) -> Iterator[int]:
    """One write transaction of registry changes from ``source``; yields its id.

    Without ``immediate`` the transaction begins deferred, locking only the databases it
    touches, and its first statement writes: it takes the registry's write lock (waiting
    for another writer as ``BEGIN IMMEDIATE`` would) before reading anything."""
    with transaction(conn, immediate):
        # The writer holds the lock, and sources are never deleted: the next id is free.
        conn.execute(
            "UPDATE writing_source SET source_id = (SELECT COALESCE(MAX(id), 0) + 1 FROM change_sources)"
        )
        (source_id,) = conn.execute("SELECT source_id FROM writing_source").fetchone()
        yield source_id
        conn.execute("UPDATE writing_source SET source_id = NULL")
        conn.execute(
            "INSERT INTO change_sources (id, kind, name, digest, applied_at) VALUES (?, ?, ?, ?, ?)",
            (source_id, source.kind, source.name, source.digest, now_utc()),
        )
    try:
        conn.execute(
            "UPDATE change_sources SET committed_at = ? WHERE id = ?", (now_utc(), source_id)
        )
    except sqlite3.OperationalError as exc:
        # The change stands; the history then bounds its end by the next source, or now.
        log.warning(
            "change source %d committed, but its commit time was not recorded (%s)", source_id, exc
        )
