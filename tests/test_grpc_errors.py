"""Malformed and hostile sessions over real gRPC on loopback: each ends with the
documented status and the server keeps serving. A session refused before it is
accepted charges nothing; one that fails after it was accepted stays charged, and its
audit row says it released nothing."""

import time

import grpc
import numpy as np
import pytest

from psi import Key, encode_identifier, hash_to_curve
from psi.intersection import sort_rows, truncate
from psi.protocol import Policy
from psi_proto.v2 import matcher_pb2 as pb
from psi_proto.v2 import matcher_pb2_grpc as pb_grpc
from psi_server import store
from psi_server.service import ServerConfig, start_server
from psi_server.synthetic import generate

from .support import free_port, make_registry, rows_in

N = 120  # client list size, above the minimum of 100


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("grpc")
    db, token_file = make_registry(tmp, generate(400, seed=5).rows)
    port = free_port()
    config = ServerConfig(db=db, listen=f"127.0.0.1:{port}", insecure=True, workers=1,
                          policy=Policy(noise=False, max_points_per_message=1024, max_digests_per_message=64))
    running = start_server(config)
    chan = grpc.insecure_channel(f"127.0.0.1:{port}")
    yield db, token_file.read_text().strip(), pb_grpc.MatcherStub(chan), running
    chan.close()
    running.stop(1)


@pytest.fixture(autouse=True)
def idle(server):
    """Each test starts once the sessions of the previous one have ended: a cancelled
    call ends on the server a moment after the client has moved on."""
    running = server[3]
    deadline = time.monotonic() + 10
    while running.service.slots.active() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert running.service.slots.active() == 0


def unreleased(db) -> int:
    """Charged sessions that released nothing."""
    conn = store.connect(db)
    try:
        return conn.execute(
            "SELECT COUNT(*) FROM sessions WHERE session_id NOT IN (SELECT session_id FROM releases)"
        ).fetchone()[0]
    finally:
        conn.close()


def open_msg(n=N, id_types=("email",), epsilon=0.1, version=2, groups=None):
    return pb.ClientMessage(open=pb.Open(protocol_version=version, id_types=id_types, n_groups=groups or n,
                                         n_items=n, epsilon=epsilon))


def blinded_points(key, n=N):
    h = hash_to_curve([encode_identifier("email", f"customer{i}@example.com") for i in range(n)], workers=1)
    return key.apply(h, workers=1, check=False)


def points_msgs(points, step=64):
    """One customer per item."""
    return [pb.ClientMessage(items=pb.Items(points=points[i : i + step].tobytes(), group_sizes=[1] * len(points[i : i + step])))
            for i in range(0, len(points), step)]


def digest_msgs(rows, step=64):
    return [pb.ClientMessage(returned=pb.Digests(digests=rows[i : i + step].tobytes())) for i in range(0, len(rows), step)]


class Session:
    """A hand-driven session: send messages when told, read replies as they come."""

    def __init__(self, stub, token, metadata=None):
        self.outbox = __import__("queue").Queue()
        md = metadata if metadata is not None else (("authorization", f"Bearer {token}"),)
        self.call = stub.Match(iter(self.outbox.get, None), metadata=md, timeout=60)

    def send(self, *msgs):
        for m in msgs:
            self.outbox.put(m)

    def close(self):
        self.outbox.put(None)

    def replies(self):
        return list(self.call)


def honest_session(stub, token, key=None, tamper=None):
    """Runs the protocol; ``tamper(returned) -> returned`` may corrupt the returned set."""
    key = key or Key.generate()
    s = Session(stub, token)
    s.send(open_msg())
    accepted = next(s.call).accepted
    s.send(*points_msgs(blinded_points(key)))
    table = []
    while sum(len(t) for t in table) < accepted.table_size:
        table.append(np.frombuffer(next(s.call).table.points, np.uint8).reshape(-1, 32))
    returned = sort_rows(truncate(key.apply(np.vstack(table), workers=1)))
    if tamper:
        returned = tamper(returned)
    s.send(*digest_msgs(returned))
    s.close()
    return list(s.call)


def expect_status(call_or_fn, code, text):
    with pytest.raises(grpc.RpcError) as info:
        call_or_fn()
    assert info.value.code() == code, info.value.details()
    assert text in info.value.details()
    return info.value


