"""Bulk import of consent rows.

An import is staged first and applied in one transaction at the end: a file whose last
line revokes a consent granted on its first line must never be half applied, and a
failure (bad disk, killed process) leaves the registry exactly as it was. A value the
registry already holds is not hashed again: its stored point serves the new identifier.
The others are hashed by the pool while the final transaction runs (``_Hashing``), and
what the file's consent events do to each user, and how many rows add each value, are
worked out beside it, on a second connection (``_Beside``).

Within a file, each user's consent rows apply in date order (a revocation after a grant
of the same time), and for each identifier and purpose the latest row decides whether
the purpose is added or withdrawn (a withdrawal winning a tie). Across imports the
registry's precedence rule applies (see the ``consent_events_apply`` trigger).

The final transaction writes what the schema's insert triggers would, set by set
instead of row by row: those triggers are dropped inside the transaction and created
again, from their own text, before it commits, so no other connection ever sees the
schema without them. Withdrawals still go through the delete triggers.
"""

from __future__ import annotations

import gc
import hashlib
import sqlite3
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from psi import hash_to_curve
from psi.identifiers import ID_TYPES, type_prefix
from psi.parallel import Executor, cpu_count, get_executor, imap
from psi.records import MalformedFile

from ..store import BUSY_TIMEOUT_S, PAGE_SIZE, transaction
from .rows import (
    DEFAULT_REGION,
    Batch,
    CsvLayout,
    ImportFileError,
    batch_records,
    check_rows,
    csv_batches,
    jsonl_batches,
)
from .sources import Source, recording
from .sql import SQL_VARS
from .times import latest_accepted

__all__ = ["ImportReport", "import_file"]

BATCH = 8192
MAX_REPORTED_ERRORS = 1000
# The most points bound to one statement of the final transaction (128 MiB; see
# ``_add_points``).
POINTS_PER_INSERT = 1 << 22
# Pages SQLite may keep in memory while an import stages and applies (KiB), for each of
# the registry and the import's own tables: the final transaction looks each new row up
# in the registry's indexes (users, identifiers by user, consent events by user), which
# in a large registry are far beyond SQLite's default 2 MiB.
APPLY_CACHE_KIB = 64 * 1024


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
        lines = iter(self.raw)
        # Hashed a few thousand lines at a time: a Python step per line costs more
        # than the hashing.
        while chunk := list(islice(lines, 4096)):
            self.sha.update(b"".join(chunk))
            yield from chunk


# The import's own tables, in scratch databases of its temporary directory (see
# ``_attached``): the file's rows, staged before the final transaction, which the
# connections of ``_Beside`` read too; what each of those computes; and the final
# transaction's own tables, apart so that it leaves the first as those readers see it.
_STAGE = "import_stage"
_EFFECTS = "import_effects"
_VALUES = "import_values"
_OWN = "import_own"
_STAGING = f"""
CREATE TABLE {_STAGE}.rows (
    user_id TEXT NOT NULL, id_type TEXT NOT NULL, value_hash BLOB NOT NULL,
    purpose TEXT NOT NULL, consent TEXT NOT NULL, effective_at TEXT NOT NULL,
    action TEXT NOT NULL,
    -- On the first row of a batch adding a value the registry has no point for: the
    -- value's place among the values hashed (see ``_Hashing``).
    hashed INTEGER
)"""
_ROW = "user_id, id_type, value_hash, purpose, consent, effective_at, action"
_SAME_IDENTIFIER = "i.user_id = s.user_id AND i.id_type = s.id_type AND i.value_hash = s.value_hash"
# The insert triggers whose rows the final transaction writes itself (see the module's
# docstring); ``tests/test_import_sets.py`` checks it writes exactly what they would.
_SET_BASED = ("identifiers_recorded", "identifiers_point_held", "identifier_purposes_added",
              "purpose_added", "consent_events_apply", "consent_events_changed",
              "users_consent_changed")


def _missing_points(
    conn: sqlite3.Connection, keys: list[tuple[str, bytes]]
) -> list[tuple[str, bytes]]:
    """Keys whose point is not stored yet."""
    have: set[tuple[str, bytes]] = set()
    for id_type in ID_TYPES:
        hashes = [h for t, h in keys if t == id_type]
        for i in range(0, len(hashes), SQL_VARS):
            part = hashes[i : i + SQL_VARS]
            q = "SELECT value_hash FROM points WHERE id_type = ? AND value_hash IN (%s)" % (
                ",".join("?" * len(part))
            )
            have.update((id_type, h) for (h,) in conn.execute(q, [id_type, *part]))
    return [k for k in keys if k not in have]


@dataclass
class _Read:
    """What a pool task made of one batch of the file."""

    rows: int  # records, malformed ones included
    errors: list[tuple[int, str]]
    staged: int  # validated rows
    # The validated rows as a database of one table, ``_BATCH_ROWS``: this process then
    # copies them in one statement instead of binding each row's fields.
    image: bytes
    removes: bool  # whether a row withdraws a purpose
    adds: dict[tuple[str, bytes], int]  # each value added, with its first row (from 0)
    keys: bytes  # the values chosen to hash, in the order of their places


