"""Customer files shaped like each ad platform's upload template (``tests/data``, see
its README): read by the client, they give the customers an independent reading by
each platform's documented rule gives, and match end to end with exact counts.

The independent reading parses with Python's ``csv`` over ``str.splitlines`` and
normalizes with the platform's own rule, written here, not with the client's code.
"""

from __future__ import annotations

import csv
import gzip
import json
import re
import subprocess
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import phonenumbers
import pytest
from psi_client.input import InputError, OptionError, read_customers
from psi_server.synthetic import generate

from .customer_oracle import check_list, encoding_of, expected
from .support import CLIENT, ServerProcess, make_registry, rows_in

DATA = Path(__file__).parent / "data"
EMAIL = re.compile(r"[^@\s]+@[^@\s.]+(\.[^@\s.]+)+")
HEX64 = re.compile(r"[0-9a-f]{64}")


def email_key(value: str) -> str | None:
    email = unicodedata.normalize("NFC", value.strip().lower())
    return email if EMAIL.fullmatch(email) else None


def e164(text: str, region: str | None) -> str | None:
    try:
        number = phonenumbers.parse(text, region)
    except phonenumbers.NumberParseException:
        return None
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164) if (
        phonenumbers.is_valid_number(number)) else None


def digits_of(value: str) -> str:
    return re.sub(r"\D", "", value)


def google_phone(value: str, country: str) -> str | None:
    """Customer Match: the number has its country code, or is national in the row's
    Country."""
    region = country.upper() or "US"
    code = str(phonenumbers.country_code_for_region(region))
    if value.strip().startswith("+") or digits_of(value).startswith(code):
        return e164("+" + digits_of(value), None)
    return e164(value, region)


def meta_phone(value: str, _: str) -> str | None:
    """Meta and TikTok: remove symbols, letters and leading zeros; the country code is
    part of the number."""
    return e164("+" + digits_of(value).lstrip("0"), None)


def crm_phone(value: str, country: str) -> str | None:
    """The spreadsheet export: '+' or a 00 prefix, else national in the row's country."""
    if value.startswith("+"):
        return e164(value, None)
    if value.startswith("00"):
        return e164("+" + digits_of(value)[2:], None)
    region = {"UK": "GB"}.get(country.upper(), country.upper())
    return e164(value, region) if region in phonenumbers.SUPPORTED_REGIONS else None


def hashed(value: str, _: str = "") -> str | None:
    digest = value.strip().lower()
    return digest if HEX64.fullmatch(digest) else None


@dataclass
class Case:
    file: str
    encoding: str
    emails: list[str]  # header names (repeated names count once: every such column)
    phones: list[str]
    phone_rule: Callable[[str, str], str | None] | None = None
    country: str | None = None
    delimiter: str = ","
    headerless: bool = False
    prehashed: bool = False


CASES = {
    "google": Case("google_customer_match.csv", "utf-8-sig", ["Email"], ["Phone"], google_phone, "Country"),
    "google gzip": Case("google_customer_match.csv.gz", "utf-8", ["Email"], ["Phone"], google_phone, "Country"),
    "google hashed": Case("google_customer_match_hashed.csv", "utf-8", ["Email"], ["Phone"], hashed,
                          prehashed=True),
    "meta": Case("meta_custom_audience.csv", "utf-8", ["email"], ["phone"], meta_phone),
    "meta hashed emails": Case("meta_custom_audience_hashed.csv", "utf-8", ["email"], [], prehashed=True),
    "linkedin": Case("linkedin_contact_list.csv", "utf-8", ["email"], []),
    "x": Case("x_emails.txt", "utf-8", ["-"], [], headerless=True),
    "x hashed": Case("x_emails_hashed.txt", "utf-8", ["-"], [], headerless=True, prehashed=True),
    "tiktok": Case("tiktok_customer_file.csv", "utf-8", ["Email"], ["Phone"], meta_phone),
    "tiktok hashed": Case("tiktok_customer_file_hashed.csv", "utf-8", ["Email_SHA256"], ["Phone_SHA256"], hashed,
                          prehashed=True),
    "spreadsheet ; CR": Case("crm_export_semicolon_cr.csv", "utf-8-sig", ["Email"], ["Mobile"], crm_phone,
                             "Country", delimiter=";"),
    "excel unicode text": Case("excel_unicode_text.txt", "utf-16", ["Email"], ["Phone"], google_phone, "Country",
                               delimiter="\t"),
}


