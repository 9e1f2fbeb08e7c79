"""One system on one saved grid point, in a fresh process; prints its figures as JSON.

A fresh process per measurement gives each system its own peak memory and its own
children to account for.

    python -m benchmarks.measure SYSTEM INPUTS.npz
    python -m benchmarks.measure --pool-only      # cost of starting psi's pool alone
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from .inputs import load
from .pool import reap, warm_up
from .systems import SYSTEMS

__all__ = ["in_subprocess"]

ROOT = Path(__file__).resolve().parent.parent


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def _peak_self_kib() -> int:
    """Peak resident memory of this program image.

    Not ``ru_maxrss``: on Linux, exec records the peak of the memory it replaces, and a
    child started with vfork (as subprocess does) replaces its parent's, so ``ru_maxrss``
    would report the harness's peak rather than this process's.
    """
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(status.split("VmHWM:")[1].split()[0])


def _measure(name: str, path: Path) -> dict:
    system = SYSTEMS[name]
    # Before loading the inputs: children started now inherit this process's peak (see
    # _peak_self_kib), which must not include them.
    if system.warm_up:
        system.warm_up()
    inputs = load(path)
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    outcome = system.run(inputs)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    reap()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "system": name,
        "n": len(inputs.client),
        "m": len(inputs.server),
        "overlap": inputs.overlap,
        "count": outcome.count,
        "wall_s": wall,
        "cpu_self_s": _cpu(after) - _cpu(before),
        "cpu_children_s": _cpu(children),
        "peak_self_kib": _peak_self_kib(),
        # Processes the system exec'd report at least this process's peak in ru_maxrss;
        # systems that sample their processes' own peaks report those instead.
        "peak_children_kib": max(outcome.process_peaks_kib.values(), default=children.ru_maxrss),
        "bytes_client_to_server": outcome.bytes_client_to_server,
        "bytes_server_to_client": outcome.bytes_server_to_client,
        "steps": outcome.steps,
        "process_peaks_kib": outcome.process_peaks_kib,
    }


def _pool_only() -> dict:
    warm_up()
    reap()
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "cpu_children_s": _cpu(children),
        "peak_self_kib": _peak_self_kib(),
    }


def in_subprocess(*args: str) -> dict:
    """Run this module with ``args`` in a new interpreter and return its figures."""
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.measure", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.measure")
    parser.add_argument("--pool-only", action="store_true")
    parser.add_argument("system", nargs="?", choices=sorted(SYSTEMS))
    parser.add_argument("inputs", nargs="?", type=Path)
    args = parser.parse_args(argv)
    if args.pool_only:
        figures = _pool_only()
    elif args.system and args.inputs:
        figures = _measure(args.system, args.inputs)
    else:
        parser.error("give SYSTEM and INPUTS, or --pool-only")
    json.dump(figures, sys.stdout)


if __name__ == "__main__":
    main()
