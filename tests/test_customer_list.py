"""The advertiser's customer list: files as CRMs write them, customers grouped across
identifiers, hashed lists, and every refusal before anything is sent.

Expected customers come from an independent computation: a plain union-find over the
normalized values, written here.
"""

from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import subprocess
import tempfile
import unicodedata
import zipfile
from array import array
from pathlib import Path

import numpy as np
import phonenumbers
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from psi_client.customers import Occurrences, _sorted_items, union
from psi_client.files import DELIMITERS as DELIMITERS_
from psi_client.input import BAD_COUNTRY, SHORT_ROW, InputError, OptionError, read_customers

from psi.records import NOT_UTF8

from .customer_oracle import UnionFind, check_list, encoding_of, expected
from .support import CLIENT

MARK = "qzx"  # in generated identifiers; must never appear in a reported reason


# --- grouping ------------------------------------------------------------------------


@given(st.integers(1, 60), st.lists(st.tuples(st.integers(0, 59), st.integers(0, 59)), max_size=120))
def test_union_matches_a_textbook_union_find(n, edges):
    edges = [(a % n, b % n) for a, b in edges]
    parent = np.arange(n, dtype=np.int64)
    a = np.array([e[0] for e in edges], dtype=np.int64)
    b = np.array([e[1] for e in edges], dtype=np.int64)
    union(parent, a, b)
    uf = UnionFind()
    for x, y in edges:
        uf.join(x, y)
    for x in range(n):
        for y in range(n):
            assert (parent[x] == parent[y]) == (uf.find(x) == uf.find(y))
        # a root is the smallest member of its set
        assert parent[x] == min(y for y in range(n) if uf.find(y) == uf.find(x))


def test_long_chains_join():
    n = 100_000
    parent = np.arange(n, dtype=np.int64)
    order = np.random.default_rng(1).permutation(n - 1)
    union(parent, order, order + 1)  # rows i and i + 1, in a random order
    assert (parent == 0).all()


@settings(max_examples=100)
@given(st.lists(st.lists(st.tuples(st.integers(0, 1), st.integers(0, 25)), max_size=4), max_size=60),
       st.integers(1, 8))
def test_occurrences_match_the_expected_customers(rows, fold_min):
    """Any fold schedule gives the customers of a textbook union-find."""
    occurrences = Occurrences(fold_min=fold_min)
    encoded = []
    for r, values in enumerate(rows):
        encoded.append([bytes([t]) + hashlib.sha256(bytes([v])).digest() for t, v in values])
        # added a row at a time, or a value at a time
        for part in ([values] if r % 2 else [[v] for v in values]):
            occurrences.add(bytes(t for t, _ in part), b"".join(hashlib.sha256(bytes([v])).digest() for _, v in part),
                            array("q", [r] * len(part)))
    grouping = occurrences.finish()
    want = expected(encoded)
    got: dict[int, set[bytes]] = {}
    for i, g in zip(grouping.order.tolist(), grouping.group.tolist()):
        got.setdefault(g, set()).add(bytes([grouping.types[i]]) + bytes(grouping.digests[32 * i : 32 * i + 32]))
    assert {frozenset(c) for c in got.values()} == want["partition"]
    assert (grouping.n_customers, grouping.duplicates, grouping.merged_rows) == (
        want["n_customers"], want["duplicates"], want["merged_rows"])
    assert list(grouping.group) == sorted(grouping.group)


def test_digests_sharing_their_sort_key_are_told_apart():
    """Occurrences are sorted on 8 bytes of the digest and compared on all 32: pairs
    that agree on those 8 bytes, interleaved, must still come out as distinct items."""
    rng = np.random.default_rng(7)
    head = rng.integers(0, 256, 8, dtype=np.uint8)
    tails = rng.integers(0, 256, (5, 24), dtype=np.uint8)
    picks = rng.integers(0, 5, 200)
    digests = np.hstack([np.tile(head, (200, 1)), tails[picks]])
    types = (picks % 2).astype(np.uint8)  # each tail always with the same type
    order, new = _sorted_items(types, digests)
    assert sorted(order.tolist()) == list(range(200))
    assert new.sum() == len(set(picks.tolist()))
    item = np.cumsum(new) - 1
    for position, value in zip(item, picks[order]):
        assert picks[order][item == position][0] == value


# --- files as CRMs write them ---------------------------------------------------------


