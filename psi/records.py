"""Numbered records from raw input lines, with encoding and CSV problems per line.

The platform's consent import and the advertiser's list reader both take large files
that may be malformed; reading them the same way makes a line number mean the same
thing in both reports. Works on any iterable of byte lines (no files are opened here).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator

__all__ = ["csv_records", "decoded_lines"]

NOT_UTF8 = "not valid UTF-8"


def decoded_lines(raw: Iterable[bytes]) -> Iterator[tuple[int, str | None]]:
    """``(line number, text)``, with ``None`` for a line that is not UTF-8."""
    for number, line in enumerate(raw, start=1):
        try:
            yield number, line.decode("utf-8")
        except UnicodeDecodeError:
            yield number, None


def csv_records(raw: Iterable[bytes]) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """``(first line, fields, problem)`` for each non-blank CSV record, header included.

    A record spans several lines when a quoted field holds a newline; its number is the
    line it starts on. ``problem`` names what is wrong, never the content.
    """
    bad: set[int] = set()

    def text() -> Iterator[str]:
        for number, line in decoded_lines(raw):
            if line is None:
                bad.add(number)
                line = "\n"  # keeps the reader's line count; the record is reported
            yield line

    reader = csv.reader(text(), strict=True)
    while True:
        start = reader.line_num + 1
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield start, None, f"malformed CSV ({exc})"
            continue
        if any(n in bad for n in range(start, reader.line_num + 1)):
            yield start, None, NOT_UTF8
        elif fields:
            yield start, fields, None