_BATCH = "import_batch"
_BATCH_ROWS = f"CREATE TABLE rows ({_ROW}, hashed)"


@contextmanager
def _collector_paused() -> Iterator[None]:
    """For work that makes tens of thousands of small tuples and lists, none in a cycle,
    all freed by its end: the cyclic collector would walk them again and again for
    nothing (8% of the instructions of reading a batch)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _read_batch(
    batch: Batch, layout: CsvLayout | None, region: str | None, latest: str, hashing: bool
) -> _Read:
    """Pool task: read and validate one batch; with ``hashing``, also choose each value
    it adds to be hashed (the registry held no point when the import began, so none can
    be reused). A withdrawal needs no point: only identifiers being added are hashed."""
    with _collector_paused():
        records = list(batch_records(batch, layout))
        staged, errors = check_rows(records, region, latest)
        removes = any(r[6] == "remove" for r in staged)
        adds = _first_adds(staged, removes)
        hashed, keys = [None] * len(staged), b""
        if hashing:
            for place, i in enumerate(adds.values()):
                hashed[i] = place
            keys, adds = _key_file_records(adds), {}
        db = sqlite3.connect(":memory:")
        try:
            db.execute(_BATCH_ROWS)
            db.executemany("INSERT INTO rows VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(*r, h) for r, h in zip(staged, hashed)])
            db.commit()
            image = db.serialize()
        finally:
            db.close()
    return _Read(len(records), errors, len(staged), image, removes, adds, keys)


def _first_adds(staged: list[tuple], removes: bool) -> dict[tuple[str, bytes], int]:
    """Each value the rows add, ``(id_type, value_hash)``, with the first row adding it."""
    rows = range(len(staged)) if not removes else [i for i, r in enumerate(staged) if r[6] == "add"]
    # Built from the last row back, so the first row adding a value is the one kept.
    return dict(zip([(staged[i][1], staged[i][2]) for i in reversed(rows)], reversed(rows)))


# A value to hash in the hashing's key file: its type's index in ID_TYPES, then its hash.
_KEY_BYTES = 33
_TYPE_BYTES = {t: bytes((i,)) for i, t in enumerate(ID_TYPES)}
_PREFIXES = [type_prefix(t) for t in ID_TYPES]  # by a record's first byte


def _key_file_records(values: Iterable[tuple[str, bytes]]) -> bytes:
    return b"".join(_TYPE_BYTES[t] + h for t, h in values)


def _hash_records(records: bytes) -> np.ndarray:
    """The points of key-file records' values. (Built straight from the records: going
    through a tuple per value cost 5% of hashing them.)"""
    return hash_to_curve([_PREFIXES[records[i]] + records[i + 1 : i + _KEY_BYTES]
                          for i in range(0, len(records), _KEY_BYTES)], workers=1)


def _read_places(directory: str, name: str, first: int, count: int, size: int) -> bytes:
    """Places ``first`` to ``first + count`` of a file of ``size``-byte records."""
    with open(Path(directory) / name, "rb") as f:
        f.seek(first * size)
        return f.read(count * size)


def _hash_slice(directory: str, first: int, count: int) -> None:
    """Pool task: hash the key file's values ``first`` to ``first + count`` and write
    their points at the same places of the point file."""
    points = _hash_records(_read_places(directory, "keys", first, count, _KEY_BYTES))
    with open(Path(directory) / "points", "r+b") as f:
        f.seek(first * 32)
        f.write(points.tobytes())


class _Hashing:
    """The points of the values the file adds that the registry lacks.

    Staging writes each such value (once per batch) to a key file; the pool hashes them
    while this process runs the final transaction, which waits for the points only at
    its end. Reading the file keeps every core busy; then the transaction takes one core
    and its work beside (``_Beside``) another, and hashing the rest, each core as it is
    freed (``grant``): on two cores, hashing beside both would leave each of the three
    two thirds of a core, the transaction's included.

    A value is chosen when its batch is read: one stored by another writer before the
    transaction is then hashed twice, and one removed since is hashed in the
    transaction (``_add_points``). Files, not memory, hold the values and their points
    until the transaction reads the points (32 bytes each), a slice at a time."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.count = 0
        self._keys = open(Path(directory) / "keys", "wb")
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._stopping = False
        self._lanes = 0  # how many tasks may run at once
        self._changed = threading.Condition()

    def add(self, keys: bytes) -> int:
        """Append a batch's values to hash; returns the place of its first."""
        first = self.count
        self._keys.write(keys)
        self.count += len(keys) // _KEY_BYTES
        return first

    def start(self, pool: Executor) -> None:
        """Hash on every core but the transaction's and the one beside it, to begin with."""
        self._keys.close()
        with open(Path(self.directory) / "points", "wb") as f:
            f.truncate(self.count * 32)
        tasks = [(self.directory, first, min(BATCH, self.count - first))
                 for first in range(0, self.count, BATCH)]
        self._lanes = pool.workers - 2

        def run() -> None:
            running: deque = deque()
            try:
                for task in tasks:
                    while len(running) >= self._lanes and not self._stopping:
                        if running:
                            running.popleft().result()
                        else:
                            with self._changed:
                                self._changed.wait_for(lambda: self._lanes > 0 or self._stopping)
                    if self._stopping:
                        break
                    running.append(pool.submit(_hash_slice, *task))
                while running:
                    running.popleft().result()
            except BaseException as exc:  # raised in the transaction, by ``wait``
                self._error = exc
            finally:
                for task in running:
                    task.cancel()
                for task in running:
                    if not task.cancelled():
                        task.exception()

        self._thread = threading.Thread(target=run, name="import-hashing", daemon=True)
        self._thread.start()

    def grant(self) -> None:
        """A core is free for hashing from now on."""
        with self._changed:
            self._lanes += 1
            self._changed.notify_all()

    def wait(self) -> None:
        """Until every value is hashed (a task's failure is raised here). The transaction
        waits meanwhile: its core hashes too."""
        self.grant()
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error

    def points(self, first: int, count: int) -> bytes:
        """The points at places ``first`` to ``first + count``, once hashed."""
        return _read_places(self.directory, "points", first, count, 32)

    def stop(self) -> None:
        """No task runs past this (they write the directory)."""
        self._keys.close()
        with self._changed:
            self._stopping = True
            self._changed.notify_all()
        if self._thread is not None:
            self._thread.join()


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
    staging table on disk batch by batch. Parsing, validation and hashing run in the
    pool while this process reads ahead and stages. ``on_apply`` is called with the
    number of staged rows once the file is read, just before the final transaction
    (seconds per million rows, with nothing left to read to show progress by).
    """
    report = ImportReport()
    digested = _Digested(raw)
    pool = executor if executor is not None else get_executor(workers)
    with (tempfile.TemporaryDirectory(prefix="psi-import-") as directory,
          _attached(conn, _STAGE, directory)):
        for statement in (_STAGING, *_KEYED):
            conn.execute(statement)
        hashing = _Hashing(directory)
        try:
            try:
                if fmt == "jsonl":
                    layout, batches = None, jsonl_batches(digested, BATCH)
                else:
                    layout, batches = csv_batches(digested, BATCH)
                removals = _stage(conn, layout, batches, report, region, pool, hashing)
            except MalformedFile as exc:
                raise ImportFileError(str(exc)) from None
            hashing.start(pool)
            report.points_hashed = hashing.count
            report.errors.sort()
            report.digest = digested.sha.hexdigest()
            if on_apply is not None:
                on_apply(report.imported_rows)
            _prepare(conn, report, removals)
            _apply(conn, Source("import", source, digested.sha.digest()), report, removals,
                   hashing, directory)
        finally:
            hashing.stop()
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
    return report


@contextmanager
def _attached(conn: sqlite3.Connection, name: str, directory: str) -> Iterator[None]:
    """A scratch database of the import's directory, attached while in use (deleting the
    directory discards it whole, where dropping its tables would free each page)."""
    _attach(conn, name, directory)
    try:
        yield
    finally:
        conn.execute(f"DETACH DATABASE {name}")


def _attach(conn: sqlite3.Connection, name: str, directory: str) -> None:
    """Nothing in a scratch database needs recovering after a crash, so nothing is synced."""
    conn.execute(f"ATTACH DATABASE ? AS {name}", (str(Path(directory, f"{name}.db")),))
    try:
        conn.execute(f"PRAGMA {name}.page_size = {PAGE_SIZE}")  # if new (see PAGE_SIZE)
        conn.execute(f"PRAGMA {name}.journal_mode = MEMORY")
        conn.execute(f"PRAGMA {name}.synchronous = OFF")
        # The consent effects and the value counts are written and read in key order,
        # which SQLite's default cache serves; the others are looked up and sorted.
        if name not in (_EFFECTS, _VALUES):
            conn.execute(f"PRAGMA {name}.cache_size = -{APPLY_CACHE_KIB}")
    except BaseException:
        conn.execute(f"DETACH DATABASE {name}")
        raise


def _stage(conn, layout, batches, report: ImportReport, region, pool, hashing: _Hashing) -> bool:
    """Validate and stage every row, choosing the values to hash (the registry's tables
    are not touched). Returns whether any row withdraws a purpose."""
    latest = latest_accepted()
    # An empty registry (a first load) has no point to reuse: each batch's values are
    # then chosen by the task that reads it, with no lookup in between.
    (empty,) = conn.execute("SELECT NOT EXISTS (SELECT 1 FROM points)").fetchone()
    removals = False
    conn.execute(f"ATTACH DATABASE ':memory:' AS {_BATCH}")
    try:
        for batch in imap(pool, _read_batch, ((b, layout, region, latest, bool(empty)) for b in batches)):
            report.rows += batch.rows
            for number, reason in batch.errors:
                report.error(number, reason)
            removals = removals or batch.removes
            first = report.imported_rows + 1  # rows are numbered from 1, in order
            conn.deserialize(batch.image, name=_BATCH)
            # The import's own database only: no lock on the registry is taken.
            with transaction(conn, immediate=False):
                # A batch's places count from 0: they follow the values of those before.
                # (A task that chose no value, as on a registry holding points, adds none.)
                offset = hashing.add(batch.keys)
                conn.execute(f"INSERT INTO {_STAGE}.rows ({_ROW}, hashed) "
                             f"SELECT {_ROW}, hashed + ? FROM {_BATCH}.rows ORDER BY rowid", (offset,))
                if not empty:
                    chosen = {k: batch.adds[k] for k in _missing_points(conn, list(batch.adds))}
                    offset = hashing.add(_key_file_records(chosen))
                    conn.executemany(f"UPDATE {_STAGE}.rows SET hashed = ? WHERE rowid = ?",
                                     [(offset + place, first + i) for place, i in enumerate(chosen.values())])
                for statement in _KEYING:
                    conn.execute(statement, (first,))
            report.imported_rows += batch.staged
    finally:
        conn.execute(f"DETACH DATABASE {_BATCH}")
    return removals


# The file's rows keyed as the registry's tables are written, filled batch by batch
# while the pool reads ahead (this process would otherwise wait for it), so that the
# final transaction reads each in order.
_KEYED = (
    f"""CREATE TABLE {_STAGE}.granting (user_id, id_type, value_hash, purpose,
        PRIMARY KEY (user_id, id_type, value_hash, purpose)) WITHOUT ROWID""",
    # A user is created by a row that adds (and then takes every consent event the
    # file has for them); consent events of users the registry does not hold are not kept.
    f"CREATE TABLE {_STAGE}.adding_users (user_id PRIMARY KEY) WITHOUT ROWID",
    f"""CREATE TABLE {_STAGE}.consenting (user_id, effective_at, state,
        PRIMARY KEY (user_id, effective_at, state)) WITHOUT ROWID""",
)
_GRANTING = (
    f"INSERT OR IGNORE INTO {_STAGE}.granting SELECT user_id, id_type, value_hash, purpose "
    "FROM {rows} WHERE action = 'add' AND rowid >= ?"
)
_KEYING = (
    _GRANTING.format(rows=f"{_STAGE}.rows"),
    f"INSERT OR IGNORE INTO {_STAGE}.adding_users SELECT user_id FROM {_STAGE}.rows "
    "WHERE action = 'add' AND rowid >= ?",
    f"INSERT OR IGNORE INTO {_STAGE}.consenting SELECT user_id, effective_at, consent "
    f"FROM {_STAGE}.rows WHERE rowid >= ?",
)


def _prepare(conn: sqlite3.Connection, report: ImportReport, removals: bool) -> None:
    """The rest of what depends on the file alone, before the registry is locked."""
    # A file whose rows all add, each a different identifier and purpose (most files),
    # repeats no row; in others the rows are compared in every field, all sorted.
    (distinct,) = conn.execute(f"SELECT COUNT(*) FROM {_STAGE}.granting").fetchone()
    if distinct != report.imported_rows:
        distinct = conn.execute(
            f"SELECT COUNT(*) FROM (SELECT DISTINCT {_ROW} FROM {_STAGE}.rows)"
        ).fetchone()[0]
    report.duplicate_rows = report.imported_rows - distinct
    report.imported_rows = distinct
    if removals:
        # Only each identifier and purpose's latest row adds it.
        _net_purposes(conn)
        conn.execute(f"DELETE FROM {_STAGE}.granting")
        conn.execute(_GRANTING.format(rows=f"{_STAGE}.net"), (0,))


@contextmanager
def _triggers_dropped(conn: sqlite3.Connection, names: tuple[str, ...]) -> Iterator[None]:
    """Inside a transaction: drop these triggers, then create them again from the text
    the schema holds, in their order. A failure rolls the drops back with the rest."""
    saved = conn.execute(
        "SELECT name, sql FROM main.sqlite_schema WHERE type = 'trigger' AND name IN (%s) "
        "ORDER BY rowid" % ",".join("?" * len(names)),
        names,
    ).fetchall()
    if len(saved) != len(names):
        raise RuntimeError("the registry's schema lacks a trigger the import replaces")
    for name, _ in saved:
        conn.execute(f"DROP TRIGGER main.{name}")
    yield
    for _, sql in saved:
        conn.execute(sql)


def _apply(
    conn: sqlite3.Connection, source: Source, report: ImportReport, removals: bool,
    hashing: _Hashing, directory: str,
) -> None:
    """The final transaction, with the settings it runs under."""
    settings = {p: conn.execute(f"PRAGMA {p}").fetchone()[0]
                for p in ("main.cache_size", "threads", "wal_autocheckpoint", "foreign_keys")}
    conn.execute(f"PRAGMA main.cache_size = -{APPLY_CACHE_KIB}")
    # Each statement takes its references from the rows it joins (the tests check the
    # keys after random imports); checking each again would look every one up twice.
    conn.execute("PRAGMA foreign_keys = OFF")
    # Sorting (grouping the file's rows by value, say) on every core.
    conn.execute(f"PRAGMA threads = {cpu_count()}")
    # The log is copied into the main file after the commit, as the commit would
    # have done, but outside the time other writers wait for (they do not wait for it).
    conn.execute("PRAGMA wal_autocheckpoint = 0")
    try:
        start = time.perf_counter()
        # Not ``BEGIN IMMEDIATE``: that would also lock the databases attached, the one
        # the consent effects are written to among them. The transaction's first
        # statement takes the registry's write lock (see ``recording``).
        with (_attached(conn, _OWN, directory), _attached(conn, _EFFECTS, directory),
              _attached(conn, _VALUES, directory),
              recording(conn, source, immediate=False) as source_id,
              _triggers_dropped(conn, _SET_BASED)):
            steps = ((_EFFECTS, _consent_effects), (_VALUES, _value_counts))
            beside = _Beside(conn, directory, steps, hashing.grant)
            try:
                _write(conn, source_id, report, removals, hashing, beside)
            finally:
                beside.stop()
        report.apply_seconds = time.perf_counter() - start
    finally:
        for pragma, value in settings.items():
            conn.execute(f"PRAGMA {pragma} = {value}")


def _write(conn: sqlite3.Connection, source_id: int, report: ImportReport, removals: bool,
           hashing: _Hashing, beside: _Beside) -> None:
    (base,) = conn.execute(
        "SELECT MAX((SELECT COALESCE(MAX(id), 0) FROM identifiers), "
        "(SELECT COALESCE(MAX(identifier_id), 0) FROM identifier_history))"
    ).fetchone()
    # No statement before the consent effects' result reads or writes users or consent
    # events.
    _add_identifiers(conn, base, removals)
    _add_purposes(conn, source_id)
    if removals:
        _withdraw(conn, report)
    known = beside.result(_EFFECTS)
    _add_users(conn)
    report.new_consent_events, report.consent_changes = _record_consent(conn, source_id, known)
    # Last: the pool hashes meanwhile.
    report.new_identifiers = _add_points(conn, base, hashing, beside)


class _Beside:
    """Work of the final transaction done on a second connection, in a thread, on a core
    the transaction leaves idle, step by step. Each step writes its tables to a scratch
    database of its own, which the importing connection attached before the transaction
    and reads only once the step has committed (``result``): reading it, the transaction
    holds that database's read lock until it commits.

    First the consent effects (``_consent_effects``): the file's consent events and what
    they do to each user, which depend on the file and on the registry as the
    transaction found it. The thread reads the registry from a snapshot taken once the
    transaction holds the write lock (so no other writer can have committed since), in
    which the transaction's own writes are not seen: exactly that state. Then the values
    the file adds, counted (``_value_counts``), from the file alone, needed last."""

    def __init__(self, conn: sqlite3.Connection, directory: str,
                 steps: tuple[tuple[str, Callable[[sqlite3.Connection], int]], ...],
                 done: Callable[[], None]) -> None:
        """Inside the transaction, once it holds the write lock. ``steps``: each scratch
        database with the work writing it; ``done`` is called once the last has ended."""
        self._steps = steps
        self._results: list[int] = []
        self._error: BaseException | None = None
        self._ended = threading.Condition()
        # (``store.connect`` opens registries from files only.)
        path = next(f for _, name, f in conn.execute("PRAGMA database_list") if name == "main")
        reader = self._reader = sqlite3.connect(
            f"{Path(path).as_uri()}?mode=ro", uri=True, isolation_level=None,
            timeout=BUSY_TIMEOUT_S, check_same_thread=False,
        )
        try:
            # Also what its sorts may hold in memory.
            reader.execute(f"PRAGMA main.cache_size = -{APPLY_CACHE_KIB}")
            stage = Path(directory, f"{_STAGE}.db").as_uri()
            reader.execute(f"ATTACH DATABASE ? AS {_STAGE}", (f"{stage}?mode=ro",))
            for scratch, _ in steps:
                _attach(reader, scratch, directory)  # detached by closing
            reader.execute("BEGIN")
            reader.execute("SELECT 1 FROM users LIMIT 1").fetchall()  # the snapshot is taken here
        except BaseException:
            reader.close()
            raise

        def run() -> None:
            try:
                for step, (_, work) in enumerate(steps):
                    if step:
                        reader.execute("BEGIN")
                    value = work(reader)
                    reader.execute("COMMIT")
                    with self._ended:
                        self._results.append(value)
                        self._ended.notify_all()
            except BaseException as exc:  # raised in the transaction, by ``result``
                with self._ended:
                    self._error = exc
                    self._ended.notify_all()
            finally:
                done()

        self._thread = threading.Thread(target=run, name="import-beside", daemon=True)
        self._thread.start()

    def result(self, scratch: str) -> int:
        """Wait for the step writing to ``scratch`` (a failure is raised here); what it
        returned."""
        step = [name for name, _ in self._steps].index(scratch)
        with self._ended:
            self._ended.wait_for(lambda: len(self._results) > step or self._error is not None)
            if len(self._results) > step:
                return self._results[step]
            raise self._error

    def stop(self) -> None:
        """No statement of the thread runs past this (a failed transaction interrupts it)."""
        if self._thread.is_alive():
            self._reader.interrupt()
        self._thread.join()
        self._reader.close()


def _consent_effects(conn: sqlite3.Connection) -> int:
    """Returns whether an event is for a user the registry held (none, on a first load)."""
    _new_events(conn)
    _user_events(conn)
    query = f"SELECT EXISTS (SELECT 1 FROM {_EFFECTS}.new_events WHERE known)"
    return conn.execute(query).fetchone()[0]


def _new_events(conn: sqlite3.Connection) -> None:
    """The file's consent events to record, with whether each takes effect, in each
    user's date order (a revocation after a grant of the same time).

    An event takes effect (see ``consent_events_apply``) if it is a revocation, or a
    grant dated after every event the user had. Within the file a user's events come in
    date order and are distinct, so a grant is dated after each earlier one of the file:
    only the registry's latest date (``before_at``) can keep it from taking effect."""
    conn.execute(
        f"CREATE TABLE {_EFFECTS}.new_events (user_id, effective_at, state, "
        "before, before_at, known, applies, "
        "PRIMARY KEY (user_id, effective_at, state)) WITHOUT ROWID"
    )
    conn.execute(
        f"INSERT INTO {_EFFECTS}.new_events "
        "SELECT c.user_id, c.effective_at, c.state, u.ads_matching, u.consent_effective_at, "
        "u.user_id IS NOT NULL, c.state = 'revoked' OR u.consent_effective_at IS NULL "
        "OR c.effective_at > u.consent_effective_at "
        f"FROM {_STAGE}.consenting AS c LEFT JOIN users AS u ON u.user_id = c.user_id "
        "WHERE (u.user_id IS NOT NULL "
        f"      OR EXISTS (SELECT 1 FROM {_STAGE}.adding_users AS a WHERE a.user_id = c.user_id)) "
        # A re-import records nothing again, so a revocation it repeats cannot undo
        # a grant made since.
        "AND NOT EXISTS (SELECT 1 FROM consent_events AS e WHERE e.user_id = c.user_id "
        "AND e.state = c.state AND e.effective_at = c.effective_at)"
    )


