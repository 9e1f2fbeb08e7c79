"""Faults and access: killed clients and servers, a locked or full database, foreign
certificates, revoked tokens, graceful shutdown, and logs free of secrets."""

import hashlib
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest

from psi import Key, encode_identifier, hash_to_curve
from psi.intersection import sort_rows, truncate
from psi.protocol import Policy
from psi_client.session import ClientConfig, MatchFailed
from psi_client.session import match as match_items
from psi_proto.v2 import matcher_pb2 as pb
from psi_proto.v2 import matcher_pb2_grpc as pb_grpc
from psi_server.service import ServerConfig, start_server
from psi_server import advertisers, store
from psi_server.registry import imports
from psi_server.synthetic import advertiser_list, generate, write_csv

from .support import CLIENT, SERVER, ServerProcess, free_port, integrity, make_registry, psi_match, rows_in

pytestmark = pytest.mark.slow

SYN = generate(1200, seed=33)
LISTING = advertiser_list(SYN, 500, overlap=0.6, seed=4)
TRUTH = len(set(LISTING) & SYN.matchable)


def encoded(emails):
    return list(dict.fromkeys(encode_identifier("email", e) for e in emails))


def match(config, items, epsilon):
    return match_items(config, items, np.arange(len(items)), len(items), ["email"], epsilon)


OPEN = pb.ClientMessage(open=pb.Open(protocol_version=2, id_types=["email"], n_groups=500, n_items=500, epsilon=0.1))


@pytest.fixture
def world(tmp_path):
    db, token_file = make_registry(tmp_path, SYN.rows)
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(LISTING) + "\n")
    return tmp_path, db, token_file, listing


