"""Both parties' state machines driven in one process, messages passed by hand: counts
against an independent computation, every rule each party enforces, and what is
charged when."""

from __future__ import annotations

import random
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from psi import Key, ProtocolError, encode_identifier, hash_to_curve
from psi.intersection import sort_rows
from psi.noise import Release, SessionNoise, padding_offset
from psi.parallel import InlineExecutor
from psi.protocol import (
    MAX_GROUP_SIZE,
    ArrayTable,
    ClientSession,
    Policy,
    ServerSession,
    SessionError,
    inprocess,
)
from psi_proto.v2 import matcher_pb2 as pb

from .support import MemoryLedger

INLINE = InlineExecutor()
EXACT = Policy(noise=False, min_list_size=1)


def enc(kind: str, i: int) -> bytes:
    value = f"user{i}@example.com" if kind == "email" else f"+1202555{i:04d}"
    return encode_identifier(kind, value)


def table(**types: list[int]) -> ArrayTable:
    return ArrayTable({kind: hash_to_curve([enc(kind, i) for i in ids], workers=1) for kind, ids in types.items()})


def customers(rows: list[list[tuple[str, int]]]) -> tuple[list[bytes], np.ndarray, int]:
    """Items and groups of customers given as lists of (type, id): one group per row."""
    items = [enc(kind, i) for row in rows for kind, i in row]
    groups = np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    return items, groups, len(rows)


def session(rows, types=("email",), policy=EXACT, server_table=None, ledger=None, **client_kw):
    items, groups, n = customers(rows)
    client = ClientSession(items, groups, n, types, 0.5, INLINE, min_table_size=1, **client_kw)
    server = ServerSession(policy, server_table, ledger or MemoryLedger(), INLINE)
    return client, server


def expected_customers(rows, held: dict[str, set[int]]) -> int:
    return sum(any(i in held.get(kind, ()) for kind, i in row) for row in rows)


def test_customer_level_count_over_two_types():
    emails, phones = set(range(0, 60)), set(range(40, 90))
    rows = [[("email", i), ("phone", i)] for i in range(0, 100, 2)]  # both identifiers
    rows += [[("email", i)] for i in range(1, 100, 4)]  # email only
    rows += [[("phone", i)] for i in range(3, 100, 4)]  # phone only
    client, server = session(rows, ("email", "phone"), server_table=table(email=sorted(emails), phone=sorted(phones)))
    out = inprocess.run(client, server)
    expected = expected_customers(rows, {"email": emails, "phone": phones})
    # customers matched by both identifiers count once
    assert out.noisy_count == expected
    assert expected < sum(i in emails for i in range(0, 100, 2)) + sum(i in phones for i in range(0, 100, 2)) + 25
    assert out.sensitivity == 2 and server.sensitivity == 2


@given(
    st.lists(st.lists(st.integers(0, 60), min_size=1, max_size=4, unique=True), min_size=1, max_size=30),
    st.sets(st.integers(0, 60), min_size=1, max_size=40),
)
def test_count_equals_an_independent_computation(groups_of_ids, held):
    seen, rows = set(), []
    for ids in groups_of_ids:  # every item in exactly one group
        row = [("email", i) for i in ids if i not in seen]
        seen.update(i for _, i in row)
        if row:
            rows.append(row)
    client, server = session(rows, server_table=table(email=sorted(held)))
    assert inprocess.run(client, server).noisy_count == expected_customers(rows, {"email": held})


def test_only_the_requested_types_are_in_the_table():
    tab = table(email=list(range(30)), phone=list(range(20)))
    client, server = session([[("email", i)] for i in range(10)], server_table=tab)
    out = inprocess.run(client, server)
    assert out.noisy_count == 10 and out.table_size == 30


def test_noise_is_drawn_at_open_and_added_to_the_count():
    tab = table(email=list(range(200)))
    rows = [[("email", i)] for i in range(150)]
    policy = Policy(min_list_size=1, threshold=0, noise_floor_seconds=0)
    client, server = session(rows, policy=policy, server_table=tab)
    server._rng = random.Random(4)
    out = inprocess.run(client, server)
    drawn = SessionNoise.draw(Fraction(1, 2), 1, random.Random(4))
    assert out.noisy_count == 150 + drawn.count
    assert out.table_size == 200 + drawn.padding
    assert drawn.padding >= padding_offset(1, Fraction(1, 20)) - 200  # far from clipped


