"""Bulk import of consent rows.

An import is staged first and applied in one transaction at the end: a file whose last
line revokes a consent granted on its first line must never be half applied, and a
failure (bad disk, killed process) leaves the registry exactly as it was. A value the
registry already holds is not hashed again: its stored point is copied at the end.

Within a file, each user's consent rows apply in date order (a revocation after a grant
of the same time), and for each identifier and purpose the latest row decides whether
the purpose is added or withdrawn (a withdrawal winning a tie). Across imports the
registry's precedence rule applies (see the ``consent_events_apply`` trigger).
"""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np

from psi import hash_to_curve
from psi.identifiers import ID_TYPES
from psi.parallel import Executor, get_executor, imap
from psi.records import MalformedFile

from ..store import transaction
from .rows import DEFAULT_REGION, ImportFileError, check_row, csv_rows, jsonl_rows
from .sources import Source, recording
from .sql import SQL_VARS
from .times import latest_accepted

__all__ = ["ImportReport", "import_file"]

BATCH = 8192
MAX_REPORTED_ERRORS = 1000


@dataclass
class ImportReport:
    rows: int = 0
    imported_rows: int = 0
    duplicate_rows: int = 0
    invalid_rows: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)  # first MAX_REPORTED_ERRORS
    new_identifiers: int = 0
    new_consent_events: int = 0
    consent_changes: int = 0  # users whose ads_matching state changed
    withdrawn_purposes: int = 0
    removed_identifiers: int = 0  # left without a purpose, so deleted with their point
    points_hashed: int = 0
    digest: str = ""  # SHA-256 of the file, hex: how reports name this import
    # The final transaction, during which other writers (a session's budget charge) wait.
    apply_seconds: float = 0.0

    def error(self, line: int, reason: str) -> None:
        self.invalid_rows += 1
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append((line, reason))


class _Digested:
    """The file's lines, hashed as they are read."""

    def __init__(self, raw: Iterable[bytes]) -> None:
        self.raw = raw
        self.sha = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        for line in self.raw:
            self.sha.update(line)
            yield line


_STAGING = """
CREATE TEMP TABLE IF NOT EXISTS staging (
    user_id TEXT NOT NULL, id_type TEXT NOT NULL, value_hash BLOB NOT NULL,
    purpose TEXT NOT NULL, consent TEXT NOT NULL, effective_at TEXT NOT NULL,
    action TEXT NOT NULL,
    point BLOB  -- the hashed point, where the registry did not have it yet
)"""
_ROW = "user_id, id_type, value_hash, purpose, consent, effective_at, action"
_SAME_IDENTIFIER = "i.user_id = s.user_id AND i.id_type = s.id_type AND i.value_hash = s.value_hash"


def _missing_points(
    conn: sqlite3.Connection, keys: list[tuple[str, bytes]]
) -> list[tuple[str, bytes]]:
    """Keys whose point is not cached yet."""
    have: set[tuple[str, bytes]] = set()
    for id_type in ID_TYPES:
        hashes = [h for t, h in keys if t == id_type]
        for i in range(0, len(hashes), SQL_VARS):
            part = hashes[i : i + SQL_VARS]
            q = "SELECT value_hash FROM identifiers WHERE id_type = ? AND value_hash IN (%s)" % (
                ",".join("?" * len(part))
            )
            have.update((id_type, h) for (h,) in conn.execute(q, [id_type, *part]))
    return [k for k in keys if k not in have]


