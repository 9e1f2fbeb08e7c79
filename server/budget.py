"""Per-advertiser privacy budget over a rolling period, and the audit log of sessions.

A session is checked, charged and recorded in one ``BEGIN IMMEDIATE`` transaction when
it opens, before any table data leaves the server: parallel sessions serialize on the
write lock and cannot overspend, and a session that then fails has still paid. What it
releases is appended before it is sent, so every release is accounted for.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from psi.errors import SessionError
from psi.noise import EPSILON_RESOLUTION, Release

from .advertisers import Advertiser
from .store import connect, transaction

if TYPE_CHECKING:
    from psi.protocol import SessionRecord

__all__ = [
    "AuditEntry",
    "BudgetExhausted",
    "BudgetStatus",
    "RegistryLedger",
    "audit_entries",
    "charge",
    "record_release",
    "reset",
    "sessions_by_advertiser",
    "status",
]

DAY = 86400.0


class BudgetExhausted(Exception):
    def __init__(self, remaining_micro: int, asked_micro: int) -> None:
        super().__init__(
            f"privacy budget exhausted: {remaining_micro / EPSILON_RESOLUTION:g} epsilon left "
            f"in the current period, {asked_micro / EPSILON_RESOLUTION:g} asked"
        )
        self.remaining_micro = remaining_micro


@dataclass(frozen=True)
class BudgetStatus:
    budget_micro: int
    spent_micro: int
    period_days: float

    @property
    def remaining_micro(self) -> int:
        return max(0, self.budget_micro - self.spent_micro)

    @property
    def remaining(self) -> float:
        return self.remaining_micro / EPSILON_RESOLUTION

    @property
    def spent(self) -> float:
        return self.spent_micro / EPSILON_RESOLUTION

    @property
    def budget(self) -> float:
        return self.budget_micro / EPSILON_RESOLUTION


def _spent(conn: sqlite3.Connection, adv: Advertiser, now: float) -> int:
    (spent,) = conn.execute(
        """
        SELECT COALESCE(SUM(epsilon_micro), 0) FROM budget_ledger
         WHERE advertiser_id = :id AND reason = 'release'
           AND charged_at > :since
           AND charged_at >= COALESCE((SELECT MAX(charged_at) FROM budget_ledger
                                        WHERE advertiser_id = :id AND reason = 'reset'), 0)
        """,
        {"id": adv.id, "since": now - adv.period_days * DAY},
    ).fetchone()
    return spent


def status(conn: sqlite3.Connection, adv: Advertiser, now: float | None = None) -> BudgetStatus:
    now = time.time() if now is None else now
    return BudgetStatus(adv.budget_micro, _spent(conn, adv, now), adv.period_days)


def _utc(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def charge(
    conn: sqlite3.Connection,
    adv: Advertiser,
    record: SessionRecord,
    now: float | None = None,
    started: float | None = None,
) -> BudgetStatus:
    """Charge a session's epsilon and record the session, atomically; or raise
    ``BudgetExhausted`` having written nothing. ``started`` is when the session began,
    before its table was read (the impact report needs to know when that can have
    happened)."""
    now = time.time() if now is None else now
    with transaction(conn):
        spent = _spent(conn, adv, now)
        if spent + record.epsilon_micro > adv.budget_micro:
            raise BudgetExhausted(max(0, adv.budget_micro - spent), record.epsilon_micro)
        conn.execute(
            "INSERT INTO budget_ledger (advertiser_id, charged_at, epsilon_micro, session_id, reason) "
            "VALUES (?, ?, ?, ?, 'release')",
            (adv.id, now, record.epsilon_micro, record.session_id),
        )
        conn.execute(
            "INSERT INTO sessions (session_id, advertiser_id, opened_at, id_types, n_groups, "
            "n_items, table_size, epsilon_micro, sensitivity, threshold, noise, started_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                record.session_id,
                adv.id,
                _utc(now),
                ",".join(record.id_types),
                record.n_groups,
                record.n_items,
                record.table_size,
                record.epsilon_micro,
                record.sensitivity,
                record.threshold,
                int(record.noise),
                None if started is None else _utc(started),
            ),
        )
    return BudgetStatus(adv.budget_micro, spent + record.epsilon_micro, adv.period_days)


def record_release(
    conn: sqlite3.Connection, session_id: str, release: Release, now: float | None = None
) -> None:
    """Append what a session releases, before it is sent."""
    now = time.time() if now is None else now
    with transaction(conn):
        conn.execute(
            "INSERT INTO releases (session_id, released_at, noisy_count, suppressed) VALUES (?, ?, ?, ?)",
            (session_id, _utc(now), release.noisy_count, int(release.suppressed)),
        )


class RegistryLedger:
    """The ``Ledger`` of a session: one advertiser's budget and the registry's audit
    tables. A registry locked past its timeout (a long import, a full disk) fails the
    step with UNAVAILABLE; the transaction rolled back, so nothing was written."""

    def __init__(self, db_path: str, advertiser: Advertiser) -> None:
        self.db_path = db_path
        self.advertiser = advertiser
        # Made before the session reads its table, so the table was read after this.
        self.started = time.time()

    def _write(self, step, *args):
        conn = connect(self.db_path)
        try:
            return step(conn, *args)
        except BudgetExhausted as exc:
            raise SessionError("RESOURCE_EXHAUSTED", str(exc), "budget") from None
        except sqlite3.OperationalError:
            raise SessionError(
                "UNAVAILABLE", "the registry is busy; retry later", "busy"
            ) from None
        finally:
            conn.close()

    def open(self, record: SessionRecord) -> float:
        return self._write(charge, self.advertiser, record, None, self.started).remaining

    def release(self, session_id: str, release: Release) -> None:
        self._write(record_release, session_id, release)


def reset(conn: sqlite3.Connection, adv: Advertiser, now: float | None = None) -> None:
    """Start the advertiser's budget afresh from now (recorded as a ledger row)."""
    now = time.time() if now is None else now
    with transaction(conn):
        conn.execute(
            "INSERT INTO budget_ledger (advertiser_id, charged_at, epsilon_micro, session_id, reason) "
            "VALUES (?, ?, 0, '-', 'reset')",
            (adv.id, now),
        )


