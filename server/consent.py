"""Consent registry operations: bulk import, single grants and revocations, and the
reads that keep the live matchable set current (what belongs in the tables, and the
change log).

An import is staged first and applied in one transaction at the end: a file whose last
line revokes a consent granted on its first line must never be half applied, and a
failure (bad disk, killed process) leaves the registry exactly as it was. A value the
registry already holds is not hashed again: its stored point is copied at the end.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np

from psi import hash_to_curve
from psi.errors import InvalidIdentifierError
from psi.identifiers import ID_TYPES, encode_identifier
from psi.parallel import Executor, get_executor, imap
from psi.points import as_points
from psi.records import NOT_UTF8, MalformedFile, csv_records, decoded_lines

from .store import BUSY_TIMEOUT_S, transaction

__all__ = [
    "COLUMNS",
    "ImportFileError",
    "ImportReport",
    "import_file",
    "MatchableRows",
    "change_log_position",
    "changed_identifiers",
    "matchable_of_users",
    "prune_change_log",
    "read_matchable",
    "record_consent",
]

COLUMNS = ("user_id", "id_type", "identifier", "purpose", "consent", "updated_at")
PURPOSES = ("account", "security", "advertising")
STATES = ("granted", "revoked")
MAX_USER_ID = 128
MAX_FIELD = 1024
BATCH = 8192
MAX_REPORTED_ERRORS = 1000
_SQL_VARS = 900


class ImportFileError(Exception):
    """The file cannot be imported at all (unreadable, wrong header). Nothing was written."""


@dataclass
class ImportReport:
    rows: int = 0
    imported_rows: int = 0
    duplicate_rows: int = 0
    invalid_rows: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # first MAX_REPORTED_ERRORS
    new_identifiers: int = 0
    new_consent_events: int = 0
    points_hashed: int = 0
    # The final transaction, during which other writers (a session's budget charge) wait.
    apply_seconds: float = 0.0

    def error(self, line: int, reason: str) -> None:
        self.invalid_rows += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append((line, reason))


# ASCII: \d alone also matches other scripts' digits, which would be stored as they are.
_CANONICAL_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?Z", re.ASCII)


def parse_time(text: str) -> str:
    """ISO 8601 with a timezone, as fixed-width UTC text (so text order is time order)."""
    value = text.strip()
    if _CANONICAL_UTC.fullmatch(value):
        # The common export format: check the ranges, then pad instead of reformatting.
        try:
            datetime.fromisoformat(value[:19])
        except ValueError:
            raise ValueError("updated_at is not an ISO 8601 time") from None
        return f"{value[:19]}.{value[20:-1]:0<6}Z"
    if value.endswith(("Z", "z")):
        value = value[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("updated_at is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise ValueError("updated_at has no timezone (add Z or an offset)")
    try:
        utc = moment.astimezone(timezone.utc)
    except OverflowError:
        raise ValueError("updated_at is outside years 1-9999 in UTC") from None
    # Not strftime: its %Y does not pad years before 1000, which breaks text order.
    return utc.replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _value_hash(id_type: str, identifier: str, region: str | None) -> bytes:
    """SHA-256 of the normalized identifier (``sha256:<hex>`` is taken as given)."""
    if identifier.startswith("sha256:"):
        return encode_identifier(id_type, identifier[7:], prehashed=True, region=region)[-32:]
    return encode_identifier(id_type, identifier, region=region)[-32:]


def _check_row(fields: tuple, region: str | None) -> tuple:
    """A validated, normalized row, or ValueError naming the rule (never the value)."""
    for name, value in zip(COLUMNS, fields):
        if not isinstance(value, str):
            raise ValueError(f"{name} is not a string")
        if len(value) > MAX_FIELD:
            raise ValueError(f"{name} is longer than {MAX_FIELD} characters")
    user_id, id_type, identifier, purpose, consent, updated_at = fields
    user_id = user_id.strip()
    if not user_id:
        raise ValueError("user_id is empty")
    if len(user_id) > MAX_USER_ID or not user_id.isprintable():
        raise ValueError(f"user_id must be printable and at most {MAX_USER_ID} characters")
    id_type = id_type.strip()
    if id_type not in ID_TYPES:
        raise ValueError(f"id_type must be one of {', '.join(ID_TYPES)}")
    purpose = purpose.strip()
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}")
    consent = consent.strip()
    if consent not in STATES:
        raise ValueError(f"consent must be one of {', '.join(STATES)}")
    when = parse_time(updated_at)
    try:
        value_hash = _value_hash(id_type, identifier.strip(), region)
    except InvalidIdentifierError as exc:
        raise ValueError(f"identifier: {exc}") from None
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"); the codec's message quotes it
        raise ValueError("identifier is not valid Unicode") from None
    return user_id, id_type, value_hash, purpose, consent, when


def _csv_rows(raw: Iterable[bytes], report: ImportReport) -> Iterator[tuple[int, tuple]]:
    records = csv_records(raw)
    first = next(records, None)
    if first is None:
        raise ImportFileError("the file is empty (expected a header line)")
    _, header, problem = first
    if problem:
        raise ImportFileError(f"line 1: unreadable header ({problem})")
    header = [h.strip().lstrip("\ufeff") for h in header]
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise ImportFileError(
            f"missing column(s) {', '.join(missing)}; the header must name {', '.join(COLUMNS)}"
        )
    width = len(header)
    order = [header.index(c) for c in COLUMNS]
    for start, fields, problem in records:
        report.rows += 1
        if problem:
            report.error(start, problem)
        elif len(fields) != width:
            report.error(start, f"expected {width} fields, got {len(fields)}")
        else:
            yield start, tuple(fields[i] for i in order)


def _jsonl_rows(raw: Iterable[bytes], report: ImportReport) -> Iterator[tuple[int, tuple]]:
    for number, text in decoded_lines(raw):
        if text is not None and not text.strip():
            continue
        report.rows += 1
        if text is None:
            report.error(number, NOT_UTF8)
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as exc:
            report.error(number, f"not valid JSON ({exc.msg})")
            continue
        except (ValueError, RecursionError):  # int() refuses 4300+ digits; nesting recurses
            report.error(number, "not valid JSON (a number or nesting beyond the parser's limits)")
            continue
        if not isinstance(obj, dict):
            report.error(number, "not a JSON object")
            continue
        missing = [c for c in COLUMNS if c not in obj]
        if missing:
            report.error(number, f"missing key(s) {', '.join(missing)}")
            continue
        yield number, tuple(obj[c] for c in COLUMNS)


def detect_format(name: str) -> str:
    lowered = name.lower()
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return "csv"


_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staging (
    user_id TEXT NOT NULL, id_type TEXT NOT NULL, value_hash BLOB NOT NULL,
    purpose TEXT NOT NULL, consent TEXT NOT NULL, effective_at TEXT NOT NULL,
    point BLOB  -- the hashed point, where the registry did not have it yet
)"""
_ROW = "user_id, id_type, value_hash, purpose, consent, effective_at"


