"""Reading the advertiser's customer list: one customer per row, with every email and
phone column of the row, or one identifier per line.

Every value is normalized and encoded as ``id_type || 0x00 || SHA-256(normalized)``;
rows that share an identifier are one customer. Values that fail are reported by line
number and the rule they broke, never by content. Files are opened by ``files``
(compression, encoding, line endings, delimiter) and grouped by ``customers``.
"""

from __future__ import annotations

import gzip
import zlib
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from psi.errors import InvalidIdentifierError
from psi.identifiers import (
    ID_TYPES,
    PHONE_NEEDS_COUNTRY,
    digest_from_hex,
    email_digests_by_place,
    is_sha256_hex,
    normalize_email,
    read_phone,
    region_code,
    type_prefix,
    value_digest,
)
from psi.parallel import get_executor, imap
from psi.records import MalformedFile

from .customers import Grouping, Occurrences
from .files import DELIMITERS, FileFormatError, Lines, csv_records, open_lines, split_header

__all__ = [
    "PHONE_HASH_FORMATS",
    "CustomerList",
    "InputError",
    "OptionError",
    "read_customers",
]

# How the phones of a hashed list were hashed: SHA-256 of E.164 with '+' (``e164``, the
# product's rule and Google's), or of the digits alone (``digits``, Meta's and TikTok's).
PHONE_HASH_FORMATS = ("e164", "digits")
DIGITS_REFUSED = (
    "phones hashed as digits without '+' cannot be matched: the platform holds SHA-256 of "
    "E.164 with '+' (+447401880994); re-hash them from the raw numbers that way "
    "(--phone-hash-format e164), or give the raw numbers without --prehashed"
)
RAW_BUT_HASHED = "a SHA-256 digest in a list read as raw values; use --prehashed for a hashed list"
SHORT_ROW = "row has fewer fields than the header; check the delimiter"
BAD_COUNTRY = (
    "no country code, and the country column holds no ISO 3166 two-letter code; "
    "fix the country or add the country code"
)
# Values per pool task: large enough that sending a batch costs little beside encoding
# it, small enough that a few in flight hold little memory.
BATCH = 4096
_ITEMS_CHUNK = 1 << 16
_MAX_SHOWN_COLUMNS = 30
_MAX_SHOWN_WIDTH = 40


class InputError(Exception):
    """The file as a whole cannot be used (missing, no such column, wrongly hashed)."""


class OptionError(ValueError):
    """The options cannot apply to any list (unknown region, unsupported hash format)."""


@dataclass
class CustomerList:
    """A customer list after reading: distinct encoded identifiers grouped by customer."""

    items: list[bytes]  # distinct encoded identifiers, each exactly once, ordered by customer
    group: np.ndarray  # int64, same length as items: the customer index of each item
    n_customers: int  # number of groups (0..n_customers-1 all used)
    id_types: tuple[str, ...]  # the identifier types the list was read for, in ID_TYPES order
    n_rows: int  # data rows read (header, blank lines and rows of empty fields excluded)
    per_type: dict[str, int]  # distinct valid identifiers per type
    invalid: list[tuple[int, str]]  # (line, rule) per rejected value, sorted; never the value
    duplicates: int  # values repeated (same encoding seen again)
    merged_rows: int  # rows merged into an earlier customer through a shared identifier
    # Phones without a country code read as numbers of the default region (not of a
    # per-row country): worth a word to the user when that region was not chosen.
    national_phones: int = 0
    encoding: str = "UTF-8"  # what the file was read as, e.g. "UTF-16+gzip"
    delimiter: str | None = None  # between fields; None for one identifier per line

    @property
    def n_submitted(self) -> int:
        """Identifier values read: distinct, repeated and rejected."""
        return len(self.items) + self.duplicates + len(self.invalid)


@dataclass
class _Columns:
    """Where each identifier type is read from in a header, and the country column."""

    ids: list[tuple[int, int]] = field(default_factory=list)  # (type index, field index)
    country: list[int] = field(default_factory=list)


