"""``psi-server``: the platform operator's command line."""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import sqlite3
import sys
from dataclasses import asdict
from datetime import timedelta
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn
from rich.table import Table

from psi.identifiers import ID_TYPES
from psi.protocol import Policy

from . import advertisers, budget, options, store
from .options import DEFAULTS, HelpFormatter, count, epsilon, number, time_argument
from .registry import changes, history, processing, rows
from .registry.times import now_utc

if TYPE_CHECKING:
    from .registry.imports import ImportReport

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

    # Bytes between two advances: one per line cost about 3 us of CPU each, in the
    # process that stages the rows (a 1M-row file: 3 s). The lines of a step are read
    # at once.
    STEP = 1 << 18

    def __init__(self, handle, progress: Progress, task) -> None:
        self.handle, self.progress, self.task = handle, progress, task

    def __iter__(self):
        while lines := self.handle.readlines(self.STEP):
            self.progress.advance(self.task, sum(map(len, lines)))
            yield from lines


def cmd_consent_import(args) -> int:
    path = Path(args.file)
    if not path.is_file():
        err.print(f"[red]error:[/] {path} is not a readable file")
        return EXIT_INPUT
    # Here, not above: the other commands start without a pool, numpy or the native core.
    from psi.parallel import get_executor, start_workers

    if args.executor is None:
        start_workers(get_executor(args.workers))  # loading the core while this process does
    from .registry import imports

    fmt = args.format or rows.detect_format(path.name)
    conn = store.connect(args.db)
    executor = _executor(args.executor)
    try:
        with path.open("rb") as handle, Progress(
            TextColumn("[bold]importing"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
            TimeRemainingColumn(), console=err, transient=False,
        ) as progress:
            task = progress.add_task("import", total=path.stat().st_size)
            writing = []  # the spinner, once the file is read

            def applying(staged: int) -> None:
                # Nothing left to count in bytes: a spinner says the import is still working.
                progress.stop()
                spinner = err.status(f"writing {staged:,} rows in one transaction")
                spinner.start()
                writing.append(spinner)

            try:
                report = imports.import_file(
                    conn,
                    _ByteCounter(handle, progress, task),
                    fmt,
                    source=args.source or path.name,
                    region=args.region,
                    workers=args.workers,
                    executor=executor,
                    on_apply=applying,
                )
            finally:
                for spinner in writing:
                    spinner.stop()
    except rows.ImportFileError as exc:
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


def _print_import_report(report: ImportReport, name: str, as_json: bool) -> None:
    if as_json:
        print(json.dumps({
            "rows": report.rows, "imported_rows": report.imported_rows,
            "duplicate_rows": report.duplicate_rows, "invalid_rows": report.invalid_rows,
            "new_identifiers": report.new_identifiers, "new_consent_events": report.new_consent_events,
            "consent_changes": report.consent_changes, "withdrawn_purposes": report.withdrawn_purposes,
            "removed_identifiers": report.removed_identifiers,
            "points_hashed": report.points_hashed, "apply_seconds": round(report.apply_seconds, 3),
            "sha256": report.digest,
            "errors": [{"line": line, "reason": reason} for line, reason in report.errors],
        }))
        return
    err.print(
        f"{name}: {report.rows} rows, {report.imported_rows} imported "
        f"({report.duplicate_rows} duplicates merged), {report.invalid_rows} rejected; "
        f"{report.new_identifiers} new identifiers, {report.withdrawn_purposes} purposes withdrawn, "
        f"{report.removed_identifiers} identifiers removed; {report.consent_changes} users' consent changed "
        f"({report.new_consent_events} new consent events); "
        f"written in one transaction of {report.apply_seconds:.1f} s; sha256 {report.digest}"
    )
    for line, reason in report.errors:
        err.print(f"  line {line}: {reason}")
    if report.invalid_rows > len(report.errors):
        err.print(f"  ... and {report.invalid_rows - len(report.errors)} more rejected rows")


def _user_ids(args) -> list[str] | None:
    """The users a command names: on the command line, or one per line of a file (a
    byte order mark at its start is not part of the first id). None if unreadable."""
    if not args.file:
        return args.user or []
    try:
        return Path(args.file).read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        err.print(f"[red]error:[/] cannot read {args.file}: {exc.__class__.__name__}")
        return None


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def cmd_consent_change(args) -> int:
    users = _user_ids(args)
    if users is None:
        return EXIT_INPUT
    state = "granted" if args.action == "grant" else "revoked"
    conn = store.connect(args.db)
    try:
        result = changes.record_consent(conn, users, state, args.at, args.source)
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}")
        return EXIT_INPUT
    finally:
        conn.close()
    message = f"{args.action}: {_plural(result.changed, 'user')} {state}, {result.already} already {state}"
    if result.kept:
        message += f", {result.kept} left revoked (a consent event dated later stands)"
    err.print(message)
    if result.unknown:
        err.print(f"[yellow]{len(result.unknown)} user id(s) not in the registry, nothing recorded for them[/]")
        return EXIT_INPUT
    return 0


