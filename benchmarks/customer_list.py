"""Reading a customer list: time and peak memory of ``read_customers``.

    python -m benchmarks.customer_list --rows 1000000

Writes a CSV of ``--rows`` customers with an email and a phone column (distinct values,
spelled as exports spell them: mixed case, E.164, digits without '+', national numbers
read in the default region), then reads it back to back, each reading in a fresh
process so each peak is its own: the email column alone, the phone column alone, both;
each inline (``workers=1``) and on ``--workers`` processes. Prints one JSON object per
reading and a summary table. Peak memory is this process's (the workers hold a batch
of values each).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from psi.parallel import cpu_count

from .measure import _peak_self_kib

ROOT = Path(__file__).resolve().parent.parent
COLUMNS = {"email": [("email", "Email")], "phone": [("phone", "Phone")],
           "both": [("email", "Email"), ("phone", "Phone")]}


# Exchanges 200-999 of area code 212, but the N11 ones (not assigned): 7.2 million numbers.
_EXCHANGES = [e for e in range(200, 1000) if e % 100 != 11]


def _phone(i: int) -> str:
    """A distinct valid US number for each ``i``, spelled one of three ways."""
    digits = f"212{_EXCHANGES[i // 10_000]:03d}{i % 10_000:04d}"
    return (f"+1{digits}", f"1{digits}", f"({digits[:3]}) {digits[3:6]}-{digits[6:]}")[i % 3]


def write(path: Path, rows: int) -> None:
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("Email,Name,Phone\r\n")
        for i in range(rows):
            email = f"Customer.{i}@Example.com" if i % 2 else f"customer.{i}@example.org"
            out.write(f"{email},Customer {i},{_phone(i)}\r\n")


def measure(path: Path, which: str, workers: int) -> dict:
    """One reading, in this process (run through ``--measure`` in a fresh one). CPU time
    is this process's: the workers' is not in it."""
    from psi_client.input import read_customers

    before_kib = _peak_self_kib()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    listing = read_customers(path, COLUMNS[which], region="US", workers=workers)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "columns": which,
        "workers": workers,
        "rows": listing.n_rows,
        "customers": listing.n_customers,
        "items": len(listing.items),
        "invalid": len(listing.invalid),
        "wall_s": round(wall, 2),
        "cpu_s": round(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime, 2),
        "peak_kib": _peak_self_kib(),
        "baseline_kib": before_kib,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.customer_list", description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--workers", type=int, default=cpu_count(), help="processes (default: all cores)")
    parser.add_argument("--measure", nargs=3, metavar=("FILE", "COLUMNS", "WORKERS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.measure:
        json.dump(measure(Path(args.measure[0]), args.measure[1], int(args.measure[2])), sys.stdout)
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "customers.csv"
        write(path, args.rows)
        size = path.stat().st_size
        results = []
        for which in COLUMNS:
            for workers in sorted({1, args.workers}):
                done = subprocess.run(
                    [sys.executable, "-m", "benchmarks.customer_list", "--measure", str(path), which, str(workers)],
                    cwd=ROOT, stdout=subprocess.PIPE, text=True, check=True,
                )
                results.append(json.loads(done.stdout))
                print(done.stdout, flush=True)
    print(f"\n{args.rows:,} rows, file {size / 2**20:.0f} MiB")
    print(f"{'columns':<8} {'workers':>7} {'wall s':>8} {'cpu s':>8} {'rows/s':>9} {'peak MiB':>9} "
          f"{'growth MiB':>11} {'B/row':>7}")
    for r in results:
        growth = (r["peak_kib"] - r["baseline_kib"]) * 1024
        print(f"{r['columns']:<8} {r['workers']:>7} {r['wall_s']:>8.1f} {r['cpu_s']:>8.1f} "
              f"{r['rows'] / r['wall_s']:>9,.0f} {r['peak_kib'] / 1024:>9.0f} {growth / 2**20:>11.0f} "
              f"{growth / r['rows']:>7.0f}")


if __name__ == "__main__":
    main()
