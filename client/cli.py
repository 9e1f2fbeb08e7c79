"""``psi-match``: how many of my customers can the platform reach?"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from psi.identifiers import ID_TYPES
from psi.tls import TLSFileError

from .input import InputError, read_list

# gRPC reads its log level once, when it is first imported. At its default it prints
# lines of its own (a failed TLS handshake, at INFO) beside the one-line errors below;
# GRPC_VERBOSITY set by the user still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from .session import ClientConfig, MatchFailed, MatchResult, channel, get_budget, match  # noqa: E402

err = Console(stderr=True, soft_wrap=True)

# Exit codes, also listed in the README.
EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_AUTH = 4
EXIT_BUDGET = 5
EXIT_BUSY = 6
EXIT_SERVER = 7
_EXIT_BY_KIND = {
    "epsilon": EXIT_USAGE, "tls": EXIT_USAGE, "auth": EXIT_AUTH, "budget": EXIT_BUDGET, "busy": EXIT_BUSY,
    "input": EXIT_INPUT, "server": EXIT_SERVER,
}
_HINT = {
    "epsilon": "choose an --epsilon within the server's bounds",
    "tls": "check --ca-cert, and --client-cert/--client-key if the server requires client certificates",
    "auth": "check the token file, or ask the platform for a new token",
    "budget": "your privacy budget for this period is spent; it renews as old queries age out",
    "busy": "the server is at its session limit; retry in a moment",
    "input": "check the list",
    "server": "the server could not complete the match; nothing was charged unless a count was shown",
}


class _Bars:
    """rich progress bars on stderr, one per protocol step."""

    LABELS = {
        "hashing": "hashing identifiers",
        "blinding": "blinding",
        "uploading": "uploading blinded list",
        "downloading": "downloading table",
        "exponentiating": "exponentiating table",
        "sorting": "sorting",
        "returning": "uploading result set",
    }

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def start(self, step: str, total: int) -> None:
        self.tasks[step] = self.progress.add_task(self.LABELS.get(step, step), total=total)

    def advance(self, step: str, amount: int) -> None:
        self.progress.advance(self.tasks[step], amount)


def _interval(result: MatchResult) -> int | None:
    """Half-width of the central 95% interval of the discrete Laplace noise."""
    if not result.noise or result.epsilon_spent <= 0:
        return None
    q = math.exp(-result.epsilon_spent / max(1, result.sensitivity))
    # P(|X| > k) = 2 q^(k+1) / (1 + q) <= 0.05
    return max(0, math.ceil(math.log(0.05 * (1 + q) / 2) / math.log(q) - 1))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="psi-match",
        description="Count how many identifiers of a list a platform can reach, among its users who "
        "consented to ads matching, without either side seeing the other's identifiers.",
    )
    p.add_argument("file", help="CSV with a header (with --column) or one identifier per line")
    p.add_argument("--server", required=True, help="HOST:PORT of the platform's server")
    p.add_argument("--token-file", required=True, help="file holding your bearer token")
    p.add_argument("--id-type", required=True, choices=ID_TYPES)
    p.add_argument("--column", help="CSV column holding the identifiers")
    p.add_argument("--prehashed", action="store_true", help="values are hex SHA-256 of normalized identifiers")
    p.add_argument("--region", default="US", help="default region for national phone numbers (default US)")
    p.add_argument("--epsilon", type=float, default=0.1, help="privacy budget to spend (default 0.1)")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--insecure", action="store_true", help="plaintext (only for a server on loopback)")
    tls.add_argument("--ca-cert", help="CA certificate that signed the server's certificate")
    p.add_argument("--client-cert", help="client certificate, for servers that require mutual TLS")
    p.add_argument("--client-key", help="key of --client-cert")
    p.add_argument("--min-table-size", type=int, default=1000,
                   help="refuse servers whose table is smaller than this (default 1000)")
    p.add_argument("--workers", type=int, help="processes for hashing and X25519 (default: all cores)")
    p.add_argument("--executor", help="'local[:N]', 'dask://HOST:PORT', 'dask+tls://HOST:PORT' or 'dask-local[:N]'")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole session (default 3600)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


def _fail(kind: str, message: str, as_json: bool) -> int:
    err.print(f"[red]error:[/] {message}")
    if kind in _HINT:
        err.print(f"  hint: {_HINT[kind]}")
    if as_json:
        print(json.dumps({"error": kind, "message": message}))
    return _EXIT_BY_KIND.get(kind, EXIT_INTERNAL)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if bool(args.client_cert) != bool(args.client_key):
        err.print("[red]error:[/] --client-cert and --client-key go together")
        return EXIT_USAGE
    if not (math.isfinite(args.epsilon) and args.epsilon > 0):
        err.print("[red]error:[/] --epsilon must be a positive number")
        return EXIT_USAGE
    try:
        token = Path(args.token_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        err.print(f"[red]error:[/] cannot read the token file {args.token_file}")
        return EXIT_USAGE
    if not token:
        err.print(f"[red]error:[/] the token file {args.token_file} is empty")
        return EXIT_USAGE
    config = ClientConfig(
        server=args.server, token=token, insecure=args.insecure, ca_cert=args.ca_cert,
        client_cert=args.client_cert, client_key=args.client_key, workers=args.workers,
        min_table_size=args.min_table_size, timeout=args.timeout,
    )
    try:
        chan = channel(config)  # checks the TLS files before the list is read
    except OSError as exc:
        err.print(f"[red]error:[/] cannot read a TLS file: {exc.strerror}")
        return EXIT_USAGE
    except TLSFileError as exc:
        err.print(f"[red]error:[/] {exc}")
        return EXIT_USAGE
    try:
        return _run(args, config, chan)
    finally:
        chan.close()


def _run(args, config: ClientConfig, chan) -> int:
    try:
        with err.status("reading list"):
            listing = read_list(args.file, args.id_type, args.column, args.prehashed, args.region)
    except InputError as exc:
        return _fail("input", str(exc), args.json)
    if listing.invalid:
        shown = ", ".join(str(line) for line, _ in listing.invalid[:20])
        more = f" and {len(listing.invalid) - 20} more" if len(listing.invalid) > 20 else ""
        err.print(f"[yellow]{len(listing.invalid)} invalid row(s) skipped[/] (lines {shown}{more})")
        for line, rule in listing.invalid[:5]:
            err.print(f"  line {line}: {rule}")
    if not listing.encoded:
        return _fail("input", "the list holds no valid identifiers", args.json)
    if args.executor:
        from psi.cluster import executor_from_spec

        try:
            config.executor = executor_from_spec(args.executor)
        except (ValueError, ImportError) as exc:
            err.print(f"[red]error:[/] --executor: {exc}")
            return EXIT_USAGE
    try:
        budget = get_budget(config, chan)
        if budget.epsilon_remaining + 1e-9 < args.epsilon:
            return _fail(
                "budget",
                f"this query needs epsilon {args.epsilon:g}; {budget.epsilon_remaining:g} of "
                f"{budget.epsilon_budget:g} remains in the current {budget.period_days:g}-day period",
                args.json,
            )
        with Progress(
            TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), console=err, transient=not err.is_terminal,
        ) as progress:
            result = match(config, args.id_type, listing.encoded, args.epsilon, _Bars(progress), chan)
    except MatchFailed as exc:
        return _fail(exc.kind, exc.message, args.json)
    finally:
        if hasattr(config.executor, "close"):
            config.executor.close()
    _report(result, listing, args.json)
    return EXIT_OK


def _report(result: MatchResult, listing, as_json: bool) -> None:
    if as_json:
        print(json.dumps({
            "noisy_count": result.noisy_count,
            "suppressed": result.suppressed,
            "threshold": result.threshold,
            "epsilon_spent": result.epsilon_spent,
            "budget_remaining": result.budget_remaining,
            "n_submitted": listing.n_submitted,
            "n_invalid": len(listing.invalid),
            "n_distinct": len(listing.encoded),
            "noise": result.noise,
            "interval95": _interval(result),
            "table_size": result.table_size,
            "session_id": result.session_id,
            "epoch_id": result.epoch_id,
        }))
        return
    out = Console()
    if not result.noise:
        out.print("[bold red]WARNING: this server releases exact counts (test mode)[/]")
    if result.suppressed:
        out.print(f"Reachable customers: [bold]fewer than {result.threshold}[/]")
    else:
        half = _interval(result)
        spread = f" (± {half} at 95%, differentially private)" if half is not None else ""
        out.print(f"Reachable customers: [bold]{result.noisy_count:,}[/]{spread}")
    out.print(
        f"List: {listing.n_submitted:,} rows, {len(listing.encoded):,} distinct valid identifiers, "
        f"{len(listing.invalid):,} invalid, {listing.duplicates:,} duplicates"
    )
    out.print(f"Epsilon spent: {result.epsilon_spent:g}; remaining this period: {result.budget_remaining:g}")


if __name__ == "__main__":
    sys.exit(main())
