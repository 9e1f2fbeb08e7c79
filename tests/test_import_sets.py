"""The import's final transaction writes set by set what the schema's triggers write row
by row. A reference applies the same staged rows the way the import did before, one
statement per table with the triggers firing, to a second registry; after every change
of random histories (imports with withdrawals, commands, erasures) both registries hold
the same rows.

Ids assigned within one transaction may be in another order where nothing reads the
order: consent changes of different users, purpose changes of different identifiers,
the change log's entries of one transaction. The change log is read as a set: the
triggers log some identifiers twice in a transaction, the import once. Consent events
have no order but their key's."""

import hashlib
import io
import random
import sqlite3
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import Future
from pathlib import Path

import pytest
from hypothesis import given, settings
from psi_server import store
from psi_server.registry import changes, imports, rows
from psi_server.registry.sources import Source, recording

from psi import hash_to_curve
from psi.parallel import InlineExecutor, get_executor

from . import registry_model as model

STAGE = imports._STAGE
SAME = imports._SAME_IDENTIFIER


def reference_import(conn, data: bytes, name: str) -> None:
    """Stage ``data`` as the import does, then apply it with the triggers."""
    conn.execute(f"ATTACH DATABASE '' AS {STAGE}")
    try:
        for statement in (imports._STAGING, *imports._KEYED):
            conn.execute(statement)
        layout, batches = rows.csv_batches(io.BytesIO(data), imports.BATCH)
        with tempfile.TemporaryDirectory() as directory:  # (points are computed below)
            hashing = imports._Hashing(directory)
            removals = imports._stage(conn, layout, batches, imports.ImportReport(), "US", InlineExecutor(), hashing)
            hashing.stop()
        added = f"{STAGE}.rows"
        if removals:
            imports._net_purposes(conn)
            added = f"{STAGE}.net"
        with recording(conn, Source("import", name, hashlib.sha256(data).digest())) as source_id:
            (base,) = conn.execute(
                "SELECT MAX((SELECT COALESCE(MAX(id), 0) FROM identifiers), "
                "(SELECT COALESCE(MAX(identifier_id), 0) FROM identifier_history))").fetchone()
            conn.execute(f"INSERT OR IGNORE INTO users (user_id) SELECT DISTINCT user_id FROM {STAGE}.rows "
                         "WHERE action = 'add'")
            # points first, held by nobody: the identifiers' trigger counts their holders
            values = conn.execute(f"SELECT DISTINCT id_type, value_hash FROM {STAGE}.rows AS s "
                                  "WHERE action = 'add' AND NOT EXISTS (SELECT 1 FROM points AS p "
                                  "WHERE p.id_type = s.id_type AND p.value_hash = s.value_hash)").fetchall()
            points = hash_to_curve([t.encode() + b"\x00" + v for t, v in values], workers=1)
            conn.executemany("INSERT INTO points (id_type, value_hash, point, holders) VALUES (?, ?, ?, 0)",
                             [(t, v, p.tobytes()) for (t, v), p in zip(values, points)])
            kept = (f" AND EXISTS (SELECT 1 FROM {added} AS i WHERE {SAME} AND i.action = 'add')"
                    if removals else "")
            conn.execute("INSERT OR IGNORE INTO identifiers (id, user_id, id_type, value_hash) "
                         "SELECT :base + s.rowid, s.user_id, s.id_type, s.value_hash "
                         f"FROM {STAGE}.rows AS s WHERE s.action = 'add'{kept} ORDER BY s.rowid", {"base": base})
            conn.execute("DELETE FROM points WHERE holders = 0")
            conn.execute("INSERT OR IGNORE INTO identifier_purposes (identifier_id, purpose) "
                         f"SELECT DISTINCT i.id, s.purpose FROM {added} AS s JOIN identifiers AS i ON {SAME} "
                         "WHERE s.action = 'add'")
            if removals:
                imports._withdraw(conn, imports.ImportReport())
            conn.execute(
                "INSERT INTO consent_events (user_id, scope, state, effective_at, source_id) "
                "SELECT s.user_id, 'ads_matching', s.consent, s.effective_at, :source "
                f"FROM (SELECT DISTINCT user_id, consent, effective_at FROM {STAGE}.rows) AS s "
                "WHERE EXISTS (SELECT 1 FROM users AS u WHERE u.user_id = s.user_id) "
                "AND NOT EXISTS (SELECT 1 FROM consent_events AS e WHERE e.user_id = s.user_id "
                "AND e.state = s.consent AND e.effective_at = s.effective_at) "
                "ORDER BY s.effective_at, s.consent", {"source": source_id})
    finally:
        conn.execute(f"DETACH DATABASE {STAGE}")