def test_honest_session_works(server):
    db, token, stub, _ = server
    before, failed = rows_in(db, "budget_ledger"), unreleased(db)
    replies = honest_session(stub, token)
    assert replies[-1].result.noisy_count > 0
    assert rows_in(db, "budget_ledger") == before + 1 and unreleased(db) == failed


@pytest.mark.parametrize(
    "metadata,text",
    [((), "invalid or revoked token"), ((("authorization", "Bearer psi1.1.wrong"),), "invalid or revoked token"),
     ((("authorization", "Basic abc"),), "invalid or revoked token")],
)
def test_authentication(server, metadata, text):
    db, token, stub, _ = server
    before = rows_in(db, "budget_ledger")
    s = Session(stub, token, metadata=metadata)
    s.send(open_msg())
    s.close()
    expect_status(s.replies, grpc.StatusCode.UNAUTHENTICATED, text)
    expect_status(lambda: stub.GetBudget(pb.GetBudgetRequest(), metadata=metadata), grpc.StatusCode.UNAUTHENTICATED, text)
    assert rows_in(db, "budget_ledger") == before


@pytest.mark.parametrize(
    "msg,code,text",
    [
        (open_msg(id_types=["fax"]), grpc.StatusCode.INVALID_ARGUMENT, "id_types must be"),
        (open_msg(version=1), grpc.StatusCode.FAILED_PRECONDITION, "protocol version 1 is not supported"),
        (open_msg(epsilon=5), grpc.StatusCode.OUT_OF_RANGE, "outside the server's bounds"),
        (open_msg(n=3), grpc.StatusCode.FAILED_PRECONDITION, "at least 100 customers"),
        (open_msg(n=2**60), grpc.StatusCode.OUT_OF_RANGE, "at most 10000000 identifiers"),
        (open_msg(epsilon=float("nan")), grpc.StatusCode.OUT_OF_RANGE, "outside the server's bounds"),
        (pb.ClientMessage(items=pb.Items(points=b"x" * 32)), grpc.StatusCode.INVALID_ARGUMENT, "expected an Open"),
    ],
)
def test_bad_open(server, msg, code, text):
    db, token, stub, _ = server
    before = rows_in(db, "budget_ledger")
    s = Session(stub, token)
    s.send(msg)
    s.close()
    expect_status(s.replies, code, text)
    assert rows_in(db, "budget_ledger") == before


def _after_accept(server, msgs, code, text, opening=None):
    db, token, stub, _ = server
    before, failed = rows_in(db, "budget_ledger"), unreleased(db)
    s = Session(stub, token)
    s.send(opening or open_msg(), *msgs)
    s.close()
    expect_status(s.replies, code, text)
    assert rows_in(db, "budget_ledger") == before + 1 and unreleased(db) == failed + 1  # charged, nothing released
    assert honest_session(stub, token)[-1].result.noisy_count > 0  # still serving


def test_chunk_not_multiple_of_32(server):
    _after_accept(server, [pb.ClientMessage(items=pb.Items(points=b"\x01" * 33, group_sizes=[1]))],
                  grpc.StatusCode.INVALID_ARGUMENT, "33 bytes is not a multiple of 32")


def test_off_curve_points(server):
    pts = blinded_points(Key.generate())
    pts[5] = np.frombuffer(bytes.fromhex("02" + "00" * 31), np.uint8)  # u = 2 is on the twist
    _after_accept(server, points_msgs(pts), grpc.StatusCode.INVALID_ARGUMENT, "1 not on Curve25519")


def test_low_order_points(server):
    pts = blinded_points(Key.generate())
    pts[0] = 0  # u = 0
    pts[1] = np.frombuffer(bytes.fromhex("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"), np.uint8)
    _after_accept(server, points_msgs(pts), grpc.StatusCode.INVALID_ARGUMENT, "of low order")


def test_too_many_points_in_one_message(server):
    pts = blinded_points(Key.generate())
    big = [pb.ClientMessage(items=pb.Items(points=np.tile(pts, (9, 1))[:1025].tobytes(), group_sizes=[1] * 1025))]
    _after_accept(server, big, grpc.StatusCode.INVALID_ARGUMENT, "above the limit of 1024",
                  opening=open_msg(n=1025))


