"""The records of processing a platform keeps about this matching (what data, for which
purpose, given to whom, kept how long), drawn from the registry as it is now."""

from __future__ import annotations

import sqlite3

from psi.noise import EPSILON_RESOLUTION

from .times import now_utc

__all__ = ["processing_records"]

PROCESSING = (
    "Counting, for an advertiser, how many of its customers the platform can reach "
    "(private set intersection cardinality). Only identifiers of users whose ads_matching "
    "consent is granted, held for a purpose other than security, are counted."
)
RECIPIENTS_RECEIVE = (
    "One count per session, with discrete Laplace noise, reported as 'fewer than' below a "
    "threshold, charged to the advertiser's privacy budget. Never an identifier, and never "
    "a point that can be tested against one (each session's table is blinded under a key "
    "used once)."
)
RETENTION = (
    (
        "identifiers: SHA-256 of the normalized email or phone number, and its hashed point",
        "while held for at least one purpose; deleted when the last purpose is withdrawn or the "
        "user is erased (deleted content is overwritten)",
    ),
    ("users and their current consent", "until erased"),
    (
        "consent events, consent and purpose changes, with time and source",
        "kept for accountability; an erased user's history is kept under a random tombstone id, "
        "without any identifier value, hash or point",
    ),
    (
        "sessions and releases: advertiser, times, list sizes, epsilon, the noisy value sent",
        "kept (append-only audit log and budget ledger)",
    ),
    (
        "change log of identifier row ids (for the servers' live sets)",
        "until every server has applied it",
    ),
)


def processing_records(conn: sqlite3.Connection) -> dict:
    conn.execute("BEGIN")  # one snapshot
    try:
        users, granted, revoked = conn.execute(
            "SELECT COUNT(*), COALESCE(SUM(ads_matching = 'granted'), 0), "
            "COALESCE(SUM(ads_matching = 'revoked'), 0) FROM users"
        ).fetchone()
        (erased,) = conn.execute("SELECT COUNT(*) FROM erasures").fetchone()
        held = conn.execute(
            "SELECT i.id_type, p.purpose, COUNT(*) FROM identifier_purposes AS p "
            "JOIN identifiers AS i ON i.id = p.identifier_id GROUP BY 1, 2 ORDER BY 1, 2"
        ).fetchall()
        matchable = conn.execute(
            "SELECT id_type, COUNT(*), COUNT(DISTINCT user_id) FROM matchable GROUP BY 1 ORDER BY 1"
        ).fetchall()
        recipients = conn.execute(
            "SELECT a.name, a.created_at, a.revoked_at, COUNT(s.id), COALESCE(SUM(s.epsilon_micro), 0), "
            "MIN(s.opened_at), MAX(s.opened_at), COALESCE(SUM(s.noise = 0), 0) "
            "FROM advertisers AS a LEFT JOIN sessions AS s ON s.advertiser_id = a.id "
            "GROUP BY a.id ORDER BY a.name"
        ).fetchall()
        history = {
            table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("consent_events", "consent_changes", "purpose_changes", "change_sources")
        }
        (since,) = conn.execute("SELECT MIN(applied_at) FROM change_sources").fetchone()
        (sessions,) = conn.execute("SELECT COUNT(*) FROM sessions").fetchone()
    finally:
        conn.execute("COMMIT")
    return {
        "generated_at": now_utc(),
        "processing": PROCESSING,
        "legal_basis": "consent (ads_matching), recorded per user with its time and source",
        "data_subjects": {
            "users": users,
            "consent_granted": granted,
            "consent_revoked": revoked,
            "erased": erased,
        },
        "personal_data": [{"id_type": t, "purpose": p, "identifiers": n} for t, p, n in held],
        "matchable": [{"id_type": t, "identifiers": n, "users": u} for t, n, u in matchable],
        "recipients": [
            {
                "advertiser": name,
                "since": created,
                "access": "revoked" if revoked_at else "active",
                "access_revoked_at": revoked_at,
                "sessions": n,
                "epsilon_spent": spent / EPSILON_RESOLUTION,
                "first_session": first,
                "last_session": last,
                "sessions_with_exact_counts": exact,
            }
            for name, created, revoked_at, n, spent, first, last, exact in recipients
        ],
        "recipients_receive": RECIPIENTS_RECEIVE,
        "retention": [{"data": data, "kept": kept} for data, kept in RETENTION],
        "history": {"since": since, "sessions": sessions, **history},
    }
