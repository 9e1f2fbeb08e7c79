"""Changes made one user at a time: consent granted or revoked by command, and erasure.

Both run in one transaction per command, attributed to a change source, and take effect
before the next session (the live matchable set follows the registry's change log).
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from .. import store
from .rows import STATES, TOMBSTONE_PREFIX
from .sources import Source, recording
from .times import FUTURE_SKEW, latest_accepted, now_utc, parse_time

__all__ = ["ConsentResult", "ErasureResult", "erase_users", "record_consent"]


@dataclass(frozen=True)
class ConsentResult:
    changed: int  # users now in the state asked for, who were not before
    already: int  # users who already were
    kept: int  # grants that did not take effect: a consent event dated later stands
    unknown: list[str]  # user ids the registry does not hold (nothing recorded for them)


@dataclass(frozen=True)
class ErasureResult:
    erased: int
    identifiers: int  # identifiers deleted with their points
    unknown: list[str]
    # False if readers kept the write-ahead log from being emptied (see store.checkpoint)
    checkpointed: bool


def _distinct(user_ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(u.strip() for u in user_ids if u.strip()))


def record_consent(
    conn: sqlite3.Connection,
    user_ids: Iterable[str],
    state: str,
    effective_at: str | None = None,
    source: str = "cli",
) -> ConsentResult:
    """Record an ads_matching consent event for each known user, in one transaction.

    A revocation always takes effect; a grant takes effect unless a consent event dated
    later was recorded for the user (the registry's precedence rule). Raises ValueError
    for an unknown state or a time that is not ISO 8601 with a timezone, or is in the
    future. A grant must come with the user's identifiers, by import: unknown users get
    nothing recorded.
    """
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}")
    if effective_at:
        when = parse_time(effective_at, "the effective time")
        if when > latest_accepted():
            minutes = int(FUTURE_SKEW.total_seconds() // 60)
            raise ValueError(f"the effective time is more than {minutes} minutes in the future")
    else:
        when = now_utc()
    unknown, known = [], []
    with recording(conn, Source("cli", source)) as source_id:
        (before,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM consent_changes").fetchone()
        for user_id in _distinct(user_ids):
            if conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is None:
                unknown.append(user_id)
                continue
            known.append(user_id)
            conn.execute(
                "INSERT INTO consent_events (user_id, scope, state, effective_at, source_id) "
                "VALUES (?, 'ads_matching', ?, ?, ?)",
                (user_id, state, when, source_id),
            )
        changed = {
            u
            for (u,) in conn.execute("SELECT user_id FROM consent_changes WHERE id > ?", (before,))
        }
        now_in_state = sum(
            conn.execute(
                "SELECT ads_matching = ? FROM users WHERE user_id = ?", (state, u)
            ).fetchone()[0]
            for u in known
        )
    return ConsentResult(
        len(changed), now_in_state - len(changed), len(known) - now_in_state, unknown
    )


def erase_users(
    conn: sqlite3.Connection, user_ids: Iterable[str], source: str = "erase"
) -> ErasureResult:
    """Erase users: their identifiers and points are deleted, the users themselves too,
    and their history is kept under a random tombstone id per user (what the ledger and
    audit need, without anything that names them). Then the write-ahead log is emptied
    into the main file, whose deleted content SQLite has overwritten (secure_delete)."""
    unknown = []
    with recording(conn, Source("erase", source)) as source_id:
        conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS erasing (user_id TEXT PRIMARY KEY, tombstone TEXT NOT NULL)"
        )
        conn.execute("DELETE FROM temp.erasing")
        for user_id in _distinct(user_ids):
            if conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is None:
                unknown.append(user_id)
                continue
            conn.execute(
                "INSERT INTO temp.erasing (user_id, tombstone) VALUES (?, ?)",
                (user_id, TOMBSTONE_PREFIX + secrets.token_hex(16)),
            )
        conn.execute(
            "INSERT INTO erasures (tombstone, source_id) SELECT tombstone, ? FROM temp.erasing",
            (source_id,),
        )
        conn.execute(
            "DELETE FROM identifier_purposes WHERE identifier_id IN "
            "(SELECT id FROM identifiers WHERE user_id IN (SELECT user_id FROM temp.erasing))"
        )
        identifiers = conn.execute(
            "DELETE FROM identifiers WHERE user_id IN (SELECT user_id FROM temp.erasing)"
        ).rowcount
        for table in ("consent_events", "consent_changes", "identifier_history"):
            conn.execute(
                f"UPDATE {table} SET user_id = e.tombstone FROM temp.erasing AS e "
                f"WHERE {table}.user_id = e.user_id"
            )
        erased = conn.execute(
            "DELETE FROM users WHERE user_id IN (SELECT user_id FROM temp.erasing)"
        ).rowcount
        conn.execute("DELETE FROM temp.erasing")
    return ErasureResult(erased, identifiers, unknown, store.checkpoint(conn))