def _user_events(conn: sqlite3.Connection) -> None:
    """Each user's events that take effect, summed up."""
    # The last event that takes effect decides (a revocation after a grant of the same
    # date); the date kept is the latest seen. (Comparing dates, not building a text of
    # date and state per event to compare: a third of the statement's time.)
    conn.execute(
        f"CREATE TABLE {_EFFECTS}.user_events (user_id PRIMARY KEY, taking, state, effective_at, "
        "known, before) WITHOUT ROWID"
    )
    conn.execute(
        f"INSERT INTO {_EFFECTS}.user_events SELECT user_id, COUNT(*), "
        "CASE WHEN MAX(CASE WHEN state = 'revoked' THEN effective_at END) = MAX(effective_at) "
        "THEN 'revoked' ELSE 'granted' END, MAX(effective_at), "
        f"known, before FROM {_EFFECTS}.new_events WHERE applies GROUP BY user_id"
    )


def _add_users(conn: sqlite3.Connection) -> None:
    """Users the registry did not hold, with their consent as their events leave it
    (every event of a new user takes effect)."""
    conn.execute(
        "INSERT INTO users (user_id, ads_matching, consent_effective_at) "
        f"SELECT user_id, state, effective_at FROM {_EFFECTS}.user_events WHERE NOT known"
    )