def anonymous(user: str) -> str:
    """Tombstones are random: every erased user compares as one."""
    return "erased" if user.startswith(rows.TOMBSTONE_PREFIX) else user


def in_order(conn, query: str) -> dict:
    """Rows of ``query`` (key first, then id order) as each key's sequence."""
    out: dict = {}
    for key, *rest in conn.execute(query):
        out.setdefault(anonymous(key) if isinstance(key, str) else key, []).append(tuple(rest))
    if "erased" in out:  # several users' rows: no order between them
        out["erased"].sort()
    return out


def contents(conn, log_from: int) -> dict:
    """Everything an import writes, as the readers of each table see it; the change
    log from ``log_from`` on, as a set of entries."""
    return {
        "users": sorted(conn.execute("SELECT * FROM users")),
        "identifiers": sorted(conn.execute("SELECT * FROM identifiers")),
        "points": sorted(conn.execute("SELECT * FROM points")),
        "purposes": sorted(conn.execute("SELECT * FROM identifier_purposes")),
        "history": sorted((i, anonymous(u), t) for i, u, t in conn.execute("SELECT * FROM identifier_history")),
        "events": in_order(conn, "SELECT user_id, state, effective_at, source_id FROM consent_events "
                                 "ORDER BY source_id, user_id, effective_at, state"),
        "consent": in_order(conn, "SELECT user_id, state, source_id FROM consent_changes ORDER BY id"),
        "purpose changes": in_order(conn, "SELECT identifier_id || purpose, held, source_id FROM purpose_changes "
                                          "ORDER BY id"),
        "log": {i for (i,) in conn.execute("SELECT identifier_id FROM identifier_changes WHERE seq > ?",
                                           (log_from,))},
        "log position": conn.execute("SELECT MAX(seq) FROM identifier_changes").fetchone(),
        "sources": conn.execute("SELECT id, kind, name, digest FROM change_sources ORDER BY id").fetchall(),
        "schema": sorted(conn.execute("SELECT type, name, sql FROM sqlite_schema")),
    }


def registries(tmp):
    conns = []
    for name in ("sets.db", "triggers.db"):
        store.init(tmp / name)
        conns.append(store.connect(tmp / name))
    return conns


def csv_of(import_rows) -> bytes:
    return (model.HEADER + "".join(
        f"u{r.user},email,{model.email(r.value)},{r.purpose},{r.consent},"
        f"{model.FUTURE if r.future else model.when(r.t)},{r.action}\n" for r in import_rows)).encode()


def assert_same_writes(sets, triggers, log_from=(0, 0)) -> None:
    """Both registries hold the same rows, the change log of each from its own position
    (the triggers log some entries twice)."""
    written, expected = contents(sets, log_from[0]), contents(triggers, log_from[1])
    del written["log position"], expected["log position"]
    assert written == expected


