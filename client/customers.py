"""Customers from identifier occurrences.

Every valid identifier of a row is recorded as ``(type, digest, row)``. Rows that share
any identifier, of any type, are one customer (union-find over rows); each distinct
identifier belongs to exactly one customer.

Occurrences are kept in flat buffers (32 + 1 + 8 bytes each) rather than per-row Python
objects, and repeats are folded away whenever the buffers have doubled since the last
fold, so a list with tens of millions of rows needs memory for its distinct identifiers
and 8 bytes per row, not for every occurrence.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import numpy as np

__all__ = ["FOLD_MIN", "Grouping", "Occurrences", "union"]

DIGEST = 32
# Occurrences held before the first fold; later folds wait until the buffers double.
FOLD_MIN = 1 << 18
# Full comparisons of occurrences with equal keys are made this many at a time, so a
# list of one value repeated a million times does not copy a million digests at once.
_COMPARE_CHUNK = 1 << 16
# Odd 64-bit constant (the golden ratio's): mixes the type into the sort key, so equal
# digests of different types rarely share a key.
_TYPE_MIX = np.uint64(0x9E3779B97F4A7C15)


def _compress(parent: np.ndarray) -> None:
    """Point every row straight at its root (pointer jumping)."""
    while True:
        grand = parent[parent]
        if np.array_equal(grand, parent):
            return
        parent[:] = grand


def union(parent: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
    """Join the sets of ``a[i]`` and ``b[i]`` for every ``i``; ``parent`` is left fully
    compressed. Every root is the smallest row of its set, since a root is only ever
    hooked under a smaller one."""
    _compress(parent)
    while a.size:
        ra, rb = parent[a], parent[b]
        differ = ra != rb
        if not differ.any():
            return
        a, b, ra, rb = a[differ], b[differ], ra[differ], rb[differ]
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        _compress(parent)


def _sorted_items(types: np.ndarray, digests: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(order, new)``: an order of the occurrences that puts equal (type, digest) pairs
    next to each other, and for each position in it whether a new pair starts there.

    Sorting on 8 bytes of the digest is several times faster than on all 33; occurrences
    whose keys are equal are then compared in full, and the rare run of equal keys that
    holds different pairs is sorted again on every byte.
    """
    n = types.size
    key = digests[:, :8].copy().view(np.uint64).ravel() ^ (types.astype(np.uint64) * _TYPE_MIX)
    order = np.argsort(key, kind="stable")
    new = np.ones(n, dtype=bool)
    if n < 2:
        return order, new
    skey = key[order]
    pos = np.flatnonzero(skey[1:] == skey[:-1])
    same = _same(types, digests, order[pos], order[pos + 1])
    new[pos + 1] = ~same
    if not same.all():
        # Different pairs under one key: sort each such run on every byte, then mark again.
        for start, stop in _runs(skey, pos[~same]):
            run = order[start:stop]
            order[start:stop] = sorted(run, key=lambda i: (types[i], digests[i].tobytes()))
            run = order[start:stop]
            new[start + 1 : stop] = ~_same(types, digests, run[:-1], run[1:])
    return order, new


