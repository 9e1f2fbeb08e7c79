"""Published vectors: RFC 9380 (hash to curve), RFC 7748 and Wycheproof (X25519)."""

import numpy as np
import pytest

from psi import InvalidPointError, Key, encode_to_curve, expand_message_xmd, hash_to_curve
from psi.to_curve import hash_to_field, map_to_curve_affine

from .conftest import load_vectors

RO = load_vectors("rfc9380_curve25519_XMD-SHA-512_ELL2_RO_.json")
NU = load_vectors("rfc9380_curve25519_XMD-SHA-512_ELL2_NU_.json")
XMD = load_vectors("rfc9380_expand_message_xmd_SHA512_38.json")
WYCHEPROOF = [t for g in load_vectors("wycheproof_x25519_test.json")["testGroups"] for t in g["tests"]]
RFC7748 = load_vectors("rfc7748_x25519.json")


def u_of(row: np.ndarray) -> int:
    return int.from_bytes(row.tobytes(), "little")


def point(hexstr: str) -> np.ndarray:
    return np.frombuffer(bytes.fromhex(hexstr), dtype=np.uint8).reshape(1, 32)


@pytest.mark.parametrize("case", XMD["tests"], ids=lambda c: f"{c['msg'][:12]!r}-{c['len_in_bytes']}")
def test_expand_message_xmd(case):
    out = expand_message_xmd(case["msg"].encode(), XMD["DST"].encode(), int(case["len_in_bytes"], 16))
    assert out.hex() == case["uniform_bytes"]


@pytest.mark.parametrize("case", RO["vectors"], ids=lambda c: repr(c["msg"][:12]))
def test_hash_to_curve_ro(case):
    dst = RO["dst"].encode()
    us = hash_to_field(case["msg"].encode(), dst, 2)
    assert [int(u) for u in us] == [int(u, 16) for u in case["u"]]
    for u, name in zip(us, ("Q0", "Q1")):
        assert map_to_curve_affine(u) == (int(case[name]["x"], 16), int(case[name]["y"], 16))
    assert u_of(hash_to_curve([case["msg"].encode()], dst)[0]) == int(case["P"]["x"], 16)


@pytest.mark.parametrize("case", NU["vectors"], ids=lambda c: repr(c["msg"][:12]))
def test_encode_to_curve_nu(case):
    dst = NU["dst"].encode()
    (u,) = hash_to_field(case["msg"].encode(), dst, 1)
    assert int(u) == int(case["u"][0], 16)
    assert map_to_curve_affine(u) == (int(case["Q"]["x"], 16), int(case["Q"]["y"], 16))
    assert u_of(encode_to_curve([case["msg"].encode()], dst)[0]) == int(case["P"]["x"], 16)


def test_hash_to_curve_batch_equals_single():
    """The shared batch inversion gives exactly the per-message results."""
    msgs = [c["msg"].encode() for c in RO["vectors"]] * 3
    dst = RO["dst"].encode()
    batch = hash_to_curve(msgs, dst, workers=1)
    assert [u_of(r) for r in batch] == [int(c["P"]["x"], 16) for c in RO["vectors"]] * 3


def test_rfc7748_single():
    for case in RFC7748["single"]:
        key = Key.from_bytes(bytes.fromhex(case["scalar"]))
        # The second input has its top bit set; RFC 7748 masks it, our received-point
        # check refuses it as non-canonical, so compare on the unchecked path.
        assert key.apply(point(case["u"]), workers=1, check=False).tobytes().hex() == case["result"]


def test_rfc7748_iterated():
    k = u = bytes.fromhex(RFC7748["iterated"]["start"])
    for i in range(1000):
        k, u = Key.from_bytes(k).apply(point(u.hex()), workers=1, check=False).tobytes(), k
        if i == 0:
            assert k.hex() == RFC7748["iterated"]["after_1"]
    assert k.hex() == RFC7748["iterated"]["after_1000"]


def test_rfc7748_diffie_hellman():
    dh = RFC7748["diffie_hellman"]
    base = point("09" + "00" * 31)
    alice = Key.from_bytes(bytes.fromhex(dh["alice_private"]))
    bob = Key.from_bytes(bytes.fromhex(dh["bob_private"]))
    assert alice.apply(base, workers=1).tobytes().hex() == dh["alice_public"]
    assert bob.apply(base, workers=1).tobytes().hex() == dh["bob_public"]
    assert alice.apply(point(dh["bob_public"]), workers=1).tobytes().hex() == dh["shared"]
    assert bob.apply(point(dh["alice_public"]), workers=1).tobytes().hex() == dh["shared"]


def _expect(case):
    flags = set(case["flags"])
    if case["result"] == "valid":
        return "equal"
    if flags & {"ZeroSharedSecret", "LowOrderPublic"}:
        return "low_order"
    if "NonCanonicalPublic" in flags:
        return "malformed"
    if "Twist" in flags:
        return "off_curve"
    return "equal"


@pytest.mark.parametrize("case", WYCHEPROOF, ids=lambda c: f"tc{c['tcId']}")
def test_wycheproof(case):
    key = Key.from_bytes(bytes.fromhex(case["private"]))
    pub = point(case["public"])
    expect = _expect(case)
    if expect == "equal":
        assert key.apply(pub, workers=1).tobytes().hex() == case["shared"]
        return
    with pytest.raises(InvalidPointError) as info:
        key.apply(pub, workers=1)
    err = info.value
    assert err.count == 1
    if expect == "low_order":
        # Low-order points are refused whichever check catches them first (some lie on
        # the twist or are non-canonical); they never produce a result.
        return
    assert getattr(err, expect) == 1, str(err)
    # Without the received-point checks, X25519 itself still computes the RFC result
    # for twist and non-canonical inputs, which shows the checks are what refuses them.
    assert key.apply(pub, workers=1, check=False).tobytes().hex() == case["shared"]


def test_all_wycheproof_categories_exercised():
    kinds = {_expect(c) for c in WYCHEPROOF}
    assert kinds == {"equal", "low_order", "malformed", "off_curve"}
