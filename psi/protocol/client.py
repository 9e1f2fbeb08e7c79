"""The advertiser's steps. The client never holds anything it can test an identifier
against: it only ever sees the table blinded under the server's key."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

from ..errors import ProtocolError
from ..intersection import is_strictly_sorted, sort_rows, truncate
from ..keys import Key
from ..parallel import Executor
from .common import shuffled

__all__ = ["blind", "check_table_size", "double_blind_table", "double_blind_table_chunks"]


def blind(
    key: Key, hashed: np.ndarray, workers: int | None = None, executor: Executor | None = None
) -> np.ndarray:
    """``A``: the client's distinct hashed points under its key, shuffled."""
    return shuffled(key.apply(hashed, workers, executor=executor, check=False))


def check_table_size(table_size: int, floor: int) -> None:
    """Refuse a table too small to hide which of its entries matched."""
    if table_size < floor:
        raise ProtocolError(
            f"server table has {table_size} entries, below the client's floor of {floor}"
        )


def double_blind_table_chunks(
    key: Key,
    table_chunks: Iterable,
    workers: int | None = None,
    executor: Executor | None = None,
) -> Iterator[np.ndarray]:
    """Truncated ``E(a, t)`` per received chunk, computed while later chunks arrive.

    Every received point is checked (canonical, on the curve, not of low order).
    """
    for out in key.apply_chunks(table_chunks, workers, executor=executor, check=True):
        yield truncate(out)


def double_blind_table(
    key: Key,
    table_chunks: Iterable,
    workers: int | None = None,
    executor: Executor | None = None,
) -> np.ndarray:
    """The set returned to the server: ``sort(trunc16(E(a, t)))``, all distinct.

    Sorting destroys the table's order, which the server could otherwise map back to its
    entries. Holds only 16 bytes per table entry.
    """
    parts = list(double_blind_table_chunks(key, table_chunks, workers, executor))
    rows = np.concatenate(parts) if parts else np.empty((0, 16), dtype=np.uint8)
    result = sort_rows(rows)
    if not is_strictly_sorted(result):
        raise ProtocolError("server table contains duplicate points")
    return result