def _same(types: np.ndarray, digests: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    out = np.empty(i.size, dtype=bool)
    for k in range(0, i.size, _COMPARE_CHUNK):
        a, b = i[k : k + _COMPARE_CHUNK], j[k : k + _COMPARE_CHUNK]
        out[k : k + _COMPARE_CHUNK] = (types[a] == types[b]) & (digests[a] == digests[b]).all(axis=1)
    return out


def _runs(skey: np.ndarray, positions: np.ndarray) -> list[tuple[int, int]]:
    """The ``[start, stop)`` runs of equal sorted keys that contain ``positions + 1``."""
    runs = []
    for p in np.unique(positions):
        start = int(np.searchsorted(skey, skey[p], side="left"))
        stop = int(np.searchsorted(skey, skey[p], side="right"))
        if not runs or runs[-1] != (start, stop):
            runs.append((start, stop))
    return runs


class Occurrences:
    """Collects ``(type, digest, row)`` for a list read row by row (rows in order)."""

    def __init__(self, fold_min: int = FOLD_MIN) -> None:
        self._fold_min = fold_min
        self._next_fold = fold_min
        self._types = bytearray()
        self._digests = bytearray()
        self._rows = array("q")
        self._parent = np.zeros(0, dtype=np.int64)
        self.values = 0  # valid occurrences added
        self.rows_with_values = 0
        self._last_row = -1

    def add(self, types: bytes, digests: bytes, rows: array) -> None:
        """Occurrences ``i``: type ``types[i]``, digest ``digests[32i:32i+32]``, row
        ``rows[i]``; rows never decrease, within a call or across calls."""
        if not rows:
            return
        self._types += types
        self._digests += digests
        self._rows.extend(rows)
        self.values += len(rows)
        r = np.frombuffer(rows, dtype=np.int64)
        self.rows_with_values += int(np.count_nonzero(r[1:] != r[:-1])) + (int(r[0]) != self._last_row)
        self._last_row = int(r[-1])
        del r  # a view of ``rows``, which the caller may reuse
        if len(self._rows) >= self._next_fold:
            self._fold()

    def _fold(self) -> None:
        """Keep one occurrence of each (type, digest), joining the rows of the others."""
        n_rows = self._last_row + 1
        if self._parent.size < n_rows:
            self._parent = np.concatenate(
                [self._parent, np.arange(self._parent.size, n_rows, dtype=np.int64)]
            )
        # Views, not copies: the buffers are replaced below, never resized while viewed.
        types = np.frombuffer(self._types, dtype=np.uint8)
        digests = np.frombuffer(self._digests, dtype=np.uint8).reshape(-1, DIGEST)
        rows = np.frombuffer(self._rows, dtype=np.int64)
        order, new = _sorted_items(types, digests)
        repeat = np.flatnonzero(~new)
        if repeat.size:
            first = order[new]
            # Only repeats join rows: each is joined to its identifier's first occurrence.
            item = np.cumsum(new)[repeat] - 1
            union(self._parent, rows[first[item]], rows[order[repeat]])
            kept = np.sort(first)  # in the order they came, so a fold changes no order
            del types, digests, rows
            self._types = bytearray(np.frombuffer(self._types, dtype=np.uint8)[kept].tobytes())
            self._digests = bytearray(
                np.frombuffer(self._digests, dtype=np.uint8).reshape(-1, DIGEST)[kept].tobytes()
            )
            self._rows = array("q", np.frombuffer(self._rows, dtype=np.int64)[kept].tobytes())
        self._next_fold = max(self._fold_min, 2 * len(self._rows))

    def finish(self) -> Grouping:
        self._fold()
        rows = np.frombuffer(self._rows, dtype=np.int64)
        customer_roots, group = np.unique(self._parent[rows], return_inverse=True)
        order = np.argsort(group, kind="stable")
        return Grouping(
            types=np.frombuffer(self._types, dtype=np.uint8),
            digests=self._digests,
            order=order,
            group=group[order].astype(np.int64),
            n_customers=int(customer_roots.size),
            duplicates=self.values - len(self._rows),
            merged_rows=self.rows_with_values - int(customer_roots.size),
        )


@dataclass
class Grouping:
    """Distinct identifiers and their customers, numbered in the order of their first
    row (a root is the first row of its customer)."""

    types: np.ndarray  # uint8 type index of each distinct identifier
    digests: bytearray  # their digests, 32 bytes each, in the same order
    order: np.ndarray  # int64 positions of the identifiers, by customer
    group: np.ndarray  # int64 customer of each identifier in ``order``, 0..n_customers-1
    n_customers: int
    duplicates: int  # occurrences beyond the first of each identifier
    merged_rows: int  # rows with identifiers, less customers