def _check_options(
    columns: Sequence[tuple[str, str | None]],
    prehashed: bool,
    phone_hash_format: str,
    region: str | None,
    country_column: str | None,
    delimiter: str | None,
) -> str | None:
    """Refuse options that cannot apply, before the file is opened; returns the region."""
    if not columns:
        raise OptionError("name at least one identifier column")
    for id_type, _ in columns:
        if id_type not in ID_TYPES:
            raise OptionError(f"unknown identifier type {id_type!r} (expected {', '.join(ID_TYPES)})")
    names = [name for _, name in columns]
    if None in names and len(columns) > 1:
        raise OptionError("a file with one identifier per line has a single identifier type")
    headerless = names == [None]
    if headerless and (country_column or delimiter):
        raise OptionError("--country-column and --delimiter need a file with a header and named columns")
    folded = [n.strip().casefold() for n in names if n is not None]
    if any(not n for n in folded):
        raise OptionError("a column name is empty")
    types_of = {}
    for (id_type, _), name in zip(columns, folded):
        if types_of.setdefault(name, id_type) != id_type:
            raise OptionError(f"column {name!r} is named for both email and phone")
    if country_column is not None:
        if not country_column.strip() or country_column.strip().casefold() in types_of:
            raise OptionError("--country-column must name a column of its own")
        if "phone" not in {t for t, _ in columns}:
            raise OptionError("--country-column applies to phone columns; name one with --phone-column")
    if delimiter is not None and (len(delimiter) != 1 or delimiter in "\"\r\n"):
        raise OptionError("--delimiter must be one character (',', ';', 'tab', '|', ...)")
    if phone_hash_format not in PHONE_HASH_FORMATS:
        raise OptionError(f"--phone-hash-format must be one of {', '.join(PHONE_HASH_FORMATS)}")
    if prehashed:
        if region is not None or country_column is not None:
            raise OptionError("--region and --country-column apply to raw phone numbers, not to --prehashed lists")
        if phone_hash_format == "digits" and any(t == "phone" for t, _ in columns):
            raise OptionError(DIGITS_REFUSED)
        return None
    if region is not None and region_code(region) is None:
        raise OptionError(f"unknown region {region.strip()[:8]!r}: use an ISO 3166 two-letter code such as US, GB or DE")
    return region_code(region)


def _looks_like_data(cell: str) -> bool:
    """Whether a header cell could be an identifier, which must never be echoed."""
    return "@" in cell or sum(c.isdigit() for c in cell) >= 5 or is_sha256_hex(cell)


def _missing_columns(name: str, missing: list[str], cells: list[str], delimiter: str, sniffed: bool) -> InputError:
    wanted = ", ".join(repr(m) for m in missing)
    if any(_looks_like_data(c) for c in cells):
        return InputError(
            f"{name} has no column {wanted}: its first line looks like data, not a header; "
            "add a header line, or for one identifier per line give --id-type alone"
        )
    shown = [c[:_MAX_SHOWN_WIDTH] if c.isprintable() else "?" for c in cells[:_MAX_SHOWN_COLUMNS]]
    more = f" and {len(cells) - _MAX_SHOWN_COLUMNS} more" if len(cells) > _MAX_SHOWN_COLUMNS else ""
    how = ""
    if sniffed and len(cells) == 1:  # no delimiter tried split it: perhaps another one
        how = f"; fields read as separated by {_delimiter_name(delimiter)}, give --delimiter if they are not"
    return InputError(f"{name} has no column {wanted} (columns: {', '.join(shown)}{more}){how}")


def _delimiter_name(delimiter: str) -> str:
    return {"\t": "tabs", ",": "commas", ";": "semicolons", "|": "bars"}.get(delimiter, repr(delimiter))


