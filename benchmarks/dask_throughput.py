"""Key.apply throughput: local process pool against Dask LocalClusters of 1 and 2 workers.

Also measures what one chunk costs beyond its X25519s on each executor: the wall time of
many one-point chunks streamed through ``Key.apply_chunks`` (bounded in flight, as the
protocol streams) minus their compute time, and the round trip of one empty task
waited for alone.

    python -m benchmarks.dask_throughput [--quick]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from psi import Key, encode_identifier, hash_to_curve
from psi.cluster import DaskExecutor
from psi.parallel import cpu_count, get_executor


def _points(n: int) -> np.ndarray:
    # X25519 costs the same for every point, so a tiled sample measures the same work
    # as n distinct identifiers without hashing them all first
    msgs = [encode_identifier("email", f"user{i}@example.com") for i in range(4096)]
    return np.resize(hash_to_curve(msgs), (n, 32))


def _best(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _measure(name, executor, key, points, repeats, tiny, roundtrips, point_seconds) -> dict:
    key.apply(points[:4096], executor=executor)  # start and warm the workers
    seconds = _best(lambda: key.apply(points, executor=executor), repeats)
    workers = executor.workers
    chunks = [points[i : i + 1] for i in range(tiny)]
    start = time.perf_counter()
    for _ in key.apply_chunks(chunks, executor=executor):
        pass
    streamed = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(roundtrips):
        executor.submit(len, b"").result()
    roundtrip = (time.perf_counter() - start) / roundtrips
    return {
        "executor": name,
        "workers": workers,
        "points": len(points),
        "seconds": seconds,
        "points_per_s": len(points) / seconds,
        "chunk_overhead_ms": 1e3 * (streamed - tiny * point_seconds / workers) / tiny,
        "roundtrip_ms": 1e3 * roundtrip,
    }


def run(quick: bool) -> list[dict]:
    n, repeats, tiny, roundtrips = (16_384, 2, 200, 50) if quick else (262_144, 3, 2_000, 300)
    points = _points(n)
    key = Key.generate()
    inline = _best(lambda: key.apply(points, workers=1), 1)
    point_seconds = inline / n
    rows = [
        {
            "executor": "inline (one process)",
            "workers": 1,
            "points": n,
            "seconds": inline,
            "points_per_s": n / inline,
            "chunk_overhead_ms": None,
            "roundtrip_ms": None,
        }
    ]
    args = (key, points, repeats, tiny, roundtrips, point_seconds)
    rows.append(_measure(f"local pool ({cpu_count()} processes)", get_executor(), *args))
    for workers in (1, 2):
        with DaskExecutor(n_workers=workers) as executor:
            rows.append(_measure(f"Dask LocalCluster ({workers} x 1 thread)", executor, *args))
    return rows


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.0f}" if value >= 100 else f"{value:.2f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small inputs (under 30 s)")
    rows = run(parser.parse_args().quick)
    columns = [
        ("executor", "executor"),
        ("workers", "workers"),
        ("points", "points"),
        ("seconds", "seconds"),
        ("points_per_s", "points/s"),
        ("chunk_overhead_ms", "overhead per chunk (ms)"),
        ("roundtrip_ms", "empty task round trip (ms)"),
    ]
    print("| " + " | ".join(title for _, title in columns) + " |")
    print("|" + "---|" * len(columns))
    for row in rows:
        print("| " + " | ".join(_cell(row[field]) for field, _ in columns) + " |")


if __name__ == "__main__":
    main()
