"""End to end: ``psi-server serve`` and ``psi-match`` as real processes on loopback."""

import subprocess

import pytest

from psi_server import advertisers, store
from psi_server.synthetic import advertiser_list, generate

from .support import SERVER, ServerProcess, make_pki, make_registry, psi_match

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    syn = generate(1500, seed=11)
    db, token = make_registry(tmp, syn.rows)
    listing = advertiser_list(syn, 600, overlap=0.6, seed=3)
    list_path = tmp / "list.txt"
    list_path.write_text("\n".join(listing) + "\n")
    return tmp, syn, db, token, listing, list_path


@pytest.fixture(scope="module")
def exact_server(world):
    tmp, _, db, *_ = world
    server = ServerProcess(db, tmp, "--unsafe-exact-counts", "--min-list-size", "10")
    yield server
    server.stop()


def test_exact_consented_overlap(world, exact_server):
    tmp, syn, db, token, listing, list_path = world
    code, out, err = psi_match(exact_server.address, token, list_path)
    assert code == 0, err
    truth = len(set(listing) & syn.matchable)
    purpose_blind = len(set(listing) & syn.everything)
    assert out["noisy_count"] == truth and out["noise"] is False
    assert truth < purpose_blind  # the list overlaps security-only and revoked addresses
    assert out["n_submitted"] == 600 and out["n_invalid"] == 0 and out["epsilon_spent"] == 0.1
    assert "UNSAFE" in exact_server.logs()


def test_revocation_between_sessions_drops_the_count(world, exact_server):
    tmp, syn, db, token, listing, list_path = world
    code, before, err = psi_match(exact_server.address, token, list_path)
    assert code == 0, err
    victims = [u for u, emails in syn.users.items() if emails[0] in set(listing) & syn.matchable][:7]
    subprocess.run(SERVER + ["consent", "revoke", "--db", db] + [a for u in victims for a in ("--user", u)],
                   check=True, capture_output=True)
    code, after, err = psi_match(exact_server.address, token, list_path)
    assert code == 0, err
    assert after["noisy_count"] == before["noisy_count"] - 7
    assert after["table_size"] == before["table_size"] - 7  # no padding without noise
    subprocess.run(SERVER + ["consent", "grant", "--db", db] + [a for u in victims for a in ("--user", u)],
                   check=True, capture_output=True)
    code, regained, _ = psi_match(exact_server.address, token, list_path)
    assert regained["noisy_count"] == before["noisy_count"]


def test_invalid_rows_and_csv_column(world, exact_server):
    tmp, syn, db, token, listing, _ = world
    path = tmp / "list.csv"
    rows = ["name,email"] + [f"c{i},{e}" for i, e in enumerate(listing)] + ["bad,not-an-email", "worse,"]
    path.write_text("\n".join(rows) + "\n")
    code, out, err = psi_match(exact_server.address, token, path, "--column", "email")
    assert code == 0, err
    assert out["n_invalid"] == 1 and out["noisy_count"] == len(set(listing) & syn.matchable)
    assert f"line {len(rows) - 1}" in err and "not-an-email" not in err


def test_exit_codes(world, exact_server, tmp_path):
    _, _, db, token, _, list_path = world
    wrong = tmp_path / "wrong.token"
    wrong.write_text("psi1.1.not-the-secret\n")
    code, out, err = psi_match(exact_server.address, wrong, list_path)
    assert code == 4 and out["error"] == "auth" and "invalid or revoked token" in err
    code, _, err = psi_match(exact_server.address, token, tmp_path / "missing.txt")
    assert code == 3
    code, _, err = psi_match(exact_server.address, token, list_path, "--epsilon", "1000")
    assert code == 2 and "outside this server's bounds [0.01, 1]" in err
    conn = store.connect(db)
    poor = tmp_path / "poor.token"
    poor.write_text(advertisers.add(conn, "poor", 0.05, 30) + "\n")
    conn.close()
    code, _, err = psi_match(exact_server.address, poor, list_path, "--epsilon", "0.1")
    assert code == 5 and "budget" in err
    code, out, err = psi_match("127.0.0.1:1", token, list_path)
    assert code == 7 and "unavailable" in err.lower()


def test_over_tls_and_mutual_tls(world, tmp_path):
    tmp, syn, db, token, listing, list_path = world
    pki = make_pki(tmp_path)
    truth = len(set(listing) & syn.matchable)
    server = ServerProcess(db, tmp_path, "--unsafe-exact-counts", "--min-list-size", "10",
                           tls={**pki, "client_ca": None})
    try:
        code, out, err = psi_match(server.address, token, list_path, "--ca-cert", str(pki["ca"]), insecure=False)
        assert code == 0 and out["noisy_count"] == truth, err
        code, _, err = psi_match(server.address, token, list_path, insecure=True)
        assert code == 7  # plaintext client against a TLS server
    finally:
        server.stop()
    server = ServerProcess(db, tmp_path, "--unsafe-exact-counts", "--min-list-size", "10", tls=pki)
    try:
        args = ("--ca-cert", str(pki["ca"]))
        code, out, err = psi_match(server.address, token, list_path, *args,
                                   "--client-cert", str(pki["client_cert"]), "--client-key", str(pki["client_key"]),
                                   insecure=False)
        assert code == 0 and out["noisy_count"] == truth, err
        code, _, _ = psi_match(server.address, token, list_path, *args, insecure=False)
        assert code != 0  # no client certificate
        code, _, _ = psi_match(server.address, token, list_path, *args,
                               "--client-cert", str(pki["stranger_cert"]), "--client-key", str(pki["stranger_key"]),
                               insecure=False)
        assert code != 0  # certificate from a foreign authority
    finally:
        server.stop()
    conn = store.connect(db)
    assert store.integrity_ok(conn)
    conn.close()


def test_insecure_refused_off_loopback(world):
    _, _, db, *_ = world
    out = subprocess.run(SERVER + ["serve", "--db", db, "--listen", "0.0.0.0:0", "--insecure"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "loopback" in out.stderr
