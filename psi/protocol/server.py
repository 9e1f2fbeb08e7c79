"""The platform's steps. The server learns the exact intersection size and the size of
the client's list, nothing else; what it releases is decided by ``psi.noise``."""

from __future__ import annotations

import numpy as np

from ..errors import ProtocolError
from ..intersection import TRUNCATED, count_intersection, is_strictly_sorted, truncate
from ..keys import Key
from ..parallel import Executor
from .common import shuffled

__all__ = ["blind_client_set", "build_table", "count", "distinct_count"]


def build_table(
    key: Key, hashed: np.ndarray, workers: int | None = None, executor: Executor | None = None
) -> np.ndarray:
    """``T``: the matchable identifiers' hashed points under the epoch key, shuffled."""
    return shuffled(key.apply(hashed, workers, executor=executor, check=False))


def blind_client_set(
    key: Key, received: np.ndarray, workers: int | None = None, executor: Executor | None = None
) -> np.ndarray:
    """Truncated ``E(b, A)``; raises ``InvalidPointError`` for any bad received point."""
    return truncate(key.apply(received, workers, executor=executor, check=True))


def distinct_count(rows: np.ndarray) -> int:
    """Number of distinct rows (a client may pad its list with repeats)."""
    if len(rows) < 2:
        return len(rows)
    words = np.ascontiguousarray(rows).view(np.uint64)
    s = words[np.lexsort(words.T[::-1])]
    return 1 + int(np.count_nonzero((s[1:] != s[:-1]).any(axis=1)))


def count(blinded_client: np.ndarray, returned: np.ndarray, table_size: int) -> int:
    """Exact ``|E(b, A) ∩ E(a, T)|`` after checking the returned set's shape.

    The returned set must hold exactly ``table_size`` rows of 16 bytes in strictly
    increasing order: a client that drops, repeats or reorders entries is refused.
    """
    if returned.ndim != 2 or returned.shape[1] != TRUNCATED:
        raise ProtocolError(f"returned rows must be {TRUNCATED} bytes")
    if len(returned) != table_size:
        raise ProtocolError(
            f"returned set has {len(returned)} entries, the table has {table_size}"
        )
    if not is_strictly_sorted(returned):
        raise ProtocolError("returned set is not strictly sorted (duplicates or reordering)")
    return count_intersection(blinded_client, returned)