def _header(lines: Iterator[tuple[int, str, bool]], path: Path, undecodable: str) -> str:
    """The header line, after any leading blank lines and '#' comment lines (Google's
    Customer Match template begins with instructions written so)."""
    for number, text, ok in lines:
        if not ok:
            raise InputError(f"{path.name}: line {number}, the header, is {undecodable}")
        stripped = text.strip()
        if stripped and not stripped.startswith("#"):
            return text
    raise InputError(f"{path.name} has no header line")


def _locate(
    path: Path,
    header: str,
    columns: Sequence[tuple[str, str | None]],
    country_column: str | None,
    delimiter: str | None,
) -> tuple[str, _Columns]:
    """The delimiter and the field index of every requested column (names matched
    case-insensitively; a name repeated in the header means every such column)."""
    wanted = [n.strip().casefold() for _, n in columns if n is not None]
    if country_column is not None:
        wanted.append(country_column.strip().casefold())
    if delimiter is None:
        # The delimiter under which the header names every column; if several do, the
        # one that splits it into the most cells (a one-column header splits alike).
        splits = [(d, [c.casefold() for c in split_header(header, d)]) for d in DELIMITERS]
        fitting = [(len(cells), -i, d) for i, (d, cells) in enumerate(splits) if set(wanted) <= set(cells)]
        chosen = max(fitting)[2] if fitting else max(splits, key=lambda s: len(s[1]))[0]
    else:
        chosen = delimiter
    cells = split_header(header, chosen)
    folded = [c.casefold() for c in cells]
    missing = [n for n in dict.fromkeys(wanted) if n not in folded]
    if missing:
        originals = {n.strip().casefold(): n.strip() for _, n in columns if n is not None}
        if country_column is not None:
            originals[country_column.strip().casefold()] = country_column.strip()
        raise _missing_columns(path.name, [originals[m] for m in missing], cells, chosen, delimiter is None)
    located = _Columns()
    for id_type, key in dict.fromkeys((t, n.strip().casefold()) for t, n in columns if n is not None):
        located.ids += [(ID_TYPES.index(id_type), i) for i, c in enumerate(folded) if c == key]
    if country_column is not None:
        key = country_column.strip().casefold()
        located.country = [i for i, c in enumerate(folded) if c == key]
    return chosen, located


@dataclass
class _Encoded:
    """What one batch of values encoded to: valid occurrences in flat buffers, the
    rejected values, and tallies per type."""

    types: bytearray = field(default_factory=bytearray)
    digests: bytearray = field(default_factory=bytearray)
    rows: array = field(default_factory=lambda: array("q"))
    invalid: list[tuple[int, str]] = field(default_factory=list)
    submitted: list[int] = field(default_factory=lambda: [0] * len(ID_TYPES))
    mismatched: list[int] = field(default_factory=lambda: [0] * len(ID_TYPES))
    national_phones: int = 0


# (line, row, type index, value, region, region is the default, country cell unreadable)
_Value = tuple[int, int, int, str, "str | None", bool, bool]


def _encode(value: _Value, prehashed: bool, out: _Encoded) -> bytes:
    """The digest of one value; ``InvalidIdentifierError`` naming the rule it broke."""
    _, _, type_index, text, region, default_region, bad_country = value
    id_type = ID_TYPES[type_index]
    if prehashed:
        try:
            return digest_from_hex(id_type, text)
        except InvalidIdentifierError:
            out.mismatched[type_index] += 1
            raise
    if is_sha256_hex(text):
        out.mismatched[type_index] += 1
        raise InvalidIdentifierError(id_type, RAW_BUT_HASHED)
    if id_type == "email":
        return value_digest(normalize_email(text))
    try:
        e164, national = read_phone(text, region)
    except InvalidIdentifierError as exc:
        if bad_country and exc.rule == PHONE_NEEDS_COUNTRY:
            raise InvalidIdentifierError(id_type, BAD_COUNTRY) from None
        raise
    if national and default_region:
        out.national_phones += 1
    return value_digest(e164)


