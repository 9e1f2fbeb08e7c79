"""Advertisers and their bearer tokens.

A token is ``psi1.<advertiser id>.<secret>``. Only SHA-256 of the secret is stored (the
secret is 256 random bits, so a slow password hash would add nothing), and it is compared
in constant time. Every failure reads the same to the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass

from psi.noise import EPSILON_RESOLUTION, epsilon_fraction

from .store import transaction

__all__ = ["Advertiser", "AuthError", "add", "authenticate", "by_name", "revoke_token", "rotate_token"]

_PREFIX = "psi1"


class AuthError(Exception):
    """The token does not identify an active advertiser."""

    def __init__(self) -> None:
        super().__init__("invalid or revoked token")


@dataclass(frozen=True)
class Advertiser:
    id: int
    name: str
    budget_micro: int
    period_days: float

    @property
    def budget(self) -> float:
        return self.budget_micro / EPSILON_RESOLUTION


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode("ascii")).digest()


def _new_token(advertiser_id: int) -> tuple[str, bytes]:
    secret = secrets.token_urlsafe(32)
    return f"{_PREFIX}.{advertiser_id}.{secret}", _digest(secret)


def add(conn: sqlite3.Connection, name: str, epsilon_budget: float, period_days: float) -> str:
    """Create an advertiser and return its token (shown once, never stored)."""
    name = name.strip()
    if not name or len(name) > 200 or not name.isprintable():
        raise ValueError("advertiser name must be 1-200 printable characters")
    if period_days <= 0:
        raise ValueError("the budget period must be positive")
    budget = round(epsilon_fraction(epsilon_budget) * EPSILON_RESOLUTION) if epsilon_budget else 0
    with transaction(conn):
        if conn.execute("SELECT 1 FROM advertisers WHERE name = ?", (name,)).fetchone():
            raise ValueError(f"an advertiser named {name!r} already exists")
        cur = conn.execute(
            "INSERT INTO advertisers (name, token_hash, budget_micro, period_days) "
            "VALUES (?, zeroblob(32), ?, ?)",
            (name, budget, period_days),
        )
        token, digest = _new_token(cur.lastrowid)
        conn.execute("UPDATE advertisers SET token_hash = ? WHERE id = ?", (digest, cur.lastrowid))
    return token


def by_name(conn: sqlite3.Connection, name: str) -> Advertiser:
    row = conn.execute(
        "SELECT id, name, budget_micro, period_days FROM advertisers WHERE name = ?", (name,)
    ).fetchone()
    if row is None:
        raise KeyError(f"no advertiser named {name!r}")
    return Advertiser(*row)


def authenticate(conn: sqlite3.Connection, token: str | None) -> Advertiser:
    """The advertiser a token belongs to, or ``AuthError``."""
    if not token or token.count(".") != 2:
        raise AuthError()
    prefix, ident, secret = token.split(".")
    if prefix != _PREFIX or not ident.isdigit() or len(ident) > 18:
        raise AuthError()
    row = conn.execute(
        "SELECT id, name, budget_micro, period_days, token_hash FROM advertisers "
        "WHERE id = ? AND revoked_at IS NULL",
        (int(ident),),
    ).fetchone()
    # Compare even when the advertiser is unknown, so both paths cost the same.
    stored = row[4] if row else b"\x00" * 32
    try:
        digest = _digest(secret)
    except UnicodeEncodeError:
        raise AuthError() from None
    if not hmac.compare_digest(digest, stored) or row is None:
        raise AuthError()
    return Advertiser(*row[:4])


def revoke_token(conn: sqlite3.Connection, name: str) -> None:
    """Refuse the advertiser's token from now on (budget and audit history are kept)."""
    with transaction(conn):
        cur = conn.execute(
            "UPDATE advertisers SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
            "WHERE name = ? AND revoked_at IS NULL",
            (name,),
        )
        if cur.rowcount == 0:
            raise KeyError(f"no active advertiser named {name!r}")


def rotate_token(conn: sqlite3.Connection, name: str) -> str:
    """Issue a new token for an advertiser; the old one stops working at once."""
    with transaction(conn):
        adv = by_name(conn, name)
        token, digest = _new_token(adv.id)
        conn.execute(
            "UPDATE advertisers SET token_hash = ?, revoked_at = NULL WHERE id = ?", (digest, adv.id)
        )
    return token
