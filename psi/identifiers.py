"""Identifier normalization and the encoding that feeds hash to curve.

``encode_identifier`` produces ``id_type || 0x00 || SHA-256(normalized)``, so a raw
identifier and the hex SHA-256 of its normalized form (the format ad platforms accept)
encode to the same bytes and therefore to the same curve point.
"""

from __future__ import annotations

import functools
import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import phonenumbers

from .errors import InvalidIdentifierError

__all__ = [
    "DEFAULT_REGION",
    "ID_TYPES",
    "EncodedList",
    "digest_from_hex",
    "email_digests",
    "email_digests_by_place",
    "encode_identifier",
    "encode_identifiers",
    "is_sha256_hex",
    "normalize",
    "normalize_email",
    "normalize_phone",
    "read_phone",
    "region_code",
    "type_prefix",
    "value_digest",
]

ID_TYPES = ("email", "phone")
# Where a national number (no country code) is read when no region is given. The client
# and the platform's import default to the same region, so both sides read alike.
DEFAULT_REGION = "US"
# "UK" is not an ISO 3166 code, but exports and people write it for GB ("exceptionally
# reserved" by ISO for this reason).
REGION_ALIASES = {"UK": "GB"}
MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit
MAX_PHONE_INPUT = 64
_HEX64 = re.compile(r"[0-9a-f]{64}")
_HEX = re.compile(r"[0-9a-f]+")
_EMAIL_FORBIDDEN = re.compile(r"[\s<>()\[\],;:\\\"]")
# Digests of other lengths that ad platforms also take: named so a rejection says what
# was found instead of only what was expected.
_OTHER_DIGESTS = {32: "an MD5", 40: "a SHA-1", 128: "a SHA-512"}
# A leading 00 (any punctuation around it), the international call prefix of most of the world.
_PREFIX_00 = re.compile(r"^[^0-9]*0[^0-9]*0")
# '+' (ASCII or full-width) before any digit: "+44 ...", "(+44) ...", "tel:+44-...".
_PLUS_FIRST = re.compile(r"^[^\d+\uff0b]*[+\uff0b]")
_NOT_DIGIT = re.compile(r"[^0-9]")
FROM_DEFAULT_COUNTRY = phonenumbers.CountryCodeSource.FROM_DEFAULT_COUNTRY

PHONE_NEEDS_COUNTRY = "not a valid number without a country code; add the country code or set --region"
PHONE_NOT_IN_REGION = (
    "not a valid number of the region nor with a leading country code; "
    "check the digits, add the country code or set --region"
)
PHONE_BAD_AFTER_PLUS = "not a valid number for its country code; check the digits after '+'"


def normalize_email(value: str) -> str:
    """Trim, lower-case and NFC-normalize. No provider-specific rewriting (dots, plus
    tags) is applied: ``j.doe+ads@gmail.com`` and ``jdoe@gmail.com`` stay different."""
    if not isinstance(value, str):
        raise InvalidIdentifierError("email", "not a string")
    # NFC last: lower-casing can decompose a character (U+0130 becomes i + U+0307).
    email = unicodedata.normalize("NFC", value.strip().lower())
    if not email:
        raise InvalidIdentifierError("email", "empty")
    if len(email) > MAX_EMAIL_LENGTH:
        raise InvalidIdentifierError("email", f"longer than {MAX_EMAIL_LENGTH} characters")
    if email.count("@") != 1:
        raise InvalidIdentifierError("email", "must contain exactly one '@'")
    local, domain = email.split("@")
    if not local:
        raise InvalidIdentifierError("email", "empty local part")
    if not domain or "." not in domain or domain.startswith(".") or domain.endswith("."):
        raise InvalidIdentifierError("email", "domain must be a dotted name")
    if ".." in domain:
        raise InvalidIdentifierError("email", "domain has an empty label")
    if _EMAIL_FORBIDDEN.search(email) or not email.isprintable():
        raise InvalidIdentifierError("email", "contains whitespace, a control or a forbidden character")
    return email


# An address ``normalize_email`` accepts and leaves as it is, apart from letter case,
# when it is printable ASCII: NFC changes no ASCII text, and the rest of its rules are
# these characters and this shape (one '@', a non-empty local part, a dotted domain
# without empty labels). A whole list is searched at once, one address per line, for a
# line of another shape.
_EMAIL_CHARS = {chr(c) for c in range(0x21, 0x7F)} - set('<>()[],;:\\"@')
_LOCAL = "[%s]+" % "".join(map(re.escape, sorted(_EMAIL_CHARS)))
_LABEL = "[%s]+" % "".join(map(re.escape, sorted(_EMAIL_CHARS - {"."})))
_NOT_PLAIN_EMAIL = re.compile(rf"^(?!{_LOCAL}@{_LABEL}(?:\.{_LABEL})+$)", re.MULTILINE)