@dataclass(frozen=True)
class AuditEntry:
    """One charged session and what it released (nothing, if it ended without a release)."""

    advertiser: str
    opened_at: str
    session_id: str
    id_types: str
    n_groups: int
    n_items: int
    table_size: int | None
    epsilon: float
    sensitivity: int
    threshold: int
    noise: bool
    released_at: str | None
    noisy_count: int | None
    suppressed: bool | None


def audit_entries(
    conn: sqlite3.Connection, advertiser: str | None = None, limit: int | None = None
) -> list[AuditEntry]:
    query = (
        "SELECT a.name, s.opened_at, s.session_id, s.id_types, s.n_groups, s.n_items, "
        "s.table_size, s.epsilon_micro, s.sensitivity, s.threshold, s.noise, r.released_at, "
        "r.noisy_count, r.suppressed "
        "FROM sessions AS s JOIN advertisers AS a ON a.id = s.advertiser_id "
        "LEFT JOIN releases AS r ON r.session_id = s.session_id"
    )
    params: list = []
    if advertiser is not None:
        query += " WHERE a.name = ?"
        params.append(advertiser)
    query += " ORDER BY s.id DESC"
    if limit:
        query += " LIMIT ?"
        params.append(limit)
    return [
        AuditEntry(
            r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7] / EPSILON_RESOLUTION, r[8], r[9],
            bool(r[10]), r[11], r[12], None if r[13] is None else bool(r[13]),
        )
        for r in conn.execute(query, params)
    ]


def sessions_by_advertiser(conn: sqlite3.Connection) -> dict[int, tuple[int, str | None]]:
    """Per advertiser id: sessions charged, and when the latest opened."""
    rows = conn.execute("SELECT advertiser_id, COUNT(*), MAX(opened_at) FROM sessions GROUP BY 1")
    return {adv: (n, last) for adv, n, last in rows}