def cmd_user_erase(args) -> int:
    users = _user_ids(args)
    if users is None:
        return EXIT_INPUT
    if not any(u.strip() for u in users):
        err.print("[red]error:[/] name the users to erase (USER ... or --file)")
        return EXIT_USAGE
    conn = store.connect(args.db)
    try:
        result = changes.erase_users(conn, users, args.source)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(asdict(result) | {"unknown": len(result.unknown)}))
    err.print(f"erased {_plural(result.erased, 'user')} and {_plural(result.identifiers, 'identifier')}; "
              "their history is kept under tombstone ids")
    if not result.checkpointed:
        err.print("[red]error:[/] the erasure is committed, but a reader kept the write-ahead log from "
                  "being emptied, so deleted pages may remain in it; run the same command again once "
                  "servers are idle (it will find the users gone, and empty the log)")
        return EXIT_FAILED
    if result.unknown:
        err.print(f"[yellow]{len(result.unknown)} user id(s) not in the registry[/]")
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
        token = advertisers.rotate_token(conn, args.name, timedelta(hours=args.overlap_hours))
    except KeyError as exc:
        err.print(f"[red]error:[/] {exc.args[0]}")
        return EXIT_USAGE
    finally:
        conn.close()
    if args.overlap_hours:
        err.print(f"new token for {args.name!r} (the previous one works for {args.overlap_hours:g} more hours):")
    else:
        err.print(f"new token for {args.name!r} (the old one no longer works):")
    print(token)
    return 0


def cmd_advertiser_list(args) -> int:
    conn = store.connect(args.db)
    try:
        listed = advertisers.entries(conn)
        sessions = budget.sessions_by_advertiser(conn)
        statuses = [budget.status(conn, e.advertiser) for e in listed]
    finally:
        conn.close()
    out = []
    for entry, st in zip(listed, statuses):
        n, last = sessions.get(entry.advertiser.id, (0, None))
        out.append({
            "advertiser": entry.advertiser.name, "since": entry.created_at,
            "token": "revoked" if entry.revoked_at else "active", "revoked_at": entry.revoked_at,
            "previous_token_until": entry.previous_token_until,
            "epsilon_budget": st.budget, "period_days": st.period_days, "epsilon_spent": st.spent,
            "epsilon_remaining": st.remaining, "sessions": n, "last_session": last,
        })
    if args.json:
        for item in out:
            print(json.dumps(item))
        return 0
    table = Table(title="advertisers")
    for col in ("name", "token", "budget", "spent in period", "sessions", "last session", "since"):
        table.add_column(col)
    for item in out:
        token = item["token"]
        if item["previous_token_until"]:
            token += f" (previous until {item['previous_token_until']})"
        table.add_row(item["advertiser"], token, f"{item['epsilon_budget']:g} / {item['period_days']:g} days",
                      f"{item['epsilon_spent']:g}", str(item["sessions"]), item["last_session"] or "-",
                      item["since"])
    Console().print(table)
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


