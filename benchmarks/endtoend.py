"""The product end to end: ``psi-server`` and ``psi-match`` as separate processes on
loopback, over gRPC, from raw identifiers to the released count.

The server imports its identifiers (hashing them once, as at ingest), loads its live
matchable set, and serves; the client runs one session. Noise is switched off explicitly so the
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
import threading
from pathlib import Path

from psi_server.service import wait_serving

__all__ = ["run_processes"]

SERVER = [sys.executable, "-m", "psi_server.cli"]
CLIENT = [sys.executable, "-m", "psi_client.cli"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _hwm_kib(pid: int) -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(status.split("VmHWM:")[1].split()[0]) if "VmHWM:" in status else 0


def _cpu_s(pid: int) -> float:
    """CPU time (user + sys) of a process and of every live descendant (pool workers),
    from ``/proc``: what the server spends on one session, read before and after it."""
    total = 0
    for proc in [pid, *_descendants(pid)]:
        try:
            fields = Path(f"/proc/{proc}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _descendants(pid: int) -> list[int]:
    """Every live descendant. A child is listed under the thread that started it, and the
    pool's forkserver is started from whichever thread first needs the pool."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        kids = []
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                kids += (task / "children").read_text().split()
            except OSError:
                continue
        found += map(int, kids)
        todo += map(int, kids)
    return found


class _PeakMemory(threading.Thread):
    """Samples ``VmHWM`` of a process and of its descendants (pool workers) while it runs.

    Not ``ru_maxrss`` from ``wait4``: on Linux a child started by fork and exec reports
    at least the peak of the parent it was forked from, which here holds the inputs.
    """

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.main_kib = 0
        self.worker_kib = 0
        self._stop_event = threading.Event()
        self.start()

    def sample(self) -> None:
        self.main_kib = max(self.main_kib, _hwm_kib(self.pid))
        for child in _descendants(self.pid):
            self.worker_kib = max(self.worker_kib, _hwm_kib(child))

    def run(self) -> None:
        while not self._stop_event.wait(0.05):
            self.sample()

    def stop(self) -> int:
        """Largest peak of one process in the tree."""
        self._stop_event.set()
        self.join()
        return max(self.main_kib, self.worker_kib)


def _run(args: list[str], log: Path) -> tuple[str, int]:
    """Run to completion; returns stdout and the largest per-process peak (KiB)."""
    with log.open("ab") as err:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=err)
        peak = _PeakMemory(proc.pid)
        out = proc.stdout.read().decode()
        proc.stdout.close()
        # the last samples before exit: the process is done reading, its peak is reached
        peak.sample()
        code = proc.wait()
    if code != 0:
        raise RuntimeError(f"{' '.join(args[2:4])} failed ({code}); see {log}")
    return out, peak.stop()


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
        with steps("server start (live set build)"), log.open("ab") as err:
            server_proc = subprocess.Popen(
                SERVER + ["serve", "--db", str(db), "--listen", address, "--insecure",
                          "--unsafe-exact-counts", "--min-list-size", "1", "--threshold", "0",
                          "--session-timeout", "86400"],
                stdout=err, stderr=err,
            )
            server_peak = _PeakMemory(server_proc.pid)
            try:
                _wait_serving(address, server_proc, log)
            except BaseException:
                server_proc.kill()
                server_proc.wait()
                raise
        try:
            server_cpu = _cpu_s(server_proc.pid)
            with steps("session (psi-match)"):
                out, peaks["client"] = _run(
                    CLIENT + ["--server", address, "--token-file", str(root / "token"), "--id-type", "email",
                              "--insecure", "--json", "--min-table-size", "1", "--timeout", "86400",
                              str(listing)],
                    log,
                )
            steps.seconds["session: server CPU, all its processes"] = _cpu_s(server_proc.pid) - server_cpu
        finally:
            server_peak.sample()
            server_proc.send_signal(signal.SIGTERM)
            server_proc.wait()
            peaks["server"] = server_peak.stop()
        result = json.loads(out.strip().splitlines()[-1])
        n, m = result["n_distinct"], result["table_size"]
        return int(result["noisy_count"]), peaks, 32 * n + 16 * m, 32 * m
