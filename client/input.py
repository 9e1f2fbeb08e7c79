"""Reading the advertiser's list: CSV with a named column, or one identifier per line.

Every row is normalized and encoded; rows that fail are reported by line number and the
rule they broke, never by content.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

from psi.identifiers import EncodedList, encode_identifiers

__all__ = ["InputError", "read_list"]


class InputError(Exception):
    """The file as a whole cannot be used (missing, no such column, empty)."""


def _lines(path: Path, bad: dict[int, str]) -> Iterator[str]:
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError:
                bad[number] = "not valid UTF-8"
                yield raw.decode("utf-8", errors="replace")


def _plain_rows(path: Path, bad: dict[int, str]) -> Iterator[tuple[int, str]]:
    for number, line in enumerate(_lines(path, bad), start=1):
        value = line.strip().lstrip("\ufeff") if number == 1 else line.strip()
        if value and number not in bad:
            yield number, value


def _csv_rows(path: Path, column: str, bad: dict[int, str]) -> Iterator[tuple[int, str]]:
    reader = csv.reader(_lines(path, bad))
    try:
        header = [h.strip().lstrip("\ufeff") for h in next(reader)]
    except StopIteration:
        raise InputError(f"{path.name} is empty (expected a header line)") from None
    if column not in header:
        raise InputError(f"{path.name} has no column {column!r} (columns: {', '.join(header)})")
    index = header.index(column)
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error:
            bad[start] = "malformed CSV"
            continue
        if not fields or any(n in bad for n in range(start, reader.line_num + 1)):
            continue
        if len(fields) <= index:
            bad[start] = f"row has no field {column!r}"
            continue
        if fields[index].strip():
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
    result = encode_identifiers(id_type, rows, prehashed=prehashed, region=region)
    result.invalid = sorted(result.invalid + list(bad.items()))
    return result
