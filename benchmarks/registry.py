"""The platform's bulk work: consent import (with hashing), the live set's build at
start, and each session's table, each against the core primitive it is bound by,
measured side by side in one process; and the import against the baseline commit's.

    python -m benchmarks.registry import ROWS DB          # prints JSON
    python -m benchmarks.registry live DB ROUNDS          # prints JSON
    python -m benchmarks.registry memory ITEMS            # prints JSON
    python -m benchmarks.registry baseline ROWS ROUNDS    # prints JSON

Each phase runs in a fresh process so its peak memory (``VmHWM``) is its own.
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

from psi import Key, hash_to_curve
from psi.parallel import get_executor
from psi.protocol import Policy, ServerSession
from psi_proto.v2 import matcher_pb2 as pb
from psi_server import store
from psi_server.live import LiveSet
from psi_server.registry import history, imports
from psi_server.registry.times import now_utc
from psi_server.synthetic import write_csv

from .pool import warm_up
from .systems import Unmetered

__all__ = ["run"]

ROOT = Path(__file__).resolve().parent.parent
# The import the speed of today's is compared with: schema 2 (each point on its
# identifier row), row-by-row triggers, hashing in Python.
BASELINE = "138158c"


def _status_kib(field: str) -> int:
    """A memory figure of this process from ``/proc/self/status`` (``VmHWM``, ``VmRSS``)."""
    status = Path("/proc/self/status").read_text()
    return int(status.split(f"{field}:")[1].split()[0])


def _peak_kib() -> int:
    return _status_kib("VmHWM")


def _rows(n: int):
    # every user consented, one account address each: every row is matchable
    for i in range(n):
        yield (f"user-{i:09d}", "email", f"person{i}@example.com", "account", "granted", "2026-01-01T00:00:00Z")


def _import(rows: int, db: Path) -> dict:
    warm_up()
    workers = get_executor().workers
    with tempfile.TemporaryDirectory(prefix="psi-reg-") as tmp:
        csv_path = Path(tmp) / "users.csv"
        write_csv(_rows(rows), csv_path)
        sample = [b"email\x00" + i.to_bytes(32, "little") for i in range(min(rows, 200_000))]

        def hash_rates() -> tuple[float, float]:
            start = time.perf_counter()
            hash_to_curve(sample)
            every = len(sample) / (time.perf_counter() - start)
            start = time.perf_counter()
            hash_to_curve(sample[:20_000], workers=1)
            return every, 20_000 / (time.perf_counter() - start)

        # Hashing is timed before and after the import and the faster kept: a neighbour's
        # burst during one short timing would otherwise flatter the import's ratio.
        before = hash_rates()
        conn, report, seconds = _import_into_new(csv_path, db)
        reading = _reading_cpu(conn, csv_path, max(rows // 10, 1))
        report_s = _impact_seconds(conn, rows)
        conn.close()
        hash_all, hash_one = map(max, zip(before, hash_rates()))
    assert report.imported_rows == rows and not report.invalid_rows
    return {"rows": rows, "workers": workers, "import_s": seconds, "import_rows_per_s": rows / seconds,
            "store_s": report.apply_seconds, "reading_cpu_s_per_row": reading,
            "hash_per_s_all_workers": hash_all, "hash_per_s_one_worker": hash_one,
            "impact_report_s": report_s, "peak_kib": _peak_kib()}


def _import_into_new(csv_path: Path, db: Path) -> tuple:
    """A new registry at ``db`` and one timed import of ``csv_path`` into it: the open
    connection, the import's report and its seconds."""
    store.init(db)
    conn = store.connect(db)
    start = time.perf_counter()
    with csv_path.open("rb") as f:
        report = imports.import_file(conn, f, "csv", "bench")
    return conn, report, time.perf_counter() - start


def _timed_import(csv_path: Path, db: Path) -> dict:
    """One import of a CSV file into a new registry, as ``baseline_import.py`` times the
    baseline's."""
    warm_up()
    conn, report, seconds = _import_into_new(csv_path, db)
    conn.close()
    return {"rows": report.imported_rows, "import_s": seconds, "store_s": report.apply_seconds}