def independent_rows(case: Case) -> tuple[list[list[tuple[str, str]]], dict[str, int]]:
    """Each data row's ``(id_type, normalized value)`` pairs by the platform's rule (the
    lower-case hex digest for a hashed list), and the rejected values per type."""
    raw = (DATA / case.file).read_bytes()
    if case.file.endswith(".gz"):
        raw = gzip.decompress(raw)
    lines = raw.decode(case.encoding).splitlines()
    email = hashed if case.prehashed else email_key
    rejected = {"email": 0, "phone": 0}
    if case.headerless:
        keys = [email(line) for line in lines if line.strip()]
        rejected["email"] = keys.count(None)
        return [[("email", k)] if k else [] for k in keys], rejected
    while lines[0].startswith("#"):
        lines.pop(0)
    table = list(csv.reader(lines, delimiter=case.delimiter))
    header = [h.strip().lower() for h in table[0]]

    def cells(names: list[str], row: list[str]) -> list[str]:
        wanted = {n.lower() for n in names}
        return [row[i] for i, h in enumerate(header) if h in wanted and i < len(row) and row[i].strip()]

    rows = []
    for row in table[1:]:
        if not any(c.strip() for c in row):
            continue
        country = next(iter(cells([case.country], row)), "").strip() if case.country else ""
        pairs = []
        for id_type, names, rule in (("email", case.emails, email), ("phone", case.phones, case.phone_rule)):
            for value in cells(names, row):
                key = rule(value, country) if id_type == "phone" else rule(value)
                if key is None:
                    rejected[id_type] += 1
                else:
                    pairs.append((id_type, key))
        rows.append(pairs)
    return rows, rejected


def encodings(case: Case, rows: list[list[tuple[str, str]]]) -> list[list[bytes]]:
    if case.prehashed:
        return [[t.encode() + b"\x00" + bytes.fromhex(k) for t, k in r] for r in rows]
    return [[encoding_of(t, k) for t, k in r] for r in rows]


def read_case(case: Case):
    columns = [("email", None)] if case.headerless else (
        [("email", n) for n in case.emails] + [("phone", n) for n in case.phones])
    kw = {"prehashed": True} if case.prehashed else {"region": "US", "country_column": case.country}
    return read_customers(DATA / case.file, columns, **kw)


@pytest.mark.parametrize("name", CASES)
def test_platform_file_gives_the_platforms_customers(name):
    case = CASES[name]
    rows, rejected = independent_rows(case)
    listing = read_case(case)
    check_list(listing, expected(encodings(case, rows)))
    assert len(listing.invalid) == sum(rejected.values())
    assert listing.n_rows == len(rows)
    assert listing.per_type == {t: len({k for r in rows for u, k in r if u == t}) for t in listing.id_types}
    assert listing.n_customers > 50 and (case.prehashed or listing.merged_rows > 0)


def test_compressed_and_plain_files_read_alike():
    plain, packed = read_case(CASES["google"]), read_case(CASES["google gzip"])
    assert (plain.items, plain.group.tolist(), plain.invalid) == (packed.items, packed.group.tolist(), packed.invalid)
    assert (plain.encoding, packed.encoding) == ("UTF-8", "UTF-8+gzip")


def test_hashed_and_raw_files_hold_the_same_identifiers():
    """The hashed templates hash the first email (and phone) of the raw ones' customers."""
    for raw, digests in (("x", "x hashed"),):
        assert set(read_case(CASES[raw]).items) == set(read_case(CASES[digests]).items)


def test_meta_phones_hashed_as_digits_are_refused():
    with pytest.raises(OptionError, match="cannot be matched"):
        read_customers(DATA / "meta_custom_audience_hashed.csv", [("email", "email"), ("phone", "phone")],
                       prehashed=True, phone_hash_format="digits")


