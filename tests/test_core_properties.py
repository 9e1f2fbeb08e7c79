"""Properties of the core: commutativity, worker-count independence, exact counting."""

import pickle
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from psi import InvalidPointError, Key, count_intersection, hash_to_curve
from psi.intersection import is_strictly_sorted, sort_rows
from psi.parallel import InlineExecutor, ProcessExecutor, task_bounds

keys = st.binary(min_size=32, max_size=32).map(Key.from_bytes)
messages = st.lists(st.binary(max_size=40), min_size=1, max_size=8)


@given(keys, keys, messages)
def test_exponentiation_commutes_on_hashed_points(a, b, msgs):
    h = hash_to_curve(msgs)
    ab = a.apply(b.apply(h, workers=1), workers=1)
    ba = b.apply(a.apply(h, workers=1), workers=1)
    assert np.array_equal(ab, ba)


def test_hashed_points_are_on_curve_and_distinct():
    h = hash_to_curve([i.to_bytes(4, "little") for i in range(300)], workers=1)
    Key.generate().apply(h, workers=1)  # check=True: canonical and on the curve
    assert len({r.tobytes() for r in h}) == 300


def test_parallel_results_bit_identical_to_single_process(monkeypatch):
    chunk = 512  # several tasks per worker without hashing tens of thousands of messages
    monkeypatch.setattr("psi.keys.CHUNK", chunk)
    monkeypatch.setattr("psi.to_curve.CHUNK", chunk)
    key = Key.generate()
    msgs = [i.to_bytes(4, "little") for i in range(3 * chunk + 17)]
    h = hash_to_curve(msgs)
    single_hash = hash_to_curve(msgs, workers=1)
    assert np.array_equal(h, single_hash)
    pool = ProcessExecutor(2)
    try:
        assert np.array_equal(key.apply(h, executor=pool), key.apply(h, workers=1))
    finally:
        pool.shutdown()
    assert np.array_equal(key.apply(h, workers=2), key.apply(h, executor=InlineExecutor()))


@given(st.integers(0, 10**6), st.integers(1, 64), st.integers(1, 20_000))
def test_task_bounds_cover_the_items_and_shrink_to_the_end(items, workers, limit):
    """Tasks follow each other over every item; none takes more than ``limit``, nor more
    than its share (a ``2 * workers``-th) of what is left once that is above a 32nd of
    ``limit``, so the last tasks a worker can be left alone with are short."""
    bounds = task_bounds(items, workers, limit)
    starts = [start for start, _ in bounds]
    assert starts == ([0] + [stop for _, stop in bounds[:-1]] if bounds else [])
    assert (bounds[-1][1] if bounds else 0) == items
    sizes = [stop - start for start, stop in bounds]
    assert all(0 < size <= limit for size in sizes)
    assert sizes == sorted(sizes, reverse=True)
    least = max(1, limit // 32)
    for start, stop in bounds:
        assert stop - start <= max(least, -(-(items - start) // (2 * workers)))
    assert len(bounds) <= items // least + 1


def test_started_pool_has_every_worker_before_any_task():
    """``start`` brings every worker up in the background (a pool otherwise starts them
    one per task that finds none idle)."""
    pool = ProcessExecutor(2)
    try:
        pool.start()
        deadline = time.monotonic() + 60
        while len(pool._pool._processes) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(pool._pool._processes) == 2
        assert pool.submit(sum, (1, 2)).result() == 3
    finally:
        pool.shutdown()


def test_bad_points_counted_not_echoed():
    key = Key.generate()
    good = hash_to_curve([b"a", b"b", b"c"], workers=1)
    twist = np.frombuffer(bytes.fromhex("0200000000000000000000000000000000000000000000000000000000000000"), np.uint8)
    bad = np.vstack([good, twist, twist])
    with pytest.raises(InvalidPointError) as info:
        key.apply(bad, workers=1)
    assert info.value.off_curve == 2 and "02000000" not in str(info.value)
    low = np.zeros((1, 32), np.uint8)  # u = 0, the point of order 2
    with pytest.raises(InvalidPointError) as info:
        key.apply(np.vstack([good, low]), workers=1)
    assert info.value.low_order == 1
    high_bit = good.copy()
    high_bit[0, 31] |= 0x80
    with pytest.raises(InvalidPointError) as info:
        key.apply(high_bit, workers=2)
    assert info.value.malformed == 1
    with pytest.raises(ValueError, match="multiple of 32"):
        key.apply(b"\x01" * 33)


def test_keys_stay_in_memory():
    key = Key.generate()
    assert "secret" in repr(key)
    with pytest.raises(TypeError):
        pickle.dumps(key)
    with pytest.raises(TypeError):
        Key(b"\x00" * 32)
    with pytest.raises(ValueError):
        Key.from_bytes(b"short")


rows16 = st.lists(st.binary(min_size=16, max_size=16), max_size=60)
small_alphabet = st.lists(
    st.sampled_from([bytes([i]) * 8 + bytes([j]) * 8 for i in range(3) for j in range(3)]), max_size=30
)


def arr(rows, width=16):
    return np.frombuffer(b"".join(rows), dtype=np.uint8).reshape(-1, width)


@given(st.one_of(rows16, small_alphabet), st.one_of(rows16, small_alphabet))
def test_count_intersection_matches_python_sets(a, b):
    assert count_intersection(arr(a), arr(b)) == len(set(a) & set(b))


@given(st.lists(st.binary(min_size=32, max_size=32), max_size=20), st.lists(st.binary(min_size=32, max_size=32), max_size=20))
def test_count_intersection_on_full_points(a, b):
    shared = a[: len(a) // 2]
    assert count_intersection(arr(a, 32), arr(b + shared, 32)) == len(set(a) & set(b + shared))


def test_count_intersection_width_mismatch():
    with pytest.raises(ValueError, match="widths differ"):
        count_intersection(np.zeros((1, 16), np.uint8), np.zeros((1, 32), np.uint8))


@given(st.one_of(rows16, small_alphabet))
def test_sort_rows_is_byte_order(rows):
    out = sort_rows(arr(rows))
    assert [r.tobytes() for r in out] == sorted(rows)
    assert is_strictly_sorted(out) == (len(set(rows)) == len(rows))
