"""The consent registry: the matchable definition as a property, the live matchable
set's incremental updates, and the schema."""

import hashlib
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from psi import hash_to_curve
from psi_server import consent, store
from psi_server.live import LiveSet

HEADER = "user_id,id_type,identifier,purpose,consent,updated_at\n"


def csv_bytes(rows) -> list[bytes]:
    text = HEADER + "".join(",".join(r) + "\n" for r in rows)
    return io.BytesIO(text.encode()).readlines()


def import_rows(conn, rows, **kw):
    return consent.import_file(conn, csv_bytes(rows), "csv", "test", workers=1, **kw)


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


# A history: identifiers with purposes, and consent events at distinct or equal times.
identifier_rows = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 7), st.sampled_from(consent.PURPOSES)),
    min_size=1, max_size=25,
)
events = st.lists(
    st.tuples(st.integers(0, 5), st.sampled_from(consent.STATES), st.integers(0, 4)), max_size=20
)


def expected_matchable(idents, evs) -> set[bytes]:
    """The definition, computed independently: latest consent per user (revoked wins a
    tie) is granted, and the identifier has a purpose other than security."""
    latest: dict[int, tuple[int, str]] = {}
    for user, state, t in evs:
        cur = latest.get(user)
        if cur is None or t > cur[0] or (t == cur[0] and state == "revoked"):
            latest[user] = (t, state)
    purposes: dict[tuple[int, int], set[str]] = {}
    for user, ident, purpose in idents:
        purposes.setdefault((user, ident), set()).add(purpose)
    return {
        value_hash(ident)
        for (user, ident), ps in purposes.items()
        if latest.get(user, (0, "revoked"))[1] == "granted" and ps - {"security"}
    }


@settings(max_examples=40, deadline=None)
@given(identifier_rows, events, st.booleans())
def test_table_equals_independent_matchable_set(tmp_path_factory, idents, evs, split):
    path = db(tmp_path_factory.mktemp("prop"))
    conn = store.connect(path)
    # Identifier rows carry a consent column too: give them the first event of their user
    # (or a revocation at time 0), then record the remaining events individually.
    first = {}
    for user, state, t in evs:
        first.setdefault(user, (state, t))
    rows = []
    for user, ident, purpose in idents:
        state, t = first.get(user, ("revoked", 0))
        rows.append((f"u{user}", "email", email(ident), purpose, state, f"2026-01-01T00:00:0{t}Z"))
    import_rows(conn, rows)
    known = {u for u, _, _ in idents}
    history = [(u, "revoked", 0) for u in known if u not in first]
    history += [(u, s, t) for u, (s, t) in first.items() if u in known]
    rest = [e for e in evs if e[0] in known]
    # apply the events either as one batch or one at a time, in the generated order
    for user, state, t in rest:
        consent.record_consent(conn, [f"u{user}"], state, f"2026-01-01T00:00:0{t}Z", "test")
        history.append((user, state, t))
    live = LiveSet(path, 100)
    live.build()
    if split:  # also exercise the incremental path: build, then re-sync nothing
        live.snapshot(["email"])
    want = expected_matchable(idents, history)
    assert live_rows(live.snapshot(["email"])) == points_of("email", sorted(want))
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


def test_cap_keeps_a_users_earliest_imported_identifiers(tmp_path):
    path = db(tmp_path)
    conn = store.connect(path)
    order = [7, 3, 9, 1]  # neither sorted by address nor by its hash
    import_rows(conn, [("u1", "email", email(i), "account", "granted", "2026-01-01T00:00:00Z")
                       for i in order[:3]])
    import_rows(conn, [("u1", "email", email(order[3]), "account", "granted", "2026-01-01T00:00:00Z")])
    for cap in range(1, 5):
        assert table(path, cap=cap) == points_of("email", [value_hash(i) for i in order[:cap]])


def withdraw(conn, user: int, ident: int, remove: bool) -> None:
    """Take a purpose back, or the identifier with all its purposes (as a withdrawal or
    an erasure does), straight in the registry."""
    with store.transaction(conn):
        row = conn.execute("SELECT id FROM identifiers WHERE user_id = ? AND value_hash = ?",
                           (f"u{user}", value_hash(ident))).fetchone()
        if row is None:
            return
        conn.execute("DELETE FROM identifier_purposes WHERE identifier_id = ? AND "
                     "(? OR purpose = 'account')", (row[0], remove))
        if remove:
            conn.execute("DELETE FROM identifiers WHERE id = ?", (row[0],))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["revoke", "grant", "add", "withdraw", "remove"]),
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
        elif op in ("withdraw", "remove"):
            withdraw(conn, user, user if other % 2 else 100 + other, op == "remove")
        else:
            consent.record_consent(conn, [f"u{user}"], "granted" if op == "grant" else "revoked", when)
        assert live_rows(live.snapshot(["email"])) == table(path, cap=cap)


def test_revocation_before_snapshot_is_applied_without_rebuild(tmp_path):
    path = db(tmp_path)
    conn = store.connect(path)
    import_rows(conn, [(f"u{u}", "email", email(u), "account", "granted", "2026-01-01T00:00:00Z") for u in range(50)])
    live = LiveSet(path)
    live.build()
    base = live.snapshot(["email"]).base
    consent.record_consent(conn, ["u7", "u8"], "revoked")
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
    consent.record_consent(conn, ["u3"], "revoked")
    (latest,) = conn.execute("SELECT MAX(seq) FROM identifier_changes").fetchone()
    assert consent.prune_change_log(conn, latest)  # as a second server would, after syncing
    assert conn.execute("SELECT COUNT(*) FROM identifier_changes").fetchone()[0] == 0
    consent.record_consent(conn, ["u4"], "revoked")
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
    assert not conn.execute("SELECT name FROM sqlite_schema WHERE name = 'points'").fetchall()
    kept = dict(conn.execute("SELECT value_hash, point FROM identifiers"))
    assert kept == {values[0]: points[0].tobytes(), values[2]: points[2].tobytes()}
    assert table(str(path)) == points_of("email", [values[0]])
    with pytest.raises(Exception, match="32-byte point"):
        conn.execute("UPDATE identifiers SET point = NULL WHERE id = 1")

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
