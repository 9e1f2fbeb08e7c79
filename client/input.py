"""Reading the advertiser's list: CSV with a named column, or one identifier per line.

Every row is normalized and encoded; rows that fail are reported by line number and the
rule they broke, never by content.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from psi.identifiers import EncodedList, encode_identifiers
from psi.records import NOT_UTF8, MalformedFile, csv_records, decoded_lines

__all__ = ["InputError", "read_list"]


class InputError(Exception):
    """The file as a whole cannot be used (missing, no such column, empty)."""


def _raw(path: Path) -> Iterator[bytes]:
    with path.open("rb") as handle:
        yield from handle


def _plain_rows(path: Path, bad: dict[int, str]) -> Iterator[tuple[int, str]]:
    for number, line in decoded_lines(_raw(path)):
        if line is None:
            bad[number] = NOT_UTF8
            continue
        value = line.strip().lstrip("\ufeff") if number == 1 else line.strip()
        if value:
            yield number, value


def _csv_rows(path: Path, column: str, bad: dict[int, str]) -> Iterator[tuple[int, str]]:
    records = csv_records(_raw(path))
    first = next(records, None)
    if first is None or first[2]:
        raise InputError(f"{path.name} has no readable header line")
    header = [h.strip().lstrip("\ufeff") for h in first[1]]
    if column not in header:
        raise InputError(f"{path.name} has no column {column!r} (columns: {', '.join(header)})")
    index = header.index(column)
    for start, fields, problem in records:
        if problem:
            bad[start] = problem
        elif len(fields) <= index:
            bad[start] = f"row has no field {column!r}"
        elif fields[index].strip():
            yield start, fields[index]


def read_list(
    path: str | Path,
    id_type: str,
    column: str | None = None,
    prehashed: bool = False,
    region: str | None = "US",
) -> EncodedList:
    """Distinct encoded identifiers of a file, with invalid rows sorted by line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} is not a readable file")
    bad: dict[int, str] = {}
    rows = _csv_rows(path, column, bad) if column else _plain_rows(path, bad)
    try:
        result = encode_identifiers(id_type, rows, prehashed=prehashed, region=region)
    except MalformedFile as exc:
        raise InputError(f"{path.name}: {exc}; fix the quoting and try again") from None
    result.invalid = sorted(result.invalid + list(bad.items()))
    return result
