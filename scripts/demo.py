"""The main job end to end on loopback, on synthetic data.

A fresh registry of synthetic users (some addresses and most phone numbers given only for
two-factor authentication, some users who revoked consent), an advertiser, a customer
list with an email and a phone column that overlaps both kinds, ``psi-server serve`` as
a process and ``psi-match`` against it.
"""

from __future__ import annotations

import csv
import json
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from psi_server.service import wait_serving
from psi_server.synthetic import advertiser_customers, generate, write_csv

USERS = 20_000
LIST = 5_000
EPSILON = 0.5
ROOT = Path(__file__).resolve().parent.parent / "demo-run"
SERVER = [sys.executable, "-m", "psi_server.cli"]
CLIENT = [sys.executable, "-m", "psi_client.cli"]
out = Console()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run(args: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, check=True, **kw)


def main() -> None:
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir()
    db = ROOT / "registry.db"
    out.rule("[bold]platform side")
    syn = generate(USERS, seed=2026, phone_rate=0.5)
    write_csv(syn.rows, ROOT / "users.csv")
    security_only = sum(1 for r in syn.rows if r[3] == "security")
    out.print(f"{USERS:,} synthetic users, {len(syn.rows):,} consent rows "
              f"({security_only:,} addresses and phone numbers given only for security)")
    run(SERVER + ["init", "--db", str(db)])
    run(SERVER + ["consent", "import", "--db", str(db), str(ROOT / "users.csv")])
    token = run(SERVER + ["advertiser", "add", "--db", str(db), "acme-shoes", "--epsilon-budget", "2"],
                capture_output=True, text=True).stdout.strip()
    (ROOT / "acme.token").write_text(token + "\n")
    port = free_port()
    address = f"127.0.0.1:{port}"
    log = (ROOT / "server.log").open("wb")
    server = subprocess.Popen(SERVER + ["serve", "--db", str(db), "--listen", address, "--insecure"],
                              stdout=log, stderr=subprocess.STDOUT)
    try:
        try:
            wait_serving(address, alive=lambda: server.poll() is None)
        except (RuntimeError, TimeoutError) as exc:
            raise SystemExit(f"{exc}; see demo-run/server.log") from None
        out.print(f"server listening on {address} (log: demo-run/server.log)")
        out.rule("[bold]advertiser side")
        customers = advertiser_customers(syn, LIST, overlap=0.6, seed=7)
        with (ROOT / "customers.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["email", "phone"])
            writer.writerows(customers)
        out.print(f"customer list: {len(customers):,} rows of email and phone (demo-run/customers.csv)")
        result = run(CLIENT + ["--server", address, "--token-file", str(ROOT / "acme.token"),
                               "--email-column", "email", "--phone-column", "phone", "--insecure",
                               "--epsilon", str(EPSILON), "--json", str(ROOT / "customers.csv")],
                     capture_output=False, stdout=subprocess.PIPE, text=True)
        answer = json.loads(result.stdout.strip().splitlines()[-1])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(60)
        log.close()
    # one customer per email (rows that repeat one are merged), reachable through either
    by_email: dict[str, set[str]] = {}
    for email, phone in customers:
        by_email.setdefault(email, set()).update(v for v in (email, phone) if v)
    truth = sum(1 for ids in by_email.values() if ids & syn.matchable)
    blind = sum(1 for ids in by_email.values() if ids & syn.everything)
    out.rule("[bold]result")
    table = Table(show_header=True)
    table.add_column("")
    table.add_column("count", justify="right")
    shown = f"fewer than {answer['threshold']}" if answer["suppressed"] else f"{answer['noisy_count']:,}"
    table.add_row(f"released to the advertiser (epsilon {answer['epsilon_spent']:g}, ± {answer['interval95']} at 95%)",
                  shown)
    table.add_row("true consented overlap (never released)", f"{truth:,}")
    table.add_row("what a purpose-blind matcher would have counted", f"{blind:,}")
    out.print(table)
    out.print(f"{blind - truth:,} of the list's customers are known to the platform only through "
              "identifiers given for security, or belong to users who revoked consent: they were "
              f"never matchable. The list's {answer['n_customers']:,} customers ({len(customers):,} rows) "
              "were matched in one session, each counted once, whether reachable by email, phone or both.")
    out.print(f"budget left for acme-shoes: {answer['budget_remaining']:g} epsilon")


if __name__ == "__main__":
    main()
