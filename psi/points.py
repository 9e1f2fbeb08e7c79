"""Checks on received u-coordinates: canonical encoding and membership of the curve.

A u-coordinate belongs either to Curve25519 or to its quadratic twist. X25519 accepts
both, so a peer could send twist points and learn the key modulo the twist's small
factors. ``u`` is on the curve exactly when ``u^3 + A u^2 + u`` is a square mod p,
which the Jacobi symbol decides without a square root.
"""

from __future__ import annotations

import gmpy2
import numpy as np

__all__ = ["as_points", "canonical_mask", "off_curve_count"]

_P = gmpy2.mpz(2**255 - 19)
_A = gmpy2.mpz(486662)
# p = 2^255 - 19 little-endian: 0xed, then 30 bytes of 0xff, then 0x7f.
_P_LE = np.frombuffer((2**255 - 19).to_bytes(32, "little"), dtype=np.uint8)


def as_points(points) -> np.ndarray:
    """View input as a C-contiguous ``(N, 32)`` uint8 array, or raise ValueError."""
    if isinstance(points, (bytes, bytearray, memoryview)):
        raw = bytes(points)
        if len(raw) % 32:
            raise ValueError(f"packed points must be a multiple of 32 bytes, got {len(raw)}")
        return np.frombuffer(raw, dtype=np.uint8).reshape(-1, 32)
    arr = np.ascontiguousarray(points)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] != 32:
        raise ValueError(f"points must be an (N, 32) uint8 array, got {arr.dtype} {arr.shape}")
    return arr


def canonical_mask(points: np.ndarray) -> np.ndarray:
    """True where the encoding is canonical: the integer value is below p (top bit 0)."""
    if not len(points):
        return np.ones(0, dtype=bool)
    # Compare as little-endian 256-bit integers: find the most significant differing byte.
    diff = points != _P_LE
    # index of the highest differing byte, or -1 when equal to p
    rev = diff[:, ::-1]
    has_diff = rev.any(axis=1)
    top = 31 - rev.argmax(axis=1)
    below = points[np.arange(len(points)), top] < _P_LE[top]
    return has_diff & below


def off_curve_count(points: np.ndarray) -> int:
    """Number of u-coordinates that lie on the twist rather than the curve (a
    non-canonical encoding is judged by its integer value mod p)."""
    from_bytes = gmpy2.mpz.from_bytes
    jacobi = gmpy2.jacobi
    p, a = _P, _A
    raw = points.tobytes()
    bad = 0
    for i in range(0, len(raw), 32):
        u = from_bytes(raw[i : i + 32], "little")
        if jacobi(((u + a) * u + 1) * u % p, p) < 0:
            bad += 1
    return bad
