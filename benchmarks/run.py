"""Entry point: ``python -m benchmarks.run [--quick]`` measures, then writes
``benchmarks/RESULTS.md`` and ``benchmarks/plots/*.png``. See ``benchmarks/README.md``."""

from __future__ import annotations

import argparse
import importlib
import os
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from . import comparison, environment, load, plots, primitives, registry, report

HERE = Path(__file__).resolve().parent


def _sizes(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",")]


def _command(argv: list[str]) -> str:
    python = Path(sys.executable)
    if python.is_relative_to(HERE.parent):
        python = python.relative_to(HERE.parent)
    return shlex.join([str(python), "-m", "benchmarks.run", *argv])


def _dask(quick: bool) -> list[dict] | None:
    """Rows of the optional Dask benchmark, contributed separately, when present."""
    if not (HERE / "dask_throughput.py").exists():
        return None
    return importlib.import_module("benchmarks.dask_throughput").run(quick)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, under 2 minutes (what CI runs)"
    )
    parser.add_argument("--n", type=_sizes, help="client sizes, comma-separated (e.g. 1e4,1e5)")
    parser.add_argument("--m", type=_sizes, help="server sizes, comma-separated")
    parser.add_argument(
        "--max-point-seconds",
        type=float,
        default=1800,
        help="skip a system at a grid point predicted to take longer (default 1800)",
    )
    args = parser.parse_args(argv)

    grid = comparison.QUICK_GRID if args.quick else comparison.FULL_GRID
    ns = args.n or sorted({n for n, _ in grid})
    ms = args.m or sorted({m for _, m in grid})
    started = datetime.now(UTC)
    clock = time.perf_counter()
    load_start = os.getloadavg()[0]

    print("primitives", file=sys.stderr, flush=True)
    measured = primitives.measure(quick=args.quick)
    compared = comparison.run([(n, m) for n in ns for m in ms], args.max_point_seconds)
    print("registry", file=sys.stderr, flush=True)
    registry_figures = registry.run(args.quick)
    print("load", file=sys.stderr, flush=True)
    if args.quick:
        load_figures = load.run_load(users=2_000, small=16, large=1, large_size=4_000).summary()
    else:
        load_figures = load.run_load(users=100_000, small=32, large=2, large_size=100_000, workers=2).summary()
    dask_rows = _dask(args.quick)

    (HERE / "plots").mkdir(exist_ok=True)
    plots.throughput_vs_workers(measured, HERE / "plots" / "throughput_vs_workers.png")
    plots.time_vs_m(compared["rows"], HERE / "plots" / "time_vs_m.png")
    results = {
        "command": _command(argv),
        "quick": args.quick,
        "started": started,
        "seconds": time.perf_counter() - clock,
        "load": (load_start, os.getloadavg()[0]),
        "environment": environment.describe(),
        "primitives": measured,
        "comparison": compared,
        "dask": dask_rows,
        "registry": registry_figures,
        "load_test": load_figures,
    }
    (HERE / "RESULTS.md").write_text(report.render(results))
    print(f"wrote {HERE / 'RESULTS.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
