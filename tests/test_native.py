"""The C core against published vectors and against independent implementations.

Each native path (AVX2 where the CPU has it, portable everywhere) is called directly, so
both are tested whichever one ``PSI_NATIVE`` selects for the rest of the suite. The
references are OpenSSL's X25519 through ``cryptography``, ``hashlib`` and the Python path
of this package (gmpy2), which shares no code with the C.
"""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
import sys
import threading
import time

import gmpy2
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from psi import backend, hash_to_curve
from psi.to_curve import PRODUCT_DST, _dst_prime, _expand, _uniform_to_points
from psi.keys import _apply_chunk_python
from psi.points import canonical_mask

from .conftest import load_vectors

try:
    from psi import _native as lib
except ImportError:  # conftest has already refused this unless PSI_NATIVE=off
    pytest.skip("the extension is not built (PSI_NATIVE=off)", allow_module_level=True)

P = 2**255 - 19
PATHS = [
    "portable",
    pytest.param(
        "avx2",
        marks=pytest.mark.skipif(not lib.avx2_supported(), reason="this CPU has no AVX2"),
    ),
]
WYCHEPROOF = [
    t for g in load_vectors("wycheproof_x25519_test.json")["testGroups"] for t in g["tests"]
]
RFC7748 = load_vectors("rfc7748_x25519.json")


def le(u: int, width: int = 32) -> bytes:
    return u.to_bytes(width, "little")


def native_x25519(scalar: bytes, points: bytes, path: str, check: bool = False):
    out = np.empty(len(points), dtype=np.uint8)
    counts = lib.x25519(scalar, points, out, check, path == "avx2")
    return out.tobytes(), counts


def openssl_x25519(scalar: bytes, point: bytes) -> bytes:
    """OpenSSL's result, or 32 zero bytes where it refuses an all-zero shared secret."""
    try:
        return X25519PrivateKey.from_private_bytes(scalar).exchange(
            X25519PublicKey.from_public_bytes(point)
        )
    except ValueError:
        return bytes(32)


# --- SHA-512 and expand_message_xmd ------------------------------------------------------

# FIPS 180-2 appendix C and the NIST example values for SHA-512
SHA512_NIST = [
    (b"abc", "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a"
             "2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f"),
    (b"", "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce"
          "47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e"),
    (b"abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopq"
     b"klmnopqrlmnopqrsmnopqrstnopqrstu",
     "8e959b75dae313da8cf4f72814fc143f8f7779c6eb9f7fa17299aeadb6889018"
     "501d289e4900f7e4331b99dec4b5433ac7d329eeb6dd26545e96e55b874be909"),
    (b"a" * 1_000_000, "e718483d0ce769644e2e42c7bc15b4638e1f98b13b2044285632a803afa973eb"
                       "de0ff244877ea60a4cb0432ce577c31beb009c5c2c49aa2e4eadb217ad8cc09b"),
]


@pytest.mark.parametrize("data,digest", SHA512_NIST, ids=["abc", "empty", "896-bit", "million-a"])
def test_sha512_nist_vectors(data, digest):
    assert lib.sha512(data).hex() == digest


def test_sha512_matches_hashlib_at_every_padding_boundary():
    rng = random.Random(512)
    for length in range(0, 400):  # one, two and three blocks, every split of the padding
        data = rng.randbytes(length)
        assert lib.sha512(data) == hashlib.sha512(data).digest(), length


XMD = load_vectors("rfc9380_expand_message_xmd_SHA512_38.json")


@pytest.mark.parametrize(
    "case", XMD["tests"], ids=lambda c: f"{c['msg'][:12]!r}-{c['len_in_bytes']}"
)
def test_expand_message_xmd_vectors(case):
    dst_prime = _dst_prime(XMD["DST"].encode())
    out = lib.expand_message_xmd(case["msg"].encode(), dst_prime, int(case["len_in_bytes"], 16))
    assert out.hex() == case["uniform_bytes"]


