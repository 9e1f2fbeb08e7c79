"""Rows of a consent import: reading CSV and JSONL files into numbered records, and
validating and normalizing each record.

Problems are named by rule and line, never by content: an error report must not copy
identifiers into logs.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property, lru_cache
from itertools import chain, islice
from operator import itemgetter, methodcaller

from psi.errors import InvalidIdentifierError
from psi.identifiers import DEFAULT_REGION, ID_TYPES, email_digests_by_place, encode_identifier
from psi.records import NOT_UTF8, MalformedFile, csv_records, decoded_lines

from .times import FUTURE_SKEW, parse_time

__all__ = [
    "ACTIONS",
    "COLUMNS",
    "CsvLayout",
    "DEFAULT_REGION",
    "ImportFileError",
    "OPTIONAL_COLUMNS",
    "PURPOSES",
    "STATES",
    "TOMBSTONE_PREFIX",
    "batch_records",
    "check_row",
    "check_rows",
    "csv_batches",
    "detect_format",
    "jsonl_batches",
]

COLUMNS = ("user_id", "id_type", "identifier", "purpose", "consent", "updated_at")
# ``action``: ``add`` (the default) gives the identifier the row's purpose; ``remove``
# withdraws that purpose, and the identifier itself once it has none left.
OPTIONAL_COLUMNS = ("action",)
ACTIONS = ("add", "remove")
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


_NAMES = COLUMNS + OPTIONAL_COLUMNS
# Exports stamp many rows with the same time.
_parse_time = lru_cache(maxsize=4096)(parse_time)


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
    for name, value in zip(_NAMES, fields):
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
    when = _parse_time(updated_at)
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


def check_rows(
    records: Iterable[Record], region: str | None, latest: str
) -> tuple[list[tuple], list[tuple[int, str]]]:
    """``check_row`` over a batch's records: the valid rows in order, and the problems
    by line. Where every record read is valid (most batches), the rules are checked a
    column at a time, each distinct value of a column once; otherwise row by row, for
    each row's first broken rule."""
    records = list(records)
    problems = [(number, problem) for number, _, problem in records if problem]
    read = [fields for _, fields, problem in records if not problem]
    valid = _check_columns(read, region, latest)
    if valid is not None:
        return valid, problems
    rows, errors = [], []
    for number, fields, problem in records:
        if problem:
            errors.append((number, problem))
            continue
        try:
            rows.append(check_row(fields, region, latest))
        except ValueError as exc:
            errors.append((number, str(exc)))
    return rows, errors


def _check_columns(read: list[tuple], region: str | None, latest: str) -> list[tuple] | None:
    """The rows ``check_row`` makes of these fields, or ``None`` if one breaks a rule."""
    if not read:
        return []
    *texts, actions = zip(*read)
    for column in texts:
        if set(map(type, column)) != {str} or max(map(len, column)) > MAX_FIELD:
            return None
    user_ids = list(map(str.strip, texts[0]))
    if (not all(user_ids) or max(map(len, user_ids)) > MAX_USER_ID
            or not all(map(str.isprintable, user_ids))
            or any(map(methodcaller("startswith", TOMBSTONE_PREFIX), user_ids))):
        return None
    id_types, purposes, consents = (_one_of(texts[i], allowed) for i, allowed in
                                    ((1, ID_TYPES), (3, PURPOSES), (4, STATES)))
    whens = _times(texts[5], latest)
    actions = _actions(actions)
    if None in (id_types, purposes, consents, whens, actions):
        return None
    try:
        hashes = _value_hashes(id_types, texts[2], region)
    except (InvalidIdentifierError, UnicodeEncodeError):
        return None
    return list(zip(user_ids, id_types, hashes, purposes, consents, whens, actions))


