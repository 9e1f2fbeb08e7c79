"""The consent registry: the matchable definition as a property, the live matchable
set's incremental updates, and the schema."""

import hashlib
import io
import sqlite3
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psi_server import store
from psi_server.live import LiveSet
from psi_server.registry import changes, history, imports, tables, times

from psi import hash_to_curve

from . import registry_model as model
from .support import SERVER

HEADER = "user_id,id_type,identifier,purpose,consent,updated_at\n"


def csv_bytes(rows, action: bool = False) -> list[bytes]:
    header = HEADER.replace("\n", ",action\n") if action else HEADER
    text = header + "".join(",".join(r) + "\n" for r in rows)
    return io.BytesIO(text.encode()).readlines()


def import_rows(conn, rows, **kw):
    return imports.import_file(conn, csv_bytes(rows), "csv", "test", workers=1, **kw)


def email(i: int) -> str:
    return f"person{i}@example.com"


def value_hash(i: int) -> bytes:
    return hashlib.sha256(email(i).encode()).digest()


def points_of(id_type, values) -> set[bytes]:
    """The hashed points of value hashes, computed apart from the registry."""
    if not values:
        return set()
    pts = hash_to_curve([id_type.encode() + b"\x00" + v for v in values], workers=1)
    return {r.tobytes() for r in pts}


def live_rows(snapshot) -> set[bytes]:
    rows = snapshot.take(np.arange(snapshot.size))
    assert len({r.tobytes() for r in rows}) == snapshot.size  # distinct
    return {r.tobytes() for r in rows}


def table(path, id_type="email", cap=1) -> set[bytes]:
    """A freshly built live set's points of one type."""
    live = LiveSet(path, cap)
    live.build()
    return live_rows(live.snapshot([id_type]))


def db(tmp_path, name="r.db"):
    path = tmp_path / name
    store.init(path)
    return str(path)


@settings(max_examples=120, deadline=None)
@given(model.histories)
def test_live_set_follows_an_independent_model_of_the_history(tmp_path_factory, history):
    """Grants, revocations (by import or command, dated in any order), purposes added
    and withdrawn, erasures and rows dated in the future: after every change, the live
    set (kept incrementally) and a fresh build hold exactly the model's matchable
    values, and never a value held only for security."""
    path = db(tmp_path_factory.mktemp("history"))
    conn = store.connect(path)
    live = LiveSet(path, 100)
    live.build()
    expected = model.Model()
    for index, op in enumerate(history):
        model.run(conn, index, op)
        expected.apply(index, op)
        want = points_of("email", sorted({model.value_hash(v) for _, _, v in expected.matchable()}))
        assert live_rows(live.snapshot(["email"])) == want
        security_only = points_of("email", [model.value_hash(v) for v in expected.values_only_for_security()])
        assert not want & security_only
    assert table(path, cap=100) == want
    assert store.integrity_ok(conn)
    conn.close()


def test_security_only_identifier_never_matches(tmp_path):
    path = db(tmp_path)
    conn = store.connect(path)
    import_rows(conn, [
        ("u1", "email", email(1), "security", "granted", "2026-01-01T00:00:00Z"),
        ("u1", "email", email(2), "security", "granted", "2026-01-01T00:00:00Z"),
        ("u1", "email", email(2), "account", "granted", "2026-01-01T00:00:00Z"),
        ("u2", "phone", "+1 650 253 0000", "security", "granted", "2026-01-01T00:00:00Z"),
    ])
    assert table(path, cap=10) == points_of("email", [value_hash(2)])
    assert table(path, "phone", cap=10) == set()


def test_cap_limits_identifiers_per_user_and_shared_values_appear_once(tmp_path):
    path = db(tmp_path)
    conn = store.connect(path)
    rows = [(f"u{u}", "email", email(i), "account", "granted", "2026-01-01T00:00:00Z")
            for u in range(3) for i in range(4)]
    import_rows(conn, rows)  # three users sharing the same four addresses
    assert table(path, cap=1) == points_of("email", [value_hash(0)])
    assert len(table(path, cap=2)) == 2
    assert table(path, cap=9) == points_of("email", [value_hash(i) for i in range(4)])