def _add_identifiers(conn: sqlite3.Connection, base: int, removals: bool) -> None:
    """New identifiers, numbered past every id ever used (the history names identifiers
    by id), and their history rows."""
    # In file order, so that the identifiers a user's cap keeps are the first listed;
    # the first row of each identifier numbers it.
    kept = (
        f" AND EXISTS (SELECT 1 FROM {_STAGE}.net AS i WHERE {_SAME_IDENTIFIER} "
        "AND i.action = 'add')"
        if removals
        else ""
    )
    conn.execute(
        "INSERT OR IGNORE INTO identifiers (id, user_id, id_type, value_hash) "
        "SELECT :base + s.rowid, s.user_id, s.id_type, s.value_hash "
        f"FROM {_STAGE}.rows AS s WHERE s.action = 'add'{kept} ORDER BY s.rowid",
        {"base": base},
    )
    conn.execute(
        "INSERT INTO identifier_history (identifier_id, user_id, id_type) "
        "SELECT id, user_id, id_type FROM identifiers WHERE id > ? ORDER BY id",
        (base,),
    )


def _new_values(table: str, rows: str) -> str:
    """A statement creating ``table``: each value of the staged rows that ``rows`` keeps,
    with how many of them hold it and the place it was chosen to be hashed at, if any."""
    return (
        f"CREATE TABLE {table} AS "
        "SELECT s.id_type, s.value_hash, MAX(s.hashed) AS hashed, COUNT(*) AS holders "
        f"FROM {_STAGE}.rows AS s WHERE {rows} GROUP BY s.id_type, s.value_hash"
    )


