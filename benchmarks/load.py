"""Many concurrent sessions against one ``psi-server`` process.

Small and large sessions start together from several advertisers. Each either completes
with the exact count (the server runs with noise off) or is refused with
RESOURCE_EXHAUSTED; the server's resident memory is sampled throughout. Used by the
benchmark report (latency of small sessions) and, in a small form, by the test suite.
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from psi import encode_identifier
from psi_client.session import ClientConfig, MatchFailed, match
from psi_server import advertisers, store
from psi_server.registry import imports
from psi_server.synthetic import advertiser_list, generate, write_csv

from .endtoend import SERVER, _free_port, _wait_serving

__all__ = ["LoadResult", "run_load"]


@dataclass
class LoadResult:
    outcomes: list[tuple[str, str, float]] = field(default_factory=list)  # (size, outcome, seconds)
    wrong_counts: int = 0
    server_peak_kib: int = 0
    server_rss_samples_kib: list[int] = field(default_factory=list)
    max_sessions: int = 0
    per_advertiser: int = 0

    def latencies(self, size: str) -> list[float]:
        return sorted(s for k, o, s in self.outcomes if k == size and o == "ok")

    def summary(self) -> dict:
        small = self.latencies("small")
        refused = sum(1 for _, o, _ in self.outcomes if o == "busy")
        return {
            "sessions": len(self.outcomes),
            "completed": sum(1 for _, o, _ in self.outcomes if o == "ok"),
            "refused": refused,
            "other": sum(1 for _, o, _ in self.outcomes if o not in ("ok", "busy")),
            "wrong_counts": self.wrong_counts,
            "small_p50_s": statistics.median(small) if small else None,
            "small_p95_s": small[min(len(small) - 1, int(0.95 * len(small)))] if small else None,
            "small_max_s": small[-1] if small else None,
            "large_s": self.latencies("large"),
            "server_peak_mib": self.server_peak_kib / 1024,
            "max_sessions": self.max_sessions,
            "per_advertiser": self.per_advertiser,
        }


def _rss_kib(pid: int, field_name: str = "VmRSS") -> int:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    return int(status.split(f"{field_name}:")[1].split()[0])


def run_load(
    users: int = 5_000,
    small: int = 32,
    large: int = 2,
    small_size: int = 150,
    large_size: int = 20_000,
    advertiser_count: int = 8,
    max_sessions: int = 18,
    per_advertiser: int = 2,
    workers: int = 1,
    client_workers: int | None = None,
) -> LoadResult:
    """Server with ``workers`` processes; the load generator's sessions share one pool of
    ``client_workers`` (all cores by default), so Python threads only move messages."""
    result = LoadResult(max_sessions=max_sessions, per_advertiser=per_advertiser)
    syn = generate(users, seed=77)
    with tempfile.TemporaryDirectory(prefix="psi-load-") as tmp:
        root = Path(tmp)
        db = root / "registry.db"
        store.init(db)
        conn = store.connect(db)
        write_csv(syn.rows, root / "users.csv")
        with (root / "users.csv").open("rb") as f:
            imports.import_file(conn, f, "csv", "load", workers=workers)
        tokens = [advertisers.add(conn, f"adv{i}", 1000, 30) for i in range(advertiser_count)]
        # large sessions come from advertisers of their own, so they are never refused
        # for the per-advertiser limit and always measure a full session under load
        big_tokens = [advertisers.add(conn, f"big{i}", 1000, 30) for i in range(large)]
        conn.close()
        lists = {
            "small": advertiser_list(syn, small_size, overlap=0.6, seed=1),
            "large": advertiser_list(syn, large_size, overlap=0.2, seed=2),
        }
        encoded = {k: list(dict.fromkeys(encode_identifier("email", e) for e in v)) for k, v in lists.items()}
        truth = {k: len(set(v) & syn.matchable) for k, v in lists.items()}
        address = f"127.0.0.1:{_free_port()}"
        log = root / "server.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                SERVER + ["serve", "--db", str(db), "--listen", address, "--insecure", "--unsafe-exact-counts",
                          "--min-list-size", "10", "--threshold", "0", "--workers", str(workers),
                          "--max-sessions", str(max_sessions),
                          "--max-sessions-per-advertiser", str(per_advertiser)],
                stdout=out, stderr=out,
            )
        try:
            _wait_serving(address, proc, log, timeout=300)
            done = threading.Event()

            def sample() -> None:
                while not done.wait(0.05):
                    result.server_rss_samples_kib.append(_rss_kib(proc.pid))

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            lock = threading.Lock()
            start = threading.Barrier(small + large)

            def session(i: int, size: str) -> None:
                token = big_tokens[i] if size == "large" else tokens[i % advertiser_count]
                cfg = ClientConfig(server=address, token=token, insecure=True,
                                   workers=client_workers, min_table_size=10, timeout=600)
                start.wait()
                began = time.perf_counter()
                try:
                    items = encoded[size]
                    out = match(cfg, items, np.arange(len(items)), len(items), ["email"], 0.01)
                    outcome = "ok"
                    wrong = out.noisy_count != truth[size]
                except MatchFailed as exc:
                    outcome, wrong = exc.kind, False
                with lock:
                    result.outcomes.append((size, outcome, time.perf_counter() - began))
                    result.wrong_counts += wrong

            threads = [threading.Thread(target=session, args=(i, "large")) for i in range(large)]
            threads += [threading.Thread(target=session, args=(i, "small")) for i in range(small)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            done.set()
            sampler.join()
            result.server_peak_kib = _rss_kib(proc.pid, "VmHWM")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait()
    return result


if __name__ == "__main__":
    print(run_load().summary(), file=sys.stderr)
