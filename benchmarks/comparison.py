"""The systems on identical inputs over a grid of (n client items, m server items).

Points run from smallest to largest ``n + m``. Before each run, a system's time and
memory are extrapolated linearly in ``n + m`` from its largest run so far; a point that
would not fit is skipped with the reason, instead of swapping or running for hours.
"""

from __future__ import annotations

import sys
import tempfile
from itertools import product
from pathlib import Path

from . import inputs
from .journal import Journal
from .measure import in_subprocess
from .systems import SYSTEMS

__all__ = ["FULL_GRID", "QUICK_GRID", "CountMismatch", "run"]

QUICK_GRID = [(2_000, 5_000)]
FULL_GRID = list(product((10_000, 100_000, 1_000_000), (100_000, 1_000_000, 10_000_000)))
MEMORY_HEADROOM = 0.8  # of MemAvailable, for the page cache and other tenants


class CountMismatch(RuntimeError):
    pass


def _available_kib() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _skip_reason(last: dict | None, n: int, m: int, max_seconds: float, base_kib: int) -> str:
    if last is None:
        return ""
    scale = (n + m) / (last["n"] + last["m"])
    seconds = last["wall_s"] * scale
    if seconds > max_seconds:
        return (
            f"predicted {seconds:.3g} s (from {last['wall_s']:.3g} s at n={last['n']}, "
            f"m={last['m']}) exceeds --max-point-seconds {max_seconds:.0f}"
        )
    available = _available_kib()
    # Only what a run adds to an idle interpreter grows with the sizes; the process and
    # its largest child may peak at the same time.
    kib = sum(
        base_kib + max(last[key] - base_kib, 0) * scale
        for key in ("peak_self_kib", "peak_children_kib")
        if last[key]
    )
    if available is not None and kib > MEMORY_HEADROOM * available:
        return (
            f"predicted peak memory {kib / 2**20:.1f} GiB exceeds {MEMORY_HEADROOM:.0%} of "
            f"the {available / 2**20:.1f} GiB available"
        )
    return ""


def run(
    points: list[tuple[int, int]],
    max_seconds: float,
    journal: Journal,
    systems: list[str] | None = None,
    measure: bool = True,
) -> dict:
    """Measure every chosen system at every point, reusing what ``journal`` already holds;
    with ``measure`` false, only report what it holds. Raises CountMismatch on a wrong count."""
    pool = journal.measure("pool", lambda: in_subprocess("--pool-only"))
    rows, skipped = [], []
    last: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="psi-bench-") as tmp:
        for n, m in sorted(points, key=sum):
            path = Path(tmp) / f"inputs-{n}-{m}.npz"
            overlap = None
            for name in systems or SYSTEMS:
                key = f"row {name} {n} {m}"
                row = journal.get(key)
                if row is None:
                    reason = (
                        _skip_reason(last.get(name), n, m, max_seconds, pool["peak_self_kib"])
                        if measure
                        else "not in the journal: no run measured it (report written from it alone)"
                    )
                    if reason:
                        skipped.append({"system": name, "n": n, "m": m, "reason": reason})
                        print(f"skip {name} n={n} m={m}: {reason}", file=sys.stderr)
                        continue
                    if overlap is None:
                        overlap = inputs.write(path, n, m)
                    print(f"run {name} n={n} m={m}", file=sys.stderr, flush=True)
                    row = in_subprocess(name, str(path))
                    if row["count"] != overlap:
                        raise CountMismatch(
                            f"{name} counted {row['count']} at n={n}, m={m}; "
                            f"the overlap is {overlap}"
                        )
                    row = journal.put(key, row)
                rows.append(row)
                last[name] = row
            path.unlink(missing_ok=True)
    return {"pool": pool, "rows": rows, "skipped": skipped}
