"""The discrete Laplace sampler against its exact probability mass function."""

import math
import random
from collections import Counter
from fractions import Fraction

import pytest

from psi.noise import discrete_laplace, epsilon_fraction, release_count


def pmf(x: int, scale: float) -> float:
    q = math.exp(-1 / scale)
    return (1 - q) / (1 + q) * q ** abs(x)


@pytest.mark.parametrize("scale", [Fraction(1, 2), Fraction(1), Fraction(10, 3)])
def test_chi_square_against_exact_pmf(scale):
    rng = random.Random(20261122)  # fixed source: the test is repeatable
    n = 40_000
    draws = Counter(discrete_laplace(scale, rng) for _ in range(n))
    # Bins with expected count >= 20; the tails are pooled into one bin.
    bins, expected, observed = [], [], []
    x = 0
    while n * pmf(x, float(scale)) >= 20:
        bins.append(x)
        x += 1
    covered = 0.0
    for b in sorted({*bins, *(-b for b in bins)}):
        p = pmf(b, float(scale))
        covered += p
        expected.append(n * p)
        observed.append(draws.get(b, 0))
    expected.append(n * (1 - covered))
    observed.append(n - sum(observed))
    chi2 = sum((o - e) ** 2 / e for o, e in zip(observed, expected))
    dof = len(expected) - 1
    # 99.9th percentile of chi-square via the Wilson-Hilferty approximation
    z = 3.090
    critical = dof * (1 - 2 / (9 * dof) + z * math.sqrt(2 / (9 * dof))) ** 3
    assert chi2 < critical, (chi2, critical, dof)


def test_symmetric_and_centered():
    rng = random.Random(1)
    draws = [discrete_laplace(Fraction(2), rng) for _ in range(20_000)]
    assert abs(sum(draws) / len(draws)) < 0.1
    assert abs(sum(d > 0 for d in draws) - sum(d < 0 for d in draws)) < 600


def test_release_suppresses_below_threshold():
    rng = random.Random(3)
    low = release_count(3, Fraction(1), 1, 100, rng)
    assert low.suppressed and low.noisy_count is None and low.threshold == 100
    high = release_count(10_000, Fraction(1), 1, 100, rng)
    assert not high.suppressed and abs(high.noisy_count - 10_000) < 50


def test_epsilon_is_exact_rational():
    assert epsilon_fraction(0.1) == Fraction(1, 10)
    assert epsilon_fraction("0.25") == Fraction(1, 4)
    with pytest.raises(ValueError):
        epsilon_fraction(0)