@pytest.mark.parametrize("dst", [b"A", PRODUCT_DST, b"x" * 255, b"y" * 300])
def test_expand_message_xmd_matches_python(dst):
    rng = random.Random(len(dst))
    dst_prime = _dst_prime(dst)
    for length in (1, 32, 48, 63, 64, 65, 96, 128, 200, 255 * 64):
        msg = rng.randbytes(rng.randrange(0, 300))
        assert lib.expand_message_xmd(msg, dst_prime, length) == _expand(msg, dst_prime, length)


def test_expand_message_xmd_refuses_bad_lengths():
    for length in (0, 255 * 64 + 1):
        with pytest.raises(ValueError, match="len_in_bytes"):
            lib.expand_message_xmd(b"", b"DST\x03", length)


# --- hash to curve -----------------------------------------------------------------------

RO = load_vectors("rfc9380_curve25519_XMD-SHA-512_ELL2_RO_.json")
NU = load_vectors("rfc9380_curve25519_XMD-SHA-512_ELL2_NU_.json")


def native_hash(msgs, dst: bytes, count: int = 2, path: str = "portable") -> np.ndarray:
    out = np.empty((len(msgs), 32), dtype=np.uint8)
    lib.hash_to_curve(msgs, _dst_prime(dst), count, out, path == "avx2")
    return out


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("suite,count", [(RO, 2), (NU, 1)], ids=["RO", "NU"])
def test_hash_to_curve_vectors(suite, count, path):
    """Each vector in each place of a group of AVX2 lanes (and in the portable tail)."""
    msgs = [c["msg"].encode() for c in suite["vectors"]]
    shifted = [msgs[i:] + msgs[:i] for i in range(len(msgs))]
    outs = [np.roll(native_hash(m, suite["dst"].encode(), count, path), i, axis=0)
            for i, m in enumerate(shifted)]
    for out in outs[1:]:
        assert np.array_equal(out, outs[0])
    out = outs[0]
    assert [int.from_bytes(r.tobytes(), "little") for r in out] == [
        int(c["P"]["x"], 16) for c in suite["vectors"]
    ]


def uniform(*field_elements: int) -> bytes:
    return b"".join(u.to_bytes(48, "big") for u in field_elements)


