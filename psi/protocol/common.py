"""What both parties share: the version, the protocol's fixed limits, session errors,
message unpacking and unpredictable orders."""

from __future__ import annotations

import os

import numpy as np

from ..errors import SessionError
from ..intersection import TRUNCATED
from .policy import MAX_GROUP_SIZE

__all__ = [
    "MAX_GROUP_SIZE",
    "POINT",
    "PROTOCOL_VERSION",
    "SessionError",
    "TRUNCATED",
    "random_permutation",
    "unpack",
]

PROTOCOL_VERSION = 2
POINT = 32  # bytes of a u-coordinate


def unpack(data: bytes, width: int, limit: int, what: str) -> np.ndarray:
    """Rows of ``width`` bytes packed in one message, or ``SessionError``."""
    if not data:
        raise SessionError("INVALID_ARGUMENT", f"empty {what} message")
    if len(data) % width:
        raise SessionError(
            "INVALID_ARGUMENT", f"{what} message of {len(data)} bytes is not a multiple of {width}"
        )
    if len(data) // width > limit:
        raise SessionError(
            "INVALID_ARGUMENT",
            f"{what} message holds {len(data) // width} items, above the limit of {limit}",
        )
    return np.frombuffer(data, dtype=np.uint8).reshape(-1, width)


def random_permutation(n: int) -> np.ndarray:
    """A uniformly random permutation of ``range(n)`` drawn from the operating system's
    CSPRNG: the order of random 64-bit keys (ties, about n^2 / 2^65 likely, are the only
    departure from uniform)."""
    keys = np.frombuffer(os.urandom(8 * n), dtype=np.uint64)
    return np.argsort(keys, kind="stable")