ROWS = [
    ["Email", "Name", "Phone", "Country"],
    ["Ann@Example.com", "Ann", "+44 20 7946 0123", "gb"],
    ["bob@example.org", "Bob, Jr.", "020 7946 0124", "GB"],
    ["not-an-email", "Eve", "(202) 555-0123", ""],
    ["", "", "", ""],
    ["ann@example.com", "Ann again", "", ""],
    ["zoe\u0308@example.net", "Zoë", "0044 20 7946 0125", "uk"],
]


def table(rows=ROWS, delimiter=",", newline="\n", quote_header=False) -> str:
    out = []
    for i, row in enumerate(rows):
        cells = [f'"{c}"' if (quote_header and i == 0) or delimiter in c or "," in c else c for c in row]
        out.append(delimiter.join(cells))
    return newline.join(out) + newline


def read(path, **kw):
    kw.setdefault("region", "US")
    kw.setdefault("country_column", "country")
    return read_customers(path, [("email", "email"), ("phone", "phone")], **kw)


@pytest.fixture(scope="module")
def baseline(tmp_path_factory):
    path = tmp_path_factory.mktemp("baseline") / "list.csv"
    path.write_text(table())
    return read(path)


def test_baseline_is_what_the_rules_say(baseline):
    phones = ["+442079460123", "+442079460124", "+12025550123", "+442079460125"]
    emails = ["ann@example.com", "bob@example.org", unicodedata.normalize("NFC", "zoe\u0308@example.net")]
    rows = [[encoding_of("email", emails[0]), encoding_of("phone", phones[0])],
            [encoding_of("email", emails[1]), encoding_of("phone", phones[1])],
            [encoding_of("phone", phones[2])],
            [encoding_of("email", emails[0])],
            [encoding_of("email", emails[2]), encoding_of("phone", phones[3])]]
    check_list(baseline, expected(rows))
    assert baseline.n_rows == 5  # the row of empty fields is no row
    assert baseline.invalid == [(4, "email: must contain exactly one '@'")]
    assert baseline.per_type == {"email": 3, "phone": 4}
    assert baseline.national_phones == 1  # (202) 555-0123, read in the default region
    assert baseline.id_types == ("email", "phone")


ENCODINGS = {
    "utf-8": lambda t: t.encode(),
    "utf-8 with BOM": lambda t: codecs.BOM_UTF8 + t.encode(),
    "utf-16-le with BOM": lambda t: codecs.BOM_UTF16_LE + t.encode("utf-16-le"),
    "utf-16-be with BOM": lambda t: codecs.BOM_UTF16_BE + t.encode("utf-16-be"),
    "utf-32 with BOM": lambda t: t.encode("utf-32"),
}


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"], ids=["LF", "CRLF", "CR"])
@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("delimiter", [",", ";", "\t", "|"], ids=["comma", "semicolon", "tab", "bar"])
def test_every_file_form_reads_alike(tmp_path, baseline, compress, newline, encoding, delimiter):
    data = ENCODINGS[encoding](table(delimiter=delimiter, newline=newline, quote_header=True))
    path = tmp_path / ("list.csv.gz" if compress else "list.csv")
    path.write_bytes(gzip.compress(data) if compress else data)
    listing = read(path)
    assert (listing.items, listing.group.tolist(), listing.invalid, listing.n_rows) == (
        baseline.items, baseline.group.tolist(), baseline.invalid, baseline.n_rows)
    assert listing.delimiter == delimiter
    assert listing.encoding.startswith(encoding.split()[0].upper().replace("-LE", "").replace("-BE", ""))
    assert listing.encoding.endswith("+gzip") == compress


EMAILS = ["ann@example.com", "bob.o'neil@example.org", "zoë@example.net", "li+ads@mail.example.com",
          "x@example.co.uk", "élodie@exemple.fr", "kim@example.com", "ann@example.org"]
# Numbers of regions that read each other's numbers with a country code unambiguously
# (+43 1 5551234 would not do: under US its digits are the Canadian 431 555 1234).
PHONES = ["+12025550100", "+12125550199", "+442079460123", "+33199001234", "+61491570123",
          "+4915123456789", "+43136636800", "+14165550123"]


def email_spellings(email: str) -> list[str]:
    return [email, email.upper(), f"  {email.title()} ", unicodedata.normalize("NFD", email)]


def phone_spellings(e164: str) -> list[tuple[str, bool]]:
    """``(text, national)``: a national spelling needs the row's country."""
    number = phonenumbers.parse(e164)
    fmt = phonenumbers.PhoneNumberFormat
    intl = phonenumbers.format_number(number, fmt.INTERNATIONAL)
    return [(e164, False), (intl, False), (e164[1:], False), (intl[1:].replace(" ", "-"), False),
            ("00" + e164[1:], False), (phonenumbers.format_number(number, fmt.NATIONAL), True)]


