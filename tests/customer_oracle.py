"""Expected customers, computed independently of the client: a plain union-find over
the encodings of each row's normalized values."""

from __future__ import annotations

import hashlib

import numpy as np


def encoding_of(id_type: str, normalized: str) -> bytes:
    return id_type.encode() + b"\x00" + hashlib.sha256(normalized.encode()).digest()


class UnionFind:
    """The textbook structure, for the expected answers."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def join(self, a: int, b: int) -> None:
        self.parent[self.find(a)] = self.find(b)


def expected(rows: list[list[bytes]]) -> dict:
    """Customers of rows given as lists of encoded identifiers."""
    uf, owner = UnionFind(), {}
    for r, ids in enumerate(rows):
        for enc in ids:
            uf.join(r, owner.setdefault(enc, r))
    customers: dict[int, set[bytes]] = {}
    for r, ids in enumerate(rows):
        if ids:
            customers.setdefault(uf.find(r), set()).update(ids)
    values = sum(len(ids) for ids in rows)
    return {
        "partition": {frozenset(c) for c in customers.values()},
        "n_customers": len(customers),
        "duplicates": values - len(owner),
        "merged_rows": sum(1 for ids in rows if ids) - len(customers),
    }


def partition(listing) -> set[frozenset[bytes]]:
    groups: dict[int, set[bytes]] = {}
    for item, g in zip(listing.items, listing.group.tolist()):
        groups.setdefault(g, set()).add(item)
    return {frozenset(g) for g in groups.values()}


def check_list(listing, want: dict) -> None:
    assert listing.n_customers == want["n_customers"]
    assert partition(listing) == want["partition"]
    assert listing.duplicates == want["duplicates"]
    assert listing.merged_rows == want["merged_rows"]
    assert len(set(listing.items)) == len(listing.items)
    assert listing.group.dtype == np.int64 and listing.group.shape == (len(listing.items),)
    assert set(listing.group.tolist()) == set(range(listing.n_customers))