def _missing_points(conn: sqlite3.Connection, keys: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Keys whose point is not cached yet."""
    have: set[tuple[str, bytes]] = set()
    for id_type in ID_TYPES:
        hashes = [h for t, h in keys if t == id_type]
        for i in range(0, len(hashes), _SQL_VARS):
            part = hashes[i : i + _SQL_VARS]
            q = "SELECT value_hash FROM identifiers WHERE id_type = ? AND value_hash IN (%s)" % (
                ",".join("?" * len(part))
            )
            have.update((id_type, h) for (h,) in conn.execute(q, [id_type, *part]))
    return [k for k in keys if k not in have]


def _validate_batch(rows: list[tuple[int, tuple]], region: str | None):
    """Pool task: validated records and ``(line, reason)`` errors for one batch."""
    records, errors = [], []
    for number, fields in rows:
        try:
            records.append(_check_row(fields, region))
        except ValueError as exc:
            errors.append((number, str(exc)))
    return records, errors


def _hash_batch(keys: list[tuple[str, bytes]]) -> np.ndarray:
    return hash_to_curve([t.encode() + b"\x00" + h for t, h in keys], workers=1)


def _chunks(items: Iterator, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def import_file(
    conn: sqlite3.Connection,
    raw: Iterable[bytes],
    fmt: str,
    source: str,
    region: str | None = "US",
    workers: int | None = None,
    executor: Executor | None = None,
    on_apply: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import consent rows (DESIGN section 4 format) from an iterable of raw lines.

    Raises ``ImportFileError`` for a file that cannot be imported at all; row problems
    are collected in the report and never written. Memory stays bounded: rows go to a
    staging table batch by batch. Validation and hashing run in the pool while this
    process reads ahead and writes. ``on_apply`` is called with the number of staged rows
    once the file is read, just before the final transaction (seconds per million rows,
    with nothing left to read to show progress by).
    """
    report = ImportReport()
    rows = _jsonl_rows(raw, report) if fmt == "jsonl" else _csv_rows(raw, report)
    pool = executor if executor is not None else get_executor(workers)
    try:
        _stage(conn, rows, report, region, pool)
    except MalformedFile as exc:
        conn.execute("DELETE FROM temp.staging")
        raise ImportFileError(str(exc)) from None
    report.errors.sort()
    if on_apply is not None:
        on_apply(report.imported_rows)
    start = time.perf_counter()
    _apply_staging(conn, source, report)
    report.apply_seconds = time.perf_counter() - start
    return report


def _stage(conn, rows, report: ImportReport, region, pool) -> None:
    """Validate, hash and stage every row (the registry's tables are not touched)."""
    conn.execute(_STAGING)
    conn.execute("DELETE FROM temp.staging")
    validated = imap(pool, _validate_batch, ((b, region) for b in _chunks(rows, BATCH)))
    pending: deque[tuple[list[tuple], list[tuple[str, bytes]]]] = deque()

    def hash_tasks() -> Iterator[tuple[list[tuple[str, bytes]]]]:
        for records, errors in validated:
            for number, reason in errors:
                report.error(number, reason)
            missing = _missing_points(conn, list(dict.fromkeys((r[1], r[2]) for r in records)))
            pending.append((records, missing))
            yield (missing,)

    for points in imap(pool, _hash_batch, hash_tasks()):
        records, missing = pending.popleft()
        fresh = {key: p.tobytes() for key, p in zip(missing, points)}
        with transaction(conn):
            conn.executemany(
                "INSERT INTO temp.staging VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(*r, fresh.get((r[1], r[2]))) for r in records],
            )
        report.points_hashed += len(missing)
        report.imported_rows += len(records)


def _apply_staging(conn: sqlite3.Connection, source: str, report: ImportReport) -> None:
    with transaction(conn):
        before_ids = conn.execute("SELECT COALESCE(MAX(id), 0) FROM identifiers").fetchone()[0]
        before_events = conn.execute("SELECT COALESCE(MAX(id), 0) FROM consent_events").fetchone()[0]
        distinct = conn.execute(
            f"SELECT COUNT(*) FROM (SELECT DISTINCT {_ROW} FROM temp.staging)"
        ).fetchone()[0]
        report.duplicate_rows = report.imported_rows - distinct
        report.imported_rows = distinct
        # A value the registry already held was not hashed again: its point is copied.
        conn.execute(
            "UPDATE temp.staging SET point = (SELECT i.point FROM identifiers AS i "
            "WHERE i.id_type = staging.id_type AND i.value_hash = staging.value_hash LIMIT 1) "
            "WHERE point IS NULL"
        )
        conn.execute("INSERT OR IGNORE INTO users (user_id) SELECT DISTINCT user_id FROM temp.staging")
        # In file order, so that the identifiers a user's cap keeps are the first listed.
        conn.execute(
            "INSERT OR IGNORE INTO identifiers (user_id, id_type, value_hash, point) "
            "SELECT user_id, id_type, value_hash, point FROM temp.staging ORDER BY rowid"
        )
        conn.execute(
            "INSERT OR IGNORE INTO identifier_purposes (identifier_id, purpose) "
            "SELECT DISTINCT i.id, s.purpose FROM temp.staging AS s JOIN identifiers AS i "
            "ON i.user_id = s.user_id AND i.id_type = s.id_type AND i.value_hash = s.value_hash"
        )
        conn.execute(
            "INSERT OR IGNORE INTO consent_events (user_id, scope, state, effective_at, source) "
            "SELECT user_id, 'ads_matching', consent, effective_at, ? FROM "
            "(SELECT DISTINCT user_id, consent, effective_at FROM temp.staging)",
            (source,),
        )
        report.new_identifiers = (
            conn.execute("SELECT COUNT(*) FROM identifiers WHERE id > ?", (before_ids,)).fetchone()[0]
        )
        report.new_consent_events = conn.execute(
            "SELECT COUNT(*) FROM consent_events WHERE id > ?", (before_events,)
        ).fetchone()[0]
        conn.execute("DELETE FROM temp.staging")


def record_consent(
    conn: sqlite3.Connection,
    user_ids: Iterable[str],
    state: str,
    effective_at: str | None = None,
    source: str = "cli",
) -> tuple[int, list[str]]:
    """Record one consent event per known user, in one transaction.

    Returns the number recorded and the user ids that are not in the registry (nothing
    is recorded for those: a grant must come with the user's identifiers, by import).
    """
    if state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}")
    when = parse_time(effective_at) if effective_at else now_utc()
    recorded, unknown = 0, []
    with transaction(conn):
        for user_id in user_ids:
            user_id = user_id.strip()
            if not user_id:
                continue
            if conn.execute("SELECT 1 FROM users WHERE user_id = ?", (user_id,)).fetchone() is None:
                unknown.append(user_id)
                continue
            cur = conn.execute(
                "INSERT OR IGNORE INTO consent_events (user_id, scope, state, effective_at, source) "
                "VALUES (?, 'ads_matching', ?, ?, ?)",
                (user_id, state, when, source),
            )
            recorded += cur.rowcount
    return recorded, unknown


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
SELECT c.id, c.id_type, (SELECT i.point FROM identifiers AS i WHERE i.id = c.id)
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
    cur = conn.execute(_table_query("", cap), {"cap": cap})
    while rows := cur.fetchmany(batch):
        part = MatchableRows.of(rows)
        k = len(part.ids)
        out.ids[n : n + k], out.types[n : n + k], out.points[n : n + k] = part.ids, part.types, part.points
        n += k
    return MatchableRows(out.ids[:n], out.types[:n], out.points[:n])


