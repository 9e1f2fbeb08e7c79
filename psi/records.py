"""Numbered records from raw input lines, with encoding and CSV problems per line.

The platform's consent import and the advertiser's list reader both take large files
that may be malformed; reading them the same way makes a line number mean the same
thing in both reports. Works on any iterable of byte lines (no files are opened here).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator

__all__ = ["MalformedFile", "csv_records", "decoded_lines"]

NOT_UTF8 = "not valid UTF-8"
# The csv module refuses fields over 128 KiB and then resumes on the next line, which may
# be inside the refused field. Oversized fields are instead read whole and rejected by
# the callers' length rules, on their own row.
FIELD_LIMIT = 16 << 20
csv.field_size_limit(max(csv.field_size_limit(), FIELD_LIMIT))


class MalformedFile(ValueError):
    """The CSV structure is broken at ``line``: nothing after it can be trusted to be
    split into the records the author meant, so the file is refused as a whole."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"line {line}: malformed CSV ({reason})")
        self.line, self.reason = line, reason

    def __reduce__(self):  # raised in a worker process, re-raised in the caller
        return type(self), (self.line, self.reason)


def decoded_lines(raw: Iterable[bytes]) -> Iterator[tuple[int, str | None]]:
    """``(line number, text)``, with ``None`` for a line that is not UTF-8."""
    for number, line in enumerate(raw, start=1):
        try:
            yield number, line.decode("utf-8")
        except UnicodeDecodeError:
            yield number, None


def csv_records(
    raw: Iterable[bytes], first: int = 1
) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """``(first line, fields, problem)`` for each non-blank CSV record, header included;
    ``raw`` starts at line ``first`` of its file.

    A record spans several lines when a quoted field holds a newline; its number is the
    line it starts on. ``problem`` names what is wrong with a record, never its content.
    Raises ``MalformedFile`` where the quoting itself is broken.
    """
    bad: set[int] = set()

    def text() -> Iterator[str]:
        for number, line in enumerate(raw, start=first):
            try:
                yield line.decode("utf-8")
            except UnicodeDecodeError:
                # Decoded with replacements, so quotes and newlines keep their places
                # and the record around this line stays one record; it is reported.
                bad.add(number)
                yield line.decode("utf-8", errors="replace")

    reader = csv.reader(text(), strict=True)
    while True:
        start = reader.line_num + first
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise MalformedFile(start, str(exc)) from None
        if any(n in bad for n in range(start, reader.line_num + first)):
            yield start, None, NOT_UTF8
        elif fields and not (len(fields) == 1 and not fields[0].strip()):  # blank lines
            yield start, fields, None