def test_two_tables_share_no_entry_and_hide_the_input_order():
    tab = table(email=list(range(300)))
    seen = []
    for _ in range(2):
        client, server = session([[("email", 0)]], policy=Policy(min_list_size=1, noise_floor_seconds=0), server_table=tab)
        server.receive(client.open())
        data = b"".join(m.table.points for m in server.table())
        seen.append({data[i : i + 32] for i in range(0, len(data), 32)})
    first, second = seen
    assert len(first) > 300 and len(second) > 300  # dummies included
    assert not first & second


def test_table_order_is_not_the_source_order():
    points = hash_to_curve([enc("email", i) for i in range(400)], workers=1)
    key = Key.generate()
    client, server = session([[("email", 0)]], server_table=ArrayTable({"email": points}))
    server._new_key = lambda: key
    server.receive(client.open())
    sent = np.frombuffer(b"".join(m.table.points for m in server.table()), np.uint8).reshape(-1, 32)
    in_source_order = key.apply(np.unique(points, axis=0), workers=1)
    assert sorted(map(bytes, sent)) == sorted(map(bytes, in_source_order))
    assert not np.array_equal(sent, in_source_order)


# -- what is charged, and when ---------------------------------------------------------


def test_charged_and_recorded_at_open_before_any_table_data():
    ledger = MemoryLedger()
    client, server = session([[("email", i)] for i in range(5)], server_table=table(email=range(20)), ledger=ledger)
    [accepted] = server.receive(client.open())
    assert accepted.WhichOneof("round") == "accepted"
    assert [r.session_id for r in ledger.opened] == [server.session_id] and not ledger.released
    record = ledger.opened[0]
    assert (record.n_groups, record.n_items, record.table_size) == (5, 5, 20)
    next(server.table())  # a session that fails from here on stays charged
    with pytest.raises(SessionError):
        server.receive(pb.ClientMessage(returned=pb.Digests(digests=bytes(16))))
    assert len(ledger.opened) == 1 and not ledger.released


def test_refused_open_charges_nothing():
    ledger = MemoryLedger(budget_micro=100_000)  # 0.1
    client, server = session([[("email", i)] for i in range(5)], server_table=table(email=range(20)), ledger=ledger)
    with pytest.raises(SessionError) as info:
        server.receive(client.open())  # asks 0.5
    assert info.value.reason == "budget" and not ledger.opened


def test_release_is_recorded_before_it_is_sent():
    ledger = MemoryLedger()
    client, server = session([[("email", i)] for i in range(5)], server_table=table(email=range(20)), ledger=ledger)
    out = inprocess.run(client, server)
    assert ledger.released == [(server.session_id, Release(out.noisy_count, False, 0))]


# -- the server's rules ------------------------------------------------------------------


def opened(policy=EXACT, n=4, tab=None):
    rows = [[("email", i)] for i in range(n)]
    client, server = session(rows, policy=policy, server_table=tab or table(email=range(10)))
    server.receive(client.open())
    return client, server


def items_msg(points: np.ndarray, sizes: list[int]) -> pb.ClientMessage:
    return pb.ClientMessage(items=pb.Items(points=points.tobytes(), group_sizes=sizes))


def blinded(n: int, start: int = 0) -> np.ndarray:
    return Key.generate().apply(hash_to_curve([enc("email", i) for i in range(start, start + n)], workers=1), workers=1)


def open_msg(**fields) -> pb.ClientMessage:
    values = dict(protocol_version=2, id_types=["email"], n_groups=150, n_items=150, epsilon=0.1)
    values.update(fields)
    return pb.ClientMessage(open=pb.Open(**values))


