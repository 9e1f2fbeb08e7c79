"""Exact discrete Laplace noise and the release rule for counts.

Floating-point Laplace noise leaks through its low-order bits (Mironov 2012), so the
sampler works on integers and rationals only: the algorithms of Canonne, Kamath and
Steinke, "The Discrete Gaussian for Differential Privacy" (2020), section 5, with
randomness from the operating system unless a source is injected for tests.
"""

from __future__ import annotations

import math
import secrets
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

__all__ = [
    "PADDING_DELTA",
    "SIZE_SHARE",
    "RandomSource",
    "Release",
    "SessionNoise",
    "count_epsilon",
    "discrete_laplace",
    "epsilon_fraction",
    "padding_offset",
]

EPSILON_RESOLUTION = 10**6  # epsilons are exact multiples of 1e-6
# A session releases two numbers: the count, and the table size m' = m + padding. This
# share of its epsilon goes to the size; the count keeps the rest, so its noise is only
# 1/0.9 wider than if the size were free.
SIZE_SHARE = Fraction(1, 10)
# Probability that the padding's noise is clipped (the size release is
# (epsilon_size, delta)-DP): below one in a billion sessions.
PADDING_DELTA = 2.0**-30


class RandomSource(Protocol):
    def randrange(self, stop: int, /) -> int: ...


_SYSTEM = secrets.SystemRandom()


def epsilon_fraction(epsilon: float | str | Fraction) -> Fraction:
    """The exact rational an epsilon stands for, rounded to 1e-6 (so ``0.1`` is 1/10)."""
    value = Fraction(str(epsilon)) if not isinstance(epsilon, Fraction) else epsilon
    scaled = round(value * EPSILON_RESOLUTION)
    if scaled <= 0:
        raise ValueError("epsilon must be positive (at least 1e-6)")
    return Fraction(scaled, EPSILON_RESOLUTION)


def _bernoulli(p: Fraction, rng: RandomSource) -> bool:
    return rng.randrange(p.denominator) < p.numerator


def _bernoulli_exp_at_most_one(gamma: Fraction, rng: RandomSource) -> bool:
    # P[K odd] with K the first k where Bernoulli(gamma / k) fails equals exp(-gamma).
    k = 1
    while _bernoulli(gamma / k, rng):
        k += 1
    return k % 2 == 1


def _bernoulli_exp(gamma: Fraction, rng: RandomSource) -> bool:
    """A coin with heads probability exactly ``exp(-gamma)``, ``gamma >= 0`` rational."""
    whole = gamma.numerator // gamma.denominator
    for _ in range(whole):
        if not _bernoulli_exp_at_most_one(Fraction(1), rng):
            return False
    return _bernoulli_exp_at_most_one(gamma - whole, rng)


def discrete_laplace(scale: Fraction, rng: RandomSource = _SYSTEM) -> int:
    """One draw with ``P[X = x]`` proportional to ``exp(-|x| / scale)``, x an integer."""
    scale = Fraction(scale)
    if scale <= 0:
        raise ValueError("scale must be positive")
    # X = u + t v is geometric with ratio exp(-1/t); floor(X / s) then has ratio
    # exp(-s/t), so the result has scale t / s.
    t, s = scale.numerator, scale.denominator
    while True:
        u = rng.randrange(t)
        if not _bernoulli_exp(Fraction(u, t), rng):
            continue
        v = 0
        while _bernoulli_exp(Fraction(1), rng):
            v += 1
        y = (u + t * v) // s
        negative = rng.randrange(2) == 1
        if negative and y == 0:
            continue  # zero would otherwise be counted twice
        return -y if negative else y


@dataclass(frozen=True)
class Release:
    """What the advertiser is told: a noisy count, or only that it is below ``threshold``."""

    noisy_count: int | None
    suppressed: bool
    threshold: int

    @classmethod
    def of(cls, exact: int, noise: int, threshold: int) -> Release:
        """``exact + noise``, suppressed below ``threshold``.

        Thresholding the noisy value is post-processing, so the release is as private as
        the noise makes it; the exact count never leaves this function.
        """
        noisy = exact + noise
        if noisy < threshold:
            return cls(None, True, threshold)
        return cls(noisy, False, threshold)


def padding_offset(sensitivity: int, epsilon: Fraction, delta: float = PADDING_DELTA) -> int:
    """Dummies added before noise: an offset with ``P[offset + X <= sensitivity] <= delta``
    for ``X ~ DiscreteLaplace(sensitivity / epsilon)``.

    ``P[X <= -k] = q^k / (1 + q)`` with ``q = exp(-epsilon / sensitivity)``, so the offset is
    ``sensitivity + ceil(ln(1 / (delta (1 + q))) / (epsilon / sensitivity))``. Public, so
    floating point is fine here; one more dummy than the formula covers its rounding.
    """
    rate = float(epsilon) / sensitivity
    q = math.exp(-rate)
    return sensitivity + math.ceil(math.log(1 / (delta * (1 + q))) / rate) + 1


@dataclass(frozen=True)
class SessionNoise:
    """Both of a session's noise draws, made before any count exists.

    ``count``: added to the exact count, at scale ``sensitivity / epsilon_count``.
    ``padding``: dummies in the table, ``max(0, offset + X)`` with ``X`` at scale
    ``sensitivity / epsilon_size``. Neighbouring tables differ by at most ``sensitivity``
    real entries, so ``m + padding`` is (epsilon_size, PADDING_DELTA)-DP: outside the
    clipped region, at most ``sensitivity`` below ``offset``, the two output distributions
    are discrete Laplace distributions shifted by at most ``sensitivity``.
    """

    count: int
    padding: int

    @classmethod
    def draw(
        cls,
        epsilon: Fraction,
        sensitivity: int,
        rng: RandomSource = _SYSTEM,
        floor_seconds: float = 0.0,
    ) -> SessionNoise:
        """Draws both, taking at least ``floor_seconds``.

        The sampler's running time grows with the values it returns; the floor, far above
        that running time, keeps the time a caller can observe independent of the noise.
        """
        start = time.monotonic()
        eps_size = epsilon - count_epsilon(epsilon)
        count = discrete_laplace(Fraction(sensitivity) / count_epsilon(epsilon), rng)
        offset = padding_offset(sensitivity, eps_size)
        padding = max(0, offset + discrete_laplace(Fraction(sensitivity) / eps_size, rng))
        left = floor_seconds - (time.monotonic() - start)
        if left > 0:
            time.sleep(left)
        return cls(count, padding)


def count_epsilon(epsilon: Fraction) -> Fraction:
    """The part of a session's epsilon spent on its count."""
    return epsilon * (1 - SIZE_SHARE)
