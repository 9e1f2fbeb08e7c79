"""The operator's command line: version, option checks, configuration sources and their
precedence, advertisers, consent commands."""

import json
import subprocess
import sys
from datetime import timedelta

import pytest
from psi_server import advertisers, store
from psi_server.cli import main

HEADER = "user_id,id_type,identifier,purpose,consent,updated_at\n"


@pytest.fixture
def registry(tmp_path):
    path = tmp_path / "r.db"
    store.init(path)
    return str(path)


def usage_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_registry_commands_start_without_the_computation(tmp_path):
    """The commands that only read and write the registry load neither numpy nor gRPC
    (about half a second each); the import loads numpy, not gRPC."""
    db, users = tmp_path / "r.db", tmp_path / "u.csv"
    users.write_text(HEADER + "u1,email,a@example.com,account,granted,2026-01-01T00:00:00Z\n")
    script = (
        "import sys\nfrom psi_server.cli import main\n"
        f"main(['init', '--db', {str(db)!r}])\n"
        f"main(['advertiser', 'add', '--db', {str(db)!r}, 'acme', '--epsilon-budget', '1'])\n"
        f"main(['advertiser', 'list', '--db', {str(db)!r}])\n"
        "print(sorted(m for m in ('numpy', 'grpc', 'psi._native') if m in sys.modules))\n"
        f"main(['consent', 'import', '--db', {str(db)!r}, {str(users)!r}])\n"
        "print(sorted(m for m in ('numpy', 'grpc') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert out.splitlines()[-2:] == ["[]", "['numpy']"]


def test_the_pool_preloads_modules_that_exist():
    import importlib.util

    from psi.parallel import PRELOAD

    assert all(importlib.util.find_spec(name) is not None for name in PRELOAD)


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.startswith("psi-server ")


@pytest.mark.parametrize("argv,message", [
    (["serve", "--threshold", "-1000"], "--threshold: must be at least 0"),
    (["serve", "--threshold", "1e3"], "--threshold: '1e3' is not a whole number"),
    (["serve", "--epsilon-min", "0"], "--epsilon-min: must be above 0"),
    (["serve", "--epsilon-max", "nan"], "--epsilon-max: must be a finite number"),
    (["serve", "--epsilon-min", "0.0000001"], "--epsilon-min: epsilon must be positive (at least 1e-6)"),
    (["serve", "--epsilon-min", "0.5", "--epsilon-max", "0.1"], "--epsilon-min must not exceed --epsilon-max"),
    (["serve", "--min-list-size", "1000", "--max-list-size", "10"], "--min-list-size must not exceed"),
    (["serve", "--max-list-size", "0"], "--max-list-size: must be at least 1"),
    (["serve", "--session-timeout", "0"], "--session-timeout: must be above 0"),
    (["serve", "--grace", "-1"], "--grace: must be at least 0"),
    (["serve", "--grace", "inf"], "--grace: must be a finite number"),
    (["serve", "--identifiers-per-user", "0"], "--identifiers-per-user: must be at least 1"),
    (["serve", "--max-sessions", "-2"], "--max-sessions: must be at least 1"),
    (["serve", "--workers", "0"], "--workers: must be at least 1"),
    (["advertiser", "add", "acme", "--epsilon-budget", "-1"], "--epsilon-budget: must be at least 0"),
    (["advertiser", "add", "acme", "--period-days", "0"], "--period-days: must be above 0"),
    (["advertiser", "rotate-token", "acme", "--overlap-hours", "-1"], "--overlap-hours: must be at least 0"),
    (["audit", "--limit", "0"], "--limit: must be at least 1"),
    (["consent", "import", "f.csv", "--workers", "0"], "--workers: must be at least 1"),
    (["consent", "revoke", "--user", "u1", "--at", "2999-01-01T00:00:00Z"], "--at: is more than 5 minutes"),
    (["report", "impact", "--from", "yesterday"], "--from: the time is not an ISO 8601 time"),
    (["report", "impact", "--from", "2026-01-01T00:00:00Z", "--purpose", "security"], "invalid choice"),
])
def test_every_numeric_option_is_checked(registry, capsys, argv, message):
    words = 1 if argv[0] in ("serve", "audit") else 2
    assert message in usage_error(argv[:words] + ["--db", registry] + argv[words:], capsys)


def test_configuration_file_environment_and_command_line_in_that_order(registry, tmp_path, monkeypatch, capsys):
    config = tmp_path / "psi.toml"
    config.write_text(f'db = "{registry}"\nlog-level = "warning"\n[advertiser.add]\nepsilon-budget = 3\n'
                      '[serve]\nthreshold = 250\n')
    monkeypatch.setenv("PSI_SERVER_CONFIG", str(config))
    assert main(["advertiser", "add", "from-file"]) == 0  # --db and the budget come from the file
    monkeypatch.setenv("PSI_SERVER_EPSILON_BUDGET", "4")
    assert main(["advertiser", "add", "from-env"]) == 0
    assert main(["advertiser", "add", "from-argv", "--epsilon-budget", "5"]) == 0
    conn = store.connect(registry)
    budgets = {name: advertisers.by_name(conn, name).budget for name in ("from-file", "from-env", "from-argv")}
    conn.close()
    assert budgets == {"from-file": 3, "from-env": 4, "from-argv": 5}
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "(default: 250)" in " ".join(capsys.readouterr().out.split())
    monkeypatch.setenv("PSI_SERVER_THRESHOLD", "-3")
    assert "PSI_SERVER_THRESHOLD: --threshold must be at least 0" in usage_error(["init"], capsys)


@pytest.mark.parametrize("text,message", [
    ("[serve]\nthreshold = -1\n", "[serve]: --threshold must be at least 0"),
    ("[serve]\nthreshhold = 1\n", "[serve]: threshhold is not an option that can be configured here"),
    ("[srve]\nthreshold = 1\n", "no command srve"),
    ("[advertiser.budget]\nreset = true\n", "reset is not an option that can be configured here"),
    ("threshold = [1, 2]\n", "--threshold takes a single value"),
    ("db = ", "is not valid TOML"),
])
def test_a_bad_configuration_is_a_usage_error(tmp_path, capsys, text, message):
    config = tmp_path / "psi.toml"
    config.write_text(text)
    assert message in usage_error(["--config", str(config), "init", "--db", str(tmp_path / "r.db")], capsys)


def test_token_rotation_with_an_overlap(registry, capsys):
    conn = store.connect(registry)
    first = advertisers.add(conn, "acme", 1, 30)
    assert main(["advertiser", "rotate-token", "--db", registry, "acme", "--overlap-hours", "2"]) == 0
    second = capsys.readouterr().out.strip()
    assert advertisers.authenticate(conn, first).name == advertisers.authenticate(conn, second).name == "acme"
    assert main(["advertiser", "list", "--db", registry, "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["token"] == "active" and listed["previous_token_until"] > listed["since"]
    # once the overlap is over, only the new token works
    conn.execute("UPDATE advertisers SET previous_token_until = '2026-01-01T00:00:00.000000Z'")
    with pytest.raises(advertisers.AuthError):
        advertisers.authenticate(conn, first)
    third = advertisers.rotate_token(conn, "acme", timedelta(hours=1))
    fourth = advertisers.rotate_token(conn, "acme")  # no overlap: the previous token stops now
    for old in (second, third):
        with pytest.raises(advertisers.AuthError):
            advertisers.authenticate(conn, old)
    assert advertisers.authenticate(conn, fourth).name == "acme"
    fifth = advertisers.rotate_token(conn, "acme", timedelta(hours=1))
    advertisers.revoke_token(conn, "acme")  # revoking ends the overlap too
    for token in (fourth, fifth):
        with pytest.raises(advertisers.AuthError):
            advertisers.authenticate(conn, token)
    conn.close()


def test_consent_commands_report_changes_and_read_files_with_a_byte_order_mark(registry, tmp_path, capsys):
    users = tmp_path / "users.csv"
    users.write_text(HEADER + "".join(f"u{i},email,u{i}@example.com,account,granted,2026-01-01T00:00:00Z\n"
                                      for i in range(3)))
    assert main(["consent", "import", "--db", registry, "--workers", "1", str(users)]) == 0
    ids = tmp_path / "ids.txt"
    ids.write_bytes("\ufeffu0\nu1\n\n".encode())
    assert main(["consent", "revoke", "--db", registry, "--file", str(ids)]) == 0
    assert "revoke: 2 users revoked, 0 already revoked" in capsys.readouterr().err
    assert main(["consent", "revoke", "--db", registry, "--user", "u0", "--user", "ghost"]) == 3
    err = capsys.readouterr().err
    assert "0 users revoked, 1 already revoked" in err and "1 user id(s) not in the registry" in err
    assert main(["consent", "grant", "--db", registry, "--user", "u1", "--at", "2026-01-02T00:00:00Z"]) == 0
    assert "1 left revoked (a consent event dated later stands)" in capsys.readouterr().err


def test_report_impact_names_its_source(registry, tmp_path, capsys):
    users = tmp_path / "users.csv"
    users.write_text(HEADER + "u1,email,u1@example.com,account,granted,2026-01-01T00:00:00Z\n")
    assert main(["consent", "import", "--db", registry, "--workers", "1", str(users)]) == 0
    other = tmp_path / "other.csv"
    other.write_text(HEADER)
    since = ["report", "impact", "--db", registry, "--from", "2026-01-01T00:00:00Z", "--json"]
    capsys.readouterr()
    assert main(since + ["--source", str(users)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["users"], report["sources"][0]["name"]) == (1, "users.csv")
    assert main(since + ["--source", str(other)]) == 3  # never imported
    assert "no import or command" in capsys.readouterr().err
    assert main(since + ["--to", "2025-01-01T00:00:00Z"]) == 2
    assert "the window ends before it starts" in capsys.readouterr().err