@pytest.mark.parametrize("cap", [1, 2])
def test_full_read_matches_each_row_to_its_own_values_point(tmp_path, cap):
    """The live set's full read (rows and points in two sorted passes, batch by batch)
    gives every matchable identifier the point of its own value, the same rows as the
    per-user read, for both types and with values any byte may start."""
    path = db(tmp_path)
    conn = store.connect(path)
    rows = []
    for u in range(150):
        consent = "revoked" if u % 7 == 0 else "granted"
        for k in range(u % 3 + 1):
            purpose = "security" if (u + k) % 5 == 0 else "account"
            rows.append((f"u{u}", "email", email(u * 3 + k), purpose, consent, "2026-01-01T00:00:00Z"))
            rows.append((f"u{u}", "email", email(k), "account", consent, "2026-01-01T00:00:00Z"))
        if u % 2:
            rows.append((f"u{u}", "phone", f"+1415555{u:04d}", "account", consent, "2026-01-01T00:00:00Z"))
    import_rows(conn, rows)
    conn.execute("BEGIN")
    full = tables.read_matchable(conn, cap, batch=7)
    users = [u for (u,) in conn.execute("SELECT user_id FROM users")]
    per_user = tables.matchable_of_users(conn, cap, users)
    values = {i: (t, v) for i, t, v in conn.execute("SELECT id, id_type, value_hash FROM identifiers")}
    conn.execute("COMMIT")

    def as_set(m):
        return {(int(i), int(t), p.tobytes()) for i, t, p in zip(m.ids, m.types, m.points)}

    assert len(full.ids) == len(set(full.ids.tolist())) > 100
    assert as_set(full) == as_set(per_user)
    assert set(full.types.tolist()) == {0, 1}
    for i, t, p in as_set(full):
        id_type, value = values[i]
        assert points_of(id_type, [value]) == {p}
    conn.close()


def test_cap_keeps_a_users_earliest_imported_identifiers(tmp_path):
    path = db(tmp_path)
    conn = store.connect(path)
    order = [7, 3, 9, 1]  # neither sorted by address nor by its hash
    import_rows(conn, [("u1", "email", email(i), "account", "granted", "2026-01-01T00:00:00Z")
                       for i in order[:3]])
    import_rows(conn, [("u1", "email", email(order[3]), "account", "granted", "2026-01-01T00:00:00Z")])
    for cap in range(1, 5):
        assert table(path, cap=cap) == points_of("email", [value_hash(i) for i in order[:cap]])


def withdraw(conn, user: int, ident: int, erase: bool) -> None:
    """Take the account purpose of an identifier back by import (the identifier goes
    if that was its last purpose), or erase its user."""
    if erase:
        changes.erase_users(conn, [f"u{user}"])
    else:
        imports.import_file(conn, csv_bytes([(f"u{user}", "email", email(ident), "account", "granted",
                                               "2026-01-01T00:00:00Z", "remove")], action=True),
                            "csv", "withdrawal", workers=1)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["revoke", "grant", "add", "withdraw", "erase"]),
                          st.integers(0, 7), st.integers(0, 9)),
                min_size=1, max_size=12),
       st.sampled_from([1, 2]))
def test_incremental_updates_equal_a_rebuild(tmp_path_factory, ops, cap):
    path = db(tmp_path_factory.mktemp("inc"))
    conn = store.connect(path)
    rows = [(f"u{u}", "email", email(u), "account", "granted", "2026-01-01T00:00:00Z") for u in range(8)]
    rows += [("u0", "email", email(3), "advertising", "granted", "2026-01-01T00:00:00Z")]  # shared
    import_rows(conn, rows)
    live = LiveSet(path, cap)
    live.build()
    for step, (op, user, other) in enumerate(ops, start=1):
        when = f"2026-02-01T00:00:{step:02d}Z"
        if op == "add":
            import_rows(conn, [(f"u{user}", "email", email(100 + other), "account", "granted", when)])
        elif op in ("withdraw", "erase"):
            withdraw(conn, user, user if other % 2 else 100 + other, op == "erase")
        else:
            changes.record_consent(conn, [f"u{user}"], "granted" if op == "grant" else "revoked", when)
        assert live_rows(live.snapshot(["email"])) == table(path, cap=cap)


def test_revocation_before_snapshot_is_applied_without_rebuild(tmp_path):
    path = db(tmp_path)
    conn = store.connect(path)
    import_rows(conn, [(f"u{u}", "email", email(u), "account", "granted", "2026-01-01T00:00:00Z") for u in range(50)])
    live = LiveSet(path)
    live.build()
    base = live.snapshot(["email"]).base
    changes.record_consent(conn, ["u7", "u8"], "revoked")
    snap = live.snapshot(["email"])
    assert snap.size == 48 and snap.base is base  # same arrays: no rebuild
    assert live_rows(snap) == points_of("email", [value_hash(u) for u in range(50) if u not in (7, 8)])