def _baseline_packages(tmp: Path) -> Path:
    """The baseline commit's packages, from this checkout's history, laid out under the
    names they install as; returns the directory to put on ``PYTHONPATH``."""
    done = subprocess.run(["git", "-C", str(ROOT), "archive", BASELINE, "psi", "server", "proto"],
                          capture_output=True)
    if done.returncode:
        raise SystemExit(f"the baseline needs this checkout's git history (commit {BASELINE}): "
                         f"{done.stderr.decode(errors='replace').strip()}")
    src, path = tmp / "baseline-src", tmp / "baseline-path"
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as archive:
        archive.extractall(src, filter="data")
    path.mkdir()
    for name, where in (("psi", "psi"), ("psi_server", "server"), ("psi_proto", "proto/psi_proto")):
        (path / name).symlink_to(src / where, target_is_directory=True)
    return path


def _versus_baseline(rows: int, rounds: int) -> dict:
    """Today's import and the baseline's on the same file, each in a fresh process and a
    new registry, alternating which goes first, ``rounds`` times each. The ratio is of
    the medians; each round's is listed too (a shared machine's load moves between
    runs a minute apart)."""
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="psi-reg-base-") as tmp:
        tmp = Path(tmp)
        csv_path = tmp / "users.csv"
        write_csv(_rows(rows), csv_path)
        old_env = {**os.environ, "PYTHONPATH": str(_baseline_packages(tmp)), "PSI_NATIVE": "off"}
        runs: dict[str, list[dict]] = {"now": [], "baseline": []}
        for r in range(rounds):
            for which in ("now", "baseline") if r % 2 == 0 else ("baseline", "now"):
                db = tmp / f"{which}-{r}.db"
                if which == "now":
                    figures = _child("timed-import", str(csv_path), str(db))
                else:
                    # A script, not ``-m``: the current directory must not put today's
                    # packages first on the path.
                    done = subprocess.run(
                        [sys.executable, str(ROOT / "benchmarks" / "baseline_import.py"), str(csv_path), str(db)],
                        cwd=tmp, env=old_env, stdout=subprocess.PIPE, text=True, check=True)
                    figures = json.loads(done.stdout)
                assert figures["rows"] == rows
                runs[which].append(figures)
                for leftover in tmp.glob(f"{db.name}*"):
                    leftover.unlink()
    now = [f["import_s"] for f in runs["now"]]
    old = [f["import_s"] for f in runs["baseline"]]
    rate, old_rate = rows / statistics.median(now), rows / statistics.median(old)
    return {"rows": rows, "rounds": rounds, "baseline": BASELINE,
            "rows_per_s": rate, "baseline_rows_per_s": old_rate, "ratio": rate / old_rate,
            "ratio_each": [o / n for n, o in zip(now, old)],
            "import_s_each": now, "baseline_import_s_each": old,
            "store_s_each": [f["store_s"] for f in runs["now"]],
            "baseline_store_s_each": [f["store_s"] for f in runs["baseline"]],
            "load_before": load_before, "load_after": os.getloadavg()}


def _impact_seconds(conn, rows: int) -> float:
    """``report impact`` over the whole history: every identifier, from its import on."""
    start = time.perf_counter()
    report = history.impact(conn, "2026-01-01T00:00:00.000000Z", now_utc())
    seconds = time.perf_counter() - start
    assert report.identifiers == rows
    return seconds


def _reading_cpu(conn, csv_path: Path, rows: int) -> float:
    """CPU seconds per row of everything an import does besides hashing and its final
    transaction: reading, validating, looking up cached points, staging. Measured by
    importing the first ``rows`` rows again, in this process: every value is cached, so
    nothing is hashed. The final transaction's wall time stands in for its CPU time; any
    wait for the disk in it can only make this figure smaller, and the ceiling higher."""
    with csv_path.open("rb") as f:
        head = [line for _, line in zip(range(rows + 1), f)]
    start = time.process_time()
    report = imports.import_file(conn, head, "csv", "bench", workers=1)
    cpu = time.process_time() - start - report.apply_seconds
    assert report.points_hashed == 0 and report.imported_rows == rows
    return cpu / rows


def _table_seconds(live: LiveSet) -> float:
    """One session's table ``T'``, computed and streamed out in full (noise off, so no
    dummies: exactly the live set's entries)."""
    session = ServerSession(Policy(noise=False, min_list_size=1), live, Unmetered(), get_executor())
    session.receive(pb.ClientMessage(open=pb.Open(protocol_version=2, id_types=["email"], n_groups=1,
                                                  n_items=1, epsilon=0.1)))
    start = time.perf_counter()
    for _ in session.table():
        pass
    return time.perf_counter() - start


