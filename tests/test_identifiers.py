import hashlib
import random
import unicodedata

import phonenumbers
import pytest
from hypothesis import given
from hypothesis import strategies as st

from psi import InvalidIdentifierError, encode_identifier, encode_identifiers
from psi.identifiers import (
    PHONE_NEEDS_COUNTRY,
    MAX_EMAIL_LENGTH,
    digest_from_hex,
    email_digests,
    email_digests_by_place,
    is_sha256_hex,
    normalize_email,
    normalize_phone,
    read_phone,
    region_code,
)

emails = st.builds(
    lambda local, domain, tld, pad: pad + f"{local}@{domain}.{tld}" + pad,
    st.from_regex(r"[A-Za-z0-9._%+-]{1,20}", fullmatch=True),
    st.from_regex(r"[A-Za-z0-9-]{1,20}", fullmatch=True),
    st.sampled_from(["com", "ORG", "co.uk", "io"]),
    st.sampled_from(["", " ", "\t", "  \n"]),
)


@given(emails)
def test_raw_and_prehashed_email_encode_identically(raw):
    digest = hashlib.sha256(raw.strip().lower().encode()).hexdigest()
    enc = encode_identifier("email", raw)
    assert enc == encode_identifier("email", digest, prehashed=True)
    assert enc == encode_identifier("email", digest.upper(), prehashed=True)
    assert enc[:6] == b"email\x00" and len(enc) == 6 + 32


@given(st.integers(2_000_000, 9_999_999), st.sampled_from(["({a}) {b}-{c}", "{a}.{b}.{c}", "+1 {a} {b} {c}", "1-{a}-{b}-{c}"]))
def test_raw_and_prehashed_phone_encode_identically(line, fmt):
    text = fmt.format(a="650", b=str(line)[:3], c=str(line)[3:])
    e164 = "+1650" + str(line)
    assert normalize_phone(text) == e164
    digest = hashlib.sha256(e164.encode()).hexdigest()
    assert encode_identifier("phone", text) == encode_identifier("phone", digest, prehashed=True)


def test_phone_default_region():
    assert normalize_phone("020 7946 0958", region="GB") == "+442079460958"
    assert normalize_phone("+44 20 7946 0958", region="US") == "+442079460958"
    with pytest.raises(InvalidIdentifierError, match="valid number"):
        normalize_phone("020 7946 0958", region="US")


def test_email_rules():
    assert normalize_email("  Jane.Doe+ads@Example.COM ") == "jane.doe+ads@example.com"
    cases = {
        "": "empty",
        "no-at.example.com": "exactly one '@'",
        "two@@example.com": "exactly one '@'",
        "@example.com": "empty local part",
        "jane@localhost": "dotted name",
        "jane@example..com": "empty label",
        "ja ne@example.com": "forbidden character",
        "ja\x00ne@example.com": "control",
        "x" * 250 + "@example.com": "longer than",
    }
    for value, rule in cases.items():
        with pytest.raises(InvalidIdentifierError) as info:
            normalize_email(value)
        assert rule in str(info.value)


@pytest.mark.parametrize(
    "value,rule",
    [("", "empty"), ("hello", "not a phone number"), ("12", "not a valid number"), ("+1 999 999 9999", "not a valid number"), ("9" * 70, "longer than")],
)
def test_phone_rules(value, rule):
    with pytest.raises(InvalidIdentifierError) as info:
        normalize_phone(value)
    assert rule in str(info.value)


def test_errors_never_echo_the_identifier():
    secret = "victim.secret@nowhere"
    with pytest.raises(InvalidIdentifierError) as info:
        encode_identifier("email", secret)
    assert "victim" not in str(info.value) and "nowhere" not in str(info.value)
    with pytest.raises(InvalidIdentifierError) as info:
        encode_identifier("phone", "+1 555 0100 secret")
    assert "secret" not in str(info.value)


def test_unknown_id_type_and_bad_prehash():
    with pytest.raises(InvalidIdentifierError, match="unknown id type"):
        encode_identifier("fax", "x")
    with pytest.raises(InvalidIdentifierError, match="64 hex digits"):
        encode_identifier("email", "abc", prehashed=True)