def _value_hashes(id_types: list[str], values: tuple[str, ...], region: str | None) -> list[bytes]:
    """``_value_hash`` of each value: the emails of a column at once where they are all
    plain addresses (most files), otherwise one by one."""
    plain = email_digests_by_place(id_types, values)
    return [plain[i] if i in plain else _value_hash(t, v.strip(), region)
            for i, (t, v) in enumerate(zip(id_types, values))]


def _one_of(column: tuple[str, ...], allowed: tuple[str, ...]) -> list[str] | None:
    stripped = {v: v.strip() for v in set(column)}
    if not all(v in allowed for v in stripped.values()):
        return None
    return list(map(stripped.__getitem__, column))


def _times(column: tuple[str, ...], latest: str) -> list[str] | None:
    parsed = {}
    for text in set(column):
        try:
            parsed[text] = _parse_time(text)
        except ValueError:
            return None
        if parsed[text] > latest:
            return None
    return list(map(parsed.__getitem__, column))


def _actions(column: tuple) -> list[str] | None:
    if not set(map(type, column)) <= {str, type(None)}:
        return None
    named = {}
    for value in set(column):
        if value is None:
            named[value] = "add"
        elif type(value) is not str or len(value) > MAX_FIELD:
            return None
        else:
            named[value] = value.strip() or "add"
            if named[value] not in ACTIONS:
                return None
    return list(map(named.__getitem__, column))


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


@dataclass(frozen=True)
class CsvLayout:
    """Where a CSV file's columns are, from its header."""

    width: int
    order: tuple[int, ...]  # the position of each of COLUMNS
    action: int | None

    @cached_property
    def _fields(self) -> Callable[[list[str]], tuple]:
        if self.action is None:
            pick = itemgetter(*self.order)
            return lambda cells: pick(cells) + (None,)
        return itemgetter(*self.order, self.action)

    def record(self, number: int, cells: list[str]) -> Record:
        if len(cells) != self.width:
            return number, None, f"expected {self.width} fields, got {len(cells)}"
        return number, self._fields(cells), None


# A batch of input for ``batch_records``: ("lines", first line, the lines' bytes) where
# no line can be part of another's record (see ``_plain``), ("cells", first line, [cells
# per line]) when each record is one line, ("records", [(first line, cells, problem)])
# otherwise, ("jsonl", first line, [raw lines]).
Batch = tuple


def _blank(cells: list[str]) -> bool:
    return not cells or (len(cells) == 1 and not cells[0].strip())


def _plain(lines: bytes) -> bool:
    """Whether each line is one record, read alike alone or in a file: no quote (which
    could join lines), no NUL and no carriage return but at a line's end (which the
    csv module refuses)."""
    return b'"' not in lines and b"\0" not in lines and lines.count(b"\r") == lines.count(b"\r\n")