def test_pruned_change_log_is_followed_by_a_rebuild(tmp_path):
    path = db(tmp_path)
    conn = store.connect(path)
    import_rows(conn, [(f"u{u}", "email", email(u), "account", "granted", "2026-01-01T00:00:00Z") for u in range(20)])
    live, other = LiveSet(path), LiveSet(path)
    live.build()
    other.build()
    changes.record_consent(conn, ["u3"], "revoked")
    (latest,) = conn.execute("SELECT MAX(seq) FROM identifier_changes").fetchone()
    assert tables.prune_change_log(conn, latest)  # as a second server would, after syncing
    assert conn.execute("SELECT COUNT(*) FROM identifier_changes").fetchone()[0] == 0
    changes.record_consent(conn, ["u4"], "revoked")
    assert live_rows(live.snapshot(["email"])) == table(path) == points_of(
        "email", [value_hash(u) for u in range(20) if u not in (3, 4)])
    assert live_rows(other.snapshot(["email"])) == table(path)


def test_schema_version_and_append_only(tmp_path):
    path = db(tmp_path)
    conn = store.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    import_rows(conn, [("u1", "email", email(1), "account", "granted", "2026-01-01T00:00:00Z")])
    with pytest.raises(Exception, match="append-only"):
        conn.execute("UPDATE consent_events SET state = 'revoked'")
    with pytest.raises(Exception, match="append-only"):
        conn.execute("DELETE FROM consent_events")
    assert store.init(path) == store.SCHEMA_VERSION  # idempotent
    newer = tmp_path / "newer.db"
    store.init(newer)
    c2 = store.connect(newer)
    c2.execute(f"PRAGMA user_version = {store.SCHEMA_VERSION + 1}")
    c2.close()
    with pytest.raises(store.RegistryError, match="newer than this program"):
        store.connect(newer)
    with pytest.raises(store.RegistryError, match="psi-server init"):
        store.connect(tmp_path / "missing.db")


def test_a_new_registry_takes_large_pages_and_an_older_file_keeps_its_own(tmp_path):
    """Only a new file takes ``PAGE_SIZE``; a registry made with SQLite's default 4 KiB
    pages (every one before) opens, imports (its scratch databases' pages differ) and
    builds the same live set."""
    older = tmp_path / "older.db"
    c = sqlite3.connect(older)
    c.execute("PRAGMA page_size = 4096")
    c.execute("CREATE TABLE fixes_the_page_size (a)")
    c.execute("DROP TABLE fixes_the_page_size")
    c.close()
    rows = [(f"u{i}", "email", email(i), "account", "granted", "2026-01-01T00:00:00Z")
            for i in range(300)]
    for path, size in ((tmp_path / "new.db", store.PAGE_SIZE), (older, 4096)):
        store.init(path)
        conn = store.connect(path)
        assert store.init(path) == store.SCHEMA_VERSION  # opening again changes nothing
        report = import_rows(conn, rows)
        assert report.new_identifiers == 300 and not report.invalid_rows
        assert conn.execute("PRAGMA page_size").fetchone()[0] == size
        conn.close()
        assert table(str(path), cap=1) == points_of("email", [value_hash(i) for i in range(300)])