def test_hashed_template_without_prehashed_is_refused():
    with pytest.raises(InputError, match="the list is hashed; give --prehashed"):
        read_customers(DATA / "tiktok_customer_file_hashed.csv", [("email", "Email_SHA256")])


# --- end to end, single-type lists against a real server ------------------------------


def values_of(case: str, id_type: str) -> tuple[set[str], int]:
    """Distinct normalized values of one type in a platform file, and its rejected ones."""
    rows, rejected = independent_rows(CASES[case])
    return {k for r in rows for t, k in r if t == id_type}, rejected[id_type]


@pytest.fixture(scope="module")
def platform(tmp_path_factory):
    """A registry holding, with consent, half the X emails and TikTok phones; a quarter
    more given only for security (never matchable); and unrelated users."""
    tmp = tmp_path_factory.mktemp("platform-e2e")
    emails, _ = values_of("x", "email")
    phones, _ = values_of("tiktok", "phone")
    google_emails, _ = values_of("google", "email")
    google_phones, _ = values_of("google", "phone")
    registry = list(generate(200, seed=4).rows)
    matchable = set()
    held = [("email", e) for e in sorted(emails | google_emails)] + [("phone", p) for p in sorted(phones | google_phones)]
    for i, (id_type, value) in enumerate(held):
        if i % 4 in (0, 2):
            registry.append((f"u-{i}", id_type, value, "account", "granted", "2026-01-01T00:00:00Z"))
            matchable.add((id_type, value))
        elif i % 4 == 1:
            registry.append((f"u-{i}", id_type, value, "security", "granted", "2026-01-01T00:00:00Z"))
    db, token = make_registry(tmp, registry)
    server = ServerProcess(db, tmp, "--unsafe-exact-counts", "--min-list-size", "10")
    yield db, token, server, matchable
    server.stop()


def run_match(server: ServerProcess, token: Path, *args: str) -> tuple[int, dict | None, str]:
    out = subprocess.run(CLIENT + ["--server", server.address, "--token-file", str(token), "--insecure", "--json",
                                   "--workers", "1", "--min-table-size", "10", *args],
                         capture_output=True, text=True, timeout=300)
    lines = [line for line in out.stdout.splitlines() if line.strip()]
    return out.returncode, (json.loads(lines[-1]) if lines else None), out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("args,case,id_type", [
    (["--id-type", "email"], "x", "email"),
    (["--id-type", "email", "--prehashed"], "x hashed", "email"),
    (["--phone-column", "phone"], "tiktok", "phone"),
    (["--email-column", "EMAIL"], "linkedin", "email"),
])
def test_exact_count_of_a_platform_file(platform, args, case, id_type):
    _, token, server, matchable = platform
    code, out, err = run_match(server, token, *args, str(DATA / CASES[case].file))
    assert code == 0, err
    values, rejected = values_of(case.replace(" hashed", ""), id_type)
    assert out["noisy_count"] == len({(id_type, v) for v in values} & matchable) and out["noise"] is False
    assert out["n_customers"] == len(values) and out["identifiers"] == {id_type: len(values)}
    assert out["n_invalid"] == (0 if case.endswith("hashed") else rejected)


@pytest.mark.slow
def test_customers_with_an_email_and_a_phone_count_once_in_one_charged_session(platform):
    """Google's template: emails and phones with a country, rows sharing identifiers."""
    db, token, server, matchable = platform
    rows, _ = independent_rows(CASES["google"])
    customers = expected(encodings(CASES["google"], rows))["partition"]
    reachable = {encoding_of(t, v) for t, v in matchable}
    both = sum(1 for c in customers if len({e[:5] for e in c & reachable}) == 2)
    assert both > 0  # some customers are reachable by their email and their phone
    before = rows_in(db, "budget_ledger")
    code, out, err = run_match(server, token, "--email-column", "Email", "--phone-column", "Phone",
                               "--country-column", "Country", str(DATA / "google_customer_match.csv"))
    assert code == 0, err
    assert out["noisy_count"] == sum(1 for c in customers if c & reachable)
    assert out["n_customers"] == len(customers) and set(out["identifiers"]) == {"email", "phone"}
    assert rows_in(db, "budget_ledger") == before + 1