def _validate_batch(rows: list[tuple[int, tuple]], region: str | None, latest: str):
    """Pool task: validated records and ``(line, reason)`` errors for one batch."""
    records, errors = [], []
    for number, fields in rows:
        try:
            records.append(check_row(fields, region, latest))
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
    region: str | None = DEFAULT_REGION,
    workers: int | None = None,
    executor: Executor | None = None,
    on_apply: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import consent rows (CSV with a header, or JSONL) from an iterable of raw lines;
    ``source`` names the import in the registry's history, with the file's digest.

    Raises ``ImportFileError`` for a file that cannot be imported at all; row problems
    are collected in the report and never written. Memory stays bounded: rows go to a
    staging table batch by batch. Validation and hashing run in the pool while this
    process reads ahead and writes. ``on_apply`` is called with the number of staged rows
    once the file is read, just before the final transaction (seconds per million rows,
    with nothing left to read to show progress by).
    """
    report = ImportReport()
    digested = _Digested(raw)
    records = jsonl_rows(digested) if fmt == "jsonl" else csv_rows(digested)
    pool = executor if executor is not None else get_executor(workers)
    try:
        removals = _stage(conn, _counted(records, report), report, region, pool)
    except MalformedFile as exc:
        conn.execute("DELETE FROM temp.staging")
        raise ImportFileError(str(exc)) from None
    report.errors.sort()
    report.digest = digested.sha.hexdigest()
    if on_apply is not None:
        on_apply(report.imported_rows)
    start = time.perf_counter()
    _apply_staging(conn, Source("import", source, digested.sha.digest()), report, removals)
    report.apply_seconds = time.perf_counter() - start
    return report


def _counted(records, report: ImportReport) -> Iterator[tuple[int, tuple]]:
    """The well-formed records; the others are reported."""
    for number, fields, problem in records:
        report.rows += 1
        if problem:
            report.error(number, problem)
        else:
            yield number, fields


def _stage(conn, rows, report: ImportReport, region, pool) -> bool:
    """Validate, hash and stage every row (the registry's tables are not touched).
    Returns whether any row withdraws a purpose."""
    conn.execute(_STAGING)
    conn.execute("DELETE FROM temp.staging")
    latest = latest_accepted()
    validated = imap(pool, _validate_batch, ((b, region, latest) for b in _chunks(rows, BATCH)))
    pending: deque[tuple[list[tuple], list[tuple[str, bytes]]]] = deque()
    removals = False

    def hash_tasks() -> Iterator[tuple[list[tuple[str, bytes]]]]:
        nonlocal removals
        for records, errors in validated:
            for number, reason in errors:
                report.error(number, reason)
            # A withdrawal needs no point: only identifiers being added are hashed.
            added = [(r[1], r[2]) for r in records if r[6] == "add"]
            removals = removals or len(added) < len(records)
            missing = _missing_points(conn, list(dict.fromkeys(added)))
            pending.append((records, missing))
            yield (missing,)

    for points in imap(pool, _hash_batch, hash_tasks()):
        records, missing = pending.popleft()
        fresh = {key: p.tobytes() for key, p in zip(missing, points)}
        with transaction(conn):
            conn.executemany(
                "INSERT INTO temp.staging VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(*r, fresh.get((r[1], r[2]))) for r in records],
            )
        report.points_hashed += len(missing)
        report.imported_rows += len(records)
    return removals


def _apply_staging(
    conn: sqlite3.Connection, source: Source, report: ImportReport, removals: bool
) -> None:
    with recording(conn, source) as source_id:
        (base,) = conn.execute(
            "SELECT MAX((SELECT COALESCE(MAX(id), 0) FROM identifiers), "
            "(SELECT COALESCE(MAX(identifier_id), 0) FROM identifier_history))"
        ).fetchone()
        (events,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM consent_events").fetchone()
        (changes,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM consent_changes").fetchone()
        distinct = conn.execute(
            f"SELECT COUNT(*) FROM (SELECT DISTINCT {_ROW} FROM temp.staging)"
        ).fetchone()[0]
        report.duplicate_rows = report.imported_rows - distinct
        report.imported_rows = distinct
        # A value the registry already held was not hashed again: its point is copied.
        conn.execute(
            "UPDATE temp.staging SET point = (SELECT i.point FROM identifiers AS i "
            "WHERE i.id_type = staging.id_type AND i.value_hash = staging.value_hash LIMIT 1) "
            "WHERE point IS NULL AND action = 'add'"
        )
        added = _net_purposes(conn) if removals else "temp.staging"
        conn.execute(
            "INSERT OR IGNORE INTO users (user_id) "
            "SELECT DISTINCT user_id FROM temp.staging WHERE action = 'add'"
        )
        # In file order, so that the identifiers a user's cap keeps are the first listed.
        # Numbered past every id ever used: the history names identifiers by id.
        kept = (
            f" AND EXISTS (SELECT 1 FROM {added} AS i WHERE {_SAME_IDENTIFIER} AND i.action = 'add')"
            if removals
            else ""
        )
        conn.execute(
            "INSERT OR IGNORE INTO identifiers (id, user_id, id_type, value_hash, point) "
            "SELECT :base + s.rowid, s.user_id, s.id_type, s.value_hash, s.point "
            f"FROM temp.staging AS s WHERE s.action = 'add'{kept} ORDER BY s.rowid",
            {"base": base},
        )
        conn.execute(
            "INSERT OR IGNORE INTO identifier_purposes (identifier_id, purpose) "
            f"SELECT DISTINCT i.id, s.purpose FROM {added} AS s JOIN identifiers AS i "
            f"ON {_SAME_IDENTIFIER} WHERE s.action = 'add'"
        )
        if removals:
            _withdraw(conn, report)
        conn.execute(
            "INSERT INTO consent_events (user_id, scope, state, effective_at, source_id) "
            "SELECT s.user_id, 'ads_matching', s.consent, s.effective_at, :source "
            "FROM (SELECT DISTINCT user_id, consent, effective_at FROM temp.staging) AS s "
            "WHERE EXISTS (SELECT 1 FROM users AS u WHERE u.user_id = s.user_id) "
            # A re-import records nothing again, so a revocation it repeats cannot undo
            # a grant made since.
            "AND NOT EXISTS (SELECT 1 FROM consent_events AS e WHERE e.user_id = s.user_id "
            "AND e.state = s.consent AND e.effective_at = s.effective_at) "
            "ORDER BY s.effective_at, s.consent",
            {"source": source_id},
        )
        report.new_identifiers = conn.execute(
            "SELECT COUNT(*) FROM identifiers WHERE id > ?", (base,)
        ).fetchone()[0]
        report.new_consent_events = conn.execute(
            "SELECT COUNT(*) FROM consent_events WHERE id > ?", (events,)
        ).fetchone()[0]
        report.consent_changes = conn.execute(
            "SELECT COUNT(DISTINCT user_id) FROM consent_changes WHERE id > ?", (changes,)
        ).fetchone()[0]
        conn.execute("DELETE FROM temp.staging")
        conn.execute("DROP TABLE IF EXISTS temp.net")


def _net_purposes(conn: sqlite3.Connection) -> str:
    """The latest row for each identifier and purpose, a withdrawal winning a tie, as
    a temporary table; returns its name."""
    conn.execute("DROP TABLE IF EXISTS temp.net")
    conn.execute(
        "CREATE TEMP TABLE net AS SELECT user_id, id_type, value_hash, purpose, action FROM ("
        " SELECT user_id, id_type, value_hash, purpose, action, ROW_NUMBER() OVER ("
        "  PARTITION BY user_id, id_type, value_hash, purpose"
        "  ORDER BY effective_at DESC, action = 'remove' DESC) AS rank"
        " FROM temp.staging) WHERE rank = 1"
    )
    conn.execute(
        "CREATE INDEX temp.net_by_identifier ON net (user_id, id_type, value_hash, action)"
    )
    return "temp.net"


def _withdraw(conn: sqlite3.Connection, report: ImportReport) -> None:
    """Withdraw the purposes the file removes; delete identifiers left with none."""
    withdrawn = conn.execute(
        "SELECT i.id, s.purpose FROM temp.net AS s JOIN identifiers AS i "
        f"ON {_SAME_IDENTIFIER} WHERE s.action = 'remove'"
    ).fetchall()
    cur = conn.executemany(
        "DELETE FROM identifier_purposes WHERE identifier_id = ? AND purpose = ?", withdrawn
    )
    report.withdrawn_purposes = cur.rowcount
    ids = sorted({i for i, _ in withdrawn})
    cur = conn.executemany(
        "DELETE FROM identifiers WHERE id = ? AND NOT EXISTS "
        "(SELECT 1 FROM identifier_purposes AS p WHERE p.identifier_id = identifiers.id)",
        [(i,) for i in ids],
    )
    report.removed_identifiers = cur.rowcount
