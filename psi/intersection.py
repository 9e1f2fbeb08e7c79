"""Exact, vectorized counting of common rows between two arrays of digests.

Rows are fixed-width byte strings (16-byte truncated points or 32-byte points). Each row
is read as big-endian 64-bit words, so numeric order on the words is byte order on the
rows. Only the first word is sorted; equal first words (rare for pseudorandom digests,
but allowed) fall back to an exact comparison of the whole row.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "TRUNCATED",
    "RowIndex",
    "count_intersection",
    "is_strictly_sorted",
    "sort_rows",
    "truncate",
]

TRUNCATED = 16  # bytes kept of each doubly blinded point


def _check(rows) -> np.ndarray:
    arr = np.ascontiguousarray(rows)
    if arr.dtype != np.uint8 or arr.ndim != 2 or arr.shape[1] % 8 or not arr.shape[1]:
        raise ValueError(
            f"expected an (N, W) uint8 array with W a multiple of 8, got {arr.dtype} {arr.shape}"
        )
    return arr


def _words(rows) -> np.ndarray:
    """Big-endian words: numeric order equals byte order (a copy)."""
    return _check(rows).view(">u8").astype(np.uint64)


def _native_words(rows) -> np.ndarray:
    """Native-endian words, a view without copying: fine wherever only equality matters."""
    return _check(rows).view(np.uint64)


def truncate(points: np.ndarray, width: int = TRUNCATED) -> np.ndarray:
    """Keep the first ``width`` bytes of each point (a copy, C-contiguous)."""
    return np.ascontiguousarray(points[:, :width])


def _unique_rows(words: np.ndarray) -> np.ndarray:
    """Distinct rows, sorted by first word (then the others)."""
    if len(words) < 2:
        return words
    s = words[np.lexsort(words.T[::-1])]
    keep = np.ones(len(s), dtype=bool)
    keep[1:] = (s[1:] != s[:-1]).any(axis=1)
    return s[keep]


def is_strictly_sorted(rows: np.ndarray) -> bool:
    """True when rows are in strictly increasing byte order (so all distinct)."""
    words = _words(rows)
    if len(words) < 2:
        return True
    prev, cur = words[:-1], words[1:]
    # Lexicographic "prev < cur" on word columns, most significant first.
    less = np.zeros(len(cur), dtype=bool)
    equal = np.ones(len(cur), dtype=bool)
    for col in range(words.shape[1]):
        less |= equal & (prev[:, col] < cur[:, col])
        equal &= prev[:, col] == cur[:, col]
    return bool(less.all())


def sort_rows(rows: np.ndarray) -> np.ndarray:
    """Rows in byte order (a new array).

    Sorts on the first 8 bytes alone and falls back to a full lexicographic sort only if
    two rows share them, which pseudorandom digests almost never do.
    """
    arr = _check(rows)
    if len(arr) < 2:
        return arr.copy()
    first = np.ascontiguousarray(arr[:, :8]).view(">u8").ravel()
    order = np.argsort(first)
    sorted_first = first[order]
    if bool(np.any(sorted_first[1:] == sorted_first[:-1])):
        order = np.lexsort(_words(arr).T[::-1])
    return arr[order]


def count_intersection(a, b) -> int:
    """Number of distinct rows present in both ``a`` and ``b``.

    Both are ``(N, W)`` uint8 arrays of the same width; duplicates count once. Costs a
    full sort of the smaller input and a sort of the larger one's first word only.
    """
    wa, wb = _native_words(a), _native_words(b)
    if wa.shape[1] != wb.shape[1]:
        raise ValueError(f"row widths differ: {wa.shape[1] * 8} and {wb.shape[1] * 8} bytes")
    if len(wa) > len(wb):
        wa, wb = wb, wa
    if not len(wa):
        return 0
    small = _unique_rows(wa)
    first = wb[:, 0]
    order = np.argsort(first)
    first = first[order]
    lo = np.searchsorted(first, small[:, 0], side="left")
    hi = np.searchsorted(first, small[:, 0], side="right")
    span = hi - lo
    single = span == 1
    rest = wb[order[lo[single]], 1:]
    count = int(np.count_nonzero((rest == small[single, 1:]).all(axis=1)))
    # Distinct rows sharing a first word: exact comparison within each such group.
    for i in np.flatnonzero(span > 1):
        group = wb[order[lo[i] : hi[i]], 1:]
        if (group == small[i, 1:]).all(axis=1).any():
            count += 1
    return count


class RowIndex:
    """A fixed set of rows, indexed once, to count members in a stream of distinct rows.

    Lets a server count against a returned set it never holds whole: memory stays at
    the size of this set, whatever the length of the stream.
    """

    def __init__(self, rows) -> None:
        words = _unique_rows(_native_words(rows))
        self.size = len(words)
        self._first = np.ascontiguousarray(words[:, 0])
        self._rest = np.ascontiguousarray(words[:, 1:])

    def count(self, rows) -> int:
        """How many of ``rows`` are in the set (``rows`` must be distinct)."""
        words = _native_words(rows)
        if not len(words) or not self.size:
            return 0
        lo = np.searchsorted(self._first, words[:, 0], side="left")
        hi = np.searchsorted(self._first, words[:, 0], side="right")
        span = hi - lo
        single = span == 1
        hits = int(np.count_nonzero((self._rest[lo[single]] == words[single, 1:]).all(axis=1)))
        for i in np.flatnonzero(span > 1):
            if (self._rest[lo[i] : hi[i]] == words[i, 1:]).all(axis=1).any():
                hits += 1
        return hits
