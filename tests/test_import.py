"""Bulk import: malformed files, exact error reports, idempotence, integrity."""

import json
import subprocess
import sys

import pytest

from psi_server import consent, store

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
    return consent.import_file(conn, data.splitlines(keepends=True), fmt, "test", workers=1)


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


def test_missing_columns_rejects_whole_file(reg):
    _, conn = reg
    with pytest.raises(consent.ImportFileError, match="missing column.*purpose"):
        run_import(conn, b"user_id,id_type,identifier,consent,updated_at\nu1,email,a@b.co,granted,x\n")
    with pytest.raises(consent.ImportFileError, match="empty"):
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
    report = consent.import_file(conn, data.splitlines(keepends=True), "csv", "test",
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
    with pytest.raises(consent.ImportFileError, match="line 3: malformed CSV"):
        run_import(conn, data)
    assert counts(conn) == (0, 0, 0, 0)


def test_blank_and_whitespace_lines_are_not_rows(reg):
    _, conn = reg
    report = run_import(conn, (HEADER + "\n   \n" + GOOD + "\t\n").encode())
    assert (report.rows, report.imported_rows, report.invalid_rows) == (1, 1, 0)