def test_encode_identifiers_reports_rows_and_deduplicates():
    rows = [(1, "a@example.com"), (2, "bad"), (3, " A@example.com"), (4, "b@example.com"), (5, "")]
    result = encode_identifiers("email", rows)
    assert len(result.encoded) == 2
    assert result.invalid == [(2, "must contain exactly one '@'"), (5, "empty")]
    assert result.duplicates == 1
    assert result.n_submitted == 5


# --- phone numbers as ad platforms document them ------------------------------------

REGIONS = ["US", "GB", "DE", "FR", "IN", "BR", "AU", "JP", "MX", "ES", "IT", "SG", "AT", "NL", "CN", "KZ", "GR"]


def valid_numbers(region: str, seed: int, k: int = 40) -> list[phonenumbers.PhoneNumber]:
    """Valid mobile and fixed numbers of ``region``: phonenumbers' example numbers with
    their second half redrawn, kept when the metadata still says they are valid."""
    rng = random.Random(f"{region}-{seed}")
    out: list[phonenumbers.PhoneNumber] = []
    kinds = [phonenumbers.PhoneNumberType.MOBILE, phonenumbers.PhoneNumberType.FIXED_LINE]
    for _ in range(5000):
        example = phonenumbers.example_number_for_type(region, rng.choice(kinds))
        if example is None:
            continue
        nsn = str(example.national_number)
        half = len(nsn) // 2
        tail = "".join(rng.choice("0123456789") for _ in nsn[half:])
        number = phonenumbers.parse(f"+{example.country_code}{nsn[:half]}{tail}")
        if phonenumbers.is_valid_number(number) and phonenumbers.region_code_for_number(number) == region:
            out.append(number)
            if len(out) == k:
                break
    return out


def spellings(number: phonenumbers.PhoneNumber) -> dict[str, str]:
    """The ways the platforms' documentation writes a number, from phonenumbers' formatter."""
    fmt = phonenumbers.PhoneNumberFormat
    e164 = phonenumbers.format_number(number, fmt.E164)
    intl = phonenumbers.format_number(number, fmt.INTERNATIONAL)
    return {
        "e164": e164,
        "international": intl,
        "rfc3966": phonenumbers.format_number(number, fmt.RFC3966),
        "digits": e164[1:],  # Meta, TikTok: country code, no '+'
        "punctuated digits": intl[1:].replace(" ", "-"),  # 49-1514-3268367
        "00 prefix": "00" + e164[1:],
        "00 prefix spaced": "00 " + intl[1:],
        "national": phonenumbers.format_number(number, fmt.NATIONAL),
    }


@pytest.mark.parametrize("region", REGIONS)
def test_every_documented_spelling_reads_back(region):
    """With its own region, each spelling gives the number; with the default region
    (US) or none, every spelling that carries the country code still does."""
    for number in valid_numbers(region, 1):
        e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
        for name, text in spellings(number).items():
            assert read_phone(text, region) == (e164, name == "national"), (name, text)
            assert read_phone(text, region.lower())[0] == e164
            if name != "national":
                for other in ("US", None):
                    assert normalize_phone(text, other) == e164, (name, text, other)


def test_country_code_of_the_region_without_plus_wins_over_a_longer_national_number():
    # German numbers have no fixed length: phonenumbers alone reads 4915143268367 with
    # region DE as the national number +49 4915143268367.
    assert normalize_phone("49-1514-3268367", "DE") == "+4915143268367"
    assert normalize_phone("4915143268367", "DE") == "+4915143268367"
    assert normalize_phone("01514 3268367", "DE") == "+4915143268367"


def test_a_national_number_of_the_region_wins_over_another_country_code():
    # 431 555 1234 is a Canadian number (area code 431) under region US, and would be
    # Vienna as +43 1 5551234; the region's reading comes first, as documented.
    assert phonenumbers.is_valid_number(phonenumbers.parse("+4315551234"))
    assert read_phone("4315551234", "US") == ("+14315551234", True)
    assert read_phone("+43 1 5551234", "US") == ("+4315551234", False)
    assert read_phone("4315551234", None) == ("+4315551234", False)


