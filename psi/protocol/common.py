"""What both parties share: the protocol version and unpredictable shuffling."""

from __future__ import annotations

import secrets

import numpy as np

PROTOCOL_VERSION = 1


def shuffled(rows: np.ndarray) -> np.ndarray:
    """Rows in an order drawn from a generator seeded by the OS, so positions reveal
    nothing about input order (for example, the order users were imported in)."""
    rng = np.random.Generator(np.random.PCG64(secrets.randbits(128)))
    return rows[rng.permutation(len(rows))]