@pytest.mark.parametrize(
    "fields, status, text",
    [
        ({"protocol_version": 1}, "FAILED_PRECONDITION", "speaks version 2"),
        ({"id_types": ["fax"]}, "INVALID_ARGUMENT", "id_types"),
        ({"id_types": ["email", "email"]}, "INVALID_ARGUMENT", "distinct"),
        ({"id_types": []}, "INVALID_ARGUMENT", "id_types"),
        ({"epsilon": 5.0}, "OUT_OF_RANGE", "bounds"),
        ({"epsilon": float("nan")}, "OUT_OF_RANGE", "bounds"),
        ({"n_groups": 10, "n_items": 10}, "FAILED_PRECONDITION", "at least 100 customers"),
        ({"n_items": 20_000_000}, "OUT_OF_RANGE", "at most"),
        ({"n_groups": 150, "n_items": 149}, "INVALID_ARGUMENT", "groups"),
        ({"n_groups": 150, "n_items": 150 * MAX_GROUP_SIZE + 1}, "INVALID_ARGUMENT", "groups"),
    ],
)
def test_open_rules(fields, status, text):
    ledger = MemoryLedger()
    server = ServerSession(Policy(), table(email=range(10)), ledger, INLINE)
    with pytest.raises(SessionError) as info:
        server.receive(open_msg(**fields))
    assert info.value.status == status and text in info.value.message
    assert not ledger.opened and server.state == "FAILED"


@pytest.mark.parametrize(
    "make, text",
    [
        (lambda p: items_msg(p[:4], [2, 0, 2]), "1 to 1024"),
        (lambda p: items_msg(p[:4], [3, 2]), "add up to 5"),
        (lambda p: pb.ClientMessage(items=pb.Items(points=p[:4].tobytes()[:-1], group_sizes=[4])), "multiple of 32"),
        (lambda p: items_msg(np.vstack([p, p[:1]]), [1] * 5), "more items"),
        (lambda p: items_msg(np.vstack([p[:3], p[:1]]), [1] * 4), "items repeat"),
        (lambda p: pb.ClientMessage(returned=pb.Digests(digests=bytes(16))), "expected items"),
    ],
)
def test_items_rules(make, text):
    _, server = opened()
    with pytest.raises(SessionError, match=text):
        server.receive(make(blinded(4)))
    assert server.state == "FAILED"


def test_invalid_points_are_refused_by_count_not_echoed():
    _, server = opened()
    twist = (2).to_bytes(32, "little")  # u = 2 lies on the twist
    low_order = bytes(32)
    points = np.frombuffer(twist + low_order + bytes([0xff] * 32) + twist, np.uint8).reshape(-1, 32)
    with pytest.raises(SessionError) as info:
        server.receive(items_msg(points, [1, 1, 1, 1]))
    assert info.value.status == "INVALID_ARGUMENT" and "rejected points" in info.value.message
    assert twist.hex() not in info.value.message


def test_digest_rules():
    def ready():
        client, server = opened()
        messages = list(client.receive(pb.ServerMessage(accepted=pb.Accepted(
            table_size=server.table_size, max_points_per_message=2048, max_digests_per_message=64))))
        for m in messages:
            server.receive(m)
        return server

    rows = sort_rows(np.random.default_rng(1).integers(0, 256, (10, 16), dtype=np.uint8))
    for bad, text in [
        (rows[::-1], "strictly sorted"),
        (np.vstack([rows[:1], rows[:9]]), "strictly sorted"),
        (np.vstack([rows, rows[-1:] + 1]), "larger than the table"),
    ]:
        server = ready()
        list(server.table())
        with pytest.raises(SessionError, match=text):
            server.receive(pb.ClientMessage(returned=pb.Digests(digests=np.ascontiguousarray(bad).tobytes())))
    server = ready()
    list(server.table())
    server.receive(pb.ClientMessage(returned=pb.Digests(digests=rows[5:].tobytes())))
    with pytest.raises(SessionError, match="strictly sorted"):  # backwards across messages
        server.receive(pb.ClientMessage(returned=pb.Digests(digests=rows[:5].tobytes())))
    server = ready()
    list(server.table())
    server.receive(pb.ClientMessage(returned=pb.Digests(digests=rows[:5].tobytes())))
    with pytest.raises(SessionError, match="stream ended while waiting for returned digests"):
        server.end_of_stream()


