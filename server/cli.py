"""``psi-server``: the platform operator's command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sqlite3
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from psi.protocol import Policy

from . import advertisers, budget, consent, store

err = Console(stderr=True, soft_wrap=True)
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_FAILED = 1


EXECUTOR_HELP = "'local[:N]', 'dask://HOST:PORT', 'dask+tls://HOST:PORT' or 'dask-local[:N]' (docs/cluster.md)"


def _executor(spec: str | None):
    """The executor named on the command line; None for the default local pool."""
    if spec is None:
        return None
    from psi.cluster import executor_from_spec

    try:
        return executor_from_spec(spec)
    except (ValueError, ImportError) as exc:
        err.print(f"[red]error:[/] --executor: {exc}")
        raise SystemExit(EXIT_USAGE) from None


def _close(executor) -> None:
    close = getattr(executor, "close", None)
    if close is not None:
        close()


def cmd_init(args) -> int:
    version = store.init(args.db)
    err.print(f"registry ready at {args.db} (schema version {version})")
    return 0


class _ByteCounter:
    """Iterates a binary file by lines, advancing a progress bar by bytes read."""

    def __init__(self, handle, progress: Progress, task) -> None:
        self.handle, self.progress, self.task = handle, progress, task

    def __iter__(self):
        for line in self.handle:
            self.progress.advance(self.task, len(line))
            yield line


def cmd_consent_import(args) -> int:
    path = Path(args.file)
    if not path.is_file():
        err.print(f"[red]error:[/] {path} is not a readable file")
        return EXIT_INPUT
    fmt = args.format or consent.detect_format(path.name)
    conn = store.connect(args.db)
    executor = _executor(args.executor)
    try:
        with path.open("rb") as handle, Progress(
            TextColumn("[bold]importing"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=err, transient=False,
        ) as progress:
            task = progress.add_task("import", total=path.stat().st_size)
            writing = []  # the spinner, once the file is read

            def applying(rows: int) -> None:
                # Nothing left to count in bytes: a spinner says the import is still working.
                progress.stop()
                spinner = err.status(f"writing {rows:,} rows in one transaction")
                spinner.start()
                writing.append(spinner)

            try:
                report = consent.import_file(
                    conn,
                    _ByteCounter(handle, progress, task),
                    fmt,
                    source=args.source or f"import:{path.name}",
                    region=args.region,
                    workers=args.workers,
                    executor=executor,
                    on_apply=applying,
                )
            finally:
                for spinner in writing:
                    spinner.stop()
    except consent.ImportFileError as exc:
        err.print(f"[red]error:[/] {path.name}: {exc}. Nothing was imported.")
        return EXIT_INPUT
    except sqlite3.OperationalError as exc:
        err.print(f"[red]error:[/] the registry could not be written ({exc}). Nothing was imported; "
                  "fix the cause and run the same import again.")
        return EXIT_FAILED
    finally:
        conn.close()
        _close(executor)
    _print_import_report(report, path.name, args.json)
    return EXIT_INPUT if report.invalid_rows else 0


def _print_import_report(report: consent.ImportReport, name: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({
            "rows": report.rows, "imported_rows": report.imported_rows,
            "duplicate_rows": report.duplicate_rows, "invalid_rows": report.invalid_rows,
            "new_identifiers": report.new_identifiers, "new_consent_events": report.new_consent_events,
            "points_hashed": report.points_hashed, "apply_seconds": round(report.apply_seconds, 3),
            "errors": [{"line": line, "reason": reason} for line, reason in report.errors],
        }))
        return
    err.print(
        f"{name}: {report.rows} rows, {report.imported_rows} imported "
        f"({report.duplicate_rows} duplicates merged), {report.invalid_rows} rejected; "
        f"{report.new_identifiers} new identifiers, {report.new_consent_events} new consent events; "
        f"written in one transaction of {report.apply_seconds:.1f} s"
    )
    for line, reason in report.errors:
        err.print(f"  line {line}: {reason}")
    if report.invalid_rows > len(report.errors):
        err.print(f"  ... and {report.invalid_rows - len(report.errors)} more rejected rows")


def cmd_consent_change(args) -> int:
    if args.user:
        users = args.user
    else:
        try:
            users = Path(args.file).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            err.print(f"[red]error:[/] cannot read {args.file}: {exc.__class__.__name__}")
            return EXIT_INPUT
    conn = store.connect(args.db)
    try:
        recorded, unknown = consent.record_consent(
            conn, users, "granted" if args.action == "grant" else "revoked", args.at, args.source
        )
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}")
        return EXIT_INPUT
    finally:
        conn.close()
    err.print(f"{args.action}: {recorded} consent events recorded")
    if unknown:
        err.print(f"[yellow]{len(unknown)} user id(s) not in the registry, nothing recorded for them[/]")
        return EXIT_INPUT
    return 0


def cmd_advertiser_add(args) -> int:
    conn = store.connect(args.db)
    try:
        token = advertisers.add(conn, args.name, args.epsilon_budget, args.period_days)
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}")
        return EXIT_USAGE
    finally:
        conn.close()
    err.print(f"advertiser {args.name!r} added; its token follows (shown once, store it safely):")
    print(token)
    return 0


def cmd_advertiser_token(args) -> int:
    conn = store.connect(args.db)
    try:
        if args.action == "revoke-token":
            advertisers.revoke_token(conn, args.name)
            err.print(f"token of {args.name!r} revoked")
            return 0
        token = advertisers.rotate_token(conn, args.name)
    except KeyError as exc:
        err.print(f"[red]error:[/] {exc.args[0]}")
        return EXIT_USAGE
    finally:
        conn.close()
    err.print(f"new token for {args.name!r} (the old one no longer works):")
    print(token)
    return 0


def cmd_advertiser_budget(args) -> int:
    conn = store.connect(args.db)
    try:
        adv = advertisers.by_name(conn, args.name)
        if args.reset:
            budget.reset(conn, adv)
        st = budget.status(conn, adv)
    except KeyError as exc:
        err.print(f"[red]error:[/] {exc.args[0]}")
        return EXIT_USAGE
    finally:
        conn.close()
    if args.json:
        print(json.dumps({"advertiser": adv.name, "epsilon_budget": st.budget, "epsilon_spent": st.spent,
                          "epsilon_remaining": st.remaining, "period_days": st.period_days}))
    else:
        if args.reset:
            err.print("budget reset")
        print(f"{adv.name}: {st.spent:g} of {st.budget:g} epsilon spent in the last "
              f"{st.period_days:g} days, {st.remaining:g} remaining")
    return 0


def cmd_audit(args) -> int:
    conn = store.connect(args.db)
    try:
        entries = budget.audit_entries(conn, args.advertiser, args.limit)
    finally:
        conn.close()
    if args.json:
        for e in entries:
            print(json.dumps(e.__dict__))
        return 0
    table = Table(title="sessions (newest first); each was charged when it opened")
    for col in ("opened", "advertiser", "id types", "customers", "table", "epsilon", "released", "session"):
        table.add_column(col)
    for e in entries:
        if e.released_at is None:
            shown = "nothing (ended early)"
        else:
            shown = f"< {e.threshold}" if e.suppressed else str(e.noisy_count)
            if not e.noise:
                shown += " (EXACT, test server)"
        table.add_row(e.opened_at, e.advertiser, e.id_types, str(e.n_groups),
                      "-" if e.table_size is None else str(e.table_size), f"{e.epsilon:g}", shown,
                      e.session_id)
    Console().print(table)
    return 0


def cmd_serve(args) -> int:
    from .grpc_options import header_tracers
    from .service import ServerConfig, serve_forever

    grpc_trace = os.environ.get("GRPC_TRACE", "")
    tracers = header_tracers(grpc_trace)
    if tracers and not args.unsafe_allow_header_tracing:
        err.print(
            f"[red]error:[/] GRPC_TRACE={grpc_trace} turns on gRPC tracers that log request headers, "
            f"advertisers' bearer tokens included ({', '.join(tracers)}); unset it, or add "
            "--unsafe-allow-header-tracing on a server whose logs nobody else reads"
        )
        return EXIT_USAGE
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("psi_server")
    if args.unsafe_exact_counts:
        log.warning(
            "UNSAFE: --unsafe-exact-counts is on. Counts are released EXACTLY, without noise "
            "or threshold. This leaks individual membership: use only for tests and benchmarks."
        )
    if tracers:
        log.warning(
            "UNSAFE: GRPC_TRACE logs request headers (%s): the log shows every advertiser's "
            "bearer token", ", ".join(tracers),
        )
    executor = _executor(args.executor)
    policy = Policy(
        min_list_size=args.min_list_size,
        max_list_size=args.max_list_size,
        threshold=args.threshold,
        epsilon_min=args.epsilon_min,
        epsilon_max=args.epsilon_max,
        noise=not args.unsafe_exact_counts,
    )
    config = ServerConfig(
        db=args.db, listen=args.listen, tls_cert=args.tls_cert, tls_key=args.tls_key,
        client_ca=args.client_ca, insecure=args.insecure, policy=policy, workers=args.workers,
        executor=executor, identifiers_per_user=args.identifiers_per_user,
        max_sessions=args.max_sessions, max_sessions_per_advertiser=args.max_sessions_per_advertiser,
        session_timeout=args.session_timeout, grace=args.grace,
    )
    try:
        store.connect(args.db).close()
        serve_forever(config)
    except (ValueError, OSError, store.RegistryError) as exc:
        err.print(f"[red]error:[/] {exc}")
        return EXIT_USAGE
    finally:
        _close(executor)
    return 0


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="psi-server", description="Consent-scoped PSI cardinality server and registry.")
    sub = p.add_subparsers(dest="command", required=True)

    def db(sp):
        sp.add_argument("--db", required=True, help="registry file (SQLite)")

    sp = sub.add_parser("init", help="create or upgrade the registry")
    db(sp)
    sp.set_defaults(func=cmd_init)

    cons = sub.add_parser("consent", help="import and change consent").add_subparsers(dest="action", required=True)
    sp = cons.add_parser("import", help="import a CSV or JSONL file (idempotent)")
    db(sp)
    sp.add_argument("file")
    sp.add_argument("--format", choices=("csv", "jsonl"), help="default: from the file name")
    sp.add_argument("--region", default="US", help="default region for national phone numbers (default US)")
    sp.add_argument("--source", help="recorded with each consent event (default import:<file name>)")
    sp.add_argument("--workers", type=_positive_int, help="hashing processes (default: all cores)")
    sp.add_argument("--executor", help=EXECUTOR_HELP)
    sp.add_argument("--json", action="store_true", help="print the report as one JSON object")
    sp.set_defaults(func=cmd_consent_import)
    for action in ("grant", "revoke"):
        sp = cons.add_parser(action, help=f"record an ads_matching {action} for users")
        db(sp)
        who = sp.add_mutually_exclusive_group(required=True)
        who.add_argument("--user", action="append", help="a user id (repeatable)")
        who.add_argument("--file", help="a file with one user id per line")
        sp.add_argument("--at", help="effective time, ISO 8601 with timezone (default now)")
        sp.add_argument("--source", default="cli")
        sp.set_defaults(func=cmd_consent_change, action=action)

    adv = sub.add_parser("advertiser", help="manage advertisers").add_subparsers(dest="action", required=True)
    sp = adv.add_parser("add", help="add an advertiser and print its token")
    db(sp)
    sp.add_argument("name")
    sp.add_argument("--epsilon-budget", type=float, default=1.0, help="epsilon per period (default 1)")
    sp.add_argument("--period-days", type=float, default=30.0, help="rolling budget period (default 30)")
    sp.set_defaults(func=cmd_advertiser_add)
    sp = adv.add_parser("budget", help="show (or reset) an advertiser's budget")
    db(sp)
    sp.add_argument("name")
    sp.add_argument("--reset", action="store_true", help="start the budget afresh from now")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(func=cmd_advertiser_budget)
    for action in ("revoke-token", "rotate-token"):
        sp = adv.add_parser(action, help=f"{action.split('-')[0]} an advertiser's token")
        db(sp)
        sp.add_argument("name")
        sp.set_defaults(func=cmd_advertiser_token, action=action)

    sp = sub.add_parser("audit", help="read the audit log of sessions and releases")
    db(sp)
    sp.add_argument("--advertiser")
    sp.add_argument("--limit", type=_positive_int, default=100)
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_audit)

    sp = sub.add_parser("serve", help="serve match sessions over gRPC")
    db(sp)
    sp.add_argument("--listen", default="127.0.0.1:50051", help="HOST:PORT (default 127.0.0.1:50051)")
    sp.add_argument("--tls-cert")
    sp.add_argument("--tls-key")
    sp.add_argument("--client-ca", help="require client certificates signed by this CA (mutual TLS)")
    sp.add_argument("--insecure", action="store_true", help="plaintext; refused unless listening on loopback")
    sp.add_argument("--unsafe-exact-counts", action="store_true",
                    help="TESTS AND BENCHMARKS ONLY: release exact counts, no noise, no threshold")
    sp.add_argument("--unsafe-allow-header-tracing", action="store_true",
                    help="start even though GRPC_TRACE logs request headers, bearer tokens included")
    sp.add_argument("--workers", type=_positive_int, help="processes for X25519 (default: all cores)")
    sp.add_argument("--executor", help=EXECUTOR_HELP)
    sp.add_argument("--identifiers-per-user", type=_positive_int, default=1,
                    help="cap per user and id type in the table; the noise sensitivity (default 1)")
    sp.add_argument("--min-list-size", type=_positive_int, default=100, help="fewest customers in a list")
    sp.add_argument("--max-list-size", type=_positive_int, default=10_000_000,
                    help="most identifiers in a list (the server holds about 20 bytes per item per session)")
    sp.add_argument("--threshold", type=int, default=100, help="counts below this are reported as 'fewer than'")
    sp.add_argument("--epsilon-min", type=float, default=0.01)
    sp.add_argument("--epsilon-max", type=float, default=1.0)
    sp.add_argument("--max-sessions", type=_positive_int, default=16)
    sp.add_argument("--max-sessions-per-advertiser", type=_positive_int, default=2)
    sp.add_argument("--session-timeout", type=float, default=3600.0, help="seconds (default 3600)")
    sp.add_argument("--grace", type=float, default=30.0, help="seconds running sessions get at shutdown")
    sp.set_defaults(func=cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except store.RegistryError as exc:
        err.print(f"[red]error:[/] {exc}")
        return EXIT_USAGE
    except sqlite3.OperationalError as exc:
        err.print(f"[red]error:[/] registry: {exc}")
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