def _value_counts(conn: sqlite3.Connection) -> int:
    """Each value the file's rows add, counted (``_new_values``); returns the number of
    rows adding."""
    conn.execute(_new_values(f"{_VALUES}.new_values", "s.action = 'add'"))
    return conn.execute(f"SELECT COALESCE(SUM(holders), 0) FROM {_VALUES}.new_values").fetchone()[0]


def _add_points(conn: sqlite3.Connection, base: int, hashing: _Hashing, beside: _Beside) -> int:
    """The holders each value gained (the identifiers just numbered by their first row),
    and the points of those the registry has none for. (Withdrawals may have removed
    some points since the file was read.) Returns how many identifiers were numbered."""
    (numbered,) = conn.execute("SELECT COUNT(*) FROM identifiers WHERE id > ?", (base,)).fetchone()
    # Most files number an identifier with each row adding (all of them new): then each
    # value's rows are its new holders, and the counts made beside the transaction stand.
    # Otherwise only the rows that numbered an identifier count.
    if beside.result(_VALUES) == numbered:
        values = f"{_VALUES}.new_values"
    else:
        values = f"{_OWN}.new_values"
        numbering = "EXISTS (SELECT 1 FROM identifiers AS i WHERE i.id = ? + s.rowid)"
        conn.execute(_new_values(values, numbering), (base,))
    (stored,) = conn.execute("SELECT EXISTS (SELECT 1 FROM points)").fetchone()
    if stored:
        conn.execute(
            f"UPDATE points SET holders = points.holders + n.holders FROM {values} AS n "
            "WHERE points.id_type = n.id_type AND points.value_hash = n.value_hash"
        )
    # Reading the table it inserts into, a statement first copies all it selects to a
    # temporary table: on a registry holding no points every value is new anyway.
    new = (
        f"FROM {values} AS n WHERE NOT EXISTS (SELECT 1 FROM points AS p "
        "WHERE p.id_type = n.id_type AND p.value_hash = n.value_hash)"
        if stored
        else f"FROM {values} AS n WHERE 1"
    )
    # A slice of places at a time, each slice's points bound as one blob: SQLite refuses
    # a blob over 10^9 bytes (31 million points), and the blob is held twice while bound
    # (this process's copy and SQLite's). On most imports, one slice.
    hashing.wait()
    insert = (
        "INSERT INTO points (id_type, value_hash, point, holders) "
        f"SELECT id_type, value_hash, substr(:points, (hashed - :first) * 32 + 1, 32), holders {new} "
        "AND n.hashed >= :first AND n.hashed < :first + :count"
    )
    for first in range(0, hashing.count, POINTS_PER_INSERT):
        count = min(POINTS_PER_INSERT, hashing.count - first)
        conn.execute(insert, {"points": hashing.points(first, count), "first": first, "count": count})
    # Hashed now: a value whose point was stored when its batch was read and removed
    # since (its last holder erased, say), or whose rows chosen to hash it add none of
    # its new holders (their identifiers withdrawn by a later row of the file).
    lost = conn.execute(f"SELECT id_type, value_hash, holders {new} AND n.hashed IS NULL").fetchall()
    points = _hash_records(_key_file_records((t, h) for t, h, _ in lost))
    conn.executemany(
        "INSERT INTO points (id_type, value_hash, point, holders) VALUES (?, ?, ?, ?)",
        [(t, h, p.tobytes(), n) for (t, h, n), p in zip(lost, points)],
    )
    return numbered