def test_a_version_1_registry_upgrades_in_place_keeping_every_point(tmp_path, caplog):
    """Schema 1 kept points in their own table; schema 2 keeps each on its identifier."""
    path = tmp_path / "v1.db"
    conn = store.connect(path, create=True)
    with store.transaction(conn):
        for statement in store._split(store.MIGRATIONS[0]):
            conn.execute(statement)
        conn.execute("PRAGMA user_version = 1")
    values = [value_hash(i) for i in range(3)]
    points = hash_to_curve([b"email\x00" + v for v in values], workers=1)
    with store.transaction(conn):
        conn.executemany("INSERT INTO users (user_id) VALUES (?)", [("u0",), ("u1",)])
        conn.executemany("INSERT INTO points VALUES ('email', ?, ?)",
                         [(v, p.tobytes()) for v, p in zip(values, points)])
        # u1 shares u0's first address; the third address is given only for security
        owners = [("u0", 0, "account"), ("u1", 0, "advertising"), ("u1", 2, "security")]
        for n, (user, i, purpose) in enumerate(owners, start=1):
            conn.execute("INSERT INTO identifiers (id, user_id, id_type, value_hash) VALUES (?, ?, 'email', ?)",
                         (n, user, values[i]))
            conn.execute("INSERT INTO identifier_purposes VALUES (?, ?)", (n, purpose))
        conn.executemany("INSERT INTO consent_events (user_id, scope, state, effective_at, source) "
                         "VALUES (?, 'ads_matching', 'granted', '2026-01-01T00:00:00.000000Z', 'v1')",
                         [("u0",), ("u1",)])
    conn.close()

    with caplog.at_level("INFO", logger="psi_server.store"):
        conn = store.connect(path)  # migrates
    assert "upgrading the registry schema to version 2" in caplog.text
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    assert store.integrity_ok(conn)
    # every held value keeps its point, once, with the number of identifiers holding it
    kept = {v: (p, n) for v, p, n in conn.execute("SELECT value_hash, point, holders FROM points")}
    assert kept == {values[0]: (points[0].tobytes(), 2), values[2]: (points[2].tobytes(), 1)}
    assert "point" not in [c[1] for c in conn.execute("PRAGMA table_info(identifiers)")]
    assert table(str(path)) == points_of("email", [values[0]])
    with pytest.raises(Exception, match="needs its hashed point"):
        conn.execute("INSERT INTO identifiers (user_id, id_type, value_hash) VALUES ('u0', 'email', ?)",
                     (values[1],))

    # an import after the upgrade reuses the stored point instead of hashing again
    report = import_rows(conn, [("u2", "email", email(2), "account", "granted", "2026-01-02T00:00:00Z")])
    assert report.points_hashed == 0 and report.new_identifiers == 1
    assert table(str(path)) == points_of("email", [values[0], values[2]])