def csv_batches(raw: Iterable[bytes], size: int) -> tuple[CsvLayout, Iterator[Batch]]:
    """The layout of a CSV file with a header line, and its records in batches of about
    ``size`` lines. Raises ``ImportFileError`` for a file without a usable header; the
    batches raise ``psi.records.MalformedFile`` where the quoting breaks the record
    structure.

    Most batches are passed on as the lines' bytes (``_plain``): the pool decodes and
    splits them. The others are split here by the csv module in C, going past the
    batch's last line to the end of its record, and their lines are kept: where a record
    spans lines or a line is not UTF-8 (rare), the batch is read again by
    ``csv_records``, which numbers each record by its first line. Every batch begins and
    ends on a record boundary, so all readings agree.
    """
    lines = iter(raw)
    kept: list[bytes] = []
    bad = False

    def text(source: Iterable[bytes]) -> Iterator[str]:
        nonlocal bad
        for line in source:
            kept.append(line)
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError:
                bad = True
                yield line.decode("utf-8", errors="replace")

    def again(first: int) -> list[tuple[int, list[str] | None, str | None]]:
        """The kept lines read by ``csv_records``, numbered from ``first``."""
        return list(csv_records(kept, first))

    reader = csv.reader(text(lines), strict=True)
    header = None
    while header is None:
        try:
            cells = next(reader)
        except StopIteration:
            raise ImportFileError("the file is empty (expected a header line)") from None
        except csv.Error:
            cells = None  # reported below, as csv_records reports it
        if cells is None or bad:
            records = again(1)
            if not records:
                raise ImportFileError("the file is empty (expected a header line)")
            _, cells, problem = records[0]
            if problem:
                raise ImportFileError(f"line 1: unreadable header ({problem})")
        if not _blank(cells):
            header = _header(cells)
    layout = CsvLayout(len(header), tuple(header.index(c) for c in COLUMNS),
                       header.index("action") if "action" in header else None)

    def quoted(first: int, batch: list[bytes]) -> Batch:
        """A batch read here, with the rest of its last record's lines."""
        nonlocal bad
        kept.clear()
        bad = False
        reader = csv.reader(text(chain(batch, lines)), strict=True)
        cells = []
        try:
            while len(kept) < len(batch):
                cells.append(next(reader))
        except csv.Error as exc:
            again(first)  # raises MalformedFile at the record's first line
            raise MalformedFile(first, str(exc)) from None
        if bad or len(kept) != len(cells):
            return ("records", again(first))
        return ("cells", first, cells)

    def batches() -> Iterator[Batch]:
        first = reader.line_num + 1
        while batch := list(islice(lines, size)):
            joined = b"".join(batch)
            if _plain(joined):
                yield ("lines", first, joined)
                first += len(batch)
            else:
                yield quoted(first, batch)
                first += len(kept)

    return layout, batches()


def _split(first: int, joined: bytes, layout: CsvLayout) -> list[Record]:
    """The records of a ``_plain`` batch, one per line."""
    try:
        parts = joined.decode("utf-8").split("\n")
        if parts[-1] == "":  # after the last line's end
            parts.pop()
        lines = list(csv.reader(parts, strict=True))
    except (UnicodeDecodeError, csv.Error):
        # Rare (a line not UTF-8, a field over the csv module's limit): the lines are
        # read one by one, each reported, or the file refused, by its number.
        return list(_laid_out(csv_records(joined.splitlines(keepends=True), first), layout))
    return [layout.record(first + k, cells) for k, cells in enumerate(lines) if not _blank(cells)]


def _laid_out(records: Iterable[tuple[int, list[str] | None, str | None]],
              layout: CsvLayout) -> Iterator[Record]:
    """Records as ``csv_records`` reads them, their fields in the layout's order."""
    for number, cells, problem in records:
        yield (number, None, problem) if problem else layout.record(number, cells)


def batch_records(batch: Batch, layout: CsvLayout | None) -> Iterator[Record]:
    """The records of a batch from ``csv_batches`` (with its layout) or ``jsonl_batches``;
    blank lines are not records."""
    kind = batch[0]
    if kind == "lines":
        yield from _split(batch[1], batch[2], layout)
    elif kind == "cells":
        _, first, lines = batch
        for k, cells in enumerate(lines):
            if not _blank(cells):
                yield layout.record(first + k, cells)
    elif kind == "records":
        yield from _laid_out(batch[1], layout)
    else:
        _, first, lines = batch
        yield from jsonl_rows(lines, first)


def jsonl_batches(raw: Iterable[bytes], size: int) -> Iterator[Batch]:
    """A JSONL file's lines in batches of ``size``, each record being one line."""
    lines = iter(raw)
    first = 1
    while batch := list(islice(lines, size)):
        yield ("jsonl", first, batch)
        first += len(batch)


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


def jsonl_rows(raw: Iterable[bytes], first: int = 1) -> Iterator[Record]:
    """The records of a file of JSON objects, one per line, numbered from ``first``;
    blank lines are skipped."""
    for number, text in decoded_lines(raw):
        number += first - 1
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