# Regions under which a number of another country, written with its country code but
# no '+' or after 00, never reads as a national number (measured over all of REGIONS).
# Not so: IT and MX (national numbers of the same length and leading digits), BR, and
# SG (whose own international prefixes 001-019 begin with 00).
SAFE_REGIONS = ["US", "GB", "DE", "FR", "IN", "AU", "JP", "ES", "AT", "NL", "CN", "KZ", "GR"]


@pytest.mark.parametrize("region", SAFE_REGIONS)
def test_foreign_numbers_with_a_country_code_keep_it(region):
    for other in REGIONS:
        if other == region:
            continue
        for number in valid_numbers(other, 2, k=8):
            e164 = phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)
            assert normalize_phone(e164[1:], region) == e164, (region, e164)
            assert normalize_phone("00" + e164[1:], region) == e164, (region, e164)


def test_a_national_number_without_its_trunk_prefix_is_read_last():
    # A spreadsheet dropped the leading zero: read nationally when nothing else reads...
    assert read_phone("7401 880994", "GB") == ("+447401880994", True)
    # ... but a number that reads with a country code takes it (written with 0 or '+'
    # it is unambiguous): under DE, 15143268367 is +1 514 326 8367 (Montreal).
    assert read_phone("15143268367", "DE") == ("+15143268367", False)
    assert read_phone("015143268367", "DE") == ("+4915143268367", True)
    # With their trunk prefix written, foreign numbers with a country code stay foreign
    # even where national numbers have no fixed length.
    assert normalize_phone("442079460123", "DE") == "+442079460123"
    assert normalize_phone("61491570123", "AT") == "+61491570123"


def test_where_national_numbers_look_like_country_codes_the_region_wins():
    # Italian mobiles begin with 3 and have no trunk prefix: with region IT, these digits
    # are an Italian number, not +33 1 99 00 12 34. Written with '+' they are French.
    assert normalize_phone("33199001234", "IT") == "+3933199001234"
    assert normalize_phone("+33199001234", "IT") == "+33199001234"


def test_international_prefixes():
    assert normalize_phone("0044 20 7946 0123", "US") == "+442079460123"  # 00 is not US's prefix
    assert normalize_phone("011 44 20 7946 0123", "US") == "+442079460123"  # US's own
    assert normalize_phone("0011 44 20 7946 0123", "AU") == "+442079460123"  # Australia's own
    with pytest.raises(InvalidIdentifierError, match="add the country code or set --region"):
        normalize_phone("011 44 20 7946 0123", None)


def test_phone_rejections_name_the_fix():
    with pytest.raises(InvalidIdentifierError) as info:
        normalize_phone("020 7946 0123", None)
    assert info.value.rule == PHONE_NEEDS_COUNTRY
    with pytest.raises(InvalidIdentifierError) as info:
        normalize_phone("020 7946 0123", "US")
    assert "add the country code or set --region" in info.value.rule
    with pytest.raises(InvalidIdentifierError) as info:
        normalize_phone("+44 20 7946", "GB")
    assert "check the digits after '+'" in info.value.rule
    assert normalize_phone("020 7946 0123", "gb") == "+442079460123"


def test_region_codes():
    assert region_code("gb") == region_code(" GB ") == region_code("uk") == "GB"
    assert region_code("us") == "US"
    for text in ("XX", "", "United Kingdom", "001", None):
        assert region_code(text) is None
    # An unknown region is no region: only numbers with a country code are read.
    assert normalize_phone("447401880994", "XX") == "+447401880994"


# --- email normalization and hashed values -----------------------------------------


@given(st.text(alphabet="aeiouAEIOUéÉèñÑøÅåüÜçİ", min_size=1, max_size=12))
def test_email_is_nfc_whatever_the_input_form(local):
    composed = f"{unicodedata.normalize('NFC', local)}@Example.com"
    decomposed = unicodedata.normalize("NFD", composed)
    assert normalize_email(decomposed) == normalize_email(composed)
    assert unicodedata.is_normalized("NFC", normalize_email(decomposed))
    digest = hashlib.sha256(normalize_email(composed).encode()).hexdigest()
    assert encode_identifier("email", decomposed) == encode_identifier("email", digest.upper(), prehashed=True)


