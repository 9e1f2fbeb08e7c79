"""Running one statement over a list of values longer than SQLite's parameter limit."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator

__all__ = ["SQL_VARS", "in_chunks"]

# Below SQLite's default limit of 999 parameters per statement in older builds.
SQL_VARS = 900


def in_chunks(
    conn: sqlite3.Connection, query: str, values: list, extra: dict | None = None
) -> Iterator[tuple]:
    """``query`` (with ``{names}`` where a list of parameters goes) over ``values`` in
    chunks below SQLite's parameter limit."""
    for i in range(0, len(values), SQL_VARS):
        names = {f"v{j}": v for j, v in enumerate(values[i : i + SQL_VARS])}
        sql = query.format(names=",".join(f":{k}" for k in names))
        yield from conn.execute(sql, {**(extra or {}), **names})