def test_version_2_audit_rows_become_sessions_with_their_releases(tmp_path):
    """Version 2 recorded each release in audit_log; version 3 records sessions when
    charged and releases apart."""
    path = tmp_path / "v2.db"
    conn = store.connect(path, create=True)
    for version in (1, 2):
        with store.transaction(conn):
            for statement in store._split(store.MIGRATIONS[version - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {version}")
    with store.transaction(conn):
        conn.execute("INSERT INTO advertisers (name, token_hash, budget_micro, period_days) "
                     "VALUES ('acme', zeroblob(32), 1000000, 30)")
        conn.execute("INSERT INTO audit_log (advertiser_id, released_at, session_id, epoch_id, id_type, "
                     "n_items, epsilon_micro, sensitivity, threshold, noise, noisy_count, suppressed) "
                     "VALUES (1, '2026-03-01T00:00:00.000000Z', 's1', 'e1', 'email', 500, 100000, 1, 100, 1, 321, 0)")
    conn.close()
    conn = store.connect(path)
    assert conn.execute("SELECT session_id, id_types, n_groups, n_items, table_size, epsilon_micro "
                        "FROM sessions").fetchall() == [("s1", "email", 500, 500, None, 100000)]
    assert conn.execute("SELECT session_id, noisy_count, suppressed FROM releases").fetchall() == [("s1", 321, 0)]
    assert not conn.execute("SELECT name FROM sqlite_schema WHERE name = 'audit_log'").fetchall()
    with pytest.raises(Exception, match="append-only"):
        conn.execute("DELETE FROM sessions")
    assert store.integrity_ok(conn)


def at_version(path, version: int):
    """A registry file created by the migrations up to ``version`` only."""
    conn = store.connect(path, create=True)
    for step in range(1, version + 1):
        with store.transaction(conn):
            for statement in store._split(store.MIGRATIONS[step - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {step}")
    return conn


def test_a_version_3_registry_upgrades_replaying_consent_under_the_new_rule(tmp_path):
    """Version 3 let a grant dated in the future outrank every later revocation. The
    upgrade keeps every event, replays them under the new rule (revoking that user, and
    telling the live set), and rebuilds the history the impact report reads."""
    path = tmp_path / "v3.db"
    conn = at_version(path, 3)
    values = [value_hash(i) for i in range(1, 5)]
    points = hash_to_curve([b"email\x00" + v for v in values], workers=1)
    batches = [  # (source, recorded_at, [(user, state, effective_at)])
        ("import:a.csv", "2026-03-01T10:00:00.000Z", [("u1", "granted", "2026-01-01T00:00:00.000000Z"),
                                                      ("u2", "granted", "2099-01-01T00:00:00.000000Z"),
                                                      ("u3", "granted", "2026-01-01T00:00:00.000000Z"),
                                                      ("u4", "granted", "2026-01-01T00:00:00.000000Z")]),
        ("cli", "2026-03-02T10:00:00.000Z", [("u2", "revoked", "2026-03-02T10:00:00.000000Z"),
                                             ("u3", "revoked", "2026-03-02T10:00:00.000000Z")]),
        ("cli", "2026-03-03T10:00:00.000Z", [("u3", "granted", "2026-03-03T10:00:00.000000Z")]),
    ]
    with store.transaction(conn):
        purposes = ["account", "account", "advertising", "security"]
        for n, (v, p, purpose) in enumerate(zip(values, points, purposes), start=1):
            conn.execute("INSERT INTO users (user_id) VALUES (?)", (f"u{n}",))
            conn.execute("INSERT INTO identifiers (id, user_id, id_type, value_hash, point) "
                         "VALUES (?, ?, 'email', ?, ?)", (n, f"u{n}", v, p.tobytes()))
            conn.execute("INSERT INTO identifier_purposes VALUES (?, ?)", (n, purpose))
        for source, recorded, events in batches:
            conn.executemany("INSERT INTO consent_events (user_id, scope, state, effective_at, recorded_at, source) "
                             "VALUES (?, 'ads_matching', ?, ?, ?, ?)", [(*e, recorded, source) for e in events])
        conn.execute("INSERT INTO advertisers (name, token_hash, budget_micro, period_days) "
                     "VALUES ('acme', zeroblob(32), 1000000, 30)")
        conn.execute("INSERT INTO sessions (session_id, advertiser_id, opened_at, id_types, n_groups, n_items, "
                     "table_size, epsilon_micro, sensitivity, threshold, noise) VALUES "
                     "('s1', 1, '2026-03-01T12:00:00.000000Z', 'email', 100, 100, 500, 100000, 1, 100, 1)")
    assert dict(conn.execute("SELECT user_id, ads_matching FROM users"))["u2"] == "granted"  # the bug
    (changes_before,) = conn.execute("SELECT MAX(seq) FROM identifier_changes").fetchone()
    conn.close()

    conn = store.connect(path)  # upgrades
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    assert store.integrity_ok(conn)
    assert dict(conn.execute("SELECT user_id, ads_matching FROM users")) == {
        "u1": "granted", "u2": "revoked", "u3": "granted", "u4": "granted"}
    # a future time no longer outranks what comes after the upgrade
    assert conn.execute("SELECT consent_effective_at FROM users WHERE user_id = 'u2'").fetchone()[0] < "2027"
    assert conn.execute("SELECT identifier_id FROM identifier_changes WHERE seq > ?",
                        (changes_before,)).fetchall() == [(2,)]
    assert table(str(path)) == points_of("email", [values[0], values[2]])
    sources = conn.execute("SELECT kind, name, applied_at FROM change_sources ORDER BY id").fetchall()
    assert sources[:3] == [("earlier", "import:a.csv", "2026-03-01T10:00:00.000000Z"),
                           ("earlier", "cli", "2026-03-02T10:00:00.000000Z"),
                           ("earlier", "cli", "2026-03-03T10:00:00.000000Z")]
    assert [k for k, _, _ in sources[3:]] == ["upgrade"]
    assert conn.execute("SELECT COUNT(*) FROM consent_events").fetchone()[0] == 7
    history_of = {u: [s for (s,) in conn.execute(
        "SELECT state FROM consent_changes WHERE user_id = ? ORDER BY id", (u,))] for u in ("u1", "u2", "u3")}
    assert history_of == {"u1": ["granted"], "u2": ["granted", "revoked"],
                          "u3": ["granted", "revoked", "granted"]}

    def matchable(start, end):
        report = history.impact(conn, start, end)
        return report.users, report.sessions

    # what the registry did then, under the rule of the time: u2 was matchable
    assert matchable("2026-03-01T11:00:00.000000Z", "2026-03-01T13:00:00.000000Z") == (3, 1)
    assert matchable("2026-03-02T11:00:00.000000Z", "2026-03-02T12:00:00.000000Z") == (2, 0)
    now = times.now_utc()
    assert matchable(now, now) == (2, 0)
    assert history.impact(conn, now, now).reconstructed_before == sources[3][2]
    with pytest.raises(Exception, match="append-only"):
        conn.execute("UPDATE consent_events SET state = 'revoked'")
    with pytest.raises(Exception, match="NOT NULL constraint failed: purpose_changes.source_id"):
        conn.execute("DELETE FROM identifier_purposes")  # a change without a source
    # new identifiers are numbered past the old ones, and new grants are not outranked
    import_rows(conn, [("u5", "email", email(5), "account", "granted", "2026-04-01T00:00:00Z")])
    changes.record_consent(conn, ["u2"], "granted")
    assert table(str(path)) == points_of("email", [values[0], values[1], values[2], value_hash(5)])
    assert conn.execute("SELECT MIN(id) FROM identifiers WHERE user_id = 'u5'").fetchone()[0] > 4
    conn.close()


HISTORY_TABLES = ("users", "identifier_purposes", "identifier_history", "consent_events", "consent_changes",
                  "purpose_changes", "identifier_changes", "change_sources")
# Version 6 keys consent events by their columns, without a row number.
COLUMNS = {"consent_events": "user_id, scope, state, effective_at, source_id"}


def history_rows(conn) -> dict:
    return {t: sorted(conn.execute(f"SELECT {COLUMNS.get(t, '*')} FROM {t}")) for t in HISTORY_TABLES}


def upgraded(path, kept: dict):
    """The registry opened, so upgraded: at this program's schema, intact, its history kept."""
    conn = store.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == store.SCHEMA_VERSION
    assert store.integrity_ok(conn)
    assert history_rows(conn) == kept
    return conn


def test_a_version_4_registry_upgrades_keeping_each_point_once_per_value(tmp_path):
    """Version 4 kept a point on every identifier row; version 5 keeps each value's point
    once, with the number of identifiers holding it. Every other row stays as it was, the
    live set holds the same points, and a point still goes with its last holder."""
    path = tmp_path / "v4.db"
    conn = at_version(path, 4)
    values = [value_hash(i) for i in range(6)]
    points = hash_to_curve([b"email\x00" + v for v in values], workers=1)
    # u0 and u1 share value 0; u1 holds three values; u3's is only for security; u4 revoked
    owners = [("u0", 0, "account"), ("u1", 0, "advertising"), ("u1", 1, "account"), ("u1", 2, "account"),
              ("u2", 3, "account"), ("u3", 4, "security"), ("u4", 5, "account")]
    at = "2026-01-01T00:00:00.000000Z"
    with store.transaction(conn):
        conn.execute("UPDATE writing_source SET source_id = 1")
        for user in ("u0", "u1", "u2", "u3", "u4"):
            conn.execute("INSERT INTO users (user_id) VALUES (?)", (user,))
        for n, (user, i, purpose) in enumerate(owners, start=1):
            conn.execute("INSERT INTO identifiers (id, user_id, id_type, value_hash, point) VALUES (?, ?, 'email', ?, ?)",
                         (n, user, values[i], points[i].tobytes()))
            conn.execute("INSERT INTO identifier_purposes VALUES (?, ?)", (n, purpose))
        for user in ("u0", "u1", "u2", "u3", "u4"):
            conn.execute("INSERT INTO consent_events (user_id, scope, state, effective_at, source_id) "
                         "VALUES (?, 'ads_matching', ?, ?, 1)", (user, "revoked" if user == "u4" else "granted", at))
        conn.execute("UPDATE writing_source SET source_id = NULL")
        conn.execute("INSERT INTO change_sources (id, kind, name, applied_at, committed_at) "
                     "VALUES (1, 'import', 'old.csv', ?, ?)", (at, at))
    with store.transaction(conn):  # u2's only identifier withdrawn, and its point with it
        conn.execute("UPDATE writing_source SET source_id = 2")
        conn.execute("DELETE FROM identifier_purposes WHERE identifier_id = 5")
        conn.execute("DELETE FROM identifiers WHERE id = 5")
        conn.execute("UPDATE writing_source SET source_id = NULL")
        conn.execute("INSERT INTO change_sources (id, kind, name, applied_at, committed_at) "
                     "VALUES (2, 'import', 'fix.csv', ?, ?)", (at, at))
    kept = history_rows(conn)
    identifiers_before = sorted(conn.execute("SELECT id, user_id, id_type, value_hash FROM identifiers"))
    matchable_before = {p for (p,) in conn.execute(
        "SELECT i.point FROM matchable AS m JOIN identifiers AS i ON i.id = m.identifier_id")}
    conn.close()

    conn = upgraded(path, kept)
    assert sorted(conn.execute("SELECT * FROM identifiers")) == identifiers_before
    assert sorted(conn.execute("SELECT value_hash, point, holders FROM points")) == sorted(
        [(values[0], points[0].tobytes(), 2)] + [(values[i], points[i].tobytes(), 1) for i in (1, 2, 4, 5)])
    assert table(str(path), cap=100) == matchable_before == points_of("email", values[:3])
    assert table(str(path), cap=2) == points_of("email", values[:2])
    assert table(str(path), cap=1) == points_of("email", values[:1])
    # a shared value's point stays while one user holds it, and goes with the last
    changes.erase_users(conn, ["u0"])
    assert conn.execute("SELECT holders FROM points WHERE value_hash = ?", (values[0],)).fetchone() == (1,)
    changes.erase_users(conn, ["u1"])
    assert conn.execute("SELECT COUNT(*) FROM points WHERE value_hash IN (?, ?, ?)", values[:3]).fetchone() == (0,)
    assert store.integrity_ok(conn)
    conn.close()


def test_a_version_5_registry_upgrades_keeping_every_consent_event_under_its_key(tmp_path):
    """Version 6 keys consent events by user, state, date and source. Every event and
    every other history row stays; after the upgrade an import still finds the events it
    repeats, the precedence rule still applies, an erasure still replaces the user in
    them, and nothing else may change them."""
    path = tmp_path / "v5.db"
    conn = at_version(path, 5)
    import_rows(conn, [(f"u{i}", "email", email(i), "account", "granted", "2026-01-01T00:00:00Z") for i in range(4)])
    changes.record_consent(conn, ["u1", "u2"], "revoked", "2026-02-01T00:00:00Z")
    import_rows(conn, [("u2", "email", email(2), "account", "granted", "2026-03-01T00:00:00Z")])
    changes.erase_users(conn, ["u3"])
    kept = history_rows(conn)
    assert len(kept["consent_events"]) == 7
    users = sorted(conn.execute("SELECT * FROM users"))
    conn.close()

    conn = upgraded(path, kept)
    assert sorted(conn.execute("SELECT * FROM users")) == users
    assert "id" not in [c[1] for c in conn.execute("PRAGMA table_info(consent_events)")]
    # a repeated event is found and not recorded again; a revocation still wins
    again = import_rows(conn, [("u1", "email", email(1), "account", "revoked", "2026-02-01T00:00:00Z")])
    assert (again.new_consent_events, again.consent_changes) == (0, 0)
    assert changes.record_consent(conn, ["u0"], "revoked").changed == 1
    assert changes.record_consent(conn, ["u1"], "granted", "2026-01-15T00:00:00Z").kept == 1
    assert table(str(path)) == points_of("email", [value_hash(2)])
    changes.erase_users(conn, ["u0"])
    assert conn.execute("SELECT COUNT(*) FROM consent_events WHERE user_id = 'u0'").fetchone() == (0,)
    # u3's grant, u0's grant and revocation
    assert conn.execute("SELECT COUNT(*) FROM consent_events WHERE user_id LIKE 'erased:%'").fetchone() == (3,)
    with pytest.raises(Exception, match="append-only"):
        conn.execute("UPDATE consent_events SET effective_at = '2027-01-01T00:00:00.000000Z'")
    with pytest.raises(Exception, match="append-only"):
        conn.execute("DELETE FROM consent_events WHERE user_id = 'u1'")
    assert store.integrity_ok(conn)
    conn.close()


def test_a_revocation_always_takes_effect(tmp_path):
    path = db(tmp_path)
    conn = store.connect(path)
    soon = times.utc_text(datetime.now(timezone.utc) + timedelta(minutes=4))  # within the skew
    import_rows(conn, [("u1", "email", email(1), "account", "granted", soon),
                       ("u2", "email", email(2), "account", "granted", "2026-01-01T00:00:00Z")])
    assert table(path) == points_of("email", [value_hash(1), value_hash(2)])
    # revoked now, before the grant's date: the revocation wins
    assert changes.record_consent(conn, ["u1"], "revoked") == changes.ConsentResult(1, 0, 0, [])
    # a revocation dated exactly like one already recorded is recorded again and wins
    import_rows(conn, [("u2", "email", email(2), "account", "revoked", "2026-02-01T00:00:00Z")])
    assert changes.record_consent(conn, ["u2"], "granted", "2026-03-01T00:00:00Z").changed == 1
    assert changes.record_consent(conn, ["u2"], "revoked", "2026-02-01T00:00:00Z").changed == 1
    assert table(path) == set()
    # re-importing the old revocation (or the old grant) changes nothing
    changes.record_consent(conn, ["u2"], "granted", "2026-04-01T00:00:00Z")
    again = import_rows(conn, [("u2", "email", email(2), "account", "revoked", "2026-02-01T00:00:00Z"),
                               ("u2", "email", email(2), "account", "granted", "2026-01-01T00:00:00Z")])
    assert (again.new_consent_events, again.consent_changes) == (0, 0)
    assert table(path) == points_of("email", [value_hash(2)])
    # an old grant recorded later does not undo a revocation
    result = changes.record_consent(conn, ["u1", "u2", "nobody"], "granted", "2026-01-15T00:00:00Z")
    assert result == changes.ConsentResult(0, 1, 1, ["nobody"])
    with pytest.raises(ValueError, match="future"):
        changes.record_consent(conn, ["u1"], "granted", "2999-01-01T00:00:00Z")
    conn.close()


def test_erasure_leaves_nothing_of_the_user_in_the_file(tmp_path):
    """After ``psi-server user erase`` returns, no value, hash, point or id of the
    erased users is anywhere in the database file or its write-ahead log, while a
    reader stays connected; their history stays under tombstones."""
    path = db(tmp_path)
    conn = store.connect(path)
    rows = []
    for i in range(400):
        rows.append((f"user-{i:05d}", "email", email(i), "account", "granted", "2026-01-01T00:00:00Z"))
        rows.append((f"user-{i:05d}", "phone", f"+1 650 555 {i:04d}", "security", "granted", "2026-01-01T00:00:00Z"))
    import_rows(conn, rows)
    live = LiveSet(path)
    live.build()
    assert live.snapshot(["email"]).size == 400
    victims = [7, 123, 399]
    phones = [hashlib.sha256(f"+1650555{i:04d}".encode()).digest() for i in victims]
    secrets_of = {
        "ids": [f"user-{i:05d}".encode() for i in victims],
        "values": [email(i).encode() for i in victims],
        "hashes": [value_hash(i) for i in victims] + phones,
        "points": sorted(points_of("email", [value_hash(i) for i in victims]) | points_of("phone", phones)),
    }
    assert all(h in Path(path).read_bytes() + wal_bytes(path) for h in secrets_of["hashes"])
    out = subprocess.run(SERVER + ["user", "erase", "--db", path] + [f"user-{i:05d}" for i in victims],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    everything = Path(path).read_bytes() + wal_bytes(path)
    for kind, needles in secrets_of.items():
        assert not [n for n in needles if n in everything], kind
    assert value_hash(8) in everything  # the others are still there
    assert live_rows(live.snapshot(["email"])) == points_of(
        "email", [value_hash(i) for i in range(400) if i not in victims])
    report = history.impact(conn, "2026-01-01T00:00:00.000000Z", times.now_utc(), list_users=True)
    assert report.users == 400
    assert sum(u.startswith("erased:") for u in report.user_ids) == 3
    again = subprocess.run(SERVER + ["user", "erase", "--db", path, "user-00007"], capture_output=True, text=True)
    assert again.returncode == 3 and "not in the registry" in again.stderr
    assert store.integrity_ok(conn)
    conn.close()


def wal_bytes(path) -> bytes:
    wal = Path(f"{path}-wal")
    return wal.read_bytes() if wal.exists() else b""


def test_an_erasure_says_when_a_reader_keeps_deleted_pages_in_the_log(tmp_path):
    path = db(tmp_path)
    conn = store.connect(path)
    import_rows(conn, [(f"user-{i}", "email", email(i), "account", "granted", "2026-01-01T00:00:00Z")
                       for i in range(50)])
    reader = store.connect(path)
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM identifiers").fetchone()  # holds a snapshot from before
    conn.execute("PRAGMA busy_timeout = 200")
    result = changes.erase_users(conn, ["user-3"])
    assert (result.erased, result.identifiers, result.checkpointed) == (1, 1, False)
    assert value_hash(3) in Path(path).read_bytes() + wal_bytes(path)
    reader.execute("COMMIT")
    reader.close()
    assert store.checkpoint(conn)
    assert value_hash(3) not in Path(path).read_bytes() + wal_bytes(path)
    conn.close()