def _in_chunks(conn: sqlite3.Connection, query: str, values: list, extra: dict | None = None):
    """``query`` (with ``{names}`` where a list of parameters goes) over ``values`` in
    chunks below SQLite's parameter limit."""
    for i in range(0, len(values), _SQL_VARS):
        names = {f"v{j}": v for j, v in enumerate(values[i : i + _SQL_VARS])}
        sql = query.format(names=",".join(f":{k}" for k in names))
        yield from conn.execute(sql, {**(extra or {}), **names})


def matchable_of_users(conn: sqlite3.Connection, cap: int, users: list[str]) -> MatchableRows:
    """What these users contribute to the tables now."""
    query = _table_query("WHERE user_id IN ({names})", cap)
    return MatchableRows.of(list(_in_chunks(conn, query, users, {"cap": cap})))


def change_log_position(conn: sqlite3.Connection) -> tuple[int, int]:
    """``(latest sequence number, first one still kept)`` of the identifier change log.

    A reader synced to a sequence number below ``first - 1`` has missed pruned changes.
    """
    (pruned,) = conn.execute("SELECT upto FROM identifier_changes_pruned").fetchone()
    (latest,) = conn.execute("SELECT MAX(seq) FROM identifier_changes").fetchone()
    return max(latest or 0, pruned), pruned + 1


def changed_identifiers(conn: sqlite3.Connection, after: int, upto: int) -> tuple[np.ndarray, list[str]]:
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
        {u for (u,) in _in_chunks(conn, "SELECT user_id FROM identifiers WHERE id IN ({names})", ids)}
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
