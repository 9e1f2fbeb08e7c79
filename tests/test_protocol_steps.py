"""Both parties' steps run in one process, without a network."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from psi import Key, ProtocolError, encode_identifier, hash_to_curve
from psi.protocol import client, server


def hashed_emails(ids):
    return hash_to_curve([encode_identifier("email", f"user{i}@example.com") for i in ids])


def run(client_ids, server_ids, chunk=500):
    a, b = Key.generate(), Key.generate()
    table = server.build_table(b, hashed_emails(server_ids))
    sent = client.blind(a, hashed_emails(client_ids))
    chunks = (table[i : i + chunk] for i in range(0, len(table), chunk))
    returned = client.double_blind_table(a, chunks)
    return server.count(server.blind_client_set(b, sent), returned, len(table))


def test_known_overlap():
    rng = np.random.default_rng(7)
    universe = rng.permutation(20_000)
    client_ids = universe[:3_000]
    server_ids = np.concatenate([universe[1_000:3_000], universe[5_000:9_000]])
    assert run(client_ids, server_ids) == 2_000


@given(st.sets(st.integers(0, 200), max_size=25), st.sets(st.integers(0, 200), min_size=1, max_size=25))
def test_count_equals_set_intersection(xs, ys):
    assert run(sorted(xs), sorted(ys), chunk=7) == len(xs & ys)


def test_returned_set_must_be_exact():
    a, b = Key.generate(), Key.generate()
    table = server.build_table(b, hashed_emails(range(50)))
    blinded = server.blind_client_set(b, client.blind(a, hashed_emails(range(10))))
    returned = client.double_blind_table(a, [table])
    with pytest.raises(ProtocolError, match="49 entries, the table has 50"):
        server.count(blinded, returned[:-1], len(table))
    dup = returned.copy()
    dup[1] = dup[0]
    with pytest.raises(ProtocolError, match="strictly sorted"):
        server.count(blinded, dup, len(table))
    with pytest.raises(ProtocolError, match="strictly sorted"):
        server.count(blinded, returned[::-1].copy(), len(table))
    assert server.count(blinded, returned, len(table)) == 10


def test_client_refuses_small_or_repeated_table():
    with pytest.raises(ProtocolError, match="below the client's floor"):
        client.check_table_size(5, 100)
    a, b = Key.generate(), Key.generate()
    table = server.build_table(b, hashed_emails(range(5)))
    with pytest.raises(ProtocolError, match="duplicate"):
        client.double_blind_table(a, [np.vstack([table, table[:1]])])


def test_outputs_are_shuffled_not_input_order():
    key = Key.generate()
    h = hashed_emails(range(200))
    straight = key.apply(h, workers=1)
    assert not np.array_equal(server.build_table(key, h), straight)
    assert sorted(map(bytes, server.build_table(key, h))) == sorted(map(bytes, straight))


def test_counter_streams_and_counts_client_items_once():
    a, b = Key.generate(), Key.generate()
    table = server.build_table(b, hashed_emails(range(300)))
    sent = client.blind(a, hashed_emails(range(250, 400)))
    blinded = server.blind_client_set(b, np.vstack([sent, sent[:20]]))  # 20 repeats
    returned = client.double_blind_table(a, [table])
    counter = server.ReturnedSetCounter(blinded, len(table))
    assert counter.distinct_client_items == 150
    for i in range(0, len(returned), 7):
        counter.add(returned[i : i + 7])
    assert counter.finish() == 50
    restart = server.ReturnedSetCounter(blinded, len(table))
    restart.add(returned[10:20])
    with pytest.raises(ProtocolError, match="strictly sorted"):
        restart.add(returned[5:9])  # goes backwards across a chunk boundary
