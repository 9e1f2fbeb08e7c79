"""Exact discrete Laplace noise and the release rule for counts.

Floating-point Laplace noise leaks through its low-order bits (Mironov 2012), so the
sampler works on integers and rationals only: the algorithms of Canonne, Kamath and
Steinke, "The Discrete Gaussian for Differential Privacy" (2020), section 5, with
randomness from the operating system unless a source is injected for tests.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from fractions import Fraction
from typing import Protocol

__all__ = ["RandomSource", "Release", "discrete_laplace", "epsilon_fraction", "release_count"]

EPSILON_RESOLUTION = 10**6  # epsilons are exact multiples of 1e-6


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


def release_count(
    exact: int,
    epsilon: Fraction,
    sensitivity: int,
    threshold: int,
    rng: RandomSource = _SYSTEM,
) -> Release:
    """``exact + DiscreteLaplace(sensitivity / epsilon)``, suppressed below ``threshold``.

    Thresholding the noisy value is post-processing, so the release stays
    ``epsilon``-differentially private; the exact count never leaves this function.
    """
    noisy = exact + discrete_laplace(Fraction(sensitivity) / epsilon, rng)
    if noisy < threshold:
        return Release(None, True, threshold)
    return Release(noisy, False, threshold)
