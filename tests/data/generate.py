"""Writes the customer files in this directory: ``python tests/data/generate.py``.

The files are committed; this script documents how they were made and remakes them
byte for byte (fixed seed, gzip without a timestamp). Identifiers are synthetic:
addresses at example.com/.org/.net, and phone numbers from ranges reserved for fiction
(555-0100 to 555-0199 in North America, 020 7946 0xxx in London, 01 99 00 xx xx in
France, 0491 570 xxx in Australia) or varied from phonenumbers' example numbers (DE).
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import random
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

import phonenumbers

HERE = Path(__file__).resolve().parent
SEED = 20260301

FIRST = ["ann", "bob", "chloé", "dmitri", "eve", "fatima", "günter", "hana", "ivan", "joão",
         "kofi", "lena", "mateo", "nour", "oskar", "priya", "quinn", "rosa", "søren", "zoë"]
LAST = ["adams", "berg", "costa", "dubois", "eriksen", "fischer", "garcía", "hughes", "ito",
        "jensen", "kowalski", "lópez", "müller", "novak", "okafor", "perez", "quist", "rossi"]
DOMAINS = ["example.com", "example.org", "example.net", "mail.example.com"]
ZIPS = {"US": "20500", "GB": "SW1A 1AA", "FR": "75001", "AU": "2000", "DE": "10115"}


def _pool(rng: random.Random) -> dict[str, list[str]]:
    """Distinct valid numbers per region, E.164, in a shuffled order."""
    pools = {
        "US": [f"+1{a}555{b:04d}" for a in (202, 212, 312, 415, 617) for b in range(100, 200)],
        "GB": [f"+44207946{b:04d}" for b in range(1000)],
        "FR": [f"+331990{b:05d}" for b in range(1000)],
        "AU": [f"+61491570{b:03d}" for b in range(1000)],
        "DE": [f"+491512345{b:04d}" for b in range(1000)],
    }
    for numbers in pools.values():
        assert all(phonenumbers.is_valid_number(phonenumbers.parse(n)) for n in numbers)
        rng.shuffle(numbers)
    return pools


@dataclass
class Person:
    first: str
    last: str
    region: str
    emails: list[str] = field(default_factory=list)
    phones: list[str] = field(default_factory=list)  # E.164


def people(rng: random.Random, n: int, pools: dict[str, list[str]], regions: list[str]) -> list[Person]:
    out = []
    for i in range(n):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        region = rng.choice(regions)
        p = Person(first, last, region)
        p.emails.append(f"{first}.{last}{i}@{rng.choice(DOMAINS)}")
        if rng.random() < 0.3:
            p.emails.append(f"{first[0]}{last}.{i}@{rng.choice(DOMAINS)}")
        for _ in range(rng.choice([0, 1, 1, 1, 2])):
            p.phones.append(pools[region].pop())
        out.append(p)
    return out


def spelled_email(rng: random.Random, email: str) -> str:
    """The address as a CRM may hold it: case, surrounding spaces, decomposed accents."""
    choice = rng.random()
    if choice < 0.2:
        email = email.upper()
    elif choice < 0.4:
        email = email.title()
    if rng.random() < 0.15:
        email = f"  {email} "
    if rng.random() < 0.3:
        email = unicodedata.normalize("NFD", email)
    return email


def national(e164: str) -> str:
    return phonenumbers.format_number(phonenumbers.parse(e164), phonenumbers.PhoneNumberFormat.NATIONAL)


def international_digits(rng: random.Random, e164: str) -> str:
    """With its country code but no '+', as Meta and TikTok document: bare digits or
    with the punctuation of the international format."""
    text = phonenumbers.format_number(phonenumbers.parse(e164), phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    return rng.choice([text[1:], text[1:].replace(" ", "-"), e164[1:]])


def sha(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def canonical_email(email: str) -> str:
    return unicodedata.normalize("NFC", email.strip().lower())


def csv_text(rows: list[list[str]], delimiter: str = ",", newline: str = "\n", quoting=csv.QUOTE_MINIMAL) -> str:
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator=newline, quoting=quoting).writerows(rows)
    return out.getvalue()


def with_repeats(rng: random.Random, rows: list[list[str]], rate: float = 0.1) -> list[list[str]]:
    """Some customers entered twice (a CRM's duplicate records), shuffled in."""
    rows = rows + [list(r) for r in rng.sample(rows, int(len(rows) * rate))]
    rng.shuffle(rows)
    return rows


def google(rng: random.Random, persons: list[Person]) -> tuple[str, str]:
    header = ["Email", "First Name", "Last Name", "Country", "Zip", "Email", "Zip", "Phone", "Phone"]
    rows, hashed = [], []
    for p in persons:
        country = rng.choice([p.region, p.region.lower()])
        emails = [spelled_email(rng, e) for e in p.emails] + ["", ""]
        phones = [national(n) if rng.random() < 0.5 else international_digits(rng, n) for n in p.phones] + ["", ""]
        rows.append([emails[0], p.first, p.last, country, ZIPS[p.region], emails[1], "", phones[0], phones[1]])
        hashed.append([sha(canonical_email(p.emails[0])), sha(p.phones[0]) if p.phones else "", p.region, ZIPS[p.region]])
    # A customer recorded again with only a second address and the same phone: merges.
    for p in [p for p in persons if p.phones][:6]:
        rows.append([f"other.{p.first}.{p.last}@example.org", p.first, p.last, p.region, "", "", "", national(p.phones[0]), ""])
    rows += [["not-an-email", "x", "y", "us", "", "", "", "n/a", ""],
             ["", "x", "y", "gb", "", "", "", "+44 20 7946", ""]]
    rows = with_repeats(rng, rows)
    comments = [
        "# Customer Match upload template (synthetic data).",
        "# One customer per line; several Email, Phone and Zip columns are allowed.",
        "# Phone numbers need a country code, or the customer's Country column.",
    ]
    text = "\r\n".join(comments) + "\r\n" + csv_text([header] + rows, newline="\r\n")
    hashed = with_repeats(rng, hashed)
    for row in hashed[::4]:
        row[0] = row[0].upper()  # hex in either case
    return text, csv_text([["Email", "Phone", "Country", "Zip"]] + hashed)


def meta(rng: random.Random, persons: list[Person]) -> tuple[str, str]:
    header = ["email", "email", "phone", "phone", "fn", "ln", "zip", "ct", "st", "country"]
    rows, hashed = [], []
    for p in persons:
        emails = [spelled_email(rng, e) for e in p.emails] + ["", ""]
        phones = [rng.choice([international_digits(rng, n), n]) for n in p.phones] + ["", ""]
        rows.append([emails[0], emails[1], phones[0], phones[1], p.first, p.last, ZIPS[p.region], "", "",
                     p.region.lower()])
        # Meta hashes phones as their digits: country code, no '+'.
        hashed.append([sha(canonical_email(p.emails[0])), sha(p.phones[0][1:]) if p.phones else ""])
    rows += [["bob@", "", "12345", "", "", "", "", "", "", ""]]
    return (csv_text([header] + with_repeats(rng, rows)),
            csv_text([["email", "phone"]] + with_repeats(rng, hashed)))


def linkedin(rng: random.Random, persons: list[Person]) -> str:
    header = ["email", "firstname", "lastname", "jobtitle", "employeecompany", "country", "googleaid"]
    rows = [[spelled_email(rng, p.emails[0]), p.first, p.last, rng.choice(["Engineer", "Buyer, EMEA"]),
             rng.choice(["Example, Inc.", "Example GmbH", 'The "Example" Co.']), p.region, ""] for p in persons]
    rows.append(["jane.doe(at)example.com", "jane", "doe", "", "", "US", ""])
    return csv_text([header] + with_repeats(rng, rows), quoting=csv.QUOTE_ALL)


def x_lists(rng: random.Random, persons: list[Person]) -> tuple[str, str]:
    emails = [e for p in persons for e in p.emails]
    lines = [spelled_email(rng, e) for e in emails] + ["", "no-at-sign.example.com"]
    lines = with_repeats(rng, [[x] for x in lines])
    hashed = [sha(canonical_email(e)) for e in emails]
    return "\r\n".join(x[0] for x in lines) + "\r\n", "\n".join(hashed) + "\n"


def tiktok(rng: random.Random, persons: list[Person]) -> tuple[str, str]:
    rows, hashed = [], []
    for p in persons:
        phone = ""
        if p.phones:
            # TikTok's normalized form: digits with the country code, no '+'.
            phone = rng.choice([p.phones[0][1:], international_digits(rng, p.phones[0]), p.phones[0]])
        rows.append([spelled_email(rng, p.emails[0]), phone])
        hashed.append([sha(canonical_email(p.emails[0])), sha(p.phones[0]) if p.phones else ""])
    # Two rows sharing a phone: one customer.
    shared = next(p for p in persons if p.phones)
    rows.append([f"partner.{shared.first}@example.net", shared.phones[0][1:]])
    return (csv_text([["Email", "Phone"]] + with_repeats(rng, rows)),
            csv_text([["Email_SHA256", "Phone_SHA256"]] + with_repeats(rng, hashed)))


def crm_semicolon(rng: random.Random, persons: list[Person]) -> str:
    """A European spreadsheet export: BOM, ';', quoted header, CR-only line endings
    (classic Mac), numbers written nationally with a per-row country in any case, with a
    00 international prefix or with '+'."""
    rows = []
    for i, p in enumerate(persons):
        phone = ""
        country = rng.choice([p.region, p.region.lower(), "UK" if p.region == "GB" else p.region])
        if p.phones:
            n = p.phones[0]
            phone = rng.choice([national(n), "00" + n[1:], n[:3] + " " + n[3:]])
        rows.append([f"C{i:04d}", spelled_email(rng, p.emails[0]), phone, country])
    rows = with_repeats(rng, rows)
    # Not a country code: the number has none either, so it cannot be read.
    rows.append(["C9998", "", "01 99 00 99 99", "Germany"])
    rows.append(["C9999", "", "", ""])
    header = ["Customer ID", "Email", "Mobile", "Country"]
    body = csv_text(rows, delimiter=";", newline="\r")
    return '\ufeff"' + '";"'.join(header) + '"\r' + body


def excel_unicode(rng: random.Random, persons: list[Person]) -> str:
    """Excel's "Unicode Text": UTF-16 with a BOM, tab-separated, CRLF."""
    rows = [[spelled_email(rng, p.emails[0]), national(p.phones[0]) if p.phones else "", p.region]
            for p in persons]
    return csv_text([["Email", "Phone", "Country"]] + with_repeats(rng, rows), delimiter="\t", newline="\r\n")


def main() -> None:
    rng = random.Random(SEED)
    pools = _pool(rng)
    regions = ["US", "US", "GB", "FR", "AU", "DE"]
    g_text, g_hashed = google(rng, people(rng, 120, pools, regions))
    (HERE / "google_customer_match.csv").write_bytes(b"\xef\xbb\xbf" + g_text.encode())
    (HERE / "google_customer_match.csv.gz").write_bytes(gzip.compress(g_text.encode(), mtime=0))
    (HERE / "google_customer_match_hashed.csv").write_text(g_hashed, newline="")
    m_text, m_hashed = meta(rng, people(rng, 120, pools, regions))
    (HERE / "meta_custom_audience.csv").write_text(m_text, newline="")
    (HERE / "meta_custom_audience_hashed.csv").write_text(m_hashed, newline="")
    (HERE / "linkedin_contact_list.csv").write_text(linkedin(rng, people(rng, 100, pools, regions)), newline="")
    x_plain, x_hashed = x_lists(rng, people(rng, 100, pools, regions))
    (HERE / "x_emails.txt").write_text(x_plain, newline="")
    (HERE / "x_emails_hashed.txt").write_text(x_hashed, newline="")
    t_text, t_hashed = tiktok(rng, people(rng, 120, pools, regions))
    (HERE / "tiktok_customer_file.csv").write_text(t_text, newline="")
    (HERE / "tiktok_customer_file_hashed.csv").write_text(t_hashed, newline="")
    (HERE / "crm_export_semicolon_cr.csv").write_text(
        crm_semicolon(rng, people(rng, 100, pools, ["GB", "FR", "AU", "US"])), newline="")
    (HERE / "excel_unicode_text.txt").write_bytes(
        codecs.BOM_UTF16_LE + excel_unicode(rng, people(rng, 80, pools, regions)).encode("utf-16-le"))


if __name__ == "__main__":
    main()