def cmd_report_impact(args) -> int:
    conn = store.connect(args.db)
    try:
        sources = None
        if args.source is not None:
            given = Path(args.source)
            digest = None
            if given.is_file():
                with given.open("rb") as handle:
                    digest = hashlib.file_digest(handle, "sha256").digest()
            sources = history.find_sources(conn, args.source, digest)
            if not sources:
                err.print(f"[red]error:[/] no import or command in the registry's history matches "
                          f"--source {args.source}")
                return EXIT_INPUT
        result = history.impact(conn, args.start, args.end or now_utc(), args.purpose, args.id_type,
                                sources, args.users)
    except ValueError as exc:
        err.print(f"[red]error:[/] {exc}")
        return EXIT_USAGE
    finally:
        conn.close()
    if args.json:
        print(json.dumps(asdict(result)))
        return 0
    _print_impact(result)
    return 0


def _print_impact(r: history.Impact) -> None:
    scope = [f"purpose {r.purpose}" if r.purpose else "any purpose but security",
             f"id type {r.id_type}" if r.id_type else "every id type"]
    print(f"from {r.start} to {r.end}, {', '.join(scope)}")
    for s in r.sources or []:
        digest = f", sha256 {s.digest}" if s.digest else ""
        print(f"  purposes added by {s.kind} {s.name!r}{digest}, applied {s.applied_at}")
    types = ", ".join(f"{t} {n}" for t, n in sorted(r.identifiers_by_type.items()))
    print(f"matchable at some time in the window: {_plural(r.users, 'user')}, "
          f"{_plural(r.identifiers, 'identifier')}" + (f" ({types})" if types else ""))
    print(f"sessions whose table may have held one: {r.sessions} of {r.sessions_in_window} in the window, "
          f"epsilon {r.epsilon:g}")
    for a in r.by_advertiser:
        print(f"  {a.advertiser}: {_plural(a.sessions, 'session')}, epsilon {a.epsilon:g}")
    if r.reconstructed_before and r.start < r.reconstructed_before:
        print(f"note: history before {r.reconstructed_before} was reconstructed when the registry was "
              "upgraded; purposes held then are dated from their user's first import, so these "
              "counts can only be higher than the truth")
    for user in r.user_ids or []:
        print(user)


def cmd_report_processing(args) -> int:
    conn = store.connect(args.db)
    try:
        records = processing.processing_records(conn)
    finally:
        conn.close()
    if args.json:
        print(json.dumps(records))
        return 0
    for key, value in records.items():
        if isinstance(value, list):
            print(f"{key.replace('_', ' ')}:")
            for item in value:
                print("  - " + "; ".join(f"{k.replace('_', ' ')}: {v}" for k, v in item.items()))
        elif isinstance(value, dict):
            print(f"{key.replace('_', ' ')}: " + "; ".join(f"{k.replace('_', ' ')} {v}" for k, v in value.items()))
        else:
            print(f"{key.replace('_', ' ')}: {value}")
    return 0


def cmd_serve(args) -> int:
    from .grpc_options import header_tracers
    from .config import ServerConfig
    from .service import serve_forever

    grpc_trace = os.environ.get("GRPC_TRACE", "")
    tracers = header_tracers(grpc_trace)
    if tracers and not args.unsafe_allow_header_tracing:
        err.print(
            f"[red]error:[/] GRPC_TRACE={grpc_trace} turns on gRPC tracers that log request headers, "
            f"advertisers' bearer tokens included ({', '.join(tracers)}); unset it, or add "
            "--unsafe-allow-header-tracing on a server whose logs nobody else reads"
        )
        return EXIT_USAGE
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