def _add_purposes(conn: sqlite3.Connection, source_id: int) -> None:
    """Purposes the file adds that identifiers did not hold, with their history, and a
    change for every identifier of their users (the cap may now pick another)."""
    conn.execute(
        f"CREATE TABLE {_OWN}.new_purposes (identifier_id, purpose, user_id, "
        "PRIMARY KEY (identifier_id, purpose)) WITHOUT ROWID"
    )
    conn.execute(
        f"INSERT INTO {_OWN}.new_purposes "
        "SELECT i.id, s.purpose, i.user_id "
        f"FROM {_STAGE}.granting AS s JOIN identifiers AS i ON {_SAME_IDENTIFIER} "
        "WHERE NOT EXISTS (SELECT 1 FROM identifier_purposes AS p "
        "WHERE p.identifier_id = i.id AND p.purpose = s.purpose)"
    )
    conn.execute(
        "INSERT INTO identifier_purposes (identifier_id, purpose) "
        f"SELECT identifier_id, purpose FROM {_OWN}.new_purposes"
    )
    conn.execute(
        "INSERT INTO purpose_changes (identifier_id, purpose, held, source_id) "
        f"SELECT identifier_id, purpose, 1, ? FROM {_OWN}.new_purposes",
        (source_id,),
    )
    conn.execute(
        "INSERT INTO identifier_changes (identifier_id) "
        f"SELECT i.id FROM {_OWN}.new_purposes AS n "
        "JOIN identifiers AS i ON i.user_id = n.user_id"
    )


