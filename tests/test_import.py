"""Bulk import: malformed files, exact error reports, idempotence, integrity."""

import gc
import json
import subprocess
import sys

import pytest
from psi_server import store
from psi_server.registry import imports
from psi_server.registry.rows import ImportFileError

HEADER = "user_id,id_type,identifier,purpose,consent,updated_at\n"
GOOD = "u1,email,Alice@Example.com,account,granted,2026-01-01T00:00:00Z\n"


@pytest.fixture
def reg(tmp_path):
    path = tmp_path / "r.db"
    store.init(path)
    conn = store.connect(path)
    yield path, conn
    conn.close()


def run_import(conn, data: bytes, fmt="csv"):
    return imports.import_file(conn, data.splitlines(keepends=True), fmt, "test", workers=1)


def counts(conn):
    return tuple(conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                 for t in ("users", "identifiers", "identifier_purposes", "consent_events"))


def test_malformed_csv_rows_reported_by_line(reg):
    _, conn = reg
    data = (
        HEADER
        + GOOD                                                                   # 2
        + "u2,fax,123,account,granted,2026-01-01T00:00:00Z\n"                    # 3
        + "u3,phone,not-a-phone,account,granted,2026-01-01T00:00:00Z\n"         # 4
        + "u4,email,bob@example.com,marketing,granted,2026-01-01T00:00:00Z\n"   # 5
        + "u5,email,carol@example.com,account,maybe,2026-01-01T00:00:00Z\n"     # 6
        + "u6,email,dan@example.com,account,granted,yesterday\n"                 # 7
        + "u7,email,erin@example.com,account,granted,2026-01-01T00:00:00\n"     # 8
        + "u8,email,frank@example.com,account\n"                                 # 9
        + "u9,email,sha256:abcd,account,granted,2026-01-01T00:00:00Z\n"         # 10
        + ",email,gina@example.com,account,granted,2026-01-01T00:00:00Z\n"      # 11
        + GOOD                                                                   # 12 duplicate
        + "u10,phone,+1 650 253 0000,security,granted,2026-01-01T00:00:00Z\n"   # 13
        + "u11,email,trunc@example.com,acc"                                      # 14 truncated
    ).encode() + "\nu12,email,h\xe9@x.com,account,granted,2026-01-01T00:00:00Z\n".encode("latin-1")  # 15
    report = run_import(conn, data)
    assert report.errors == [
        (3, "id_type must be one of email, phone"),
        (4, "identifier: invalid phone: not a phone number"),
        (5, "purpose must be one of account, security, advertising"),
        (6, "consent must be one of granted, revoked"),
        (7, "updated_at is not an ISO 8601 time"),
        (8, "updated_at has no timezone (add Z or an offset)"),
        (9, "expected 6 fields, got 4"),
        (10, "identifier: invalid email: prehashed value is not 64 hex digits"),
        (11, "user_id is empty"),
        (14, "expected 6 fields, got 4"),
        (15, "not valid UTF-8"),
    ]
    assert (report.rows, report.imported_rows, report.duplicate_rows, report.invalid_rows) == (14, 2, 1, 11)
    assert counts(conn) == (2, 2, 2, 2)
    assert store.integrity_ok(conn)
    # Nothing of a rejected row was written: none of their user ids exists.
    users = {u for (u,) in conn.execute("SELECT user_id FROM users")}
    assert users == {"u1", "u10"}


@pytest.mark.parametrize("also", ["", "u1,email,alice@example.com,account,granted,2026-01-01T00:00:00Z,remove\n"])
def test_only_rows_equal_in_every_field_are_duplicates(reg, also):
    """Rows of one identifier and purpose that differ in consent or time are all kept;
    only a row equal to another in every field (after normalization) is a duplicate."""
    _, conn = reg
    data = (HEADER.strip() + ",action\n"
            + "u1,email,alice@example.com,account,granted,2026-01-01T00:00:00Z,add\n"
            + "u1,email,Alice@Example.com,account,granted,2026-01-01T00:00:00Z,\n"   # duplicate
            + "u1,email,alice@example.com,account,revoked,2026-01-02T00:00:00Z,add\n"
            + "u1,email,alice@example.com,account,granted,2026-01-03T00:00:00Z,add\n"
            + "u2,email,bob@example.com,account,granted,2026-01-01T00:00:00Z,add\n" + also).encode()
    report = run_import(conn, data)
    rows = 5 + bool(also)
    assert (report.rows, report.imported_rows, report.duplicate_rows) == (rows, rows - 1, 1)
    # every row distinct in identifier and purpose: nothing is a duplicate
    report = run_import(conn, (HEADER + GOOD + "u2,email,bob@example.com,account,granted,2026-01-01T00:00:00Z\n").encode())
    assert (report.rows, report.imported_rows, report.duplicate_rows) == (2, 2, 0)