def test_client_killed_mid_upload(world):
    tmp, db, token_file, listing = world
    big = tmp / "big.txt"
    # large enough that the client is still working when killed, even with the native core
    big.write_text("\n".join(f"someone{i}@example.org" for i in range(250_000)) + "\n")
    server = ServerProcess(db, tmp, "--unsafe-exact-counts", "--min-list-size", "10")
    try:
        proc = subprocess.Popen(CLIENT + ["--server", server.address, "--token-file", str(token_file),
                                          "--id-type", "email", "--insecure", "--workers", "1",
                                          "--min-table-size", "10", str(big)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while not rows_in(db, "sessions"):  # accepted: the upload starts now
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        code, out, err = psi_match(server.address, token_file, listing)
        assert code == 0 and out["noisy_count"] == TRUTH, err
        assert rows_in(db, "budget_ledger") == 2 and rows_in(db, "releases") == 1  # the killed session paid, released nothing
    finally:
        server.stop()
    assert integrity(db)


def _open_session(address, token):
    outbox: queue.Queue = queue.Queue()
    chan = grpc.insecure_channel(address)
    stub = pb_grpc.MatcherStub(chan)
    call = stub.Match(iter(outbox.get, None), metadata=(("authorization", f"Bearer {token}"),), timeout=60)
    return chan, outbox, call


def _finish(outbox, call, key, accepted, points):
    outbox.put(pb.ClientMessage(items=pb.Items(points=points.tobytes(), group_sizes=[1] * len(points))))
    rows = []
    while sum(len(r) for r in rows) < accepted.table_size:
        rows.append(np.frombuffer(next(call).table.points, np.uint8).reshape(-1, 32))
    returned = sort_rows(truncate(key.apply(np.vstack(rows), workers=1)))
    for i in range(0, len(returned), 16384):
        outbox.put(pb.ClientMessage(returned=pb.Digests(digests=returned[i : i + 16384].tobytes())))
    outbox.put(None)
    return list(call)[-1].result


def _blinded(key, emails):
    return key.apply(hash_to_curve(encoded(emails), workers=1), workers=1, check=False)


def test_server_killed_mid_session_then_restarted(world):
    tmp, db, token_file, listing = world
    token = token_file.read_text().strip()
    server = ServerProcess(db, tmp, "--unsafe-exact-counts", "--min-list-size", "10")
    chan, outbox, call = _open_session(server.address, token)
    outbox.put(OPEN)
    assert next(call).HasField("accepted")
    server.stop(signal.SIGKILL)
    with pytest.raises(grpc.RpcError) as info:
        list(call)
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    chan.close()
    assert rows_in(db, "budget_ledger") == 1 and rows_in(db, "releases") == 0 and integrity(db)
    server = ServerProcess(db, tmp, "--unsafe-exact-counts", "--min-list-size", "10")
    try:
        code, out, err = psi_match(server.address, token_file, listing)
        assert code == 0 and out["noisy_count"] == TRUTH, err
    finally:
        server.stop()


def test_sigterm_lets_running_session_finish(world):
    tmp, db, token_file, _ = world
    token = token_file.read_text().strip()
    server = ServerProcess(db, tmp, "--unsafe-exact-counts", "--min-list-size", "10", "--grace", "30")
    key = Key.generate()
    chan, outbox, call = _open_session(server.address, token)
    outbox.put(OPEN)
    accepted = next(call).accepted
    server.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 30
    while "refusing new sessions" not in server.logs():
        assert time.monotonic() < deadline, "SIGTERM was not handled"
        time.sleep(0.05)
    # New sessions are refused while the running one may finish.
    code, out, _ = psi_match(server.address, token_file, tmp / "list.txt")
    assert code == 7
    result = _finish(outbox, call, key, accepted, _blinded(key, LISTING))
    assert result.noisy_count == TRUTH
    assert server.proc.wait(30) == 0
    server.stop()
    chan.close()
    assert "shutting down" in server.logs() and rows_in(db, "budget_ledger") == 1


def test_locked_database_delays_the_charge_then_succeeds(world):
    tmp, db, token_file, listing = world
    server = ServerProcess(db, tmp, "--unsafe-exact-counts", "--min-list-size", "10")
    try:
        blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
        blocker.execute("BEGIN IMMEDIATE")  # what a long import's final transaction does
        holder = threading.Timer(3.0, lambda: blocker.execute("COMMIT"))
        holder.start()
        started = time.monotonic()
        code, out, err = psi_match(server.address, token_file, listing)
        assert code == 0 and out["noisy_count"] == TRUTH, err
        assert time.monotonic() - started >= 2.5  # it waited for the lock, then charged
        holder.join()
        blocker.close()
        assert rows_in(db, "budget_ledger") == 1
    finally:
        server.stop()
    assert integrity(db)


def test_database_locked_past_the_timeout_charges_nothing(world, monkeypatch):
    tmp, db, token_file, _ = world
    monkeypatch.setattr(store, "BUSY_TIMEOUT_S", 0.5)
    running = start_server(ServerConfig(db=db, listen=f"127.0.0.1:{free_port()}", insecure=True, workers=1,
                                        policy=Policy(noise=False, min_list_size=10)))
    blocker = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        config = ClientConfig(server=f"127.0.0.1:{running.port}", token=token_file.read_text().strip(),
                              insecure=True, workers=1, min_table_size=10)
        with pytest.raises(MatchFailed) as info:
            match(config, encoded(LISTING), 0.1)
        assert info.value.kind == "busy" and "nothing was charged" in info.value.message
        blocker.execute("ROLLBACK")
        assert match(config, encoded(LISTING), 0.1).noisy_count == TRUTH
    finally:
        blocker.close()
        running.stop(1)
    assert rows_in(db, "budget_ledger") == 1 and integrity(db)


def test_import_concurrent_with_sessions(world):
    tmp, db, token_file, listing = world
    more = generate(3000, seed=99)
    rows = [(f"x-{r[0]}", r[1], f"x.{r[2]}", *r[3:]) for r in more.rows]  # other people
    path = tmp / "more.csv"
    write_csv(rows, path)
    server = ServerProcess(db, tmp, "--unsafe-exact-counts", "--min-list-size", "10")
    try:
        imp = subprocess.Popen(SERVER + ["consent", "import", "--db", db, "--workers", "1", str(path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        results = [psi_match(server.address, token_file, listing) for _ in range(3)]
        assert imp.wait(120) == 0
        for code, out, err in results:
            assert code == 0 and out["noisy_count"] == TRUTH, err
    finally:
        server.stop()
    assert integrity(db)


def test_disk_full_during_import_changes_nothing(world):
    tmp, db, _, _ = world
    conn = store.connect(db)
    before = [conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("users", "identifiers", "consent_events")]
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages + 40}")  # a file system that is nearly full
    more = generate(5000, seed=7)
    path = tmp / "more.csv"
    write_csv([(f"y-{r[0]}", *r[1:]) for r in more.rows], path)
    with path.open("rb") as f, pytest.raises(sqlite3.OperationalError, match="full"):
        imports.import_file(conn, f, "csv", "test", workers=1)
    conn.close()
    conn = store.connect(db)
    after = [conn.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("users", "identifiers", "consent_events")]
    assert after == before and store.integrity_ok(conn)
    conn.close()


def test_disk_full_reported_by_the_cli(world, tmp_path):
    tmp, db, _, _ = world
    script = (
        "import sqlite3, sys\n"
        "from psi_server import store\n"
        "real = store.connect\n"
        "def small(*a, **k):\n"
        "    c = real(*a, **k)\n"
        "    c.execute('PRAGMA max_page_count = ' + str(c.execute('PRAGMA page_count').fetchone()[0] + 40))\n"
        "    return c\n"
        "store.connect = small\n"
        "from psi_server.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    more = generate(5000, seed=8)
    path = tmp_path / "more.csv"
    write_csv([(f"z-{r[0]}", *r[1:]) for r in more.rows], path)
    out = subprocess.run([sys.executable, "-c", script, "consent", "import", "--db", db, "--workers", "1", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == 1
    assert "full" in out.stderr and "Nothing was imported" in out.stderr and "Traceback" not in out.stderr


def test_revoked_and_rotated_tokens(world):
    tmp, db, token_file, listing = world
    conn = store.connect(db)
    other = advertisers.add(conn, "other", 1, 30)
    conn.close()
    server = ServerProcess(db, tmp, "--unsafe-exact-counts", "--min-list-size", "10")
    try:
        chan = grpc.insecure_channel(server.address)
        stub = pb_grpc.MatcherStub(chan)
        mine = stub.GetBudget(pb.GetBudgetRequest(), metadata=(("authorization", f"Bearer {token_file.read_text().strip()}"),))
        theirs = stub.GetBudget(pb.GetBudgetRequest(), metadata=(("authorization", f"Bearer {other}"),))
        assert (mine.advertiser, theirs.advertiser) == ("acme", "other")  # each sees only its own
        chan.close()
        subprocess.run(SERVER + ["advertiser", "revoke-token", "--db", db, "acme"], check=True, capture_output=True)
        code, out, err = psi_match(server.address, token_file, listing)
        assert code == 4 and out["error"] == "auth"
        new = subprocess.run(SERVER + ["advertiser", "rotate-token", "--db", db, "acme"], check=True,
                             capture_output=True, text=True).stdout.strip()
        token_file.write_text(new)
        code, out, err = psi_match(server.address, token_file, listing)
        assert code == 0, err
    finally:
        server.stop()


def test_logs_hold_no_identifiers_tokens_or_keys(world):
    tmp, db, token_file, listing = world
    server = ServerProcess(db, tmp, "--min-list-size", "10", "--threshold", "0")
    try:
        code, out, client_err = psi_match(server.address, token_file, listing)
        assert code == 0
        bad_token = tmp / "bad.token"
        bad_token.write_text("psi1.1.guessedsecretvalue\n")
        psi_match(server.address, bad_token, listing)
    finally:
        server.stop()
    logs = server.logs() + client_err
    token = token_file.read_text().strip()
    secrets_ = [token, token.split(".")[-1], "guessedsecretvalue"]
    for email in LISTING[:200] + sorted(SYN.everything)[:200]:
        secrets_ += [email, hashlib.sha256(email.encode()).hexdigest()]
    secrets_ += [u for u in list(SYN.users)[:200]]
    leaked = [s for s in secrets_ if s in logs]
    assert not leaked, leaked[:3]
    assert "session" in server.logs()  # the log is not simply empty