@pytest.mark.parametrize("path", PATHS)
def test_map_and_addition_edge_cases_match_python(path):
    """Field elements that reach the rare branches: u = 0, 1, -1, sqrt(-1); values of the
    48-byte integer at and above p; Q0 = Q1 (u1 = -u0, so the sum is a doubling) and
    Q1 = -Q0 (u1 = 1 / (2 u0), so the sum is the identity and u encodes as 0)."""
    sqrt_m1 = int(gmpy2.powmod(2, (P - 1) // 4, P))
    singles = [0, 1, 2, P - 1, (P - 1) // 2, sqrt_m1, P, P + 1, 2**255, 2**256 - 1, 2**384 - 1]
    pairs = [(a, b) for a in singles[:6] for b in singles]
    rng = random.Random(9380)
    doubling = [(u, P - u) for u in (rng.randrange(1, P) for _ in range(20))]
    identity = [(u, int(gmpy2.invert(2 * u, P))) for u in (rng.randrange(1, P) for _ in range(20))]
    for count, cases in ((1, [(u,) for u in singles]), (2, pairs + doubling + identity)):
        buffers = [uniform(*case) for case in cases]
        out = np.empty((len(cases), 32), dtype=np.uint8)
        lib.hash_uniform_to_curve(b"".join(buffers), count, out, path == "avx2")
        assert np.array_equal(out, _uniform_to_points(buffers, count))
    # the two constructed branches were taken: a doubling is not the identity, the
    # inverse pairs are
    n_single = len(pairs)
    assert all(out[n_single : n_single + 20].any(axis=1))
    assert not out[n_single + 20 :].any()


def test_hash_to_curve_differential_100k():
    """10^5 random messages of 0 to 200 bytes under four DSTs (one oversize, hashed), each
    native path against the Python path; the non-uniform suite on a tenth of them. (The
    counts are not multiples of a block or of an AVX2 group: each call ends in a tail.)"""
    paths = ["portable", "avx2"] if lib.avx2_supported() else ["portable"]
    rng = random.Random(100_000)
    dsts = [PRODUCT_DST, b"Q", RO["dst"].encode(), b"d" * 300]
    for i, dst in enumerate(dsts):
        msgs = [rng.randbytes(rng.randrange(0, 201)) for _ in range(25_001)]
        with backend.use("off"):
            expected = hash_to_curve(msgs, dst, workers=1)
        some = msgs[:2_503]
        encoded = _python_encode(some, dst)
        for path in paths:
            assert np.array_equal(native_hash(msgs, dst, 2, path), expected), (dst, path)
            assert np.array_equal(native_hash(some, dst, 1, path), encoded), (dst, path)


def _python_encode(msgs, dst):
    dst_prime = _dst_prime(dst)
    return _uniform_to_points([_expand(m, dst_prime, 48) for m in msgs], 1)


@pytest.mark.parametrize("path", PATHS)
def test_hash_to_curve_long_messages_match_python(path):
    """Messages up to 700 bytes, in groups of four whose lengths differ: with AVX2 four
    messages are hashed side by side while their inputs fit the lanes' buffers (b_0 of
    up to four blocks), and a group with a longer one is hashed a message at a time."""
    rng = random.Random(512)
    lengths = [rng.choice([0, 1, 50, 51, 240, 306, 307, 427, 428, 434, 435, 700])
               for _ in range(400)]
    msgs = [rng.randbytes(length) for length in lengths]
    for dst in (PRODUCT_DST, b"d" * 300):
        with backend.use("off"):
            expected = hash_to_curve(msgs, dst, workers=1)
        assert np.array_equal(native_hash(msgs, dst, 2, path), expected), dst[:8]
        assert np.array_equal(native_hash(msgs, dst, 1, path), _python_encode(msgs, dst))


def test_hash_to_curve_accepts_any_bytes_like_and_checks_arguments():
    msgs = [b"abc", bytearray(b"abc"), memoryview(b"abc")]
    out = native_hash(msgs, PRODUCT_DST)
    assert (out == out[0]).all()
    with pytest.raises(TypeError):
        native_hash(["abc"], PRODUCT_DST)
    with pytest.raises(ValueError, match="count"):
        lib.hash_to_curve([b""], _dst_prime(b"D"), 3, np.empty((1, 32), np.uint8), False)
    with pytest.raises(ValueError, match="output buffer"):
        lib.hash_to_curve([b""], _dst_prime(b"D"), 2, np.empty((2, 32), np.uint8), False)


# --- received points ---------------------------------------------------------------------


# u-coordinates of the two points of order 8 (0 has order 2, and 1 and -1 order 4)
ORDER8 = [
    325606250916557431795983626356110631294008115727848805560023387167927233504,
    39382357235489614581723060781553021112529911719440698176882885853963445705823,
]


def edge_points() -> list[int]:
    """u-coordinates at the edges of the encoding and of the group: the low-order points,
    p and its neighbours (non-canonical), the largest 255-bit value, and the high-bit
    twins of all of them."""
    rng = random.Random(7748)
    base = [0, 1, 2, 9, P - 1, P - 2, P, P + 1, P + 18, 2**255 - 1, *ORDER8]
    base += [u + P for u in (0, 1, 9)]  # non-canonical encodings of small values
    base += [rng.randrange(P) | (1 << 254) for _ in range(4)]
    return base + [u | (1 << 255) for u in base if u < 2**255]


def random_points(rng: random.Random, n: int) -> list[int]:
    """A quarter uniform below 2^256 (so about half of those with the high bit set), the
    rest uniform below 2^255; about half of all of them lie on the twist."""
    return [rng.getrandbits(256) if rng.random() < 0.25 else rng.getrandbits(255) for _ in range(n)]


@pytest.mark.parametrize("path", PATHS)
def test_classify_matches_python(path):
    rng = random.Random(2)
    values = edge_points() + random_points(rng, 100_000)
    points = np.frombuffer(b"".join(le(u) for u in values), np.uint8).reshape(-1, 32)
    status = np.empty(len(points), dtype=np.uint8)
    lib.classify(points, status, path == "avx2")
    assert np.array_equal((status & lib.NONCANONICAL) == 0, canonical_mask(points))
    twist = [gmpy2.jacobi(((u + 486662) * u + 1) * u % P, P) < 0 for u in values]
    assert ((status & lib.TWIST) != 0).tolist() == twist
    assert 40_000 < sum(twist) < 60_000  # both kinds well represented


def test_x25519_differential_against_openssl():
    """100 scalars x 1,000 points (edges included in every batch), bit for bit, on every
    native path this CPU has; one batch spans two blocks of the shared inversion and ends
    with a portable tail."""
    paths = ["portable", "avx2"] if lib.avx2_supported() else ["portable"]
    rng = random.Random(25519)
    edges = b"".join(le(u) for u in edge_points())
    for size in [1000] * 99 + [2 * 1024 + 3]:
        scalar = rng.randbytes(32)
        points = edges + b"".join(le(u) for u in random_points(rng, size - len(edges) // 32))
        expected = b"".join(
            openssl_x25519(scalar, points[i : i + 32]) for i in range(0, len(points), 32)
        )
        zeros = sum(expected[i : i + 32] == bytes(32) for i in range(0, len(expected), 32))
        assert zeros >= 8  # every low-order edge point gives zero
        for path in paths:
            assert native_x25519(scalar, points, path) == (expected, (0, 0, zeros)), path


def reference_counts(scalar: bytes, points: bytes, check: bool):
    out, malformed, off_curve, low_order = _apply_chunk_python(
        scalar, np.frombuffer(points, np.uint8).reshape(-1, 32), check
    )
    return (malformed, off_curve, low_order), out


@pytest.mark.parametrize("path", PATHS)
def test_rejections_match_the_python_path(path):
    """The counts of InvalidPointError for batches that fail at each stage."""
    rng = random.Random(3)
    scalar = rng.randbytes(32)
    hashed = hash_to_curve([rng.randbytes(8) for _ in range(9)], workers=1).tobytes()
    on_curve_low = [le(0), le(ORDER8[0])]  # canonical, on the curve, all-zero results
    twist = [p for p in (le(u) for u in random_points(rng, 40)) if p[31] < 0x80][:3]
    high_bit = bytearray(hashed[:32])
    high_bit[31] |= 0x80
    batches = {
        "valid": hashed,
        "low order": hashed + b"".join(on_curve_low),
        "twist": hashed + b"".join(twist),
        "non-canonical first": hashed + bytes(high_bit) + b"".join(twist) + le(P),
    }
    for name, points in batches.items():
        for check in (True, False):
            out, counts = native_x25519(scalar, points, path, check)
            expected, reference = reference_counts(scalar, points, check)
            assert counts == expected, (name, check)
            if reference is not None:
                assert out == reference.tobytes(), (name, check)
    assert native_x25519(scalar, batches["twist"], path, True)[1][1] >= 1


@pytest.mark.parametrize("path", PATHS)
def test_wycheproof_on_each_path(path):
    """Every case, in four AVX2 lanes and the portable tail at once."""
    for case in WYCHEPROOF:
        scalar, point = bytes.fromhex(case["private"]), bytes.fromhex(case["public"])
        out, _ = native_x25519(scalar, point * 5, path)
        assert out == bytes.fromhex(case["shared"]) * 5, case["tcId"]
        assert native_x25519(scalar, point * 5, path, True)[1] == reference_counts(
            scalar, point * 5, True
        )[0], case["tcId"]


@pytest.mark.parametrize("path", PATHS)
def test_rfc7748_vectors_on_each_path(path):
    for case in RFC7748["single"]:
        out, _ = native_x25519(bytes.fromhex(case["scalar"]), bytes.fromhex(case["u"]) * 4, path)
        assert out == bytes.fromhex(case["result"]) * 4


def iterate(path: str, iterations: int) -> bytes:
    """RFC 7748 5.2's iteration; on the AVX2 path in all four lanes at once."""
    lanes = 4 if path == "avx2" else 1
    k = u = bytes.fromhex(RFC7748["iterated"]["start"])
    for _ in range(iterations):
        out, _ = native_x25519(k, u * lanes, path)
        assert out == out[:32] * lanes
        k, u = out[:32], k
    return k


@pytest.mark.parametrize("path", PATHS)
def test_rfc7748_iterated_1000(path):
    assert iterate(path, 1).hex() == RFC7748["iterated"]["after_1"]
    assert iterate(path, 1000).hex() == RFC7748["iterated"]["after_1000"]


@pytest.mark.benchmark
@pytest.mark.parametrize("path", PATHS)
def test_rfc7748_iterated_million(path):
    assert iterate(path, 1_000_000).hex() == RFC7748["iterated"]["after_1000000"]


def test_argument_checks():
    out = np.empty((1, 32), np.uint8)
    with pytest.raises(ValueError, match="32 bytes"):
        lib.x25519(b"short", bytes(32), out, False, False)
    with pytest.raises(ValueError, match="multiple of 32"):
        lib.x25519(bytes(32), bytes(33), out, False, False)
    with pytest.raises(ValueError, match="output buffer"):
        lib.x25519(bytes(32), bytes(64), out, False, False)
    with pytest.raises(TypeError):
        lib.x25519(bytes(32), bytes(32), b"read-only", False, False)
    if not lib.avx2_supported():
        with pytest.raises(ValueError, match="AVX2"):
            lib.x25519(bytes(32), bytes(32), out, False, True)
        with pytest.raises(ValueError, match="AVX2"):
            lib.hash_to_curve([b""], _dst_prime(b"D"), 2, out, True)
        with pytest.raises(ValueError, match="AVX2"):
            lib.hash_uniform_to_curve(bytes(96), 2, out, True)


def _resumes_during(call) -> bool:
    """Whether this thread runs Python while ``call`` runs in another thread: with the
    GIL held for the whole call, it could only resume once the call had returned."""
    times = {}

    def worker():
        times["start"] = time.perf_counter()
        call()
        times["end"] = time.perf_counter()

    thread = threading.Thread(target=worker)
    thread.start()
    while "start" not in times:
        time.sleep(0.001)
    time.sleep(0.01)
    resumed = time.perf_counter()
    thread.join()
    return resumed - times["start"] < (times["end"] - times["start"]) / 2


def test_calls_release_the_gil():
    points = hash_to_curve([i.to_bytes(4, "little") for i in range(20_000)], workers=1)
    out = np.empty_like(points)
    assert _resumes_during(lambda: lib.x25519(bytes(range(32)), points, out, True, False))
    msgs = [i.to_bytes(8, "little") for i in range(40_000)]
    assert _resumes_during(lambda: native_hash(msgs, PRODUCT_DST))


# --- path selection ----------------------------------------------------------------------


def _path_in_subprocess(value: str) -> subprocess.CompletedProcess:
    code = "from psi import backend; print(backend.path())"
    env = {**os.environ, backend.ENV: value}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)


def test_environment_selects_the_path():
    best = "avx2" if lib.avx2_supported() else "portable"
    expected = {"portable": "portable", "off": "python", "auto": best, "": best}
    for value, path in expected.items():
        run = _path_in_subprocess(value)
        assert run.returncode == 0 and run.stdout.strip() == path, run.stderr
    run = _path_in_subprocess("fast")
    assert run.returncode != 0 and "PSI_NATIVE must be one of" in run.stderr


def test_use_switches_this_process():
    with backend.use("off"):
        assert backend.path() == "python" and backend.native() is None
    with backend.use("portable"):
        assert backend.path() == "portable" and not backend.avx2()
    if lib.avx2_supported():
        with backend.use("avx2"):
            assert backend.avx2()
    else:
        with pytest.raises(backend.BackendError, match="no AVX2"):
            with backend.use("avx2"):
                pass