def apply_both(sets, triggers, index: int, op: tuple) -> None:
    log_from = [c.execute("SELECT COALESCE(MAX(seq), 0) FROM identifier_changes").fetchone()[0]
                for c in (sets, triggers)]
    if op[0] == "import":
        data = csv_of(op[1])
        report = imports.import_file(sets, io.BytesIO(data), "csv", f"op{index}", workers=1)
        reference_import(triggers, data, f"op{index}")
        assert report.consent_changes == triggers.execute(
            "SELECT COUNT(DISTINCT user_id) FROM consent_changes WHERE source_id = "
            "(SELECT MAX(id) FROM change_sources)").fetchone()[0]
    else:
        if op[0] == "cli" and op[3] is None:  # "now" would differ between the two
            op = (*op[:3], 59)
        model.run(sets, index, op)
        model.run(triggers, index, op)
    assert_same_writes(sets, triggers, log_from)
    # the import writes without checking foreign keys: its rows must satisfy them
    assert sets.execute("PRAGMA foreign_key_check").fetchall() == []


@settings(max_examples=80, deadline=None)
@given(model.histories)
def test_set_based_import_writes_what_the_triggers_write(tmp_path_factory, history):
    sets, triggers = registries(tmp_path_factory.mktemp("sets"))
    for index, op in enumerate(history):
        apply_both(sets, triggers, index, op)
    assert store.integrity_ok(sets)
    sets.close()
    triggers.close()


def test_larger_random_imports_write_what_the_triggers_write(tmp_path):
    """Imports of hundreds of rows over many users and shared values: users with several
    consent events in one file, before and after earlier ones, purposes added and
    withdrawn, and the points of values that earlier imports stored."""
    sets, triggers = registries(tmp_path)
    rng = random.Random(5)
    for index in range(12):
        batch = [model.Row(rng.randrange(60), rng.randrange(40), rng.choice(rows.PURPOSES), rng.choice(rows.STATES),
                           rng.randrange(30), rng.choice(["add", "add", "add", "remove"]), rng.random() < 0.02)
                 for _ in range(rng.randrange(50, 400))]
        apply_both(sets, triggers, index, ("import", batch))
        if index % 4 == 3:
            who = rng.sample(range(60), 5)
            apply_both(sets, triggers, index, ("cli", who, rng.choice(rows.STATES), rng.choice([None, 10, 40])))
            apply_both(sets, triggers, index, ("erase", who[:2]))
    assert store.integrity_ok(sets)
    # every point is held, by as many identifiers as its count says
    assert sets.execute("SELECT COUNT(*) FROM points AS p WHERE holders <> (SELECT COUNT(*) FROM identifiers AS i "
                        "WHERE i.id_type = p.id_type AND i.value_hash = p.value_hash)").fetchone() == (0,)
    assert sets.execute("SELECT COUNT(*) FROM identifiers AS i WHERE NOT EXISTS (SELECT 1 FROM points AS p "
                        "WHERE p.id_type = i.id_type AND p.value_hash = i.value_hash)").fetchone() == (0,)
    sets.close()
    triggers.close()


