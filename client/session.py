"""The advertiser's side of a match session over gRPC.

The table download and its exponentiation overlap: each chunk of ``T`` goes to the pool
as soon as it arrives, while earlier chunks are still being computed and ``A`` is still
being uploaded.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import grpc
import numpy as np

from psi import InvalidPointError, Key, ProtocolError, hash_to_curve_stream
from psi.intersection import is_strictly_sorted, sort_rows
from psi.parallel import Executor
from psi.protocol import PROTOCOL_VERSION, client as steps, shuffled
from psi_proto.v1 import matcher_pb2 as pb
from psi_proto.v1 import matcher_pb2_grpc as pb_grpc

from .channel import channel, connection_failure

__all__ = ["ClientConfig", "MatchFailed", "MatchResult", "Steps", "channel", "get_budget", "match"]

HASH_BATCH = 4096


class Steps(Protocol):
    """Where progress goes: one call to ``start`` per step, then ``advance``."""

    def start(self, step: str, total: int) -> None: ...
    def advance(self, step: str, amount: int) -> None: ...


class _Silent:
    def start(self, step: str, total: int) -> None:
        pass

    def advance(self, step: str, amount: int) -> None:
        pass


class MatchFailed(Exception):
    """The match could not complete. ``kind`` selects the exit code."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


@dataclass
class ClientConfig:
    server: str
    token: str
    insecure: bool = False
    ca_cert: str | None = None
    client_cert: str | None = None
    client_key: str | None = None
    workers: int | None = None
    executor: Executor | None = None
    min_table_size: int = 1000
    timeout: float = 3600.0


@dataclass
class MatchResult:
    noisy_count: int | None
    suppressed: bool
    threshold: int
    epsilon_spent: float
    budget_remaining: float
    noise: bool
    session_id: str
    epoch_id: str
    table_size: int
    sensitivity: int


def _metadata(config: ClientConfig) -> tuple:
    return (("authorization", f"Bearer {config.token}"),)


_KIND = {
    grpc.StatusCode.UNAUTHENTICATED: "auth",
    grpc.StatusCode.PERMISSION_DENIED: "auth",
    grpc.StatusCode.UNAVAILABLE: "server",
    grpc.StatusCode.DEADLINE_EXCEEDED: "server",
}


def _failed(exc: grpc.RpcError) -> MatchFailed:
    code = exc.code()
    reason = dict(exc.trailing_metadata() or ()).get("psi-reason", "")
    detail = exc.details() or code.name
    if reason == "budget":
        return MatchFailed("budget", detail)
    if reason in ("busy", "concurrency"):
        return MatchFailed("busy", detail)
    if reason in ("list_too_small", "list_too_large"):
        return MatchFailed("input", detail)
    if reason == "epsilon":
        return MatchFailed("epsilon", detail)
    if code == grpc.StatusCode.UNAVAILABLE and not reason:
        kind, message = connection_failure(detail)
        return MatchFailed(kind, f"{code.name}: {message}")
    return MatchFailed(_KIND.get(code, "server"), f"{code.name}: {detail}")


def get_budget(config: ClientConfig, chan: grpc.Channel) -> pb.Budget:
    try:
        return pb_grpc.MatcherStub(chan).GetBudget(
            pb.GetBudgetRequest(), metadata=_metadata(config), timeout=60, wait_for_ready=False
        )
    except grpc.RpcError as exc:
        raise _failed(exc) from None


def hash_and_blind(
    key: Key, encoded: list[bytes], config: ClientConfig, progress: Steps
) -> np.ndarray:
    """``A``: inputs shuffled first (so results can stream in order), hashed, blinded."""
    order = shuffled(np.arange(len(encoded)))
    items = [encoded[i] for i in order]
    progress.start("hashing", len(items))
    batches = (items[i : i + HASH_BATCH] for i in range(0, len(items), HASH_BATCH))
    hashed = []
    for part in hash_to_curve_stream(batches, workers=config.workers, executor=config.executor):
        hashed.append(part)
        progress.advance("hashing", len(part))
    progress.start("blinding", len(items))
    blinded = []
    for part in key.apply_chunks(hashed, config.workers, executor=config.executor, check=False):
        blinded.append(part)
        progress.advance("blinding", len(part))
    return np.concatenate(blinded) if blinded else np.empty((0, 32), np.uint8)


