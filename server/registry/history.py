"""Who was matchable when: the impact report.

The registry keeps every purpose and consent change with its source (see ``sources``).
From them, for a window of time and a filter (purpose, identifier type, the source that
added the purpose), this module counts the distinct users and identifiers that were
matchable at some instant of the window, and the sessions whose table may have held one
of them. Times are the registry's: when a change was committed, which is when sessions
began to see it, not the ``updated_at`` a file gave it.

Every bound errs towards counting: a change counts from its transaction (before it
committed) when it makes an identifier matchable, and until just after its commit when
it stops one; a session counts from the start of its stream to its charge, between
which its table was read. No exact released count is read or reported.
"""

from __future__ import annotations

import bisect
import sqlite3
from dataclasses import dataclass

from psi.noise import EPSILON_RESOLUTION

from .times import now_utc

__all__ = ["AdvertiserSessions", "ChangeSource", "Impact", "find_sources", "impact"]

_NEVER = "9999-12-31T23:59:59.999999Z"
_LAST = 1 << 62  # past every source id: a state nothing has ended yet


@dataclass(frozen=True)
class ChangeSource:
    id: int
    kind: str
    name: str
    digest: str | None  # hex
    applied_at: str
    committed_at: str | None


@dataclass(frozen=True)
class AdvertiserSessions:
    advertiser: str
    sessions: int
    epsilon: float


@dataclass(frozen=True)
class Impact:
    start: str
    end: str
    purpose: str | None
    id_type: str | None
    sources: list[ChangeSource] | None  # the filter, if any
    users: int
    identifiers: int
    identifiers_by_type: dict[str, int]
    sessions: int  # sessions whose table may have held one of the identifiers
    epsilon: float  # spent by those sessions
    by_advertiser: list[AdvertiserSessions]
    sessions_in_window: int  # every session that read a table during the window
    # History before this time was reconstructed by an upgrade: purposes held then are
    # dated from their user's first import, so counts for it can only be higher.
    reconstructed_before: str | None
    user_ids: list[str] | None  # when asked for; erased users appear as tombstones


def find_sources(
    conn: sqlite3.Connection, text: str, digest: bytes | None = None
) -> list[ChangeSource]:
    """Change sources named by ``text`` (a name, a kind, or 8+ hex digits of a file's
    digest), or, if ``digest`` is given, the imports of the file with that SHA-256."""
    query = "SELECT id, kind, name, digest, applied_at, committed_at FROM change_sources"
    if digest is not None:
        rows = conn.execute(query + " WHERE digest = ? ORDER BY id", (digest,))
    else:
        hexadecimal = len(text) >= 8 and all(c in "0123456789abcdefABCDEF" for c in text)
        rows = conn.execute(
            query
            + " WHERE name = :t OR kind = :t OR (:hex AND substr(hex(digest), 1, :n) = upper(:t))"
            " ORDER BY id",
            {"t": text, "hex": hexadecimal, "n": len(text)},
        )
    return [ChangeSource(r[0], r[1], r[2], r[3].hex() if r[3] else None, r[4], r[5]) for r in rows]


def _spans_query(purpose: str | None, id_type: str | None, sources: list[int] | None) -> str:
    """Each stretch of time an identifier held a purpose (not security) while its user's
    consent was granted: ``(identifier_id, user_id, id_type, lo, hi)``, matchable for
    ``lo <= t < hi``, for the stretches that reach into the window.

    States are first intersected in source order (sources commit in id order), so that
    one that begins and ends within one transaction, which no reader saw, is empty; only
    then are the sources' times put on them."""
    held = ["c.held = 1", "c.purpose <> 'security'"]
    if purpose is not None:
        held.append("c.purpose = :purpose")
    if sources is not None:
        held.append(f"c.source_id IN ({','.join(str(int(s)) for s in sources) or 'NULL'})")
    typed = "AND i.id_type = :id_type" if id_type is not None else ""
    return f"""
WITH holdings AS (
    SELECT c.identifier_id, c.source_id AS first, COALESCE(c.ended_by, {_LAST}) AS stop
      FROM (SELECT identifier_id, purpose, held, source_id,
                   LEAD(source_id) OVER (PARTITION BY identifier_id, purpose ORDER BY id) AS ended_by
              FROM purpose_changes) AS c
     WHERE {" AND ".join(held)}
), granted AS (
    SELECT c.user_id, c.source_id AS first, COALESCE(c.ended_by, {_LAST}) AS stop
      FROM (SELECT user_id, state, source_id,
                   LEAD(source_id) OVER (PARTITION BY user_id ORDER BY id) AS ended_by
              FROM consent_changes) AS c
     WHERE c.state = 'granted'
), steps AS (
    SELECT h.identifier_id, i.user_id, i.id_type,
           MAX(h.first, g.first) AS first, MIN(h.stop, g.stop) AS stop
      -- In this order (CROSS JOIN fixes it), so that granted is looked up by user.
      FROM holdings AS h
     CROSS JOIN identifier_history AS i ON i.identifier_id = h.identifier_id
     CROSS JOIN granted AS g ON g.user_id = i.user_id
     WHERE 1 {typed}
), timed AS (
    SELECT s.identifier_id, s.user_id, s.id_type,
           a.applied_at AS lo,
           CASE WHEN s.stop = {_LAST} THEN :never
                ELSE COALESCE(b.committed_at,
                              (SELECT MIN(n.applied_at) FROM change_sources AS n WHERE n.id > b.id),
                              :now)
           END AS hi
      FROM steps AS s
      JOIN change_sources AS a ON a.id = s.first
      LEFT JOIN change_sources AS b ON b.id = s.stop
     WHERE s.first < s.stop
)
SELECT identifier_id, user_id, id_type, MAX(lo, :start) AS lo, hi
  FROM timed WHERE lo <= :end AND hi > :start
"""


