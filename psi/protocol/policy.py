"""The server's rules for sessions and the protocol's limit on a customer's identifiers:
numbers only, so the operator's command line reads its defaults here without loading
the protocol's computation."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_GROUP_SIZE", "Policy"]

# Identifiers of one customer. Rows that share identifiers are merged into one customer,
# so a chain of shared placeholders could otherwise make one customer of a whole file.
MAX_GROUP_SIZE = 1024


@dataclass(frozen=True)
class Policy:
    """The server's rules for sessions (the command line's defaults are these)."""

    min_list_size: int = 100  # customers
    max_list_size: int = 10_000_000  # items: the server holds about 20 bytes per item
    threshold: int = 100
    epsilon_min: float = 0.01
    epsilon_max: float = 1.0
    noise: bool = True
    max_points_per_message: int = 16384
    max_digests_per_message: int = 32768
    # Drawing the noise takes at least this long, so the time to Accepted does not
    # depend on the values drawn (see SessionNoise.draw).
    noise_floor_seconds: float = 0.05

    def __post_init__(self) -> None:
        if self.max_points_per_message < MAX_GROUP_SIZE:
            raise ValueError(f"max_points_per_message must be at least {MAX_GROUP_SIZE}")
