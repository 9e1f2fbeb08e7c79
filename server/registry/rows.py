"""Rows of a consent import: reading CSV and JSONL files into numbered records, and
validating and normalizing each record.

Problems are named by rule and line, never by content: an error report must not copy
identifiers into logs.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator

from psi.errors import InvalidIdentifierError
from psi.identifiers import ID_TYPES, encode_identifier
from psi.records import NOT_UTF8, csv_records, decoded_lines

from .times import FUTURE_SKEW, parse_time

__all__ = [
    "ACTIONS",
    "COLUMNS",
    "DEFAULT_REGION",
    "ImportFileError",
    "OPTIONAL_COLUMNS",
    "PURPOSES",
    "STATES",
    "TOMBSTONE_PREFIX",
    "check_row",
    "csv_rows",
    "detect_format",
    "jsonl_rows",
]

COLUMNS = ("user_id", "id_type", "identifier", "purpose", "consent", "updated_at")
# ``action``: ``add`` (the default) gives the identifier the row's purpose; ``remove``
# withdraws that purpose, and the identifier itself once it has none left.
OPTIONAL_COLUMNS = ("action",)
ACTIONS = ("add", "remove")
# Where national phone numbers (without a country code) are taken to be.
DEFAULT_REGION = "US"
PURPOSES = ("account", "security", "advertising")
STATES = ("granted", "revoked")
MAX_USER_ID = 128
MAX_FIELD = 1024
# An erased user's history is kept under a random id with this prefix, which no
# imported user id may take.
TOMBSTONE_PREFIX = "erased:"

# (line, fields, problem): fields are the columns in COLUMNS order, then the action (or
# None where the file has no action column); problem names what is wrong instead.
Record = tuple[int, tuple | None, str | None]


class ImportFileError(Exception):
    """The file cannot be imported at all (unreadable, wrong header). Nothing was written."""


def _value_hash(id_type: str, identifier: str, region: str | None) -> bytes:
    """SHA-256 of the normalized identifier (``sha256:<hex>`` is taken as given)."""
    if identifier.startswith("sha256:"):
        return encode_identifier(id_type, identifier[7:], prehashed=True, region=region)[-32:]
    return encode_identifier(id_type, identifier, region=region)[-32:]


def check_row(fields: tuple, region: str | None, latest: str) -> tuple:
    """A validated, normalized row ``(user_id, id_type, value_hash, purpose, consent,
    effective_at, action)``, or ValueError naming the rule (never the value). ``latest``
    is the latest time accepted (see ``times.latest_accepted``)."""
    for name, value in zip(COLUMNS + OPTIONAL_COLUMNS, fields):
        if value is None and name in OPTIONAL_COLUMNS:
            continue
        if not isinstance(value, str):
            raise ValueError(f"{name} is not a string")
        if len(value) > MAX_FIELD:
            raise ValueError(f"{name} is longer than {MAX_FIELD} characters")
    user_id, id_type, identifier, purpose, consent, updated_at, action = fields
    user_id = user_id.strip()
    if not user_id:
        raise ValueError("user_id is empty")
    if len(user_id) > MAX_USER_ID or not user_id.isprintable():
        raise ValueError(f"user_id must be printable and at most {MAX_USER_ID} characters")
    if user_id.startswith(TOMBSTONE_PREFIX):
        raise ValueError(f"user_id may not start with {TOMBSTONE_PREFIX!r} (kept for erased users)")
    id_type = id_type.strip()
    if id_type not in ID_TYPES:
        raise ValueError(f"id_type must be one of {', '.join(ID_TYPES)}")
    purpose = purpose.strip()
    if purpose not in PURPOSES:
        raise ValueError(f"purpose must be one of {', '.join(PURPOSES)}")
    consent = consent.strip()
    if consent not in STATES:
        raise ValueError(f"consent must be one of {', '.join(STATES)}")
    action = (action or "").strip() or "add"
    if action not in ACTIONS:
        raise ValueError(f"action must be one of {', '.join(ACTIONS)} (empty means add)")
    when = parse_time(updated_at)
    if when > latest:
        minutes = int(FUTURE_SKEW.total_seconds() // 60)
        raise ValueError(f"updated_at is more than {minutes} minutes in the future")
    try:
        value_hash = _value_hash(id_type, identifier.strip(), region)
    except InvalidIdentifierError as exc:
        raise ValueError(f"identifier: {exc}") from None
    except UnicodeEncodeError:  # a lone surrogate (JSON "\ud800"); the codec's message quotes it
        raise ValueError("identifier is not valid Unicode") from None
    return user_id, id_type, value_hash, purpose, consent, when, action


def _header(cells: list[str]) -> list[str]:
    header = [h.strip().lstrip("\ufeff") for h in cells]
    seen: dict[str, int] = {}
    for i, name in enumerate(header):
        if name in seen:
            # A column the import reads would be ambiguous; any other repeat means the
            # export is not what it claims to be. Other names are the file's content.
            if name in COLUMNS + OPTIONAL_COLUMNS:
                raise ImportFileError(f"line 1: column {name} appears twice")
            raise ImportFileError(
                f"line 1: columns {seen[name] + 1} and {i + 1} have the same name"
            )
        seen[name] = i
    missing = [c for c in COLUMNS if c not in seen]
    if missing:
        raise ImportFileError(
            f"missing column(s) {', '.join(missing)}; the header must name {', '.join(COLUMNS)}"
            f" (and may name {', '.join(OPTIONAL_COLUMNS)})"
        )
    return header


def csv_rows(raw: Iterable[bytes]) -> Iterator[Record]:
    """The data records of a CSV file with a header line. Raises ``ImportFileError`` for
    a file without a usable header, and ``psi.records.MalformedFile`` where the quoting
    breaks the record structure."""
    records = csv_records(raw)
    first = next(records, None)
    if first is None:
        raise ImportFileError("the file is empty (expected a header line)")
    _, cells, problem = first
    if problem:
        raise ImportFileError(f"line 1: unreadable header ({problem})")
    header = _header(cells)
    width = len(header)
    order = [header.index(c) for c in COLUMNS]
    action = header.index("action") if "action" in header else None
    for start, fields, problem in records:
        if problem:
            yield start, None, problem
        elif len(fields) != width:
            yield start, None, f"expected {width} fields, got {len(fields)}"
        else:
            row = tuple(fields[i] for i in order)
            yield start, row + (None if action is None else fields[action],), None


class _DuplicateKey(Exception):
    pass


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(key)
            seen.add(key)
    return obj


def jsonl_rows(raw: Iterable[bytes]) -> Iterator[Record]:
    """The records of a file of JSON objects, one per line; blank lines are skipped."""
    for number, text in decoded_lines(raw):
        if number == 1 and text is not None:
            text = text.lstrip("\ufeff")
        if text is not None and not text.strip():
            continue
        if text is None:
            yield number, None, NOT_UTF8
            continue
        try:
            obj = json.loads(text, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as exc:
            yield number, None, f"not valid JSON ({exc.msg})"
            continue
        except _DuplicateKey as exc:
            (key,) = exc.args
            known = key in COLUMNS + OPTIONAL_COLUMNS
            yield number, None, f"key {key} appears twice" if known else "an object repeats a key"
            continue
        except (ValueError, RecursionError):  # int() refuses 4300+ digits; nesting recurses
            yield number, None, "not valid JSON (a number or nesting beyond the parser's limits)"
            continue
        if not isinstance(obj, dict):
            yield number, None, "not a JSON object"
            continue
        missing = [c for c in COLUMNS if c not in obj]
        if missing:
            yield number, None, f"missing key(s) {', '.join(missing)}"
            continue
        yield number, tuple(obj[c] for c in COLUMNS) + (obj.get("action"),), None


def detect_format(name: str) -> str:
    lowered = name.lower()
    if lowered.endswith((".jsonl", ".ndjson", ".json")):
        return "jsonl"
    return "csv"