def _record_consent(conn: sqlite3.Connection, source_id: int, known: bool) -> tuple[int, int]:
    """Record the file's new consent events, apply the ones that take effect to users
    the registry held before (if ``known``, there are some), and note every change of
    state. Returns how many events were recorded, and how many users' state changed."""
    conn.execute(
        "INSERT INTO consent_events (user_id, scope, state, effective_at, source_id) "
        f"SELECT user_id, 'ads_matching', state, effective_at, ? FROM {_EFFECTS}.new_events",
        (source_id,),
    )
    # A change wherever the state differs from the one before: for a user with one
    # event taking effect (most), the registry's; for the others, the previous event's.
    changed = conn.execute(
        "INSERT INTO consent_changes (user_id, state, source_id) "
        f"SELECT user_id, state, ? FROM {_EFFECTS}.user_events "
        "WHERE taking = 1 AND (before IS NULL OR before <> state)",
        (source_id,),
    ).rowcount
    (after,) = conn.execute("SELECT COALESCE(MAX(id), 0) FROM consent_changes").fetchone()
    conn.execute(
        "INSERT INTO consent_changes (user_id, state, source_id) "
        "SELECT user_id, state, ? FROM ("
        " SELECT e.user_id, e.state, LAG(e.state, 1, e.before) OVER ("
        "  PARTITION BY e.user_id ORDER BY e.effective_at, e.state) AS prior"
        # (The few users with several events first: each event is then looked up by user.)
        f" FROM {_EFFECTS}.user_events AS u CROSS JOIN {_EFFECTS}.new_events AS e"
        " ON e.user_id = u.user_id"
        " WHERE u.taking > 1 AND e.applies) "
        "WHERE prior IS NULL OR prior <> state",
        (source_id,),
    )
    (several,) = conn.execute(
        "SELECT COUNT(DISTINCT user_id) FROM consent_changes WHERE id > ?", (after,)
    ).fetchone()
    if known:
        conn.execute(
            "UPDATE users SET ads_matching = a.state, "
            "consent_effective_at = MAX(COALESCE(users.consent_effective_at, ''), a.effective_at) "
            f"FROM {_EFFECTS}.user_events AS a WHERE a.known AND users.user_id = a.user_id"
        )
        # Every identifier of a user new to the registry is new, with a purpose added by
        # this file, so its change is logged already (``_add_purposes``): the log is read
        # as a set.
        conn.execute(
            "INSERT INTO identifier_changes (identifier_id) "
            f"SELECT i.id FROM {_EFFECTS}.new_events AS e "
            "JOIN identifiers AS i ON i.user_id = e.user_id WHERE e.known"
        )
    (events,) = conn.execute(f"SELECT COUNT(*) FROM {_EFFECTS}.new_events").fetchone()
    return events, changed + several


def _net_purposes(conn: sqlite3.Connection) -> None:
    """The latest row for each identifier and purpose, a withdrawal winning a tie."""
    conn.execute(
        f"CREATE TABLE {_STAGE}.net AS SELECT user_id, id_type, value_hash, purpose, action FROM ("
        " SELECT user_id, id_type, value_hash, purpose, action, ROW_NUMBER() OVER ("
        "  PARTITION BY user_id, id_type, value_hash, purpose"
        "  ORDER BY effective_at DESC, action = 'remove' DESC) AS rank"
        f" FROM {_STAGE}.rows) WHERE rank = 1"
    )
    conn.execute(
        f"CREATE INDEX {_STAGE}.net_by_identifier ON net (user_id, id_type, value_hash, action)"
    )


def _withdraw(conn: sqlite3.Connection, report: ImportReport) -> None:
    """Withdraw the purposes the file removes; delete identifiers left with none (by the
    schema's delete triggers, as every other deletion)."""
    withdrawn = conn.execute(
        f"SELECT i.id, s.purpose FROM {_STAGE}.net AS s JOIN identifiers AS i "
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