def _live(db: Path, rounds: int) -> dict:
    """The live set's build, then a session's table and ``Key.apply`` over the same points,
    alternating, ``rounds`` times each: one pair measured minutes apart on a shared
    machine can differ by 5%."""
    warm_up()
    base = _peak_kib()
    start = time.perf_counter()
    live = LiveSet(str(db))
    live.build()
    build_s = time.perf_counter() - start
    peak = _peak_kib()
    snapshot = live.snapshot(["email"])
    points = snapshot.take(np.arange(snapshot.size))
    table_s, apply_s = [], []
    for _ in range(rounds):
        table_s.append(_table_seconds(live))
        start = time.perf_counter()
        Key.generate().apply(points, check=False)
        apply_s.append(time.perf_counter() - start)
    seconds, apply_seconds = statistics.median(table_s), statistics.median(apply_s)
    return {"entries": snapshot.size, "rounds": rounds, "build_s": build_s,
            "build_per_s": snapshot.size / build_s, "table_s": seconds,
            "table_per_s": snapshot.size / seconds, "apply_per_s_all_workers": len(points) / apply_seconds,
            "table_s_each": table_s, "apply_s_each": apply_s,
            "peak_kib": peak, "peak_before_build_kib": base}


def _session_memory(items: int) -> dict:
    """What one session's list costs the server: a session receives ``items`` blinded
    points in groups of one, blinds and indexes them; its peak, and what it holds while
    the returned set streams in, per item. The held figure is read after returning freed
    pages to the system (glibc keeps freed blocks under its adaptive mmap threshold, up
    to 32 MiB each, which would otherwise count)."""
    import ctypes

    from psi.parallel import InlineExecutor
    from psi.protocol import ArrayTable

    hashed = hash_to_curve([b"email\x00" + i.to_bytes(32, "little") for i in range(items + 1)])
    points = Key.generate().apply(hashed)
    del hashed
    table = ArrayTable({"email": points[-1:]})  # one entry: the session waits for its digest
    points = points[:-1]
    session = ServerSession(Policy(noise=False, min_list_size=1), table, Unmetered(), InlineExecutor())
    session.receive(pb.ClientMessage(open=pb.Open(protocol_version=2, id_types=["email"], n_groups=items,
                                                  n_items=items, epsilon=0.1)))
    trim = ctypes.CDLL("libc.so.6").malloc_trim
    trim(0)
    Path("/proc/self/clear_refs").write_text("5")  # the peak counts from here
    before = _status_kib("VmRSS")
    step = 16384
    for i in range(0, items, step):
        chunk = points[i : i + step]
        session.receive(pb.ClientMessage(items=pb.Items(points=chunk.tobytes(), group_sizes=[1] * len(chunk))))
    peak = _peak_kib() - before
    trim(0)
    held = _status_kib("VmRSS") - before
    return {"items": items, "peak_bytes_per_item": 1024 * peak / items, "held_bytes_per_item": 1024 * held / items}


def _child(*args: str) -> dict:
    done = subprocess.run([sys.executable, "-m", "benchmarks.registry", *args], cwd=ROOT,
                          stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout)


def run(quick: bool) -> dict:
    rows = 20_000 if quick else 1_000_000
    with tempfile.TemporaryDirectory(prefix="psi-reg-db-") as tmp:
        db = Path(tmp) / "registry.db"
        rounds = "1" if quick else "3"
        return {"import": _child("import", str(rows), str(db)), "live": _child("live", str(db), rounds),
                "memory": _child("memory", str(rows)), "baseline": _versus_baseline(rows, int(rounds))}


def main() -> None:
    phase, *rest = sys.argv[1:]
    if phase == "import":
        figures = _import(int(rest[0]), Path(rest[1]))
    elif phase == "live":
        figures = _live(Path(rest[0]), int(rest[1]))
    elif phase == "memory":
        figures = _session_memory(int(rest[0]))
    elif phase == "timed-import":
        figures = _timed_import(Path(rest[0]), Path(rest[1]))
    elif phase == "baseline":
        figures = _versus_baseline(int(rest[0]), int(rest[1]))
    else:
        raise SystemExit(__doc__)
    json.dump(figures, sys.stdout)


if __name__ == "__main__":
    main()
