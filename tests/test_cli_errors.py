"""One-line errors for set-up mistakes: a port already taken, TLS files swapped or not
belonging together, a CA that does not trust the server, and an epsilon the server
refuses. Each is one ``error:`` line (and the client's hint), never a traceback or a
line of gRPC's own log."""

import re
import socket
import subprocess

import pytest

from psi_server import store
from psi_server.synthetic import advertiser_list, generate

from .support import CLIENT, SERVER, ServerProcess, make_pki, make_registry

pytestmark = pytest.mark.slow

SYN = generate(1200, seed=9)
LISTING = advertiser_list(SYN, 300, overlap=0.6, seed=6)
GRPC_LOG_LINE = re.compile(r"^[DIWEF]\d{4} ", re.M)  # gRPC core's own log format


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("errors")
    db, token_file = make_registry(tmp, SYN.rows)
    listing = tmp / "list.txt"
    listing.write_text("\n".join(LISTING) + "\n")
    return tmp, db, token_file, listing, make_pki(tmp)


def one_line(stderr: str) -> str:
    assert not GRPC_LOG_LINE.search(stderr), stderr
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), stderr
    assert all(line.startswith("  hint: ") for line in lines[1:2]) and len(lines) <= 2, stderr
    return lines[0]


def serve(db, *args) -> subprocess.CompletedProcess:
    return subprocess.run(SERVER + ["serve", "--db", db, "--workers", "1", *args],
                          capture_output=True, text=True, timeout=60)


def test_port_in_use(world):
    _, db, *_ = world
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        out = serve(db, "--listen", f"127.0.0.1:{port}", "--insecure")
    assert out.returncode == 2
    assert one_line(out.stderr) == f"error: cannot listen on 127.0.0.1:{port}: address already in use"


def test_address_not_on_this_machine(world):
    _, db, _, _, pki = world
    out = serve(db, "--listen", "192.0.2.1:50051", "--tls-cert", str(pki["server_cert"]),
                "--tls-key", str(pki["server_key"]))
    assert out.returncode == 2
    assert one_line(out.stderr) == "error: cannot listen on 192.0.2.1:50051: cannot assign requested address"


@pytest.mark.parametrize(
    "cert, key, message",
    [
        ("server_key", "server_cert", "--tls-cert {server_key} and --tls-key {server_cert} are swapped"),
        ("server_cert", "client_key", "--tls-key {client_key} is not the private key of the certificate in "
                                      "--tls-cert {server_cert}"),
        ("server_key", "server_key", "--tls-cert {server_key} holds a private key, not a certificate"),
        ("server_cert", "server_cert", "--tls-key {server_cert} holds a certificate, not a private key"),
    ],
)
def test_server_tls_files(world, cert, key, message):
    _, db, _, _, pki = world
    out = serve(db, "--listen", "127.0.0.1:0", "--tls-cert", str(pki[cert]), "--tls-key", str(pki[key]))
    assert out.returncode == 2
    assert one_line(out.stderr) == "error: " + message.format(**{k: str(v) for k, v in pki.items()})


def test_client_ca_is_a_key(world):
    _, db, _, _, pki = world
    out = serve(db, "--listen", "127.0.0.1:0", "--tls-cert", str(pki["server_cert"]),
                "--tls-key", str(pki["server_key"]), "--client-ca", str(pki["client_key"]))
    assert out.returncode == 2
    assert one_line(out.stderr) == f"error: --client-ca {pki['client_key']} holds a private key, not a certificate"


def match(address, token_file, listing, *extra) -> subprocess.CompletedProcess:
    return subprocess.run(
        CLIENT + ["--server", address, "--token-file", str(token_file), "--id-type", "email",
                  "--workers", "1", "--min-table-size", "10", *extra, str(listing)],
        capture_output=True, text=True, timeout=120,
    )


@pytest.fixture(scope="module")
def tls_server(world):
    tmp, db, *_, pki = world
    server_side = {k: v for k, v in pki.items() if k != "client_ca"}  # no client certificates
    server = ServerProcess(db, tmp, "--unsafe-exact-counts", "--min-list-size", "10", tls=server_side)
    yield server
    server.stop()


def test_ca_that_does_not_trust_the_server(world, tls_server):
    _, _, token_file, listing, pki = world
    out = match(tls_server.address, token_file, listing, "--ca-cert", str(pki["foreign_ca"]))
    assert out.returncode == 2
    assert one_line(out.stderr) == (
        "error: UNAVAILABLE: the server's TLS certificate is not trusted (unable to get local "
        "issuer certificate): --ca-cert must name the CA that signed it"
    )


@pytest.mark.parametrize(
    "cert, key, message",
    [
        ("client_key", "client_cert", "--client-cert {client_key} and --client-key {client_cert} are swapped"),
        ("client_cert", "stranger_key", "--client-key {stranger_key} is not the private key of the "
                                        "certificate in --client-cert {client_cert}"),
    ],
)
def test_client_tls_files(world, cert, key, message):
    _, _, token_file, listing, pki = world
    # checked before anything is read or sent: no server needed
    out = match("127.0.0.1:9", token_file, listing, "--ca-cert", str(pki["ca"]),
                "--client-cert", str(pki[cert]), "--client-key", str(pki[key]))
    assert out.returncode == 2
    assert one_line(out.stderr) == "error: " + message.format(**{k: str(v) for k, v in pki.items()})


@pytest.mark.parametrize("epsilon", ["0", "-0.5", "nan", "inf", "-inf"])
def test_epsilon_that_no_server_accepts(world, epsilon):
    _, _, token_file, listing, _ = world
    out = match("127.0.0.1:9", token_file, listing, "--insecure", f"--epsilon={epsilon}")
    assert out.returncode == 2
    assert one_line(out.stderr) == "error: --epsilon must be a positive number"


@pytest.mark.parametrize("workers", ["0", "-2"])
def test_workers_below_one(world, workers):
    _, _, token_file, listing, _ = world
    out = match("127.0.0.1:9", token_file, listing, "--insecure", f"--workers={workers}")
    assert out.returncode == 2
    assert one_line(out.stderr) == "error: --workers must be at least 1"


def test_epsilon_outside_the_servers_bounds(world, tls_server):
    _, db, token_file, listing, pki = world
    conn = store.connect(db)
    charged = conn.execute("SELECT COUNT(*) FROM budget_ledger").fetchone()[0]
    conn.close()
    out = match(tls_server.address, token_file, listing, "--ca-cert", str(pki["ca"]), "--epsilon", "5")
    assert out.returncode == 2
    assert one_line(out.stderr) == "error: --epsilon 5 is outside this server's bounds [0.01, 1]; nothing was charged"
    conn = store.connect(db)
    assert conn.execute("SELECT COUNT(*) FROM budget_ledger").fetchone()[0] == charged
    conn.close()
