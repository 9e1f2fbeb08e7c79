"""Per-advertiser privacy budget over a rolling period, and the audit log of releases.

Checking and charging happen in one ``BEGIN IMMEDIATE`` transaction together with the
audit row, before the count leaves the server: parallel sessions serialize on the write
lock and cannot overspend, and a crash after the commit loses budget, never privacy.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from psi.noise import EPSILON_RESOLUTION, Release

from .advertisers import Advertiser
from .store import transaction

__all__ = ["AuditEntry", "BudgetExhausted", "BudgetStatus", "audit_entries", "charge", "reset", "status"]

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


def charge(
    conn: sqlite3.Connection,
    adv: Advertiser,
    epsilon_micro: int,
    release: Release,
    *,
    session_id: str,
    epoch_id: str,
    id_type: str,
    n_items: int,
    sensitivity: int,
    noise: bool,
    now: float | None = None,
) -> BudgetStatus:
    """Charge ``epsilon_micro`` and record the release, atomically; or raise
    ``BudgetExhausted`` having written nothing."""
    now = time.time() if now is None else now
    with transaction(conn):
        spent = _spent(conn, adv, now)
        if spent + epsilon_micro > adv.budget_micro:
            raise BudgetExhausted(max(0, adv.budget_micro - spent), epsilon_micro)
        conn.execute(
            "INSERT INTO budget_ledger (advertiser_id, charged_at, epsilon_micro, session_id, reason) "
            "VALUES (?, ?, ?, ?, 'release')",
            (adv.id, now, epsilon_micro, session_id),
        )
        conn.execute(
            "INSERT INTO audit_log (advertiser_id, released_at, session_id, epoch_id, id_type, "
            "n_items, epsilon_micro, sensitivity, threshold, noise, noisy_count, suppressed) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                adv.id,
                datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
                session_id,
                epoch_id,
                id_type,
                n_items,
                epsilon_micro,
                sensitivity,
                release.threshold,
                int(noise),
                release.noisy_count,
                int(release.suppressed),
            ),
        )
    return BudgetStatus(adv.budget_micro, spent + epsilon_micro, adv.period_days)


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
    advertiser: str
    released_at: str
    session_id: str
    epoch_id: str
    id_type: str
    n_items: int
    epsilon: float
    sensitivity: int
    threshold: int
    noise: bool
    noisy_count: int | None
    suppressed: bool


def audit_entries(
    conn: sqlite3.Connection, advertiser: str | None = None, limit: int | None = None
) -> list[AuditEntry]:
    query = (
        "SELECT a.name, l.released_at, l.session_id, l.epoch_id, l.id_type, l.n_items, "
        "l.epsilon_micro, l.sensitivity, l.threshold, l.noise, l.noisy_count, l.suppressed "
        "FROM audit_log AS l JOIN advertisers AS a ON a.id = l.advertiser_id"
    )
    params: list = []
    if advertiser is not None:
        query += " WHERE a.name = ?"
        params.append(advertiser)
    query += " ORDER BY l.id DESC"
    if limit:
        query += " LIMIT ?"
        params.append(limit)
    return [
        AuditEntry(
            r[0], r[1], r[2], r[3], r[4], r[5], r[6] / EPSILON_RESOLUTION, r[7], r[8],
            bool(r[9]), r[10], bool(r[11]),
        )
        for r in conn.execute(query, params)
    ]
