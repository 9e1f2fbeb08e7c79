"""Opening a customer file the way CRMs and spreadsheets write it.

Compression, text encoding, line endings and the delimiter are recognised here, so the
list reader sees numbered text lines and CSV records whatever produced the file:

- gzip, recognised by its magic bytes (whatever the file is called);
- UTF-8 with or without a byte-order mark, UTF-16 and UTF-32 with one (Excel's
  "Unicode text"); a line that is not valid in its encoding is reported, not guessed;
- LF, CRLF and CR-only line endings, mixed freely: each one ends a line;
- ``,`` ``;`` tab or ``|`` between fields, chosen from the header line.

A line number means the same thing in every report: the 1-based physical line of the
decompressed text, whatever ends it.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import io
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from psi.records import NOT_UTF8, MalformedFile

__all__ = [
    "DELIMITERS",
    "FileFormatError",
    "Lines",
    "csv_records",
    "open_lines",
    "split_header",
]

# Tried in this order when the header names the columns under several of them.
DELIMITERS = (",", ";", "\t", "|")
GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"  # .xlsx, .ods, .zip
_OLE2_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"  # .xls
# Longest BOM first: the UTF-32 LE mark begins with the UTF-16 LE one.
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
# Bytes that are not UTF-8 decode to lone surrogates (``surrogateescape``), so the line
# can be reported while quotes and line ends around it keep their places.
_ESCAPED = re.compile("[\udc80-\udcff]")
_SNIFF_BYTES = 4096


class FileFormatError(Exception):
    """The file cannot be read as text at all (a workbook, corrupt gzip, ...)."""


class Lines:
    """Numbered text lines of a file, each ending in ``\\n`` except perhaps the last.

    ``encoding`` names what was recognised (``UTF-8``, ``UTF-16``, ``UTF-32``, with
    ``+gzip`` when compressed) and ``undecodable`` the rule for a line that is not valid
    in it. Use as a context manager; iterating reads the file once.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._raw = path.open("rb")
        try:
            self._stream = self._open(self._raw)
        except BaseException:
            self._raw.close()
            raise

    def _open(self, raw: BinaryIO) -> io.TextIOWrapper:
        binary: io.BufferedReader = raw  # type: ignore[assignment]
        compressed = binary.peek(2)[:2] == GZIP_MAGIC
        if compressed:
            binary = io.BufferedReader(gzip.GzipFile(fileobj=raw, mode="rb"))  # type: ignore[arg-type]
        head = binary.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]
        if head.startswith(_ZIP_MAGIC) or head.startswith(_OLE2_MAGIC):
            raise FileFormatError("is a workbook or an archive, not text; export the sheet as CSV")
        for bom, encoding in _BOMS:
            if head.startswith(bom):
                break
        else:
            if _looks_utf16(head):
                raise FileFormatError(
                    "looks like UTF-16 without a byte-order mark; "
                    "save it as UTF-8 (or UTF-16 with a BOM)"
                )
            encoding = "utf-8"
        name = {"utf-8-sig": "UTF-8", "utf-8": "UTF-8", "utf-16": "UTF-16", "utf-32": "UTF-32"}[encoding]
        self.encoding = name + ("+gzip" if compressed else "")
        self.undecodable = NOT_UTF8 if name == "UTF-8" else f"not valid {name}"
        # UTF-8 keeps undecodable bytes as lone surrogates, so each bad line is found and
        # reported while quotes and line ends around it keep their places; the UTF-16/32
        # codecs cannot, and mark them with U+FFFD instead.
        errors = "surrogateescape" if name == "UTF-8" else "replace"
        self._bad = _ESCAPED if name == "UTF-8" else re.compile("\ufffd")
        return io.TextIOWrapper(binary, encoding=encoding, errors=errors, newline=None)

    def __iter__(self) -> Iterator[tuple[int, str, bool]]:
        """``(number, text, decodable)``."""
        bad = self._bad
        for number, line in enumerate(self._stream, start=1):
            yield number, line, line.isascii() or not bad.search(line)

    def close(self) -> None:
        self._stream.close()
        self._raw.close()

    def __enter__(self) -> Lines:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _looks_utf16(head: bytes) -> bool:
    """Mostly-ASCII UTF-16 has a NUL in every other byte; UTF-8 text has none."""
    if len(head) < 8:
        return False
    even, odd = head[0::2], head[1::2]
    return max(even.count(0) / len(even), odd.count(0) / len(odd)) > 0.4


def open_lines(path: str | Path) -> Lines:
    """The numbered text lines of ``path``; ``FileFormatError`` when it is not text."""
    return Lines(Path(path))


def split_header(line: str, delimiter: str) -> list[str]:
    """The cells of a header line under ``delimiter`` (quotes honoured, cells trimmed)."""
    cells = next(csv.reader([line], delimiter=delimiter), [])
    return [c.strip().lstrip("\ufeff").strip() for c in cells]


def csv_records(
    lines: Iterable[tuple[int, str, bool]], delimiter: str, undecodable: str
) -> Iterator[tuple[int, list[str] | None, str | None]]:
    """``(first line, fields, problem)`` for each CSV record whose fields are not all
    empty (a blank line or a row of bare delimiters is no record).

    A record spans several lines when a quoted field holds a line break; its number is
    the line it starts on. ``problem`` is ``undecodable`` for a record with a line that
    is not valid text, never its content. Raises ``MalformedFile`` where the quoting
    itself is broken: nothing after it could be trusted to be split as the author meant.
    """
    consumed: list[int] = []
    bad: list[bool] = []

    def text() -> Iterator[str]:
        for number, line, ok in lines:
            consumed.append(number)
            bad.append(not ok)
            yield line

    reader = csv.reader(text(), delimiter=delimiter, strict=True)
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise MalformedFile(consumed[0] if consumed else 1, str(exc)) from None
        start, problem = consumed[0], any(bad)
        consumed.clear()
        bad.clear()
        if problem:
            yield start, None, undecodable
        elif any(f.strip() for f in fields):
            yield start, fields, None