def match(
    config: ClientConfig,
    id_type: str,
    encoded: list[bytes],
    epsilon: float,
    progress: Steps = _Silent(),
    chan: grpc.Channel | None = None,
) -> MatchResult:
    """Run one session for distinct encoded identifiers; raises ``MatchFailed``."""
    own_channel = chan is None
    chan = chan or channel(config)
    try:
        return _match(config, id_type, encoded, epsilon, progress, chan)
    finally:
        if own_channel:
            chan.close()


def _match(config, id_type, encoded, epsilon, progress, chan) -> MatchResult:
    key = Key.generate()
    blinded = hash_and_blind(key, encoded, config, progress)
    accepted_q: queue.Queue = queue.Queue()
    returned_q: queue.Queue = queue.Queue()
    abandon = threading.Event()

    def stream(rows: np.ndarray, step: int, name: str, wrap) -> Iterator[pb.ClientMessage]:
        progress.start(name, len(rows))
        step = max(1, step)
        for i in range(0, len(rows), step):
            if abandon.is_set():
                return
            part = rows[i : i + step]
            yield wrap(part.tobytes())
            progress.advance(name, len(part))

    def requests() -> Iterator[pb.ClientMessage]:
        yield pb.ClientMessage(open=pb.Open(
            protocol_version=PROTOCOL_VERSION, id_type=id_type, n_items=len(blinded), epsilon=epsilon
        ))
        accepted = accepted_q.get()
        if accepted is None:
            return
        yield from stream(blinded, accepted.max_points_per_message, "uploading",
                          lambda data: pb.ClientMessage(blinded=pb.Points(points=data)))
        returned = returned_q.get()
        if returned is None:
            return
        yield from stream(returned, accepted.max_digests_per_message, "returning",
                          lambda data: pb.ClientMessage(returned=pb.Digests(digests=data)))

    stub = pb_grpc.MatcherStub(chan)
    call = stub.Match(requests(), metadata=_metadata(config), timeout=config.timeout)
    try:
        first = next(call)
        if first.WhichOneof("round") != "accepted":
            raise MatchFailed("server", "protocol error: the server did not accept the session")
        accepted = first.accepted
        m = accepted.table_size
        steps.check_table_size(m, config.min_table_size)
        accepted_q.put(accepted)

        def table() -> Iterator[np.ndarray]:
            received = 0
            while received < m:
                msg = next(call, None)
                if msg is None or msg.WhichOneof("round") != "table":
                    raise ProtocolError(f"the table ended after {received} of {m} points")
                data = msg.table.points
                if not data or len(data) % 32:
                    raise ProtocolError("the server sent a malformed table chunk")
                chunk = np.frombuffer(data, np.uint8).reshape(-1, 32)
                received += len(chunk)
                if received > m:
                    raise ProtocolError(f"the server sent more than the {m} table points it announced")
                progress.advance("downloading", len(chunk))
                yield chunk

        progress.start("downloading", m)
        progress.start("exponentiating", m)
        parts = []
        for part in steps.double_blind_table_chunks(key, table(), config.workers, config.executor):
            parts.append(part)
            progress.advance("exponentiating", len(part))
        progress.start("sorting", 1)
        returned = sort_rows(np.concatenate(parts)) if parts else np.empty((0, 16), np.uint8)
        del parts
        if not is_strictly_sorted(returned):
            raise ProtocolError("the server's table contains duplicate points")
        progress.advance("sorting", 1)
        returned_q.put(returned)
        final = next(call, None)
        if final is None or final.WhichOneof("round") != "result":
            raise MatchFailed("server", "protocol error: the session ended without a result")
        r = final.result
        return MatchResult(
            noisy_count=None if r.suppressed else int(r.noisy_count),
            suppressed=r.suppressed,
            threshold=int(r.threshold),
            epsilon_spent=r.epsilon_spent,
            budget_remaining=r.budget_remaining,
            noise=r.noise,
            session_id=accepted.session_id,
            epoch_id=accepted.epoch_id,
            table_size=m,
            sensitivity=accepted.sensitivity,
        )
    except grpc.RpcError as exc:
        raise _failed(exc) from None
    except (ProtocolError, InvalidPointError) as exc:
        call.cancel()
        raise MatchFailed("server", f"refused the server's data: {exc}") from None
    finally:
        abandon.set()
        accepted_q.put(None)
        returned_q.put(None)
