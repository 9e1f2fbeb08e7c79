import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from psi import InvalidIdentifierError, encode_identifier, encode_identifiers
from psi.identifiers import normalize_email, normalize_phone

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