def _encode_batch(values: list[_Value], prehashed: bool) -> _Encoded:
    """Pool task: normalize and hash one batch of values (phones cost ~0.1 ms each)."""
    out = _Encoded()
    # A hashed list holds no raw email to read at once.
    plain = {} if prehashed else email_digests_by_place([ID_TYPES[v[2]] for v in values], [v[3] for v in values])
    for k, value in enumerate(values):
        line, row, type_index = value[0], value[1], value[2]
        out.submitted[type_index] += 1
        try:
            digest = plain[k] if k in plain else _encode(value, prehashed, out)
        except InvalidIdentifierError as exc:
            out.invalid.append((line, f"{ID_TYPES[type_index]}: {exc.rule}"))
        except UnicodeEncodeError:  # a lone surrogate cannot be hashed as UTF-8
            out.invalid.append((line, f"{ID_TYPES[type_index]}: not valid Unicode"))
        else:
            out.types.append(type_index)
            out.digests += digest
            out.rows.append(row)
    return out


class _Reader:
    """Walks a file's rows into values to encode, keeping what is rejected per row."""

    def __init__(self, prehashed: bool, region: str | None) -> None:
        self.prehashed = prehashed
        self.region = region
        self.invalid: list[tuple[int, str]] = []  # rows rejected as a whole
        self.n_rows = 0
        self.delimiter: str | None = None

    def table(self, path: Path, lines: Lines, columns, country_column, delimiter) -> Iterator[_Value]:
        it = iter(lines)
        header = _header(it, path, lines.undecodable)
        self.delimiter, located = _locate(path, header, columns, country_column, delimiter)
        needed = max(i for _, i in located.ids) + 1
        for start, fields, problem in csv_records(it, self.delimiter, lines.undecodable):
            row = self.n_rows
            self.n_rows += 1
            if problem:
                self.invalid.append((start, problem))
                continue
            if len(fields) < needed and not any(fields[i].strip() for _, i in located.ids if i < len(fields)):
                self.invalid.append((start, SHORT_ROW))
                continue
            region, default_region, bad_country = self.region, True, False
            country = next((fields[i].strip() for i in located.country if i < len(fields) and fields[i].strip()), "")
            if country:
                region, default_region = region_code(country), False
                bad_country = region is None
            for type_index, i in located.ids:
                if i < len(fields) and fields[i].strip():
                    yield start, row, type_index, fields[i], region, default_region, bad_country

    def plain(self, lines: Lines, type_index: int) -> Iterator[_Value]:
        for number, text, ok in lines:
            if not ok:
                self.n_rows += 1
                self.invalid.append((number, lines.undecodable))
            elif text.strip():
                self.n_rows += 1
                yield number, self.n_rows - 1, type_index, text, self.region, True, False


def _batches(values: Iterator[_Value], size: int = BATCH) -> Iterator[list[_Value]]:
    batch: list[_Value] = []
    for value in values:
        batch.append(value)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _refuse_mismatch(name: str, id_types: Sequence[str], prehashed: bool, submitted, mismatched) -> None:
    """Refuse a list whose every value of one type contradicts --prehashed."""
    for id_type in id_types:
        t = ID_TYPES.index(id_type)
        if not submitted[t] or mismatched[t] < submitted[t]:
            continue
        if prehashed:
            raise InputError(
                f"no {id_type} value in {name} is a SHA-256 hex digest (64 hex digits) as "
                f"--prehashed requires: for raw values leave out --prehashed; digests of "
                f"another kind (MD5, SHA-1, SHA-512) cannot be matched"
            )
        extra = " and say how phones were hashed with --phone-hash-format" if id_type == "phone" else ""
        raise InputError(
            f"every {id_type} value in {name} is a SHA-256 hex digest: the list is hashed; "
            f"give --prehashed{extra}"
        )


