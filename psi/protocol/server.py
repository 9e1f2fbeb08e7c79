"""The platform's steps. The server learns the exact intersection size and the size of
the client's list, nothing else; what it releases is decided by ``psi.noise``."""

from __future__ import annotations

import numpy as np

from ..errors import ProtocolError
from ..intersection import TRUNCATED, RowIndex, is_strictly_sorted, truncate
from ..keys import Key
from ..parallel import Executor
from .common import shuffled

__all__ = ["ReturnedSetCounter", "blind_client_set", "build_table", "count"]


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


class ReturnedSetCounter:
    """Counts ``|E(b, A) ∩ returned|`` while the returned set streams in.

    The returned set must be exactly ``table_size`` rows of 16 bytes in strictly
    increasing byte order, across chunk boundaries too: a client that drops, repeats or
    reorders entries is refused. Only the client's blinded set is held in memory.
    """

    def __init__(self, blinded_client: np.ndarray, table_size: int) -> None:
        self._index = RowIndex(blinded_client)
        self.table_size = table_size
        self.received = 0
        self.matches = 0
        self._last: bytes | None = None

    @property
    def distinct_client_items(self) -> int:
        return self._index.size

    def add(self, rows: np.ndarray) -> None:
        if rows.ndim != 2 or rows.shape[1] != TRUNCATED:
            raise ProtocolError(f"returned rows must be {TRUNCATED} bytes")
        if self.received + len(rows) > self.table_size:
            raise ProtocolError(f"returned set is larger than the table's {self.table_size} entries")
        if not len(rows):
            return
        if not is_strictly_sorted(rows) or (self._last is not None and rows[0].tobytes() <= self._last):
            raise ProtocolError("returned set is not strictly sorted (duplicates or reordering)")
        self._last = rows[-1].tobytes()
        self.received += len(rows)
        self.matches += self._index.count(rows)

    def finish(self) -> int:
        if self.received != self.table_size:
            raise ProtocolError(
                f"returned set has {self.received} entries, the table has {self.table_size}"
            )
        return self.matches


def count(blinded_client: np.ndarray, returned: np.ndarray, table_size: int) -> int:
    """Exact ``|E(b, A) ∩ E(a, T)|`` for a returned set held whole (see
    ``ReturnedSetCounter`` for the checks)."""
    counter = ReturnedSetCounter(blinded_client, table_size)
    counter.add(returned)
    return counter.finish()