def test_values_counted_beside_the_transaction_serve_a_file_of_new_identifiers(tmp_path):
    """A file whose every adding row numbers a new identifier (values shared between
    users, over several batches) takes the rows counted per value before the transaction;
    one with a row adding an identifier the registry holds has them counted in the
    transaction. Both write what the triggers write."""
    sets, triggers = registries(tmp_path)
    statements: list[str] = []
    sets.set_trace_callback(statements.append)
    counted_inside = f"CREATE TABLE {imports._OWN}.new_values"
    shared = [model.Row(u, u % 7, "account", "granted", 1, "add", False) for u in range(3 * imports.BATCH // 2)]
    apply_both(sets, triggers, 0, ("import", shared))
    assert not [s for s in statements if s.startswith(counted_inside)]
    assert sets.execute("SELECT holders FROM points ORDER BY holders DESC LIMIT 1").fetchone()[0] > imports.BATCH // 7
    statements.clear()
    held = [model.Row(0, 0, "account", "granted", 1, "add", False)]
    apply_both(sets, triggers, 1, ("import", held + [model.Row(u, u, "account", "granted", 2, "add", False)
                                                     for u in range(20_000, 20_050)]))
    assert [s for s in statements if s.startswith(counted_inside)]
    sets.close()
    triggers.close()


def test_a_failed_final_transaction_leaves_the_registry_and_its_triggers_as_they_were(tmp_path):
    sets, _ = registries(tmp_path)
    data = csv_of([model.Row(1, 1, "account", "granted", 1, "add", False)])
    imports.import_file(sets, io.BytesIO(data), "csv", "first", workers=1)
    before = contents(sets, 0)
    # another writer holds the lock past the busy timeout: the import fails as a whole
    other = store.connect(tmp_path / "sets.db")
    other.execute("BEGIN IMMEDIATE")
    sets.execute("PRAGMA busy_timeout = 100")
    try:
        imports.import_file(sets, io.BytesIO(csv_of([model.Row(2, 2, "account", "granted", 2, "add", False)])),
                            "csv", "second", workers=1)
        raise AssertionError("the import should not have had the lock")
    except Exception as exc:
        assert "locked" in str(exc)
    other.execute("ROLLBACK")
    other.close()
    assert contents(sets, 0) == before
    assert STAGE not in [name for _, name, _ in sets.execute("PRAGMA database_list")]
    sets.close()


def points_are_held(conn) -> None:
    """Every identifier's value has its point, computed apart, counted once per holder."""
    held = Counter(conn.execute("SELECT id_type, value_hash FROM identifiers"))
    stored = {(t, v): (p, n) for t, v, p, n in conn.execute("SELECT * FROM points")}
    assert {k: n for k, (_, n) in stored.items()} == dict(held)
    keys = sorted(stored)
    expected = hash_to_curve([t.encode() + b"\x00" + v for t, v in keys], workers=1)
    assert [stored[k][0] for k in keys] == [p.tobytes() for p in expected]


def test_points_stored_or_removed_while_a_file_is_read(tmp_path):
    """Between reading a file and its final transaction, another import stores the point
    of a value the file adds (found none, so hashed it too), or an erasure removes the
    point of a value the file found stored (so did not hash): the counts stay exact and
    the lost point is hashed in the final transaction."""
    path = tmp_path / "r.db"
    store.init(path)
    conn, other = store.connect(path), store.connect(path)

    def csv(user: int, value: int) -> io.BytesIO:
        return io.BytesIO(csv_of([model.Row(user, value, "account", "granted", 1, "add", False)]))

    report = imports.import_file(conn, csv(1, 0), "csv", "first", workers=1,
                                 on_apply=lambda _: imports.import_file(other, csv(9, 0), "csv", "other", workers=1))
    assert report.points_hashed == 1
    assert conn.execute("SELECT holders FROM points").fetchall() == [(2,)]
    points_are_held(conn)

    imports.import_file(conn, csv(2, 1), "csv", "second", workers=1)
    report = imports.import_file(conn, csv(3, 1), "csv", "third", workers=1,
                                 on_apply=lambda _: changes.erase_users(other, ["u2"]))
    assert report.points_hashed == 0 and report.new_identifiers == 1
    points_are_held(conn)
    assert store.integrity_ok(conn)
    other.close()
    conn.close()


def test_a_pool_hashes_the_new_values_of_several_batches_while_the_transaction_runs(tmp_path):
    """Worker processes hash every value the registry lacks, once per batch it first
    appears in, and write each point where the final transaction reads it."""
    path = tmp_path / "r.db"
    store.init(path)
    conn = store.connect(path)
    pool = get_executor(2)
    first = [model.Row(u, u % 9_000, "account", "granted", 1, "add", False) for u in range(2 * imports.BATCH + 5)]
    report = imports.import_file(conn, io.BytesIO(csv_of(first)), "csv", "first", executor=pool)
    # values repeat across the three batches: each batch hashes those it adds
    per_batch = sum(len({r.value for r in first[i : i + imports.BATCH]}) for i in range(0, len(first), imports.BATCH))
    assert report.new_identifiers == len(first) and report.points_hashed == per_batch
    points_are_held(conn)
    # into a registry holding points: only the values it lacks are hashed
    second = [model.Row(u, v, "advertising", "granted", 2, "add", False) for u, v in ((1, 5), (2, 9_000), (3, 9_001))]
    report = imports.import_file(conn, io.BytesIO(csv_of(second)), "csv", "second", executor=pool)
    assert report.points_hashed == 2 and report.new_identifiers == 3
    points_are_held(conn)
    assert store.integrity_ok(conn)
    conn.close()


@pytest.mark.parametrize("slice_points", [1, 7, 1 << 22])
def test_the_points_are_stored_a_slice_of_places_at_a_time(tmp_path, monkeypatch, slice_points):
    """However many statements the points take (SQLite refuses a blob over 10^9 bytes),
    every value gets its own point, into an empty registry and into one holding points
    (a value shared across batches has two places; one serves)."""
    monkeypatch.setattr(imports, "POINTS_PER_INSERT", slice_points)
    sets, triggers = registries(tmp_path)
    first = [model.Row(u, u % 300, "account", "granted", 1, "add", False) for u in range(imports.BATCH + 400)]
    second = [model.Row(u, 250 + u, "advertising", "granted", 2, "add", False) for u in range(120)]
    for name, batch in (("first", first), ("second", second)):
        data = csv_of(batch)
        report = imports.import_file(sets, io.BytesIO(data), "csv", name, executor=get_executor(2))
        assert report.new_identifiers == len(batch)
        reference_import(triggers, data, name)
        assert_same_writes(sets, triggers)
        points_are_held(sets)
    assert report.points_hashed == 70  # values 300 to 369
    sets.close()
    triggers.close()


class _Recording(InlineExecutor):
    def __init__(self, workers: int, events: list) -> None:
        self.workers, self.events = workers, events

    def submit(self, fn, /, *args):
        if fn is imports._hash_slice:
            self.events.append("hash")
        return super().submit(fn, *args)


@pytest.mark.parametrize("workers", [1, 2])
def test_hashing_takes_a_core_only_once_the_work_beside_or_the_transaction_leaves_it(
        tmp_path, monkeypatch, workers):
    """On two cores the transaction takes one and its work beside the other: hashing
    begins when that work ends, or when the transaction waits for the points; on one
    core, only then. The import is the same."""
    events: list[str] = []
    counts, wait = imports._value_counts, imports._Hashing.wait
    monkeypatch.setattr(imports, "_value_counts", lambda conn: (counts(conn), events.append("counted"))[0])
    monkeypatch.setattr(imports._Hashing, "wait", lambda self: (events.append("waiting"), wait(self))[1])
    sets, triggers = registries(tmp_path)
    data = csv_of([model.Row(u, u, "account", "granted", 1, "add", False) for u in range(3 * imports.BATCH)])
    report = imports.import_file(sets, io.BytesIO(data), "csv", "first", executor=_Recording(workers, events))
    assert report.points_hashed == 3 * imports.BATCH and events.count("hash") == 3
    first = events.index("hash")
    assert ("counted" in events[:first] or "waiting" in events[:first]) if workers == 2 else "waiting" in events[:first]
    reference_import(triggers, data, "first")
    assert_same_writes(sets, triggers)
    sets.close()
    triggers.close()


class _HashingFails(InlineExecutor):
    """Runs every task but the hashing, which fails as a full disk would."""

    def submit(self, fn, /, *args):
        if fn is imports._hash_slice:
            failed = Future()
            failed.set_exception(OSError(28, "No space left on device"))
            return failed
        return super().submit(fn, *args)


def test_a_failed_hashing_task_fails_the_import_and_leaves_nothing(tmp_path):
    sets, _ = registries(tmp_path)
    before = contents(sets, 0)
    leftovers = set(Path(tempfile.gettempdir()).glob("psi-import-*"))
    data = csv_of([model.Row(1, 1, "account", "granted", 1, "add", False)])
    try:
        imports.import_file(sets, io.BytesIO(data), "csv", "first", executor=_HashingFails())
        raise AssertionError("the import should have failed")
    except OSError as exc:
        assert exc.errno == 28
    assert contents(sets, 0) == before
    assert set(Path(tempfile.gettempdir()).glob("psi-import-*")) == leftovers
    assert [name for _, name, _ in sets.execute("PRAGMA database_list")] == ["main"]
    sets.close()


def one_row(user: int, value: int, t: int) -> io.BytesIO:
    return io.BytesIO(csv_of([model.Row(user, value, "account", "granted", t, "add", False)]))


def test_consent_effects_read_the_registry_as_the_lock_leaves_it(tmp_path):
    """A consent command holds the write lock when an import's final transaction begins,
    and revokes a user's consent after the date the file grants it. The import waits for
    it, and reads the registry for its consent effects (on another connection) only then:
    the file's older grant is recorded but takes no effect."""
    path = tmp_path / "r.db"
    store.init(path)
    conn, other = store.connect(path), store.connect(path)
    imports.import_file(conn, one_row(1, 1, 1), "csv", "first", workers=1)
    locked = threading.Event()

    def command() -> None:
        with recording(other, Source("cli", "revoke")) as source_id:
            other.execute("INSERT INTO consent_events (user_id, scope, state, effective_at, source_id) "
                          "VALUES ('u1', 'ads_matching', 'revoked', ?, ?)", (model.when(10), source_id))
            locked.set()
            time.sleep(0.5)  # the import reaches its final transaction meanwhile, and waits

    thread = threading.Thread(target=command)

    def lock_taken(_) -> None:
        thread.start()
        locked.wait()

    report = imports.import_file(conn, one_row(1, 2, 5), "csv", "second", workers=1, on_apply=lock_taken)
    thread.join()
    assert report.new_consent_events == 1 and report.consent_changes == 0
    assert conn.execute("SELECT ads_matching, consent_effective_at FROM users").fetchall() == [
        ("revoked", model.when(10))
    ]
    assert report.new_identifiers == 1
    other.close()
    conn.close()


@pytest.mark.parametrize("failing", ["_user_events", "_add_purposes"])
def test_a_failure_beside_or_in_the_final_transaction_leaves_nothing(tmp_path, monkeypatch, failing):
    """The consent effects' connection fails (its failure is raised by the import), or
    the transaction fails while that connection may still be computing (it is stopped
    before the import returns): the registry is as it was, and no thread, connection or
    attached database is left."""
    sets, _ = registries(tmp_path)
    imports.import_file(sets, one_row(1, 1, 1), "csv", "first", workers=1)
    before = contents(sets, 0)
    leftovers = set(Path(tempfile.gettempdir()).glob("psi-import-*"))

    def fails(*args) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(imports, failing, fails)
    data = csv_of([model.Row(u, u, "account", "granted", 2, "add", False) for u in range(2, 300)])
    with pytest.raises(sqlite3.OperationalError, match="disk I/O error"):
        imports.import_file(sets, io.BytesIO(data), "csv", "second", workers=1)
    assert contents(sets, 0) == before
    assert not [t for t in threading.enumerate() if t.name.startswith("import-")]
    assert set(Path(tempfile.gettempdir()).glob("psi-import-*")) == leftovers
    assert [name for _, name, _ in sets.execute("PRAGMA database_list")] == ["main"]
    # the registry takes the next import
    monkeypatch.undo()
    assert imports.import_file(sets, io.BytesIO(data), "csv", "third", workers=1).new_identifiers == 298
    sets.close()