def read_customers(
    path: str | Path,
    columns: Sequence[tuple[str, str | None]],
    *,
    prehashed: bool = False,
    phone_hash_format: str = "e164",
    region: str | None = None,
    country_column: str | None = None,
    delimiter: str | None = None,
    workers: int | None = 1,
) -> CustomerList:
    """Read a customer list.

    ``columns`` pairs an identifier type with a header name (matched case-insensitively;
    a name the header repeats means every such column), or is ``[(id_type, None)]`` for
    a file with one identifier per line. ``region`` is where phone numbers without a
    country code are read (``None``: nowhere, they are rejected); ``country_column``
    names a column whose ISO 3166 code overrides it per row. With ``prehashed``, values
    are hex SHA-256 of normalized identifiers, phones hashed as ``phone_hash_format``.
    Raw phone numbers are parsed on ``workers`` processes (``None``: every core) while
    this one reads the file; emails and digests cost less to encode than to send there,
    and are encoded here.

    Raises ``OptionError`` for options that cannot apply (before the file is opened) and
    ``InputError`` for a file that cannot be used as a whole.
    """
    path = Path(path)
    region = _check_options(columns, prehashed, phone_hash_format, region, country_column, delimiter)
    if not path.is_file():
        raise InputError(f"{path} is not a readable file")
    id_types = tuple(t for t in ID_TYPES if t in {t for t, _ in columns})
    reader = _Reader(prehashed, region)
    occurrences = Occurrences()
    submitted, mismatched = [0] * len(ID_TYPES), [0] * len(ID_TYPES)
    national_phones = 0
    invalid: list[tuple[int, str]] = []
    try:
        with open_lines(path) as lines:
            if columns[0][1] is None:
                values = reader.plain(lines, ID_TYPES.index(columns[0][0]))
            else:
                values = reader.table(path, lines, columns, country_column, delimiter)
            tasks = ((batch, prehashed) for batch in _batches(values))
            phones = not prehashed and "phone" in id_types
            for done in imap(get_executor(workers if phones else 1), _encode_batch, tasks):
                occurrences.add(done.types, done.digests, done.rows)
                invalid += done.invalid
                national_phones += done.national_phones
                for t in range(len(ID_TYPES)):
                    submitted[t] += done.submitted[t]
                    mismatched[t] += done.mismatched[t]
            encoding = lines.encoding
    except FileFormatError as exc:
        raise InputError(f"{path.name} {exc}") from None
    except MalformedFile as exc:
        raise InputError(f"{path.name}: {exc}; fix the quoting and try again") from None
    except (EOFError, zlib.error, gzip.BadGzipFile):
        raise InputError(f"{path.name} is not a complete gzip file (corrupt or cut short)") from None
    except OSError as exc:
        raise InputError(f"cannot read {path.name}: {exc.strerror or 'read error'}") from None
    _refuse_mismatch(path.name, id_types, prehashed, submitted, mismatched)
    grouping = occurrences.finish()
    counts = np.bincount(grouping.types, minlength=len(ID_TYPES))
    return CustomerList(
        items=_items(grouping),
        group=grouping.group,
        n_customers=grouping.n_customers,
        id_types=id_types,
        n_rows=reader.n_rows,
        per_type={t: int(counts[ID_TYPES.index(t)]) for t in id_types},
        invalid=sorted(invalid + reader.invalid),
        duplicates=grouping.duplicates,
        merged_rows=grouping.merged_rows,
        national_phones=national_phones,
        encoding=encoding,
        delimiter=reader.delimiter,
    )


def _items(grouping: Grouping) -> list[bytes]:
    """``id_type || 0x00 || digest`` of each identifier, by customer; built a slice at a
    time so no index list as long as the list is held besides."""
    prefixes = [type_prefix(t) for t in ID_TYPES]
    digests, items = grouping.digests, []
    for start in range(0, grouping.order.size, _ITEMS_CHUNK):
        positions = grouping.order[start : start + _ITEMS_CHUNK]
        items += [prefixes[t] + digests[32 * i : 32 * i + 32]
                  for i, t in zip(positions.tolist(), grouping.types[positions].tolist())]
    return items