def test_missing_columns_rejects_whole_file(reg):
    _, conn = reg
    with pytest.raises(ImportFileError, match="missing column.*purpose"):
        run_import(conn, b"user_id,id_type,identifier,consent,updated_at\nu1,email,a@b.co,granted,x\n")
    with pytest.raises(ImportFileError, match="empty"):
        run_import(conn, b"")
    assert counts(conn) == (0, 0, 0, 0)


def test_reimport_is_idempotent_and_raw_equals_prehashed(reg):
    _, conn = reg
    import hashlib

    digest = hashlib.sha256(b"alice@example.com").hexdigest()
    data = (HEADER + GOOD + f"u1,email,sha256:{digest},advertising,granted,2026-01-01T00:00:00Z\n").encode()
    first = run_import(conn, data)
    assert (first.new_identifiers, first.new_consent_events, first.points_hashed) == (1, 1, 1)
    before = counts(conn)
    changes = conn.execute("SELECT COUNT(*) FROM identifier_changes").fetchone()[0]
    again = run_import(conn, data)
    assert (again.new_identifiers, again.new_consent_events, again.points_hashed) == (0, 0, 0)
    assert counts(conn) == before == (1, 1, 2, 1)
    assert conn.execute("SELECT COUNT(*) FROM identifier_changes").fetchone()[0] == changes
    assert store.integrity_ok(conn)


def test_jsonl_import_and_errors(reg):
    _, conn = reg
    rows = [
        {"user_id": "u1", "id_type": "email", "identifier": "a@example.com", "purpose": "account",
         "consent": "granted", "updated_at": "2026-01-01T00:00:00Z"},
        {"user_id": "u2", "id_type": "email", "identifier": 5, "purpose": "account",
         "consent": "granted", "updated_at": "2026-01-01T00:00:00Z"},
        {"user_id": "u3"},
        [1, 2],
    ]
    data = "\n".join(json.dumps(r) for r in rows).encode() + b'\n{"user_id": "u4", "id_ty'
    report = run_import(conn, data, "jsonl")
    assert report.errors == [
        (2, "identifier is not a string"),
        (3, "missing key(s) id_type, identifier, purpose, consent, updated_at"),
        (4, "not a JSON object"),
        (5, "not valid JSON (Unterminated string starting at)"),
    ]
    assert report.imported_rows == 1


def test_latest_update_wins_whatever_the_row_order(reg):
    _, conn = reg
    data = (HEADER
            + "u1,email,a@example.com,account,revoked,2026-03-01T00:00:00Z\n"
            + "u1,email,a@example.com,account,granted,2026-01-01T00:00:00Z\n"
            + "u2,email,b@example.com,account,granted,2026-03-01T00:00:00+05:00\n"
            + "u2,email,b@example.com,account,revoked,2026-02-28T20:00:00Z\n").encode()
    run_import(conn, data)
    state = dict(conn.execute("SELECT user_id, ads_matching FROM users"))
    # u2: 2026-03-01T00:00+05:00 is 2026-02-28T19:00Z, before the revocation at 20:00Z
    assert state == {"u1": "revoked", "u2": "revoked"}


def test_final_transaction_is_announced_before_it_starts_and_timed(reg):
    path, conn = reg
    seen = []

    def applying(rows):
        # Called once the file is read, while the registry still holds nothing of it.
        other = store.connect(path)
        seen.append((rows, counts(other)))
        other.close()

    data = (HEADER + GOOD + GOOD + "u2,email,b@example.com,account,granted,2026-01-01T00:00:00Z\n"
            + "u3,email,nope,account,granted,2026-01-01T00:00:00Z\n").encode()
    report = imports.import_file(conn, data.splitlines(keepends=True), "csv", "test",
                                 workers=1, on_apply=applying)
    assert seen == [(3, (0, 0, 0, 0))]  # valid rows staged, duplicate included; none written
    assert counts(conn) == (2, 2, 2, 2)
    assert report.apply_seconds > 0