def email_digests(values: list[str]) -> list[bytes] | None:
    """``value_digest(normalize_email(v))`` for every value, computed for the whole list
    at once, or ``None`` if one is not a plain ASCII address ``normalize_email`` accepts
    (the caller then takes them one by one, to name each rule broken)."""
    if not values:
        return []
    stripped = [v.strip() for v in values]
    text = "\n".join(stripped)
    if (max(map(len, stripped)) > MAX_EMAIL_LENGTH or not text.isascii()
            or _NOT_PLAIN_EMAIL.search(text) is not None):
        return None
    lines = text.lower().encode("ascii").split(b"\n")
    if len(lines) != len(values):  # a value with a line break inside
        return None
    sha256 = hashlib.sha256
    return [sha256(e).digest() for e in lines]


def email_digests_by_place(id_types: Sequence[str], values: Sequence[str]) -> dict[int, bytes]:
    """``email_digests`` of the values whose type is email among values of every type,
    by their place; empty unless those emails are all plain addresses."""
    places = [i for i, t in enumerate(id_types) if t == "email"]
    digests = email_digests([values[i] for i in places])
    return dict(zip(places, digests)) if digests is not None else {}


def region_code(text: str | None) -> str | None:
    """The region ``phonenumbers`` knows for an ISO 3166 alpha-2 code in any case
    (``gb``, ``GB``, and ``UK`` for GB), or ``None`` when it names no region."""
    if not isinstance(text, str):
        return None
    code = text.strip().upper()
    code = REGION_ALIASES.get(code, code)
    return code if code in phonenumbers.SUPPORTED_REGIONS else None


def _parse(text: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    """The number ``text`` reads as, if that is a valid number; else ``None``."""
    try:
        number = phonenumbers.parse(text, region, keep_raw_input=True)
    except phonenumbers.NumberParseException:
        return None
    return number if phonenumbers.is_valid_number(number) else None


@functools.cache
def _trunk_prefix(region: str) -> str:
    """The digits the region usually writes before a national number's significant
    digits ("0" in DE and GB, none in the US or Italy), read off its example number."""
    example = phonenumbers.example_number(region)
    return "" if example is None else _written_prefix(example)


def _written_prefix(number: phonenumbers.PhoneNumber) -> str:
    """The digits the national format of ``number`` puts before its significant digits."""
    national = _digits(phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.NATIONAL))
    significant = phonenumbers.national_significant_number(number)
    return national[: len(national) - len(significant)] if national.endswith(significant) else ""


def _as_written_nationally(number: phonenumbers.PhoneNumber, digits: str, region: str) -> bool:
    """Whether a national reading was written as its region writes it: with the trunk
    prefix where its national format has one (DE 0151 ..., not 151 ...). The region's
    usual prefix decides most; the number's own format the rest (mobiles in China)."""
    return digits.startswith(_trunk_prefix(region)) or digits.startswith(_written_prefix(number))


@functools.cache
def _calling_code(region: str) -> str:
    return str(phonenumbers.country_code_for_region(region))


def _digits(text: str) -> str:
    """The digits of ``text``, those of other scripts included (as ASCII)."""
    if text.isascii():
        return _NOT_DIGIT.sub("", text)
    return phonenumbers.normalize_digits_only(text)


def _read_without_plus(text: str, digits: str, region: str | None) -> phonenumbers.PhoneNumber | None:
    """The first valid reading of a number written without '+' (see ``normalize_phone``)."""
    if region and digits.startswith(_calling_code(region)):
        # The region's number with its country code but no '+', as Meta and TikTok write
        # it: 4915143268367 with region DE is +49 1514 3268367, which phonenumbers alone
        # would read as a longer German national number.
        number = _parse("+" + text, None)
        if number is not None:
            return number
    unusual = None
    if region:
        number = _parse(text, region)
        if number is not None:
            if number.country_code_source != FROM_DEFAULT_COUNTRY or _as_written_nationally(number, digits, region):
                return number
            # A national number that lost its trunk prefix (a spreadsheet dropping the
            # leading zero) is only read so when nothing else reads.
            unusual = number
    if digits.startswith("00"):
        number = _parse("+" + _PREFIX_00.sub("", text, count=1), None)
        if number is not None:
            return number
    # A country code written without '+' (447401880994).
    return _parse("+" + text, None) or unusual


def read_phone(value: str, region: str | None = DEFAULT_REGION) -> tuple[str, bool]:
    """``(E.164, national)``: the number, and whether it was read as a national number
    of ``region`` (it carried no country code). Rules as in ``normalize_phone``."""
    if not isinstance(value, str):
        raise InvalidIdentifierError("phone", "not a string")
    text = value.strip()
    if not text:
        raise InvalidIdentifierError("phone", "empty")
    if len(text) > MAX_PHONE_INPUT:
        raise InvalidIdentifierError("phone", f"longer than {MAX_PHONE_INPUT} characters")
    digits = _digits(text)
    if not digits:
        raise InvalidIdentifierError("phone", "not a phone number")
    region = region_code(region)
    if _PLUS_FIRST.match(text):
        number = _parse(text, None)
        if number is None:
            raise InvalidIdentifierError("phone", PHONE_BAD_AFTER_PLUS)
    else:
        number = _read_without_plus(text, digits, region)
        if number is None:
            raise InvalidIdentifierError("phone", PHONE_NOT_IN_REGION if region else PHONE_NEEDS_COUNTRY)
    national = number.country_code_source == FROM_DEFAULT_COUNTRY
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164), national


