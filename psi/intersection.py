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
    "GroupIndex",
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


class GroupIndex:
    """A client's blinded items, each with the group (customer) it belongs to, indexed
    once to count the groups hit by a stream of distinct rows.

    Lets a server count against a returned set it never holds whole. Holds 20 bytes per
    16-byte item (two words and a 32-bit group number) once built.
    """

    def __init__(self, rows, groups: np.ndarray, n_groups: int) -> None:
        # Built with at most 28 more bytes per item than its inputs, which the caller
        # can free once it is built.
        words = _native_words(rows)
        order = np.argsort(words[:, 0], kind="stable")
        self._group = np.asarray(groups, dtype=np.uint32)[order]
        self._first = words[order, 0]
        self._rest = np.ascontiguousarray(words[order, 1:])
        del order
        self._hit = np.zeros(n_groups, dtype=bool)
        self.size = len(self._first)

    def has_repeats(self) -> bool:
        """True when two items are the same row."""
        same = np.flatnonzero(self._first[1:] == self._first[:-1])
        # Rows sharing a first word are adjacent but not necessarily next to their twin:
        # compare each run of equal first words whole.
        for start in same:
            lo = start
            while lo > 0 and self._first[lo - 1] == self._first[start]:
                lo -= 1
            hi = start + 2
            while hi < self.size and self._first[hi] == self._first[start]:
                hi += 1
            run = self._rest[lo:hi]
            if len(np.unique(run, axis=0)) < len(run):
                return True
        return False

    def add(self, rows) -> None:
        """Mark the groups of the items that are in ``rows`` (``rows`` must be distinct)."""
        words = _native_words(rows)
        if not len(words) or not self.size:
            return
        lo = np.searchsorted(self._first, words[:, 0], side="left")
        hi = np.searchsorted(self._first, words[:, 0], side="right")
        span = hi - lo
        single = np.flatnonzero(span == 1)
        at = lo[single]
        match = (self._rest[at] == words[single, 1:]).all(axis=1)
        self._hit[self._group[at[match]]] = True
        for i in np.flatnonzero(span > 1):
            equal = (self._rest[lo[i] : hi[i]] == words[i, 1:]).all(axis=1)
            self._hit[self._group[lo[i] : hi[i]][equal]] = True

    @property
    def groups_hit(self) -> int:
        return int(np.count_nonzero(self._hit))
