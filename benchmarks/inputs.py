"""Identifier sets for one grid point: generated once, saved, and loaded by every system.

Saving the sets to a file and loading them in each measurement process guarantees that
the systems see exactly the same identifiers, and keeps generation out of their figures.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = ["ID_TYPE", "SEED", "Inputs", "load", "overlap_for", "write"]

ID_TYPE = "email"
SEED = 20240601


@dataclass(frozen=True)
class Inputs:
    client: list[str]
    server: list[str]
    overlap: int  # the exact intersection size both systems must report


def overlap_for(n: int, m: int) -> int:
    return min(n, m) // 2


def _mix(words: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer. A bijection on 64-bit words, so distinct counters stay
    distinct while their digits look random (no shared prefixes to flatter a sort)."""
    x = words.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def write(path: Path, n: int, m: int, seed: int = SEED) -> int:
    """Save a client set of ``n`` and a server set of ``m`` identifiers; returns the overlap."""
    overlap = overlap_for(n, m)
    rng = np.random.default_rng([seed, n, m])
    offset = rng.integers(2**63, dtype=np.uint64)
    words = _mix(np.arange(n + m - overlap, dtype=np.uint64) ^ offset)
    # the client's last `overlap` words are the server's first ones
    client = rng.permutation(words[:n])
    server = rng.permutation(words[n - overlap :])
    np.savez(path, client=client, server=server, overlap=np.int64(overlap))
    return overlap


def _emails(words: np.ndarray) -> list[str]:
    return [f"{w:016x}@example.com" for w in words.tolist()]


def load(path: Path) -> Inputs:
    with np.load(path) as saved:
        return Inputs(_emails(saved["client"]), _emails(saved["server"]), int(saved["overlap"]))