# -- the client's rules ------------------------------------------------------------------


def accepted_client(table_size=50, **kw):
    client = ClientSession([enc("email", i) for i in range(3)], np.arange(3), 3, ["email"], 0.1, INLINE, **kw)
    client.open()
    list(client.receive(pb.ServerMessage(accepted=pb.Accepted(
        table_size=table_size, max_points_per_message=2048, max_digests_per_message=64))))
    return client


def test_client_refuses_a_small_table_and_knows_it_was_charged():
    client = ClientSession([enc("email", 0)], np.zeros(1), 1, ["email"], 0.1, INLINE, min_table_size=100)
    client.open()
    with pytest.raises(ProtocolError, match="below the client's floor of 100"):
        client.receive(pb.ServerMessage(accepted=pb.Accepted(table_size=99, max_points_per_message=2048,
                                                             max_digests_per_message=64)))
    assert client.charged


@pytest.mark.parametrize(
    "chunks, text",
    [
        (lambda t: [np.vstack([t, t[:1]])], "more than the 6"),
        (lambda t: [np.vstack([t[:5], t[:1]])], "duplicate"),
        (lambda t: [t[:2].tobytes()[:-1]], "malformed"),
        (lambda t: [np.vstack([t[:5], np.frombuffer((2).to_bytes(32, "little"), np.uint8)[None]])], "twist"),
    ],
)
def test_client_checks_the_table(chunks, text):
    client = accepted_client(table_size=6, min_table_size=1)
    points = Key.generate().apply(hash_to_curve([enc("email", i) for i in range(6)], workers=1), workers=1)
    with pytest.raises(ProtocolError if text != "twist" else Exception, match=text):
        for chunk in chunks(points):
            data = chunk if isinstance(chunk, bytes) else chunk.tobytes()
            list(client.receive(pb.ServerMessage(table=pb.Points(points=data))))


def test_client_messages_keep_groups_whole_and_in_random_order():
    rows = [[("email", 3 * g + j) for j in range(g % 3 + 1)] for g in range(200)]
    items, groups, n = customers(rows)
    client = ClientSession(items, groups, n, ["email"], 0.1, INLINE, min_table_size=1)
    client.open()
    messages = list(client.receive(pb.ServerMessage(accepted=pb.Accepted(
        table_size=5, max_points_per_message=MAX_GROUP_SIZE, max_digests_per_message=64))))
    sizes = [s for m in messages for s in m.items.group_sizes]
    assert sorted(sizes) == sorted(len(r) for r in rows)
    assert all(sum(m.items.group_sizes) * 32 == len(m.items.points) for m in messages)
    assert sizes != [len(r) for r in rows]  # not the input order


def test_client_refuses_oversized_customers():
    with pytest.raises(ValueError, match="above 1024"):
        ClientSession([enc("email", i) for i in range(MAX_GROUP_SIZE + 1)], np.zeros(MAX_GROUP_SIZE + 1),
                      1, ["email"], 0.1, INLINE)


class CountingExecutor(InlineExecutor):
    """Runs tasks inline, as two workers would be given them, and counts submissions."""

    workers = 2

    def __init__(self) -> None:
        self.submitted = 0

    def submit(self, fn, *args):
        self.submitted += 1
        return super().submit(fn, *args)


def test_the_table_flows_before_it_is_fully_blinded():
    executor = CountingExecutor()
    policy = Policy(noise=False, min_list_size=1, max_points_per_message=2048)
    server = ServerSession(policy, table(email=range(20_000)), MemoryLedger(), executor)
    client = ClientSession([enc("email", 0)], np.zeros(1), 1, ["email"], 0.1, INLINE, min_table_size=1)
    server.receive(client.open())
    before = executor.submitted
    chunks = server.table()
    next(chunks)
    # the first chunk leaves with a few chunks in flight, not the whole table computed
    assert executor.submitted - before <= 2 * executor.workers < 20_000 / 2048
    assert 1 + sum(1 for _ in chunks) == -(-20_000 // 2048)