cell = st.one_of(
    st.tuples(st.just("email"), st.integers(0, 7), st.integers(0, 3)),
    st.tuples(st.just("phone"), st.integers(0, 7), st.integers(0, 5)),
    st.tuples(st.just("junk"), st.sampled_from(["n/a", MARK + "@", "12", MARK]), st.just(0)),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(cell, max_size=4), min_size=1, max_size=25),
       st.sampled_from(DELIMITERS_), st.sampled_from(["\n", "\r\n", "\r"]), st.sampled_from(sorted(ENCODINGS)),
       st.booleans(), st.randoms(use_true_random=False))
def test_any_table_gives_the_customers_of_its_values(rows, delimiter, newline, encoding, compress, rnd):
    """Values drawn from known identifiers, spelled every documented way in two email
    and two phone columns, give the customers a union-find over the identifiers gives."""
    table_rows = [["Email", "Phone", "email", "PHONE", "Country"]]
    truth, rejected = [], 0
    for picks in rows:
        cells, ids, country = ["", "", "", "", ""], [], ""
        slots = {"email": [0, 2], "phone": [1, 3], "junk": [0, 1, 2, 3]}
        for kind, which, how in picks:
            free = [i for i in slots[kind] if not cells[i]]
            if not free:
                continue
            i = rnd.choice(free)
            if kind == "email":
                cells[i] = email_spellings(EMAILS[which])[how]
                ids.append(encoding_of("email", unicodedata.normalize("NFC", EMAILS[which])))
            elif kind == "phone":
                text, national = phone_spellings(PHONES[which])[how]
                region = phonenumbers.region_code_for_number(phonenumbers.parse(PHONES[which]))
                if national and country not in ("", region, region.lower()):
                    continue  # one country per row
                if national or rnd.random() < 0.3:
                    country = country or rnd.choice([region, region.lower()])
                cells[i] = text
                ids.append(encoding_of("phone", PHONES[which]))
            else:
                cells[i] = which
                rejected += 1
        if any(c for c in cells[:4]):
            cells[4] = country
        table_rows.append(cells)
        truth.append(ids)
    out = io.StringIO()
    csv.writer(out, delimiter=delimiter, lineterminator=newline).writerows(table_rows)
    data = ENCODINGS[encoding](out.getvalue())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "list.csv"
        path.write_bytes(gzip.compress(data) if compress else data)
        listing = read_customers(path, [("email", "EMAIL"), ("phone", "phone")], region="US", country_column="country")
    check_list(listing, expected(truth))
    assert len(listing.invalid) == rejected
    assert listing.n_rows == sum(1 for r in table_rows[1:] if any(r))
    for _, rule in listing.invalid:
        assert rule.isascii() and MARK not in rule


def test_explicit_delimiter_and_gzip_by_content(tmp_path, baseline):
    path = tmp_path / "export.dat"  # gzip recognised by its bytes, not its name
    path.write_bytes(gzip.compress(table(delimiter=";").encode()))
    assert read(path, delimiter=";").items == baseline.items
    with pytest.raises(InputError, match="no column"):
        read(path, delimiter=",")


def test_header_names_any_case_repeated_columns_and_comments(tmp_path):
    path = tmp_path / "google.csv"
    path.write_text("# instructions, as a template ships them\n\n#, more\n"
                    " EMAIL ,Phone,email,PHONE,Country\n"
                    "a@example.com,+1 202 555 0100,b@example.com,+1 202 555 0101,us\n"
                    ",,b@example.com,,\n")
    listing = read(path)
    assert listing.per_type == {"email": 2, "phone": 2}
    assert listing.n_customers == 1 and listing.merged_rows == 1 and listing.n_rows == 2


def test_line_numbers_count_every_line_ending(tmp_path):
    data = "email\r\na@example.com\rbad\n\r\nalso-bad\r\nb@example.com"
    path = tmp_path / "mixed.csv"
    path.write_text(data, newline="")
    listing = read_customers(path, [("email", "Email")])
    # 1 email CRLF, 2 a@ CR, 3 bad LF, 4 (empty) CRLF, 5 also-bad CRLF, 6 b@
    assert [line for line, _ in listing.invalid] == [3, 5]