def normalize_phone(value: str, region: str | None = DEFAULT_REGION) -> str:
    """E.164 (``+`` and digits) through ``phonenumbers``; extensions are dropped.

    A number written with '+' before its first digit is read as international only.
    Any other is read, first valid reading wins, as:

    1. the region's own country code written without '+' (4915143268367, DE);
    2. a national number of ``region`` written as the region writes them (with its
       trunk prefix where its national format has one), or after the region's own
       international prefix; numbers of countries sharing its calling code count;
    3. a number after a ``00`` international prefix;
    4. a country code and number without '+' (447401880994);
    5. a national number of ``region`` that lost its trunk prefix (7401 880994, GB).

    ``region`` is an ISO 3166 alpha-2 code in any case; ``None`` (or a code that names
    no region) leaves readings 3 and 4.
    """
    return read_phone(value, region)[0]


def digest_from_hex(id_type: str, value: str) -> bytes:
    """The 32 bytes of a hex SHA-256 digest (64 hex digits, either case, surrounding
    whitespace ignored), or ``InvalidIdentifierError`` saying what the value is instead."""
    if not isinstance(value, str):
        raise InvalidIdentifierError(id_type, "not a string")
    digest = value.strip().lower()
    if _HEX64.fullmatch(digest):
        return bytes.fromhex(digest)
    if len(digest) in _OTHER_DIGESTS and _HEX.fullmatch(digest):
        raise InvalidIdentifierError(
            id_type, f"{_OTHER_DIGESTS[len(digest)]} digest; only SHA-256 (64 hex digits) can be matched"
        )
    raise InvalidIdentifierError(id_type, "prehashed value is not 64 hex digits")


def is_sha256_hex(value: str) -> bool:
    """Whether ``value`` is written as a hex SHA-256 digest (what a hashed list holds)."""
    return _HEX64.fullmatch(value.strip().lower()) is not None


def normalize(id_type: str, value: str, region: str | None = DEFAULT_REGION) -> str:
    if id_type == "email":
        return normalize_email(value)
    if id_type == "phone":
        return normalize_phone(value, region)
    raise InvalidIdentifierError(id_type, f"unknown id type (expected one of {', '.join(ID_TYPES)})")


def type_prefix(id_type: str) -> bytes:
    """``id_type || 0x00``, which each digest follows in an encoded identifier."""
    if id_type not in ID_TYPES:
        raise InvalidIdentifierError(
            str(id_type)[:16], f"unknown id type (expected one of {', '.join(ID_TYPES)})"
        )
    return id_type.encode("ascii") + b"\x00"


def encode_identifier(
    id_type: str, value: str, prehashed: bool = False, region: str | None = DEFAULT_REGION
) -> bytes:
    """``id_type || 0x00 || SHA-256(normalized)``.

    With ``prehashed=True``, ``value`` is the hex SHA-256 of the already normalized
    identifier (64 hex digits, either case).
    """
    prefix = type_prefix(id_type)
    if prehashed:
        return prefix + digest_from_hex(id_type, value)
    normalized = normalize(id_type, value, region)
    return prefix + value_digest(normalized)


def value_digest(normalized: str) -> bytes:
    """SHA-256 of a normalized identifier, as both parties hash it."""
    return hashlib.sha256(normalized.encode("utf-8")).digest()


@dataclass
class EncodedList:
    """A list after encoding: distinct encodings in first-seen order, and what was rejected."""

    encoded: list[bytes] = field(default_factory=list)
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (row number, rule)
    duplicates: int = 0

    @property
    def n_submitted(self) -> int:
        return len(self.encoded) + len(self.invalid) + self.duplicates


def encode_identifiers(
    id_type: str,
    rows: Iterable[tuple[int, str]],
    prehashed: bool = False,
    region: str | None = DEFAULT_REGION,
) -> EncodedList:
    """Encode numbered rows, keeping distinct encodings and recording invalid rows."""
    type_prefix(id_type)
    seen: dict[bytes, None] = {}
    result = EncodedList()
    for number, value in rows:
        try:
            enc = encode_identifier(id_type, value, prehashed, region)
        except InvalidIdentifierError as exc:
            result.invalid.append((number, exc.rule))
            continue
        if enc in seen:
            result.duplicates += 1
        else:
            seen[enc] = None
    result.encoded = list(seen)
    return result
