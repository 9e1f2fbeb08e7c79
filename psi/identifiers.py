"""Identifier normalization and the encoding that feeds hash to curve.

``encode_identifier`` produces ``id_type || 0x00 || SHA-256(normalized)``, so a raw
identifier and the hex SHA-256 of its normalized form (the format ad platforms accept)
encode to the same bytes and therefore to the same curve point.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

import phonenumbers

from .errors import InvalidIdentifierError

__all__ = [
    "ID_TYPES",
    "EncodedList",
    "encode_identifier",
    "encode_identifiers",
    "normalize",
    "normalize_email",
    "normalize_phone",
]

ID_TYPES = ("email", "phone")
MAX_EMAIL_LENGTH = 254  # RFC 5321 path limit
MAX_PHONE_INPUT = 64
_HEX64 = re.compile(r"[0-9a-f]{64}")
_EMAIL_FORBIDDEN = re.compile(r"[\s<>()\[\],;:\\\"]")


def normalize_email(value: str) -> str:
    """Trim and lower-case. No provider-specific rewriting (dots, plus tags) is applied."""
    if not isinstance(value, str):
        raise InvalidIdentifierError("email", "not a string")
    email = value.strip().lower()
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


def normalize_phone(value: str, region: str | None = "US") -> str:
    """E.164 (``+`` and digits) through ``phonenumbers``; ``region`` applies to national
    numbers written without a country code. Extensions are dropped."""
    if not isinstance(value, str):
        raise InvalidIdentifierError("phone", "not a string")
    text = value.strip()
    if not text:
        raise InvalidIdentifierError("phone", "empty")
    if len(text) > MAX_PHONE_INPUT:
        raise InvalidIdentifierError("phone", f"longer than {MAX_PHONE_INPUT} characters")
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException as exc:
        reason = {
            phonenumbers.NumberParseException.INVALID_COUNTRY_CODE: (
                "no country code and no default region"
            ),
            phonenumbers.NumberParseException.NOT_A_NUMBER: "not a phone number",
            phonenumbers.NumberParseException.TOO_SHORT_NSN: "too short",
            phonenumbers.NumberParseException.TOO_SHORT_AFTER_IDD: "too short",
            phonenumbers.NumberParseException.TOO_LONG: "too long",
        }.get(exc.error_type, "unparsable")
        raise InvalidIdentifierError("phone", reason) from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidIdentifierError("phone", "not a valid number for its region")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalize(id_type: str, value: str, region: str | None = "US") -> str:
    if id_type == "email":
        return normalize_email(value)
    if id_type == "phone":
        return normalize_phone(value, region)
    raise InvalidIdentifierError(id_type, f"unknown id type (expected one of {', '.join(ID_TYPES)})")


def _prefix(id_type: str) -> bytes:
    if id_type not in ID_TYPES:
        raise InvalidIdentifierError(
            str(id_type)[:16], f"unknown id type (expected one of {', '.join(ID_TYPES)})"
        )
    return id_type.encode("ascii") + b"\x00"


def encode_identifier(
    id_type: str, value: str, prehashed: bool = False, region: str | None = "US"
) -> bytes:
    """``id_type || 0x00 || SHA-256(normalized)``.

    With ``prehashed=True``, ``value`` is the hex SHA-256 of the already normalized
    identifier (64 hex digits, either case).
    """
    prefix = _prefix(id_type)
    if prehashed:
        if not isinstance(value, str):
            raise InvalidIdentifierError(id_type, "not a string")
        digest = value.strip().lower()
        if not _HEX64.fullmatch(digest):
            raise InvalidIdentifierError(id_type, "prehashed value is not 64 hex digits")
        return prefix + bytes.fromhex(digest)
    normalized = normalize(id_type, value, region)
    return prefix + hashlib.sha256(normalized.encode("utf-8")).digest()


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
    region: str | None = "US",
) -> EncodedList:
    """Encode numbered rows, keeping distinct encodings and recording invalid rows."""
    _prefix(id_type)
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