def _merged(spans: list[tuple[str, str]]) -> tuple[list[str], list[str]]:
    """The union of half-open intervals, as sorted starts and their ends."""
    los: list[str] = []
    his: list[str] = []
    for lo, hi in sorted(spans):
        if his and lo <= his[-1]:
            his[-1] = max(his[-1], hi)
        else:
            los.append(lo)
            his.append(hi)
    return los, his


def impact(
    conn: sqlite3.Connection,
    start: str,
    end: str,
    purpose: str | None = None,
    id_type: str | None = None,
    sources: list[ChangeSource] | None = None,
    list_users: bool = False,
) -> Impact:
    """The impact report for ``[start, end]`` (canonical UTC times, see ``times``)."""
    if start > end:
        raise ValueError("the window ends before it starts")
    params = {
        "start": start,
        "end": end,
        "now": now_utc(),
        "never": _NEVER,
        "purpose": purpose,
        "id_type": id_type,
    }
    source_ids = None if sources is None else [s.id for s in sources]
    conn.execute("BEGIN")  # one snapshot of the registry for every figure
    try:
        conn.execute("DROP TABLE IF EXISTS temp.impact_spans")
        conn.execute(
            "CREATE TEMP TABLE impact_spans AS " + _spans_query(purpose, id_type, source_ids),
            params,
        )
        users, identifiers = conn.execute(
            "SELECT COUNT(DISTINCT user_id), COUNT(DISTINCT identifier_id) FROM temp.impact_spans"
        ).fetchone()
        by_type = dict(
            conn.execute(
                "SELECT id_type, COUNT(DISTINCT identifier_id) FROM temp.impact_spans GROUP BY id_type"
            )
        )
        intervals: dict[str, tuple[list[str], list[str]]] = {}
        for kind in by_type:
            rows = conn.execute(
                "SELECT DISTINCT lo, hi FROM temp.impact_spans WHERE id_type = ?", (kind,)
            ).fetchall()
            intervals[kind] = _merged(rows)
        user_ids = (
            [
                u
                for (u,) in conn.execute(
                    "SELECT DISTINCT user_id FROM temp.impact_spans ORDER BY 1"
                )
            ]
            if list_users
            else None
        )
        sessions = conn.execute(
            "SELECT a.name, s.id_types, COALESCE(s.started_at, s.opened_at), s.opened_at, s.epsilon_micro "
            "FROM sessions AS s JOIN advertisers AS a ON a.id = s.advertiser_id "
            "WHERE s.opened_at >= :start AND COALESCE(s.started_at, s.opened_at) <= :end "
            "ORDER BY s.id",
            params,
        ).fetchall()
        (reconstructed,) = conn.execute(
            "SELECT MAX(applied_at) FROM change_sources WHERE kind = 'upgrade'"
        ).fetchone()
        conn.execute("DROP TABLE temp.impact_spans")
    finally:
        conn.execute("COMMIT")
    affected: dict[str, list[int]] = {}
    for advertiser, types, read_from, read_to, epsilon_micro in sessions:
        lo, hi = max(read_from, start), min(read_to, end)
        for kind in types.split(","):
            starts, ends = intervals.get(kind, ([], []))
            i = bisect.bisect_right(starts, hi) - 1
            if i >= 0 and ends[i] > lo:
                affected.setdefault(advertiser, []).append(epsilon_micro)
                break
    by_advertiser = [
        AdvertiserSessions(name, len(spent), sum(spent) / EPSILON_RESOLUTION)
        for name, spent in sorted(affected.items())
    ]
    return Impact(
        start,
        end,
        purpose,
        id_type,
        sources,
        users,
        identifiers,
        by_type,
        sum(a.sessions for a in by_advertiser),
        sum(sum(spent) for spent in affected.values()) / EPSILON_RESOLUTION,
        by_advertiser,
        len(sessions),
        reconstructed,
        user_ids,
    )
