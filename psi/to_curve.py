"""RFC 9380 hashing to Curve25519: suites ``curve25519_XMD:SHA-512_ELL2_RO_`` and ``_NU_``.

Only the u-coordinate of the result is returned, encoded as 32 bytes little-endian
(RFC 7748), because X25519 works on u-coordinates alone.

The batch path keeps every intermediate point in fractions (numerator, denominator)
and shares a single field inversion across the whole batch (Montgomery's trick), so the
per-identifier cost is two square-root exponentiations and a few dozen multiplications.
The C extension does the same in one call per chunk (see ``psi.backend``); the Python
code here is the fallback and the reference it is tested against.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence

import gmpy2
import numpy as np

from . import backend
from .errors import HashToCurveError
from .parallel import Executor, get_executor, imap, task_bounds

__all__ = [
    "P",
    "PRODUCT_DST",
    "expand_message_xmd",
    "hash_to_field",
    "hash_to_curve",
    "hash_to_curve_stream",
    "encode_to_curve",
    "map_to_curve_affine",
]

P = gmpy2.mpz(2**255 - 19)
_J = gmpy2.mpz(486662)  # Montgomery coefficient A of Curve25519 (RFC 9380 calls it J)
_J2 = _J * _J
_NEG_J = P - _J
_A24 = gmpy2.mpz((486662 + 2) // 4)
_L = 48  # ceil((ceil(log2(p)) + k) / 8) with k = 128
_C1 = (int(P) + 3) // 8
_C2 = gmpy2.powmod(2, _C1, P)
_C3 = gmpy2.powmod(2, (int(P) - 1) // 4, P)  # a square root of -1
_C4 = gmpy2.mpz((int(P) - 5) // 8)

# Messages per task at most: about 0.1 s of work in C, 0.7 s in Python; the pool costs
# the caller 1 to 1.5 ms of CPU per task, taken from the workers' cores.
CHUNK = 16384
# Up to this many messages (25 ms in C) a call is one task.
ONE_TASK = 4096
PRODUCT_DST = b"CONSENT-PSI-V01-CS01-with-curve25519_XMD:SHA-512_ELL2_RO_"

_SHA512_BLOCK = 128
_SHA512_DIGEST = 64
# Every message starts with one zero block (Z_pad); hashing it once and copying the state
# saves one SHA-512 compression per identifier.
_ZPAD_STATE = hashlib.sha512(bytes(_SHA512_BLOCK))


def _dst_prime(dst: bytes) -> bytes:
    if len(dst) > 255:
        dst = hashlib.sha512(b"H2C-OVERSIZE-DST-" + dst).digest()
    return dst + bytes([len(dst)])


def _expand(msg: bytes, dst_prime: bytes, len_in_bytes: int) -> bytes:
    ell = -(-len_in_bytes // _SHA512_DIGEST)
    h = _ZPAD_STATE.copy()
    h.update(msg + len_in_bytes.to_bytes(2, "big") + b"\x00" + dst_prime)
    b0 = h.digest()
    bi = hashlib.sha512(b0 + b"\x01" + dst_prime).digest()
    out = [bi]
    b0_int = int.from_bytes(b0, "big")
    for i in range(2, ell + 1):
        mixed = (b0_int ^ int.from_bytes(bi, "big")).to_bytes(_SHA512_DIGEST, "big")
        bi = hashlib.sha512(mixed + bytes([i]) + dst_prime).digest()
        out.append(bi)
    return b"".join(out)[:len_in_bytes]


def expand_message_xmd(msg: bytes, dst: bytes, len_in_bytes: int) -> bytes:
    """``expand_message_xmd`` with SHA-512 (RFC 9380 section 5.3.1)."""
    if not 0 < len_in_bytes <= 65535 or -(-len_in_bytes // _SHA512_DIGEST) > 255:
        raise HashToCurveError(
            f"expand_message_xmd: len_in_bytes must be 1..{255 * _SHA512_DIGEST}, "
            f"got {len_in_bytes}"
        )
    return _expand(bytes(msg), _dst_prime(bytes(dst)), len_in_bytes)


def hash_to_field(msg: bytes, dst: bytes, count: int) -> list[gmpy2.mpz]:
    """``hash_to_field`` for GF(2^255 - 19) (RFC 9380 section 5.2)."""
    uniform = expand_message_xmd(msg, dst, count * _L)
    return [
        gmpy2.mpz(int.from_bytes(uniform[i * _L : (i + 1) * _L], "big")) % P
        for i in range(count)
    ]


def _map(u):
    """Elligator 2 for curve25519 (RFC 9380 6.7.1, straight-line form of appendix G.2.1).

    Returns ``(xn, xd, y)``: the point's affine coordinates are ``(xn / xd, y)``.
    Intermediate products are left unreduced where GMP is cheaper than another
    reduction step.
    """
    p = P
    tv1 = 2 * u * u % p  # 2 u^2
    xd = tv1 + 1  # never 0: -1/2 is not a square
    xd2 = xd * xd
    gxd = xd2 * xd % p
    # x1 = -J / xd, so gx1 = x1n^3 + J x1n^2 xd + x1n xd^2 with x1n = -J simplifies to:
    gx1 = _J * (_J2 * tv1 - xd2) % p
    gxd2 = gxd * gxd
    tv3 = gxd2 * gxd * gx1 % p  # gx1 gxd^3
    y11 = gmpy2.powmod(gxd2 * gxd2 * tv3 % p, _C4, p) * tv3 % p
    t = y11 * y11 * gxd % p
    # g(x1) is square exactly when y11 or y11 * sqrt(-1) is its root; then x = x1 with y
    # odd, else x = x2 = 2 u^2 x1 with y even (sgn0 rule of RFC 9380 6.7.1).
    if t == gx1:
        return _NEG_J, xd, y11 if y11 & 1 else p - y11
    if t == p - gx1:
        y12 = y11 * _C3 % p
        return _NEG_J, xd, y12 if y12 & 1 else p - y12
    y21 = y11 * u * _C2 % p
    if y21 * y21 * gxd % p != gx1 * tv1 % p:
        y21 = y21 * _C3 % p
    return _NEG_J * tv1 % p, xd, p - y21 if y21 & 1 else y21


def map_to_curve_affine(u: int) -> tuple[int, int]:
    """Elligator 2 map of one field element to an affine point ``(x, y)`` (for tests)."""
    xn, xd, y = _map(gmpy2.mpz(u) % P)
    return int(xn * gmpy2.invert(xd, P) % P), int(y)


def _add(q0, q1):
    """Projective u-coordinate ``(X, Z)`` of ``Q0 + Q1`` for fraction-form affine inputs."""
    p = P
    x0n, x0d, y0 = q0
    x1n, x1d, y1 = q1
    den = (x1n * x0d - x0n * x1d) % p
    if not den:
        # Equal u-coordinates (probability ~2^-254): a doubling or the identity.
        return _double(x0n, x0d) if y0 == y1 else (gmpy2.mpz(1), gmpy2.mpz(0))
    dd = x0d * x1d % p
    num = (y1 - y0) * dd
    den2 = den * den % p
    # lambda = num / den;  u3 = lambda^2 - J - x0 - x1  (Montgomery curve with B = 1)
    return (num * num * dd - (_J * dd + x0n * x1d + x1n * x0d) * den2) % p, den2 * dd % p


def _double(x, z):
    """x-only doubling in projective coordinates (the RFC 7748 ladder formulas)."""
    s = x + z
    d = x - z
    aa = s * s
    bb = d * d
    e = aa - bb
    return aa * bb % P, e * (bb + _A24 * e) % P


def _to_bytes(xs: Sequence, zs: Sequence) -> np.ndarray:
    """Affine u = X / Z for each pair, one shared inversion, encoded (N, 32) little-endian."""
    p = P
    n = len(xs)
    prefix = [None] * n
    acc = gmpy2.mpz(1)
    for i, z in enumerate(zs):
        prefix[i] = acc
        if z:  # the identity (Z = 0) encodes as u = 0, as in X25519
            acc = acc * z % p
    inv = gmpy2.invert(acc, p) if n else acc
    out = bytearray(32 * n)
    for i in range(n - 1, -1, -1):
        z = zs[i]
        if z:
            out[32 * i : 32 * i + 32] = (xs[i] * inv * prefix[i] % p).to_bytes(32, "little")
            inv = inv * z % p
    return np.frombuffer(out, dtype=np.uint8).reshape(n, 32)


def _uniform_to_points(uniform: Sequence[bytes], count: int) -> np.ndarray:
    from_bytes = gmpy2.mpz.from_bytes
    p = P
    xs, zs = [], []
    for buf in uniform:
        q = _map(from_bytes(buf[:_L], "big") % p)
        if count == 2:
            x, z = _add(q, _map(from_bytes(buf[_L:], "big") % p))
        else:
            x, z = q[0], q[1]
        x, z = _double(*_double(*_double(x, z)))  # clear the cofactor 8
        xs.append(x)
        zs.append(z)
    return _to_bytes(xs, zs)


def _check_dst(dst: bytes) -> bytes:
    if not isinstance(dst, (bytes, bytearray)) or not dst:
        raise HashToCurveError("domain separation tag must be non-empty bytes")
    return _dst_prime(bytes(dst))


def _hash_chunk(msgs: list[bytes], dst_prime: bytes, count: int) -> np.ndarray:
    lib = backend.native()
    if lib is not None:
        out = np.empty((len(msgs), 32), dtype=np.uint8)
        lib.hash_to_curve(msgs, dst_prime, count, out, backend.avx2())
        return out
    return _uniform_to_points([_expand(m, dst_prime, count * _L) for m in msgs], count)


def _run(msgs, dst, count, workers, executor) -> np.ndarray:
    dst_prime = _check_dst(dst)
    msgs = [bytes(m) for m in msgs]
    if executor is None and (workers == 1 or len(msgs) <= ONE_TASK):
        return _hash_chunk(msgs, dst_prime, count)
    pool = executor if executor is not None else get_executor(workers)
    bounds = task_bounds(len(msgs), pool.workers, CHUNK)
    tasks = ((msgs[start:stop], dst_prime, count) for start, stop in bounds)
    parts = list(imap(pool, _hash_chunk, tasks))
    return np.concatenate(parts) if parts else np.empty((0, 32), dtype=np.uint8)


def hash_to_curve(
    msgs: Sequence[bytes],
    dst: bytes = PRODUCT_DST,
    *,
    workers: int | None = None,
    executor: Executor | None = None,
) -> np.ndarray:
    """Hash each message to Curve25519 (random-oracle suite); returns ``(N, 32)`` uint8.

    Each row is the little-endian u-coordinate of the cofactor-cleared point. Large
    batches are split across ``workers`` processes (all cores by default).
    """
    return _run(msgs, dst, 2, workers, executor)


def hash_to_curve_stream(
    batches: Iterable[Sequence[bytes]],
    dst: bytes = PRODUCT_DST,
    *,
    workers: int | None = None,
    executor: Executor | None = None,
) -> Iterator[np.ndarray]:
    """``hash_to_curve`` over a stream of batches, yielding one array per batch in order.

    Batches are consumed lazily and hashed in parallel, so the caller can read the next
    rows (or write the last results) while workers hash.
    """
    dst_prime = _check_dst(dst)
    pool = executor if executor is not None else get_executor(workers)
    tasks = (([bytes(m) for m in batch], dst_prime, 2) for batch in batches)
    yield from imap(pool, _hash_chunk, tasks)


def encode_to_curve(msgs: Sequence[bytes], dst: bytes) -> np.ndarray:
    """Non-uniform encoding (suite ``curve25519_XMD:SHA-512_ELL2_NU_``); ``(N, 32)`` uint8.

    Not used by the protocol (its output is distinguishable from random); kept because the
    published vectors exercise the map through it.
    """
    return _run(msgs, dst, 1, 1, None)
