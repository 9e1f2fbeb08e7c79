"""Entry point: ``python -m benchmarks.run [--quick]`` measures, then writes
``benchmarks/RESULTS.md`` and ``benchmarks/plots/*.png``. See ``benchmarks/README.md``."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from . import comparison, environment, load, plots, primitives, registry, report
from .journal import Journal
from .systems import SYSTEMS

HERE = Path(__file__).resolve().parent


def _sizes(text: str) -> list[int]:
    return [int(float(x)) for x in text.split(",")]


def _command(argv: list[str]) -> str:
    python = Path(sys.executable)
    if python.is_relative_to(HERE.parent):
        python = python.relative_to(HERE.parent)
    return shlex.join([str(python), "-m", "benchmarks.run", *argv])


def _load(quick: bool) -> dict:
    if quick:
        return load.run_load(users=2_000, small=16, large=1, large_size=4_000).summary()
    return load.run_load(users=100_000, small=32, large=2, large_size=100_000, workers=2).summary()


def _systems(text: str) -> list[str]:
    names = text.split(",")
    unknown = sorted(set(names) - set(SYSTEMS))
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown system {', '.join(unknown)}; known: {', '.join(SYSTEMS)}"
        )
    return names


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
    parser.add_argument(
        "--systems", type=_systems, help="systems to run, comma-separated (default all)"
    )
    parser.add_argument(
        "--journal",
        type=Path,
        help="record each figure in this file as it is measured and reuse figures it already "
        "holds, so an interrupted run resumes where it stopped",
    )
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="measure nothing; write the report from the journal (missing figures are listed)",
    )
    args = parser.parse_args(argv)
    if args.report_only and args.journal is None:
        parser.error("--report-only needs --journal")
    journal = Journal(args.journal, _command(argv), environment.describe()["Commit"])
    measure = not args.report_only

    def section(name: str, fn):
        key = f"{'quick' if args.quick else 'full'} {name}"
        if measure:
            return journal.measure(key, fn)
        found = journal.get(key)
        if found is None:
            parser.error(f"the journal holds no {key!r} figures; run without --report-only")
        return found

    grid = comparison.QUICK_GRID if args.quick else comparison.FULL_GRID
    ns = args.n or sorted({n for n, _ in grid})
    ms = args.m or sorted({m for _, m in grid})
    started = datetime.now(UTC)
    clock = time.perf_counter()
    load_start = os.getloadavg()[0]

    print("primitives", file=sys.stderr, flush=True)
    measured = section("primitives", lambda: primitives.measure(quick=args.quick))
    compared = comparison.run(
        [(n, m) for n in ns for m in ms], args.max_point_seconds, journal, args.systems, measure
    )
    print("registry", file=sys.stderr, flush=True)
    registry_figures = section("registry", lambda: registry.run(args.quick))
    print("load", file=sys.stderr, flush=True)
    load_figures = section("load", lambda: _load(args.quick))
    # imported here: Dask is the optional [dask] extra, and only this section needs it
    from . import dask_throughput

    dask_rows = section("dask", lambda: dask_throughput.run(args.quick))

    # Read before the plots are written: the harness's own output must not count as an
    # edit to the tree it measured.
    environment_now = environment.describe()
    (HERE / "plots").mkdir(exist_ok=True)
    plots.throughput_vs_workers(measured, HERE / "plots" / "throughput_vs_workers.png")
    plots.time_vs_m(compared["rows"], HERE / "plots" / "time_vs_m.png")
    results = {
        "command": _command(argv),
        "quick": args.quick,
        "started": started,
        "seconds": time.perf_counter() - clock,
        "load": (load_start, os.getloadavg()[0]),
        "environment": environment_now,
        "primitives": measured,
        "comparison": compared,
        "dask": dask_rows,
        "registry": registry_figures,
        "load_test": load_figures,
        "resumed": journal.provenance(journal.resumed),
    }
    (HERE / "RESULTS.md").write_text(report.render(results))
    print(f"wrote {HERE / 'RESULTS.md'}", file=sys.stderr)


if __name__ == "__main__":
    main()
