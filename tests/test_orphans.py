"""No orphans: after ``kill -9`` of a command that started the local process pool, the
pool's workers, its forkserver and multiprocessing's resource tracker exit by themselves.

Each command runs in a process group of its own, so that everything it started can be
listed (and, whatever happens, killed at the end of the test).
"""

import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from psi_server.synthetic import generate, write_csv

from .support import CLIENT, SERVER, ServerProcess, free_port, make_registry, psi_match, wait_serving

pytestmark = pytest.mark.slow

SYN = generate(1200, seed=5)
# the command itself, the resource tracker, the forkserver and a worker (the pool starts
# its workers as tasks arrive, so a short job may need only one)
POOL_STARTED = 4


def group(pgid: int) -> list[str]:
    """Live (not zombie) processes of a process group: ``pid command`` each."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rindex(")") + 2 :].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            members.append(f"{entry.name} {cmdline[:120]}")
    return members


def kill_and_expect_no_orphans(args: list[str], timeout: float = 60, work=None) -> None:
    """``work()``, if given, is what makes the command start its pool."""
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        if work is not None:
            work()
        deadline = time.monotonic() + timeout
        while len(group(proc.pid)) < POOL_STARTED:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, group(proc.pid)
            time.sleep(0.05)
        started = group(proc.pid)
        assert sum("forkserver" in line for line in started) >= 2, started  # server + workers
        assert any("resource_tracker" in line for line in started), started
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL  # killed while working, not finished
        deadline = time.monotonic() + 10
        while left := group(proc.pid):
            assert time.monotonic() < deadline, f"still running 10 s after kill -9: {left}"
            time.sleep(0.1)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        proc.stderr.close()


def test_server_killed(tmp_path):
    """The server starts its pool for its first session's table: killed during it."""
    db, token_file = make_registry(tmp_path, SYN.rows)
    address = f"127.0.0.1:{free_port()}"
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(f"customer{i}@example.com" for i in range(300)) + "\n")

    def session() -> None:
        wait_serving(address, 60)
        client = threading.Thread(target=psi_match, args=(address, token_file, listing), daemon=True)
        client.start()

    kill_and_expect_no_orphans(
        SERVER + ["serve", "--db", db, "--listen", address, "--insecure", "--workers", "2"], work=session
    )


def test_import_killed(tmp_path):
    db, _ = make_registry(tmp_path, SYN.rows)
    rows = [
        (f"bulk-{i}", "email", f"bulk{i}@example.net", "account", "granted", "2026-01-01T00:00:00Z")
        for i in range(150_000)
    ]
    path = tmp_path / "bulk.csv"
    write_csv(rows, path)
    kill_and_expect_no_orphans(SERVER + ["consent", "import", "--db", db, "--workers", "2", str(path)])


def test_match_killed(tmp_path):
    db, token_file = make_registry(tmp_path, SYN.rows)
    listing = tmp_path / "big.txt"
    listing.write_text("\n".join(f"someone{i}@example.org" for i in range(150_000)) + "\n")
    server = ServerProcess(db, tmp_path, "--unsafe-exact-counts", "--min-list-size", "10")
    try:
        kill_and_expect_no_orphans(
            CLIENT + ["--server", server.address, "--token-file", str(token_file), "--id-type", "email",
                      "--insecure", "--workers", "2", "--min-table-size", "10", str(listing)]
        )
    finally:
        server.stop()