def test_quoted_field_spanning_lines_keeps_line_numbers(tmp_path):
    path = tmp_path / "quoted.csv"
    path.write_text('name,email\n"two\nlines",a@example.com\nx,bad\n')
    listing = read_customers(path, [("email", "email")])
    assert listing.invalid == [(4, "email: must contain exactly one '@'")]


def test_undecodable_lines_are_reported_and_the_rest_read(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes(b"email,name\na@example.com,ann\nb@example.com,J\xf6rg\nc@example.com,cid\n")
    listing = read_customers(path, [("email", "email")])
    assert listing.invalid == [(3, NOT_UTF8)] and listing.per_type == {"email": 2}
    path.write_bytes(codecs.BOM_UTF16_LE + "email\na@example.com\n".encode("utf-16-le") + b"\x00\xd8\n\x00")
    listing = read_customers(path, [("email", "email")])
    assert listing.invalid == [(3, "not valid UTF-16")] and listing.per_type == {"email": 1}


def test_short_rows_and_missing_fields(tmp_path):
    path = tmp_path / "short.csv"
    path.write_text("name,email,phone\nann\nbob,b@example.com\n")
    listing = read_customers(path, [("email", "email"), ("phone", "phone")])
    assert listing.invalid == [(2, SHORT_ROW)] and listing.per_type == {"email": 1, "phone": 0}


@pytest.mark.parametrize("content,message", [
    (b"PK\x03\x04" + bytes(100), "a workbook or an archive, not text; export the sheet as CSV"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + bytes(500), "a workbook or an archive"),
    ("email\na@example.com\n".encode("utf-16-le"), "UTF-16 without a byte-order mark"),
    (gzip.compress(b"email\n" + b"a@example.com\n" * 1000)[:-40], "not a complete gzip file"),
    (b"\x1f\x8b\x08\x00garbage", "not a complete gzip file"),
    (b"", "has no header line"),
    (b"# only a comment\n\n", "has no header line"),
    (b'email\n"unterminated,\n', "malformed CSV"),
])
def test_unreadable_files_are_refused(tmp_path, content, message):
    path = tmp_path / "list.csv"
    path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        read_customers(path, [("email", "email")])


def test_a_real_workbook_is_refused(tmp_path):
    path = tmp_path / "list.xlsx"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("[Content_Types].xml", "<Types/>")
    with pytest.raises(InputError, match="export the sheet as CSV"):
        read_customers(path, [("email", "email")])


def test_missing_column_lists_the_header(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("Email;Mobile;Country\na@example.com;+1 202 555 0100;us\n")
    with pytest.raises(InputError) as info:
        read_customers(path, [("email", "email"), ("phone", "phone")])
    assert str(info.value) == "list.csv has no column 'phone' (columns: Email, Mobile, Country)"
    path.write_text("Email Mobile\n")  # one cell under every delimiter tried
    with pytest.raises(InputError, match="separated by commas, give --delimiter"):
        read_customers(path, [("email", "e-mail")])


@given(st.sampled_from(["{m}@example.com", "+44 20 7946 {d}", "{d}{d}{d}", "{h}"]), st.text(min_size=0, max_size=8))
def test_a_headerless_file_never_echoes_its_first_row(template, noise):
    # A comma or a line ending in the noise would make another first row than the value.
    noise = noise.replace(",", "").replace("\r", "").replace("\n", "")
    value = template.format(m=MARK + noise, d="0123", h=hashlib.sha256(noise.encode()).hexdigest())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "list.txt"
        path.write_text(value + "\nsecond@example.com\n")
        with pytest.raises(InputError) as info:
            read_customers(path, [("email", "Email")])
    assert "looks like data" in str(info.value)
    assert value.strip() not in str(info.value) and MARK not in str(info.value)


def test_headerless_lists(tmp_path):
    path = tmp_path / "x.txt"
    path.write_bytes(b"\xef\xbb\xbfA@Example.com\r\n\r\n  a@example.com \r\nb@example.com\rbad\n")
    listing = read_customers(path, [("email", None)])
    assert listing.per_type == {"email": 2} and listing.duplicates == 1 and listing.n_rows == 4
    assert listing.invalid == [(5, "email: must contain exactly one '@'")]
    assert listing.n_customers == 2 and listing.delimiter is None


# --- phones per row -----------------------------------------------------------------


def test_country_column_overrides_the_region_per_row(tmp_path):
    path = tmp_path / "list.csv"
    path.write_text("phone,country\n020 7946 0123,GB\n020 7946 0123,gb\n020 7946 0123,uk\n"
                    "01 99 00 12 34,fr\n(202) 555-0123,\n020 7946 0123,Germany\n020 7946 0123,XX\n"
                    "+44 20 7946 0124,Germany\n")
    listing = read_customers(path, [("phone", "phone")], region="US", country_column="Country")
    want = [[encoding_of("phone", "+442079460123")]] * 3 + [[encoding_of("phone", "+33199001234")],
                                                          [encoding_of("phone", "+12025550123")],
                                                          [encoding_of("phone", "+442079460124")]]
    check_list(listing, expected(want))
    assert listing.invalid == [(7, f"phone: {BAD_COUNTRY}"), (8, f"phone: {BAD_COUNTRY}")]
    assert listing.national_phones == 1


def test_without_a_region_national_numbers_are_rejected(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("447401880994\n(202) 555-0123\n")
    listing = read_customers(path, [("phone", None)])
    assert listing.items == [encoding_of("phone", "+447401880994")]
    assert listing.invalid == [(2, "phone: not a valid number without a country code; add the country "
                                   "code or set --region")]


# --- hashed lists ---------------------------------------------------------------------


def test_hashed_and_raw_lists_give_the_same_items(tmp_path):
    emails = ["ann@example.com", "bob@example.org"]
    phones = ["+442079460123", "+12025550123"]
    raw = tmp_path / "raw.csv"
    raw.write_text("Email,Phone\n" + "".join(f"{e.upper()},{p}\n" for e, p in zip(emails, phones)))
    hashed = tmp_path / "hashed.csv"
    hashed.write_text("Email,Phone\n" + "".join(
        f"{hashlib.sha256(e.encode()).hexdigest().upper()}, {hashlib.sha256(p.encode()).hexdigest()}\n"
        for e, p in zip(emails, phones)))
    columns = [("email", "Email"), ("phone", "Phone")]
    a = read_customers(raw, columns, region="US")
    b = read_customers(hashed, columns, prehashed=True)
    assert (a.items, a.group.tolist()) == (b.items, b.group.tolist())


def test_mixed_hashed_and_raw_values_are_rejected_per_value(tmp_path):
    digest = hashlib.sha256(b"ann@example.com").hexdigest()
    path = tmp_path / "list.txt"
    path.write_text(f"{digest}\nbob@example.org\n{hashlib.md5(b'x').hexdigest()}\n")
    listing = read_customers(path, [("email", None)])
    assert listing.invalid[0] == (1, "email: a SHA-256 digest in a list read as raw values; use "
                                     "--prehashed for a hashed list")
    listing = read_customers(path, [("email", None)], prehashed=True)
    assert [line for line, _ in listing.invalid] == [2, 3]
    assert "MD5 digest" in listing.invalid[1][1]


@pytest.mark.parametrize("content,kw,message", [
    ("Email,Phone\nann@example.com,+442079460123\n", {"prehashed": True, "phone_hash_format": "e164"},
     "no email value in list.csv is a SHA-256 hex digest"),
    ("Email,Phone\n" + hashlib.sha256(b"a@example.com").hexdigest() + ",+442079460123\n",
     {"prehashed": True}, "no phone value in list.csv is a SHA-256"),
    ("Email\n" + hashlib.sha256(b"a@example.com").hexdigest() + "\n", {},
     "every email value in list.csv is a SHA-256 hex digest: the list is hashed; give --prehashed"),
    ("Email,Phone\n,"+ hashlib.sha256(b"+442079460123").hexdigest() + "\n", {"region": "US"},
     "give --prehashed and say how phones were hashed"),
])
def test_a_list_hashed_otherwise_than_said_is_refused(tmp_path, content, kw, message):
    path = tmp_path / "list.csv"
    path.write_text(content)
    columns = [("email", "Email")] + ([("phone", "Phone")] if "Phone" in content else [])
    with pytest.raises(InputError, match=message):
        read_customers(path, columns, **kw)


@pytest.mark.parametrize("columns,kw,message", [
    ([], {}, "at least one identifier column"),
    ([("fax", "Fax")], {}, "unknown identifier type"),
    ([("email", None), ("phone", None)], {}, "single identifier type"),
    ([("email", None)], {"delimiter": ";"}, "need a file with a header"),
    ([("email", "x"), ("phone", "X")], {}, "named for both email and phone"),
    ([("email", "email")], {"country_column": "Country"}, "applies to phone columns"),
    ([("phone", "phone")], {"country_column": "PHONE"}, "column of its own"),
    ([("email", "email")], {"delimiter": ";;"}, "one character"),
    ([("email", "email")], {"region": "XX"}, "unknown region 'XX'"),
    ([("phone", "phone")], {"prehashed": True, "phone_hash_format": "digits"}, "cannot be matched"),
    ([("phone", "phone")], {"prehashed": True, "region": "GB"}, "not to --prehashed lists"),
    ([("phone", "phone")], {"phone_hash_format": "md5"}, "must be one of e164, digits"),
])
def test_options_that_cannot_apply_are_refused_before_reading(columns, kw, message):
    with pytest.raises(OptionError, match=message):
        read_customers("/nonexistent/list.csv", columns, **kw)


# --- the command line refuses before any network call ---------------------------------

HASHED = hashlib.sha256(b"a@example.com").hexdigest()


@pytest.mark.parametrize("content,args,code,message", [
    ("Email\na@example.com\n", [], 2, "name the identifier columns"),
    ("Email\na@example.com\n", ["--column", "Email"], 2, "--column needs --id-type"),
    ("Email\na@example.com\n", ["--id-type", "email", "--email-column", "Email"], 2, "not both"),
    ("Email\na@example.com\n", ["--email-column", "Email", "--region", "zz"], 2, "unknown region 'zz'"),
    ("Email\na@example.com\n", ["--email-column", "Email", "--phone-hash-format", "e164"], 2, "describes a --prehashed list"),
    ("Phone\n" + HASHED + "\n", ["--phone-column", "Phone", "--prehashed"], 2, "say how the phones were hashed"),
    ("Phone\n" + HASHED + "\n", ["--phone-column", "Phone", "--prehashed", "--phone-hash-format", "digits"], 2,
     "re-hash them from the raw numbers"),
    ("Email,Email\n" + "".join(f"same@example.com,a{i}@example.com\n" for i in range(1024)),
     ["--email-column", "Email"], 3, "one customer holds 1,025 identifiers"),
    ("Email\na@example.com\n", ["--email-column", "Mail"], 3, "has no column 'Mail' (columns: Email)"),
    ("Email\n" + HASHED + "\n", ["--email-column", "Email"], 3, "give --prehashed"),
    ("Email\na@example.com\n", ["--email-column", "Email", "--prehashed"], 3, "leave out --prehashed"),
    ("Email\nnot-an-email\n", ["--email-column", "Email"], 3, "holds no valid identifiers"),
    ("a@example.com\n", ["--email-column", "Email"], 3, "looks like data"),
])
def test_cli_refusals_exit_before_any_network_call(tmp_path, content, args, code, message):
    """The server address is a closed port: had the client tried to connect, it would
    have failed with exit 7 (unavailable) instead."""
    listing = tmp_path / "list.csv"
    listing.write_text(content)
    token = tmp_path / "t.token"
    token.write_text("psi1.1.secret\n")
    out = subprocess.run(CLIENT + ["--server", "127.0.0.1:1", "--insecure", "--token-file", str(token), *args,
                                   str(listing)], capture_output=True, text=True, timeout=120)
    assert out.returncode == code, out.stderr
    errors = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], out.stderr
    assert "hint:" not in out.stderr and "a@example.com" not in out.stderr


def test_batches_and_worker_processes_change_nothing(tmp_path):
    """Rows chained through shared identifiers across many batches of values, read
    inline and on two worker processes, give one answer: the expected one."""
    rows, truth = ["Email,Phone,Email"], []
    for i in range(5000):
        # row i shares its second address with row i + 1's first: chains of 7 rows
        a, b = f"c{i}@example.com", f"c{i + 1}@example.com" if i % 7 else f"solo{i}@example.org"
        phone = f"+1 212 555 {i % 100 + 100:04d}" if i % 50 == 0 else ""
        rows.append(f"{a.upper()},{phone},{b}")
        truth.append([encoding_of("email", a), encoding_of("email", b)]
                     + ([encoding_of("phone", f"+1212555{i % 100 + 100:04d}")] if phone else []))
    path = tmp_path / "chains.csv"
    path.write_text("\n".join(rows) + "\n")
    columns = [("email", "email"), ("phone", "phone")]
    inline = read_customers(path, columns, region="US", workers=1)
    pooled = read_customers(path, columns, region="US", workers=2)
    check_list(inline, expected(truth))
    assert (inline.items, inline.group.tolist()) == (pooled.items, pooled.group.tolist())
    assert inline.n_submitted > 2 * 4096
