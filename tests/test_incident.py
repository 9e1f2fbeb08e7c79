"""An incident drill, end to end with a real server and client: a file labels phone
numbers given for two-factor authentication as account numbers; two advertisers run
sessions; the mistake is found and the purpose withdrawn. The impact report names
exactly who was exposed and which sessions could have counted them, and the next
session no longer does."""

import json
import subprocess

import pytest
from psi_server import advertisers, store

from .support import SERVER, ServerProcess, make_registry, psi_match

pytestmark = pytest.mark.slow

START = "2026-01-01T00:00:00Z"
HEADER = "user_id,id_type,identifier,purpose,consent,updated_at\n"


def phone(i: int) -> str:
    return f"+1 650 555 {i:04d}"


def server_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(SERVER + list(args), capture_output=True, text=True, timeout=120)


def test_mislabelled_second_factor_phones(tmp_path):
    # 300 users with an account address; users 0-119 also gave a phone for two-factor
    # authentication, users 200-219 gave theirs for their account; users 100-119 and
    # 250-259 revoked ads-matching consent.
    revoked = set(range(100, 120)) | set(range(250, 260))
    rows = []
    for i in range(300):
        state = "revoked" if i in revoked else "granted"
        rows.append((f"user-{i}", "email", f"user{i}@example.com", "account", state, "2026-01-01T00:00:00Z"))
        if i < 120 or 200 <= i < 220:
            purpose = "security" if i < 120 else "account"
            rows.append((f"user-{i}", "phone", phone(i), purpose, state, "2026-01-01T00:00:00Z"))
    db, acme = make_registry(tmp_path, rows, name="acme")
    conn = store.connect(db)
    globex_token = advertisers.add(conn, "globex", 100, 30)
    conn.close()
    globex = tmp_path / "globex.token"
    globex.write_text(globex_token + "\n")

    # The faulty export: every phone of users 0-119 and 200-209 as "account".
    bad = tmp_path / "phones-export.csv"
    bad.write_text(HEADER + "".join(
        f"user-{i},phone,{phone(i)},account,{'revoked' if i in revoked else 'granted'},2026-01-01T00:00:00Z\n"
        for i in [*range(120), *range(200, 210)]))
    assert server_cli("consent", "import", "--db", db, "--workers", "1", str(bad)).returncode == 0
    # Exposed: granted users whose 2FA phone became matchable through this file. Users
    # 200-209 already held theirs for their account, and revoked users matched nothing.
    exposed = {f"user-{i}" for i in range(120) if i not in revoked}
    assert len(exposed) == 100

    phones = tmp_path / "phones.txt"
    phones.write_text("\n".join([phone(i) for i in range(120)] + [phone(i) for i in range(200, 220)]
                                + [f"+1 415 555 {i:04d}" for i in range(40)]) + "\n")
    emails = tmp_path / "emails.txt"
    emails.write_text("\n".join(f"user{i}@example.com" for i in range(150)) + "\n")
    server = ServerProcess(db, tmp_path, "--unsafe-exact-counts", "--min-list-size", "10")
    try:
        sessions = []
        for token, listing, kind in ((acme, phones, "phone"), (globex, phones, "phone"), (globex, emails, "email")):
            code, out, err = psi_match(server.address, token, listing, "--id-type", kind)
            assert code == 0, err
            sessions.append(out)
        # the phone sessions counted the exposed users, and the account phones 200-219
        assert [s["noisy_count"] for s in sessions[:2]] == [100 + 20, 100 + 20]

        # Found: withdraw the wrong purpose, by the same file with action=remove.
        fix = tmp_path / "withdraw.csv"
        fix.write_text(HEADER.replace("\n", ",action\n") + "".join(
            f"user-{i},phone,{phone(i)},account,{'revoked' if i in revoked else 'granted'},"
            f"2026-01-01T00:00:00Z,remove\n" for i in range(120)))
        done = server_cli("consent", "import", "--db", db, "--workers", "1", "--json", str(fix))
        assert done.returncode == 0 and json.loads(done.stdout)["withdrawn_purposes"] == 120
        code, after, err = psi_match(server.address, acme, phones, "--id-type", "phone")
        assert code == 0, err
        assert after["noisy_count"] == 20  # the next session no longer counts them
    finally:
        server.stop()

    out = server_cli("report", "impact", "--db", db, "--from", START, "--source", str(bad), "--users", "--json")
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert set(report["user_ids"]) == exposed
    assert (report["users"], report["identifiers"], report["identifiers_by_type"]) == (100, 100, {"phone": 100})
    # the two phone sessions before the fix; not the email session, nor the one after
    assert report["sessions"] == 2 and report["sessions_in_window"] == 4
    assert report["by_advertiser"] == [{"advertiser": "acme", "sessions": 1, "epsilon": 0.1},
                                       {"advertiser": "globex", "sessions": 1, "epsilon": 0.1}]
    assert "noisy_count" not in out.stdout
    # the same report by the file's name, by its digest, and for phones held for accounts
    by_name = json.loads(server_cli("report", "impact", "--db", db, "--from", START, "--source",
                                    "phones-export.csv", "--json").stdout)
    by_digest = json.loads(server_cli("report", "impact", "--db", db, "--from", START, "--source",
                                      report["sources"][0]["digest"][:12], "--json").stdout)
    assert by_name["users"] == by_digest["users"] == 100
    account = json.loads(server_cli("report", "impact", "--db", db, "--from", START, "--purpose", "account",
                                    "--id-type", "phone", "--json").stdout)
    assert (account["users"], account["sessions"]) == (120, 3)  # with users 200-219, after the fix too
    conn = store.connect(db)
    opened = conn.execute("SELECT started_at <= opened_at FROM sessions").fetchall()
    conn.close()
    assert opened == [(1,)] * 4
