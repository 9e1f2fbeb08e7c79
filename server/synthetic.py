"""Synthetic registries and advertiser lists with known answers, for the demo, tests
and benchmarks.

Each user has one email given for their account; some also gave a second address only
for two-factor authentication, and some gave their account address only for security.
Optionally, users also have a phone number, most of them given only for two-factor
authentication. A share of users revoked ads-matching consent after granting it. The
generator keeps the ground truth: which identifiers a consent-scoped matcher may count,
and which a purpose-blind matcher would have counted.
"""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Synthetic", "advertiser_customers", "advertiser_list", "generate", "write_csv"]


@dataclass
class Synthetic:
    rows: list[tuple[str, str, str, str, str, str]] = field(default_factory=list)
    matchable: set[str] = field(default_factory=set)  # identifiers (emails and phones)
    everything: set[str] = field(default_factory=set)
    users: dict[str, list[str]] = field(default_factory=dict)  # user id -> their emails
    phones: dict[str, str] = field(default_factory=dict)  # user id -> their phone, if any


def generate(
    n_users: int,
    seed: int = 0,
    security_only_rate: float = 0.1,
    second_factor_rate: float = 0.3,
    revoked_rate: float = 0.2,
    phone_rate: float = 0.0,
    phone_security_rate: float = 0.7,
) -> Synthetic:
    rng = random.Random(seed)
    syn = Synthetic()
    for i in range(n_users):
        user = f"user-{i:08d}"
        main_email = f"customer{i}@example.com"
        granted_at = "2026-01-0%dT09:00:00Z" % (1 + i % 9)
        revoked = rng.random() < revoked_rate
        security_only = rng.random() < security_only_rate
        syn.rows.append((user, "email", main_email, "security" if security_only else "account", "granted", granted_at))
        emails = [main_email]
        if rng.random() < second_factor_rate:
            second = f"2fa.{i}@mail.example.net"
            syn.rows.append((user, "email", second, "security", "granted", granted_at))
            emails.append(second)
        if phone_rate and rng.random() < phone_rate:  # no draw at all without phones
            phone = f"+1{(202, 212, 415)[i % 3]}555{i // 3:04d}"
            two_factor = rng.random() < phone_security_rate
            syn.rows.append((user, "phone", phone, "security" if two_factor else "account", "granted", granted_at))
            syn.phones[user] = phone
            syn.everything.add(phone)
            if not (revoked or two_factor):
                syn.matchable.add(phone)
        if revoked:
            syn.rows.append((user, "email", main_email, "security" if security_only else "account",
                             "revoked", "2026-02-01T09:00:00Z"))
        elif not security_only:
            syn.matchable.add(main_email)
        syn.everything.update(emails)
        syn.users[user] = emails
    rng.shuffle(syn.rows)
    return syn


def advertiser_list(syn: Synthetic, size: int, overlap: float = 0.5, seed: int = 1) -> list[str]:
    """``size`` addresses, a share ``overlap`` of them the platform's (any purpose)."""
    rng = random.Random(seed)
    known = sorted(syn.everything)
    inside = rng.sample(known, min(len(known), round(size * overlap)))
    outside = [f"prospect{j}@example.org" for j in range(size - len(inside))]
    listing = inside + outside
    rng.shuffle(listing)
    return listing


def advertiser_customers(
    syn: Synthetic, size: int, overlap: float = 0.5, seed: int = 1
) -> list[tuple[str, str]]:
    """``size`` customers as ``(email, phone)`` rows (phone may be empty), a share
    ``overlap`` of them the platform's users; a few customers appear on two rows that share
    their email, as CRM exports do."""
    rng = random.Random(seed)
    users = rng.sample(sorted(syn.users), min(len(syn.users), round(size * overlap)))
    rows = [(syn.users[u][0], syn.phones.get(u, "")) for u in users]
    rows += [(f"prospect{j}@example.org", "") for j in range(size - len(rows))]
    rows += [(email, "") for email, phone in rng.sample(rows, len(rows) // 50) if phone]
    rng.shuffle(rows)
    return rows


def write_csv(rows, path: str | Path) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["user_id", "id_type", "identifier", "purpose", "consent", "updated_at"])
        writer.writerows(rows)
