"""``psi-match``: how many of my customers can the platform reach?"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from psi.identifiers import DEFAULT_REGION, ID_TYPES
from psi.noise import count_epsilon, epsilon_fraction
from psi.parallel import get_executor, start_workers
from psi.protocol import MAX_GROUP_SIZE, Outcome
from psi.tls import TLSFileError

from .input import PHONE_HASH_FORMATS, CustomerList, InputError, OptionError, read_customers

# gRPC reads its log level once, when it is first imported. At its default it prints
# lines of its own (a failed TLS handshake, at INFO) beside the one-line errors below;
# GRPC_VERBOSITY set by the user still wins.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from .session import ClientConfig, MatchFailed, channel, get_budget, match  # noqa: E402

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
    "auth": EXIT_AUTH, "budget": EXIT_BUDGET, "busy": EXIT_BUSY, "input": EXIT_INPUT,
    "server": EXIT_SERVER, "usage": EXIT_USAGE, "epsilon": EXIT_USAGE, "tls": EXIT_USAGE,
}
_HINT = {
    "epsilon": "choose an --epsilon within the server's bounds",
    "tls": "check --ca-cert, and --client-cert/--client-key if the server requires client certificates",
    "auth": "check the token file, or ask the platform for a new token",
    "budget": "your privacy budget for this period is spent; it renews as old queries age out",
    "busy": "the server is at its session limit; retry in a moment",
    "input": "check the list",
    "server": "the server could not complete the match; the message says whether it was charged",
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


def _interval(result: Outcome) -> int | None:
    """Half-width of the central 95% interval of the discrete Laplace noise."""
    if not result.noise or result.epsilon_spent <= 0:
        return None
    # The count gets the session's epsilon but the share spent on the table size.
    epsilon = count_epsilon(epsilon_fraction(result.epsilon_spent))
    q = math.exp(-float(epsilon) / max(1, result.sensitivity))
    # P(|X| > k) = 2 q^(k+1) / (1 + q) <= 0.05
    return max(0, math.ceil(math.log(0.05 * (1 + q) / 2) / math.log(q) - 1))


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="psi-match",
        description="Count how many customers of a list a platform can reach, among its users who "
        "consented to ads matching, without either side seeing the other's identifiers.",
    )
    p.add_argument("file", help="the customer list: a CSV (or TSV, ...) with a header naming the "
                   "identifier columns, or one identifier per line with --id-type alone; may be gzipped")
    p.add_argument("--server", required=True, help="HOST:PORT of the platform's server")
    p.add_argument("--token-file", required=True, help="file holding your bearer token")
    p.add_argument("--email-column", action="append", default=[], metavar="NAME",
                   help="a column of email addresses (repeatable; case-insensitive; a name the "
                   "header repeats means every such column)")
    p.add_argument("--phone-column", action="append", default=[], metavar="NAME",
                   help="a column of phone numbers (repeatable, as --email-column)")
    p.add_argument("--country-column", metavar="NAME",
                   help="a column with each row's ISO 3166 country code (any case), for its phone "
                   "numbers written without a country code")
    p.add_argument("--id-type", choices=ID_TYPES,
                   help="with --column: the type of that one column; alone: a file with one "
                   "identifier per line")
    p.add_argument("--column", help="with --id-type: the column holding the identifiers")
    p.add_argument("--delimiter", help="field separator: ',', ';', 'tab', '|' or any one character "
                   "(default: the one under which the header names the columns)")
    p.add_argument("--prehashed", action="store_true",
                   help="values are hex SHA-256 of normalized identifiers (see the README)")
    p.add_argument("--phone-hash-format", choices=PHONE_HASH_FORMATS,
                   help="with --prehashed and phone columns (required then): e164 if the phones were "
                   "hashed as '+447401880994', digits if as '447401880994' (cannot be matched)")
    p.add_argument("--region", help="region of phone numbers written without a country code: "
                   f"an ISO 3166 two-letter code, any case (default {DEFAULT_REGION})")
    p.add_argument("--epsilon", type=float, default=0.1, help="privacy budget to spend (default 0.1)")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--insecure", action="store_true", help="plaintext (only for a server on loopback)")
    tls.add_argument("--ca-cert", help="CA certificate that signed the server's certificate")
    p.add_argument("--client-cert", help="client certificate, for servers that require mutual TLS")
    p.add_argument("--client-key", help="key of --client-cert")
    p.add_argument("--min-table-size", type=int, default=1000,
                   help="refuse servers whose table is smaller than this (default 1000)")
    p.add_argument("--workers", type=int, help="processes for parsing phone numbers, hashing and X25519 (default: all cores)")
    p.add_argument("--executor", help="'local[:N]', 'dask://HOST:PORT', 'dask+tls://HOST:PORT' or 'dask-local[:N]'")
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds for the whole session (default 3600)")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    return p


def _fail(kind: str, message: str, as_json: bool, hint: bool = True) -> int:
    """Report a failure; ``hint=False`` where the message itself names the fix (every
    refusal of the list or its options)."""
    err.print(f"[red]error:[/] {escape(message)}")
    if hint and kind in _HINT:
        err.print(f"  hint: {_HINT[kind]}")
    if as_json:
        print(json.dumps({"error": kind, "message": message}))
    return _EXIT_BY_KIND.get(kind, EXIT_INTERNAL)


_DELIMITER_NAMES = {"tab": "\t", "\\t": "\t", "comma": ",", "semicolon": ";", "pipe": "|"}


def _columns(args: argparse.Namespace) -> list[tuple[str, str | None]]:
    """The ``(id_type, column)`` pairs the options name; ``OptionError`` if they conflict."""
    if args.column and not args.id_type:
        raise OptionError("--column needs --id-type (or name columns with --email-column / --phone-column)")
    if args.id_type:
        if args.email_column or args.phone_column:
            raise OptionError("give either --id-type (with --column) or --email-column / --phone-column, not both")
        return [(args.id_type, args.column)]
    columns = [("email", n) for n in args.email_column] + [("phone", n) for n in args.phone_column]
    if not columns:
        raise OptionError("name the identifier columns with --email-column / --phone-column, "
                          "or give --id-type for a file with one identifier per line")
    return columns


def _read(args: argparse.Namespace) -> CustomerList:
    """The list as the options describe it. Raises ``OptionError`` (usage) or
    ``InputError`` (the file), always before anything is sent anywhere."""
    columns = _columns(args)
    phones = any(t == "phone" for t, _ in columns)
    if args.phone_hash_format and not args.prehashed:
        raise OptionError("--phone-hash-format describes a --prehashed list")
    if args.prehashed and phones and not args.phone_hash_format:
        raise OptionError(
            "say how the phones were hashed: --phone-hash-format e164 (SHA-256 of '+447401880994', "
            "as this product matches) or digits (of '447401880994', as Meta and TikTok take them)"
        )
    delimiter = args.delimiter
    if delimiter is not None:
        delimiter = _DELIMITER_NAMES.get(delimiter.lower(), delimiter)
    return read_customers(
        args.file, columns, prehashed=args.prehashed,
        phone_hash_format=args.phone_hash_format or "e164",
        region=args.region if args.prehashed else (args.region or DEFAULT_REGION),
        country_column=args.country_column, delimiter=delimiter, workers=args.workers,
    )


def _show_list(listing: CustomerList, args: argparse.Namespace) -> None:
    """What reading the list found that the user may need to act on (stderr)."""
    if listing.invalid:
        rules: dict[str, list[int]] = {}
        for line, rule in listing.invalid:
            rules.setdefault(rule, []).append(line)
        err.print(f"[yellow]{len(listing.invalid):,} invalid value(s) skipped[/]")
        for rule, lines in sorted(rules.items(), key=lambda r: (-len(r[1]), r[1][0]))[:5]:
            shown = ", ".join(str(n) for n in lines[:5]) + (", ..." if len(lines) > 5 else "")
            err.print(f"  {len(lines):,} x {escape(rule)} (line {shown})")
        if len(rules) > 5:
            err.print(f"  and {len(rules) - 5} other rule(s)")
    if listing.national_phones and args.region is None:
        err.print(
            f"[yellow]note:[/] {listing.national_phones:,} phone number(s) carry no country code and "
            f"were read as {DEFAULT_REGION} numbers (the default); if they are not, set --region or "
            "--country-column"
        )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if bool(args.client_cert) != bool(args.client_key):
        err.print("[red]error:[/] --client-cert and --client-key go together")
        return EXIT_USAGE
    if not (math.isfinite(args.epsilon) and args.epsilon > 0):
        err.print("[red]error:[/] --epsilon must be a positive number")
        return EXIT_USAGE
    if args.workers is not None and args.workers < 1:
        err.print("[red]error:[/] --workers must be at least 1")
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
    if not args.executor:
        start_workers(get_executor(config.workers))  # while the list is read
    try:
        with err.status("reading list"):
            listing = _read(args)
    except OptionError as exc:
        return _fail("usage", str(exc), args.json)
    except InputError as exc:
        return _fail("input", str(exc), args.json, hint=False)
    _show_list(listing, args)
    if not listing.items:
        return _fail("input", "the list holds no valid identifiers: fix the values reported above, "
                     "or name the right columns", args.json, hint=False)
    largest = int(np.bincount(listing.group).max())
    if largest > MAX_GROUP_SIZE:
        return _fail("input", f"one customer holds {largest:,} identifiers once rows that share an identifier "
                     f"are merged (at most {MAX_GROUP_SIZE:,}): look for a placeholder value repeated across "
                     "rows", args.json, hint=False)
    if args.executor:
        from psi.cluster import executor_from_spec

        try:
            config.executor = executor_from_spec(args.executor)
        except (ValueError, ImportError) as exc:
            err.print(f"[red]error:[/] --executor: {exc}")
            return EXIT_USAGE
    try:
        budget = get_budget(config, chan)
        if not budget.epsilon_min <= args.epsilon <= budget.epsilon_max:
            return _fail(
                "epsilon",
                f"--epsilon {args.epsilon:g} is outside this server's bounds "
                f"[{budget.epsilon_min:g}, {budget.epsilon_max:g}]; nothing was charged",
                args.json,
            )
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
            result = match(config, listing.items, listing.group, listing.n_customers, listing.id_types,
                           args.epsilon, _Bars(progress), chan)
    except MatchFailed as exc:
        return _fail(exc.kind, exc.message, args.json)
    finally:
        if hasattr(config.executor, "close"):
            config.executor.close()
    _report(result, listing, args.json)
    return EXIT_OK


def _report(result: Outcome, listing: CustomerList, as_json: bool) -> None:
    if as_json:
        print(json.dumps({
            "noisy_count": result.noisy_count,
            "suppressed": result.suppressed,
            "threshold": result.threshold,
            "epsilon_spent": result.epsilon_spent,
            "budget_remaining": result.budget_remaining,
            "n_customers": listing.n_customers,
            "n_rows": listing.n_rows,
            "n_submitted": listing.n_submitted,
            "n_invalid": len(listing.invalid),
            "n_duplicates": listing.duplicates,
            "n_merged_rows": listing.merged_rows,
            "n_distinct": len(listing.items),
            "identifiers": listing.per_type,
            "noise": result.noise,
            "interval95": _interval(result),
            "table_size": result.table_size,
            "session_id": result.session_id,
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
    merged = f" ({listing.merged_rows:,} rows merged through shared identifiers)" if listing.merged_rows else ""
    kinds = ", ".join(f"{n:,} {t}" for t, n in listing.per_type.items())
    out.print(
        f"List: {listing.n_rows:,} rows, {listing.n_customers:,} customers{merged}; identifiers: "
        f"{kinds}; {len(listing.invalid):,} invalid, {listing.duplicates:,} duplicates"
    )
    out.print(f"Epsilon spent: {result.epsilon_spent:g}; remaining this period: {result.budget_remaining:g}")


if __name__ == "__main__":
    sys.exit(main())