def test_cli_import_reports_and_exit_code(tmp_path):
    path = tmp_path / "r.db"
    bad = tmp_path / "users.csv"
    bad.write_text(HEADER + GOOD + "u2,email,nope,account,granted,2026-01-01T00:00:00Z\n")
    run = [sys.executable, "-m", "psi_server.cli"]
    subprocess.run(run + ["init", "--db", str(path)], check=True, capture_output=True)
    out = subprocess.run(run + ["consent", "import", "--db", str(path), "--workers", "1", "--json", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 3
    report = json.loads(out.stdout)
    assert report["errors"] == [{"line": 3, "reason": "identifier: invalid email: must contain exactly one '@'"}]
    assert report["imported_rows"] == 1 and report["apply_seconds"] >= 0
    assert "nope" not in out.stdout + out.stderr
    out = subprocess.run(run + ["consent", "import", "--db", str(tmp_path / "none.db"), str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "psi-server init" in out.stderr


def test_broken_quoting_refuses_the_whole_file(reg):
    _, conn = reg
    data = (HEADER + GOOD + 'u2,email,"bob@example.com"x,account,granted,2026-01-01T00:00:00Z\n'
            + "u3,email,carol@example.com,account,granted,2026-01-01T00:00:00Z\n").encode()
    with pytest.raises(ImportFileError, match="line 3: malformed CSV"):
        run_import(conn, data)
    assert counts(conn) == (0, 0, 0, 0)


def test_blank_and_whitespace_lines_are_not_rows(reg):
    _, conn = reg
    report = run_import(conn, (HEADER + "\n   \n" + GOOD + "\t\n").encode())
    assert (report.rows, report.imported_rows, report.invalid_rows) == (1, 1, 0)


ACTION = "user_id,id_type,identifier,purpose,consent,updated_at,action\n"


def purposes(conn) -> dict[str, set[str]]:
    """Purposes held per identifier, by the user and value hash's first byte."""
    held: dict[str, set[str]] = {}
    for user, purpose in conn.execute("SELECT i.user_id || ':' || i.id_type, p.purpose FROM identifiers AS i "
                                      "JOIN identifier_purposes AS p ON p.identifier_id = i.id"):
        held.setdefault(user, set()).add(purpose)
    return held


def test_a_purpose_is_withdrawn_and_the_identifier_removed_with_its_last(reg):
    path, conn = reg
    run_import(conn, (HEADER + GOOD + "u1,email,alice@example.com,security,granted,2026-01-01T00:00:00Z\n").encode())
    # importing the address again as security only takes nothing away
    run_import(conn, (HEADER + "u1,email,alice@example.com,security,granted,2026-01-02T00:00:00Z\n").encode())
    assert purposes(conn) == {"u1:email": {"account", "security"}}
    assert matchable(path) == 1
    report = run_import(conn, (ACTION + "u1,email,alice@example.com,account,granted,2026-01-03T00:00:00Z,remove\n"
                               "u9,email,nobody@example.com,account,granted,2026-01-03T00:00:00Z,remove\n").encode())
    assert (report.withdrawn_purposes, report.removed_identifiers, report.points_hashed) == (1, 0, 0)
    assert purposes(conn) == {"u1:email": {"security"}}
    assert matchable(path) == 0  # held only for security now
    report = run_import(conn, (ACTION + "u1,email,alice@example.com,security,granted,2026-01-04T00:00:00Z,remove\n"
                               ).encode())
    assert (report.withdrawn_purposes, report.removed_identifiers) == (1, 1)
    assert counts(conn) == (1, 0, 0, 4)  # the user and their consent history stay
    assert conn.execute("SELECT user_id FROM users").fetchall() == [("u1",)]  # u9 was never created
    history = conn.execute("SELECT purpose, held FROM purpose_changes ORDER BY id").fetchall()
    assert history == [("account", 1), ("security", 1), ("account", 0), ("security", 0)]
    assert store.integrity_ok(conn)


def matchable(path) -> int:
    from psi_server.live import LiveSet

    live = LiveSet(str(path), 10)
    live.build()
    return live.snapshot(["email", "phone"]).size


def test_a_file_is_read_as_the_history_it_describes(reg):
    """Within a file the latest row decides, for consent and for each purpose (a
    revocation or a withdrawal winning a tie), whatever the order of the rows."""
    path, conn = reg
    rows = [
        "u1,email,a@example.com,account,granted,2026-01-02T00:00:00Z,remove",
        "u1,email,a@example.com,account,granted,2026-01-01T00:00:00Z,add",        # withdrawn later
        "u2,email,b@example.com,account,granted,2026-01-01T00:00:00Z,remove",
        "u2,email,b@example.com,account,granted,2026-01-02T00:00:00Z,",           # added again later
        "u3,email,c@example.com,account,granted,2026-01-01T00:00:00Z,add",
        "u3,email,c@example.com,account,granted,2026-01-01T00:00:00Z,remove",     # a tie: withdrawn
        "u4,email,d@example.com,account,revoked,2026-01-02T00:00:00Z,add",
        "u4,email,d@example.com,account,granted,2026-01-03T00:00:00Z,add",        # granted last
        "u5,email,e@example.com,account,granted,2026-01-02T00:00:00Z,add",
        "u5,email,e@example.com,account,revoked,2026-01-02T00:00:00Z,add",        # a tie: revoked
    ]
    report = run_import(conn, (ACTION + "\n".join(rows) + "\n").encode())
    assert report.invalid_rows == 0 and report.new_identifiers == 3
    assert set(purposes(conn)) == {"u2:email", "u4:email", "u5:email"}
    state = dict(conn.execute("SELECT user_id, ads_matching FROM users"))
    assert state == {"u1": "granted", "u2": "granted", "u3": "granted", "u4": "granted", "u5": "revoked"}
    assert matchable(path) == 2
    # nothing transient is left in the history: u3's identifier never existed
    assert conn.execute("SELECT COUNT(*) FROM identifier_history").fetchone()[0] == 3


def test_duplicate_columns_and_keys_are_refused(reg):
    _, conn = reg
    with pytest.raises(ImportFileError, match="line 1: column purpose appears twice"):
        run_import(conn, ("user_id,id_type,identifier,purpose,consent,updated_at,purpose\n"
                          "u1,email,a@example.com,account,granted,2026-01-01T00:00:00Z,security\n").encode())
    with pytest.raises(ImportFileError, match="line 1: columns 7 and 8 have the same name"):
        run_import(conn, (HEADER.strip() + ",note,note\n"
                          "u1,email,a@example.com,account,granted,2026-01-01T00:00:00Z,x,y\n").encode())
    good = {"user_id": "u1", "id_type": "email", "identifier": "a@example.com", "purpose": "account",
            "consent": "granted", "updated_at": "2026-01-01T00:00:00Z"}
    lines = [json.dumps(good),
             json.dumps(good)[:-1] + ', "purpose": "security"}',
             json.dumps(good)[:-1] + ', "x-secret-key": 1, "x-secret-key": 2}',
             json.dumps({**good, "user_id": "u2", "action": 7})]
    report = run_import(conn, ("\n".join(lines) + "\n").encode(), "jsonl")
    assert report.errors == [(2, "key purpose appears twice"), (3, "an object repeats a key"),
                             (4, "action is not a string")]
    assert counts(conn) == (1, 1, 1, 1)


def test_rows_dated_in_the_future_are_refused_with_their_line(reg):
    from datetime import datetime, timedelta, timezone

    from psi_server.registry.times import utc_text

    _, conn = reg
    now = datetime.now(timezone.utc)
    local_as_utc = (now + timedelta(hours=3)).strftime("%Y-%m-%dT%H:%M:%SZ")  # a local time sent with a Z
    data = (HEADER
            + f"u1,email,a@example.com,account,granted,{local_as_utc}\n"
            + f"u2,email,b@example.com,account,granted,{utc_text(now + timedelta(minutes=1))}\n"
            + f"u3,email,c@example.com,account,granted,{utc_text(now + timedelta(minutes=6))}\n").encode()
    report = run_import(conn, data)
    assert report.errors == [(2, "updated_at is more than 5 minutes in the future"),
                             (4, "updated_at is more than 5 minutes in the future")]
    assert [u for (u,) in conn.execute("SELECT user_id FROM users")] == ["u2"]


def test_action_and_reserved_user_ids_are_checked(reg):
    _, conn = reg
    report = run_import(conn, (ACTION + "u1,email,a@example.com,account,granted,2026-01-01T00:00:00Z,delete\n"
                               "erased:1234,email,b@example.com,account,granted,2026-01-01T00:00:00Z,add\n").encode())
    assert report.errors == [(2, "action must be one of add, remove (empty means add)"),
                             (3, "user_id may not start with 'erased:' (kept for erased users)")]
    assert counts(conn) == (0, 0, 0, 0)


def test_reading_a_batch_leaves_the_cyclic_collector_as_it_found_it(reg, monkeypatch):
    """A batch is read with the collector paused (its rows make no cycle); it runs again
    after, even when the read fails, and stays off where it was off."""
    _, conn = reg
    seen = []
    check_rows = imports.check_rows
    monkeypatch.setattr(imports, "check_rows", lambda *a: seen.append(gc.isenabled()) or check_rows(*a))
    run_import(conn, (HEADER + GOOD).encode())
    assert seen == [False] and gc.isenabled()

    def fails(*args):
        raise MemoryError

    monkeypatch.setattr(imports, "check_rows", fails)
    with pytest.raises(MemoryError):
        run_import(conn, (HEADER + GOOD).encode())
    assert gc.isenabled()
    gc.disable()
    try:
        with pytest.raises(MemoryError):
            run_import(conn, (HEADER + GOOD).encode())
        assert not gc.isenabled()
    finally:
        gc.enable()