def _version() -> str:
    try:
        return metadata.version("consent-psi")
    except metadata.PackageNotFoundError:  # run from a source tree that was not installed
        return "(not installed)"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="psi-server", description="Consent-scoped PSI cardinality server and registry.",
        formatter_class=HelpFormatter,
        epilog="Options also come from PSI_SERVER_<OPTION> environment variables and a TOML "
               "configuration file; the command line wins, then the environment, then the file.",
    )
    p.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    p.add_argument("--config", help="TOML configuration file (default: $PSI_SERVER_CONFIG)")
    p.add_argument("--log-level", choices=options.LOG_LEVELS, default=DEFAULTS["log_level"],
                   help="the least severe messages logged")
    sub = p.add_subparsers(dest="command", required=True)

    def command(parent, name: str, text: str) -> argparse.ArgumentParser:
        sp = parent.add_parser(name, help=text, description=text, formatter_class=HelpFormatter)
        sp.add_argument("--db", required=True, help="registry file (SQLite)")
        return sp

    def group(name: str, text: str):
        return sub.add_parser(name, help=text).add_subparsers(dest="action", required=True)

    def users(sp, verb: str, positional: bool = False) -> None:
        who = sp.add_mutually_exclusive_group(required=not positional)
        if positional:
            who.add_argument("user", nargs="*", default=[], help=f"a user id to {verb}")
        else:
            who.add_argument("--user", action="append", help=f"a user id to {verb} (repeatable)")
        who.add_argument("--file", help="a file with one user id per line")

    sp = command(sub, "init", "create or upgrade the registry")
    sp.set_defaults(func=cmd_init)

    cons = group("consent", "import and change consent")
    sp = command(cons, "import", "import a CSV or JSONL file (idempotent)")
    sp.add_argument("file")
    sp.add_argument("--format", choices=("csv", "jsonl"), help="default: from the file name")
    sp.add_argument("--region", default=DEFAULTS["region"], help="default region for national phone numbers")
    sp.add_argument("--source", help="the import's name in the registry's history (default: the file name)")
    sp.add_argument("--workers", type=count(1), help="hashing processes (default: all cores)")
    sp.add_argument("--executor", help=EXECUTOR_HELP)
    sp.add_argument("--json", action="store_true", help="print the report as one JSON object")
    sp.set_defaults(func=cmd_consent_import)
    for action in ("grant", "revoke"):
        sp = command(cons, action, f"record an ads_matching {action} for users")
        users(sp, action)
        sp.add_argument("--at", type=time_argument, help="effective time, ISO 8601 with timezone (default: now)")
        sp.add_argument("--source", default="cli", help="the command's name in the registry's history")
        sp.set_defaults(func=cmd_consent_change, action=action)

    user = group("user", "act on users")
    sp = command(user, "erase", "erase users: their identifiers and points, keeping only "
                                "pseudonymous history")
    users(sp, "erase", positional=True)
    sp.add_argument("--source", default="erase", help="the command's name in the registry's history")
    sp.add_argument("--json", action="store_true", help="print the result as one JSON object")
    sp.set_defaults(func=cmd_user_erase)

    adv = group("advertiser", "manage advertisers")
    sp = command(adv, "add", "add an advertiser and print its token")
    sp.add_argument("name")
    sp.add_argument("--epsilon-budget", type=number(0), default=DEFAULTS["epsilon_budget"],
                    help="epsilon per period")
    sp.add_argument("--period-days", type=number(0, inclusive=False), default=DEFAULTS["period_days"],
                    help="rolling budget period")
    sp.set_defaults(func=cmd_advertiser_add)
    sp = command(adv, "list", "list advertisers with their budgets and sessions")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_advertiser_list)
    sp = command(adv, "budget", "show (or reset) an advertiser's budget")
    sp.add_argument("name")
    sp.add_argument("--reset", action="store_true", help="start the budget afresh from now")
    sp.add_argument("--json", action="store_true", help="print the budget as one JSON object")
    sp.set_defaults(func=cmd_advertiser_budget)
    sp = command(adv, "revoke-token", "revoke an advertiser's token")
    sp.add_argument("name")
    sp.set_defaults(func=cmd_advertiser_token, action="revoke-token")
    sp = command(adv, "rotate-token", "issue a new token for an advertiser")
    sp.add_argument("name")
    sp.add_argument("--overlap-hours", type=number(0), default=DEFAULTS["overlap_hours"],
                    help="hours the current token keeps working, so the advertiser can switch")
    sp.set_defaults(func=cmd_advertiser_token, action="rotate-token")

    sp = command(sub, "audit", "read the audit log of sessions and releases")
    sp.add_argument("--advertiser", help="only this advertiser's sessions")
    sp.add_argument("--limit", type=count(1), default=DEFAULTS["limit"], help="newest sessions shown")
    sp.add_argument("--json", action="store_true", help="one JSON object per line")
    sp.set_defaults(func=cmd_audit)

    rep = group("report", "accountability reports")
    sp = command(rep, "impact", "who was matchable in a time window, and which sessions ran meanwhile")
    sp.add_argument("--from", dest="start", type=time_argument, required=True,
                    help="start of the window, ISO 8601 with timezone")
    sp.add_argument("--to", dest="end", type=time_argument, help="end of the window (default: now)")
    sp.add_argument("--purpose", choices=[p for p in rows.PURPOSES if p != "security"],
                    help="only identifiers held for this purpose")
    sp.add_argument("--id-type", choices=ID_TYPES, help="only identifiers of this type")
    sp.add_argument("--source", help="only purposes added by this import or command: a file (matched "
                                     "by its SHA-256), a source name, or 8+ hex digits of a digest")
    sp.add_argument("--users", action="store_true", help="also list the users (erased ones as tombstones)")
    sp.add_argument("--json", action="store_true", help="print the report as one JSON object")
    sp.set_defaults(func=cmd_report_impact)
    sp = command(rep, "processing", "the records of processing: purposes, data, recipients, retention")
    sp.add_argument("--json", action="store_true", help="print the records as one JSON object")
    sp.set_defaults(func=cmd_report_processing)

    sp = command(sub, "serve", "serve match sessions over gRPC")
    sp.add_argument("--listen", default=DEFAULTS["listen"], help="HOST:PORT")
    sp.add_argument("--tls-cert", help="the server's certificate (PEM)")
    sp.add_argument("--tls-key", help="its private key (PEM)")
    sp.add_argument("--client-ca", help="require client certificates signed by this CA (mutual TLS)")
    sp.add_argument("--insecure", action="store_true", help="plaintext; refused unless listening on loopback")
    sp.add_argument("--unsafe-exact-counts", action="store_true",
                    help="TESTS AND BENCHMARKS ONLY: release exact counts, no noise, no threshold")
    sp.add_argument("--unsafe-allow-header-tracing", action="store_true",
                    help="start even though GRPC_TRACE logs request headers, bearer tokens included")
    sp.add_argument("--workers", type=count(1), help="processes for X25519 (default: all cores)")
    sp.add_argument("--executor", help=EXECUTOR_HELP)
    sp.add_argument("--identifiers-per-user", type=count(1), default=DEFAULTS["identifiers_per_user"],
                    help="cap per user and id type in the table; the noise sensitivity")
    sp.add_argument("--min-list-size", type=count(1), default=DEFAULTS["min_list_size"],
                    help="fewest customers in a list")
    sp.add_argument("--max-list-size", type=count(1), default=DEFAULTS["max_list_size"],
                    help="most identifiers in a list (the server holds about 20 bytes per item per session)")
    sp.add_argument("--threshold", type=count(0), default=DEFAULTS["threshold"],
                    help="counts below this are reported as 'fewer than'")
    sp.add_argument("--epsilon-min", type=epsilon, default=DEFAULTS["epsilon_min"],
                    help="smallest epsilon a session may ask for")
    sp.add_argument("--epsilon-max", type=epsilon, default=DEFAULTS["epsilon_max"],
                    help="largest epsilon a session may ask for")
    sp.add_argument("--max-sessions", type=count(1), default=DEFAULTS["max_sessions"],
                    help="sessions running at once")
    sp.add_argument("--max-sessions-per-advertiser", type=count(1),
                    default=DEFAULTS["max_sessions_per_advertiser"], help="sessions one advertiser runs at once")
    sp.add_argument("--session-timeout", type=number(0, inclusive=False), default=DEFAULTS["session_timeout"],
                    help="seconds")
    sp.add_argument("--grace", type=number(0), default=DEFAULTS["grace"],
                    help="seconds running sessions get at shutdown")
    sp.set_defaults(func=cmd_serve)
    return p


# Options that bound each other: (smaller, larger).
_ORDERED = (("epsilon_min", "epsilon_max"), ("min_list_size", "max_list_size"))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = parser()
    try:
        options.configure(p, options.config_path(argv))
    except options.ConfigError as exc:
        p.error(str(exc))
    args = p.parse_args(argv)
    for low, high in _ORDERED:
        if hasattr(args, low) and getattr(args, low) > getattr(args, high):
            p.error(f"--{low.replace('_', '-')} must not exceed --{high.replace('_', '-')}")
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