def test_no_provider_rewriting():
    assert normalize_email("J.Doe+Ads@GMail.com") == "j.doe+ads@gmail.com"
    assert encode_identifier("email", "j.doe@gmail.com") != encode_identifier("email", "jdoe@gmail.com")


def test_hashed_values_say_what_they_are():
    digest = hashlib.sha256(b"+442079460123").hexdigest()
    assert digest_from_hex("phone", f"  {digest.upper()} ") == bytes.fromhex(digest)
    assert is_sha256_hex(digest.upper()) and not is_sha256_hex(digest[:-1])
    for other, name in ((hashlib.md5(b"x").hexdigest(), "MD5"), (hashlib.sha1(b"x").hexdigest(), "SHA-1"),
                        (hashlib.sha512(b"x").hexdigest(), "SHA-512")):
        with pytest.raises(InvalidIdentifierError, match=f"{name} digest; only SHA-256"):
            digest_from_hex("email", other)
    with pytest.raises(InvalidIdentifierError, match="prehashed value is not 64 hex digits"):
        digest_from_hex("email", "jane@example.com")


# --- a list of emails at once ---------------------------------------------------------


def _one_by_one(values):
    """Each value's digest as the rules give it, or None for a rejected one."""
    out = []
    for v in values:
        try:
            out.append(hashlib.sha256(normalize_email(v).encode()).digest())
        except (InvalidIdentifierError, UnicodeEncodeError):
            out.append(None)
    return out


# Values near the rules' edges: every ASCII character, the shapes around '@' and '.',
# line breaks inside a value, and non-ASCII text (which only the rule-by-rule path reads).
near_emails = st.one_of(
    emails,
    st.builds(lambda a, b, c: a + b + c, st.text(alphabet="a.@", max_size=4),
              st.sampled_from(["", "@", ".", "x@y.z", "x@y..z", "x@.y", "@y.z", "x@y.z.", "x@y.z\nw@v.u"]),
              st.text(alphabet="a.@", max_size=4)),
    st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=12),
    st.text(max_size=8),
)


@given(st.lists(near_emails, min_size=1, max_size=6))
def test_email_digests_are_the_rules_digests_or_nothing(values):
    expected = _one_by_one(values)
    digests = email_digests(values)
    if None in expected:
        assert digests is None
    elif digests is not None:
        assert digests == expected


@given(st.lists(emails, min_size=1, max_size=50))
def test_plain_address_lists_take_one_pass(values):
    """Trimmed ASCII addresses of the usual shape (most files) never need the slow path."""
    assert email_digests(values) == _one_by_one(values)


def test_email_digests_edges():
    assert email_digests([]) == []
    longest = "a" * (MAX_EMAIL_LENGTH - len("@b.co")) + "@b.co"
    assert email_digests([longest]) == _one_by_one([longest])
    assert email_digests(["x" + longest]) is None
    # accepted by the rules but not plain ASCII: left to them
    assert email_digests(["jöe@example.com"]) is None and _one_by_one(["jöe@example.com"])[0]
    for bad in ("a@b", "a@b..c", "a@.b.c", "a@b.c.", "a b@c.d", "a@b@c.d", "a\x7f@b.c", "a@b.c\nd@e.f", ""):
        assert email_digests(["ok@example.com", bad]) is None, bad


def test_email_digests_by_place_among_other_types():
    types, values = ["phone", "email", "email"], ["+1 650 555 0100", " A@b.co", "c@d.ef"]
    digests = _one_by_one(values[1:])
    assert email_digests_by_place(types, values) == {1: digests[0], 2: digests[1]}
    assert email_digests_by_place(types, [values[0], values[1], "c@d"]) == {}
    assert email_digests_by_place(["phone"], ["+1 650 555 0100"]) == {}
