"""Advertisers and their bearer tokens.

A token is ``psi1.<advertiser id>.<secret>``. Only SHA-256 of the secret is stored (the
secret is 256 random bits, so a slow password hash would add nothing), and it is compared
in constant time. Every failure reads the same to the caller. A rotation may let the
previous token work for an overlap period, so that the advertiser can switch without
an outage.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from psi.noise import EPSILON_RESOLUTION, epsilon_fraction

from .registry.times import now_utc, utc_text
from .store import transaction

__all__ = [
    "Advertiser", "AdvertiserEntry", "AuthError", "add", "authenticate", "by_name", "entries",
    "revoke_token", "rotate_token",
]

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


@dataclass(frozen=True)
class AdvertiserEntry:
    advertiser: Advertiser
    created_at: str
    revoked_at: str | None
    previous_token_until: str | None  # the previous token works until then (future only)


_NO_TOKEN = b"\x00" * 32  # no secret hashes to this


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
        "SELECT id, name, budget_micro, period_days, token_hash, "
        "CASE WHEN previous_token_until > ? THEN previous_token_hash END "
        "FROM advertisers WHERE id = ? AND revoked_at IS NULL",
        (now_utc(), int(ident)),
    ).fetchone()
    # Compare with both tokens, even when the advertiser is unknown or has no previous
    # token, so that every path costs the same.
    current = row[4] if row else _NO_TOKEN
    previous = row[5] if row and row[5] else _NO_TOKEN
    try:
        digest = _digest(secret)
    except UnicodeEncodeError:
        raise AuthError() from None
    matches = hmac.compare_digest(digest, current) | hmac.compare_digest(digest, previous)
    if not matches or row is None:
        raise AuthError()
    return Advertiser(*row[:4])


def entries(conn: sqlite3.Connection) -> list[AdvertiserEntry]:
    """Every advertiser, by name."""
    rows = conn.execute(
        "SELECT id, name, budget_micro, period_days, created_at, revoked_at, "
        "CASE WHEN previous_token_until > ? AND revoked_at IS NULL THEN previous_token_until END "
        "FROM advertisers ORDER BY name",
        (now_utc(),),
    )
    return [AdvertiserEntry(Advertiser(*r[:4]), r[4], r[5], r[6]) for r in rows]


def revoke_token(conn: sqlite3.Connection, name: str) -> None:
    """Refuse the advertiser's tokens from now on (budget and audit history are kept)."""
    with transaction(conn):
        cur = conn.execute(
            "UPDATE advertisers SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), "
            "previous_token_hash = NULL, previous_token_until = NULL "
            "WHERE name = ? AND revoked_at IS NULL",
            (name,),
        )
        if cur.rowcount == 0:
            raise KeyError(f"no active advertiser named {name!r}")


def rotate_token(conn: sqlite3.Connection, name: str, overlap: timedelta = timedelta(0)) -> str:
    """Issue a new token for an advertiser (reactivating a revoked one). The current
    token keeps working for ``overlap``, if the advertiser is active; else it stops at
    once, as does any earlier token still in its overlap."""
    if overlap < timedelta(0):
        raise ValueError("the overlap cannot be negative")
    with transaction(conn):
        adv = by_name(conn, name)
        token, digest = _new_token(adv.id)
        until = utc_text(datetime.now(timezone.utc) + overlap) if overlap else None
        conn.execute(
            "UPDATE advertisers SET "
            "previous_token_hash = CASE WHEN :until IS NOT NULL AND revoked_at IS NULL THEN token_hash END, "
            "previous_token_until = CASE WHEN revoked_at IS NULL THEN :until END, "
            "token_hash = :digest, revoked_at = NULL WHERE id = :id",
            {"until": until, "digest": digest, "id": adv.id},
        )
    return token