def test_message_over_the_size_limit(server):
    _after_accept(server, [pb.ClientMessage(items=pb.Items(points=b"\x00" * (2 << 20)))],
                  grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max")


def test_repeated_items_are_refused(server):
    pts = blinded_points(Key.generate(), 60)
    _after_accept(server, points_msgs(np.vstack([pts, pts])), grpc.StatusCode.INVALID_ARGUMENT, "items repeat")


@pytest.mark.parametrize(
    "tamper,text",
    [
        (lambda r: r[:-1], "stream ended while waiting for returned digests"),
        (lambda r: np.vstack([r[:1], r[:-1]]), "strictly sorted"),
        (lambda r: r[::-1].copy(), "strictly sorted"),
        (lambda r: np.vstack([r, r[:1]]), "larger than the table"),
    ],
    ids=["short", "duplicate", "reversed", "long"],
)
def test_bad_returned_set(server, tamper, text):
    db, token, stub, _ = server
    before, failed = rows_in(db, "budget_ledger"), unreleased(db)
    expect_status(lambda: honest_session(stub, token, tamper=tamper), grpc.StatusCode.INVALID_ARGUMENT, text)
    assert rows_in(db, "budget_ledger") == before + 1 and unreleased(db) == failed + 1


def test_client_disconnects_halfway(server):
    db, token, stub, running = server
    before = rows_in(db, "budget_ledger")
    s = Session(stub, token)
    s.send(open_msg(), *points_msgs(blinded_points(Key.generate())[:64]))
    next(s.call)  # accepted
    s.call.cancel()
    # The server notices, ends the session (charged: it was accepted), and keeps serving.
    assert honest_session(stub, token)[-1].result.noisy_count > 0
    assert rows_in(db, "budget_ledger") == before + 2


def test_stream_ends_early(server):
    _after_accept(server, points_msgs(blinded_points(Key.generate())[:64]),
                  grpc.StatusCode.INVALID_ARGUMENT, "stream ended while waiting for items")


def test_per_advertiser_concurrency_limit(server):
    db, token, stub, _ = server
    running = []
    for _ in range(2):  # one after the other, so which two are admitted is known
        s = Session(stub, token)
        s.send(open_msg())
        assert next(s.call).HasField("accepted")
        running.append(s)
    third = Session(stub, token)
    third.send(open_msg())
    third.close()
    err = expect_status(third.replies, grpc.StatusCode.RESOURCE_EXHAUSTED, "at most 2 concurrent")
    assert dict(err.trailing_metadata())["psi-reason"] == "concurrency"
    for s in running:
        s.call.cancel()


def test_undecodable_message(server):
    db, token, stub, _ = server
    chan = grpc.insecure_channel(f"127.0.0.1:{server[3].port}")
    match = chan.stream_stream("/psi.v2.Matcher/Match", request_serializer=lambda b: b,
                               response_deserializer=pb.ServerMessage.FromString)
    before = rows_in(db, "budget_ledger")
    call = match(iter([b"\x12\x05abc"]), metadata=(("authorization", f"Bearer {token}"),), timeout=30)
    expect_status(lambda: list(call), grpc.StatusCode.INVALID_ARGUMENT, "not a valid psi.v2.ClientMessage")
    chan.close()
    assert rows_in(db, "budget_ledger") == before


@pytest.mark.parametrize("method", ["Match", "GetBudget"])
def test_version_1_clients_are_told_which_version_to_use(server, method):
    db, token, stub, _ = server
    chan = grpc.insecure_channel(f"127.0.0.1:{server[3].port}")
    path = f"/psi.v1.Matcher/{method}"
    v1_open = bytes.fromhex("0a0b0801120565") + b"mail" + bytes.fromhex("1878")  # Open(version=1, "email", n=120)
    if method == "Match":
        call = chan.stream_stream(path, request_serializer=lambda b: b, response_deserializer=bytes)
        fn = lambda: list(call(iter([v1_open]), metadata=(("authorization", f"Bearer {token}"),), timeout=30))  # noqa: E731
    else:
        call = chan.unary_unary(path, request_serializer=lambda b: b, response_deserializer=bytes)
        fn = lambda: call(b"", metadata=(("authorization", f"Bearer {token}"),), timeout=30)  # noqa: E731
    before = rows_in(db, "budget_ledger")
    err = expect_status(fn, grpc.StatusCode.FAILED_PRECONDITION, "protocol version 2 (psi.v2.Matcher)")
    assert "upgrade psi-match" in err.details() and "\n" not in err.details()
    chan.close()
    assert rows_in(db, "budget_ledger") == before
