"""The product end to end: ``psi-server`` and ``psi-match`` as separate processes on
loopback, over gRPC, from raw identifiers to the released count.

The server imports its identifiers (hashing them once, as at ingest), builds its key
epoch, and serves; the client runs one session. Noise is switched off explicitly so the
count can be checked. Each process's peak memory comes from ``wait4``, so the server, the
client and the import are reported separately.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

from psi_server.service import wait_serving

__all__ = ["run_processes"]

SERVER = [sys.executable, "-m", "psi_server.cli"]
CLIENT = [sys.executable, "-m", "psi_client.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _reap(proc: subprocess.Popen) -> tuple[int, int]:
    """Wait for ``proc``; returns its exit code and peak resident KiB (with its own
    waited-for children, e.g. the pool workers)."""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss


def _run(args: list[str], log: Path) -> tuple[str, int]:
    with log.open("ab") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err)
        out = proc.stdout.read().decode()
        proc.stdout.close()
        code, peak = _reap(proc)
    if code != 0:
        raise RuntimeError(f"{' '.join(args[2:4])} failed ({code}); see {log}")
    return out, peak


def _wait_serving(address: str, proc: subprocess.Popen, log: Path, timeout: float = 7200) -> None:
    try:
        wait_serving(address, timeout, alive=lambda: proc.poll() is None)
    except RuntimeError:
        raise RuntimeError(f"the server exited during start-up; see {log}") from None


def run_processes(client: list[str], server: list[str], steps) -> tuple[int, dict[str, int], int, int]:
    """One end-to-end match. Returns the count, peak KiB per process, and bytes up/down."""
    with tempfile.TemporaryDirectory(prefix="psi-e2e-") as tmp:
        root = Path(tmp)
        log = root / "log.txt"
        db = root / "registry.db"
        users = root / "users.csv"
        listing = root / "list.txt"
        with users.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["user_id", "id_type", "identifier", "purpose", "consent", "updated_at"])
            writer.writerows((f"u{i}", "email", e, "account", "granted", "2026-01-01T00:00:00Z")
                             for i, e in enumerate(server))
        listing.write_text("\n".join(client) + "\n")
        peaks: dict[str, int] = {}
        with steps("server import"):
            _run(SERVER + ["init", "--db", str(db)], log)
            _, peaks["import"] = _run(SERVER + ["consent", "import", "--db", str(db), str(users)], log)
            token, _ = _run(SERVER + ["advertiser", "add", "--db", str(db), "bench", "--epsilon-budget", "1"], log)
        (root / "token").write_text(token)
        address = f"127.0.0.1:{_free_port()}"
        with steps("server start (epoch build)"), log.open("ab") as err:
            server_proc = subprocess.Popen(
                SERVER + ["serve", "--db", str(db), "--listen", address, "--insecure",
                          "--unsafe-exact-counts", "--min-list-size", "1", "--threshold", "0",
                          "--session-timeout", "86400"],
                stdout=err, stderr=err,
            )
            try:
                _wait_serving(address, server_proc, log)
            except BaseException:
                server_proc.kill()
                _reap(server_proc)
                raise
        try:
            with steps("session (psi-match)"):
                out, peaks["client"] = _run(
                    CLIENT + ["--server", address, "--token-file", str(root / "token"), "--id-type", "email",
                              "--insecure", "--json", "--min-table-size", "1", "--timeout", "86400",
                              str(listing)],
                    log,
                )
        finally:
            server_proc.send_signal(signal.SIGTERM)
            _, peaks["server"] = _reap(server_proc)
        result = json.loads(out.strip().splitlines()[-1])
        n, m = result["n_distinct"], result["table_size"]
        return int(result["noisy_count"]), peaks, 32 * n + 16 * m, 32 * m
