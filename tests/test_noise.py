"""The discrete Laplace sampler against its exact probability mass function."""

import math
import random
from collections import Counter
from fractions import Fraction

import pytest

from psi.noise import (
    PADDING_DELTA,
    Release,
    SessionNoise,
    count_epsilon,
    discrete_laplace,
    epsilon_fraction,
    padding_offset,
)


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
    low = Release.of(3, 96, 100)
    assert low.suppressed and low.noisy_count is None and low.threshold == 100
    assert Release.of(3, 97, 100) == Release(100, False, 100)
    assert Release.of(10_000, -7, 100) == Release(9_993, False, 100)


def padding_pmf(offset: int, sensitivity: int, epsilon: float, span: int) -> dict[int, float]:
    """Exact distribution of ``max(0, offset + X)``, X discrete Laplace at scale
    sensitivity / epsilon, over ``0..offset + span``."""
    q = math.exp(-epsilon / sensitivity)
    mass = {v: (1 - q) / (1 + q) * q ** abs(v - offset) for v in range(1, offset + span)}
    mass[0] = q ** offset / (1 + q)  # P[X <= -offset]
    return mass


@pytest.mark.parametrize("sensitivity, epsilon", [(1, Fraction(1, 100)), (2, Fraction(1, 20)), (4, Fraction(1, 10))])
def test_table_size_is_epsilon_delta_private(sensitivity, epsilon):
    """The released size m + padding for two tables that differ by ``sensitivity`` entries:
    outside a set of mass at most delta, the probabilities differ by at most e^epsilon."""
    offset = padding_offset(sensitivity, epsilon)
    span = int(60 * sensitivity / epsilon)
    small, large = padding_pmf(offset, sensitivity, float(epsilon), span), {}
    for v, p in padding_pmf(offset, sensitivity, float(epsilon), span).items():
        large[v + sensitivity] = p  # the same padding on a table with sensitivity more entries
    factor = math.exp(float(epsilon))
    outputs = set(small) | set(large)
    excess_one = sum(max(0.0, small.get(o, 0.0) - factor * large.get(o, 0.0)) for o in outputs)
    excess_other = sum(max(0.0, large.get(o, 0.0) - factor * small.get(o, 0.0)) for o in outputs)
    assert excess_one <= PADDING_DELTA and excess_other <= PADDING_DELTA
    assert PADDING_DELTA < 1e-9


def test_session_noise_scales_and_padding():
    rng = random.Random(8)
    epsilon, sensitivity = Fraction(1, 4), 2
    draws = [SessionNoise.draw(epsilon, sensitivity, rng) for _ in range(2000)]
    offset = padding_offset(sensitivity, epsilon / 10)
    paddings = [d.padding for d in draws]
    assert min(paddings) >= 0 and abs(sum(paddings) / len(paddings) - offset) < 5
    # mean absolute value of discrete Laplace with ratio q is 2q / (1 - q^2)
    q = math.exp(-float(count_epsilon(epsilon)) / sensitivity)
    mean_abs = sum(abs(d.count) for d in draws) / len(draws)
    assert abs(mean_abs - 2 * q / (1 - q * q)) < 0.5
    assert count_epsilon(epsilon) == Fraction(9, 40)


def test_drawing_takes_the_floor_whatever_the_values():
    start = __import__("time").monotonic()
    SessionNoise.draw(Fraction(1, 10), 1, random.Random(1), floor_seconds=0.05)
    assert __import__("time").monotonic() - start >= 0.05


def test_epsilon_is_exact_rational():
    assert epsilon_fraction(0.1) == Fraction(1, 10)
    assert epsilon_fraction("0.25") == Fraction(1, 4)
    with pytest.raises(ValueError):
        epsilon_fraction(0)
