"""The gRPC pump of the advertiser's side: moves messages between a ``ClientSession``
and the server, and maps gRPC statuses to outcomes (in one table).

Protocol logic lives in ``psi.protocol.client``. Table chunks go to the session as they
arrive, so their exponentiation overlaps the download, while the list is still being
uploaded from another thread.
"""

from __future__ import annotations

import queue
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import grpc
import numpy as np

from psi import InvalidPointError, ProtocolError
from psi.parallel import Executor, get_executor
from psi.protocol import ClientSession, Outcome, Progress
from psi_proto.v2 import matcher_pb2 as pb
from psi_proto.v2 import matcher_pb2_grpc as pb_grpc

from .channel import channel, connection_failure

__all__ = ["ClientConfig", "MatchFailed", "channel", "get_budget", "match", "run"]


class MatchFailed(Exception):
    """The match could not complete. ``kind`` selects the exit code; ``message`` says
    whether the session was charged."""

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


def _metadata(config: ClientConfig) -> tuple:
    return (("authorization", f"Bearer {config.token}"),)


# What a failed call means for the advertiser: the outcome kind (an exit code), by the
# server's stated reason first, else by status. A reason means the server refused
# deliberately; a status alone may be a lost connection.
_BY_REASON = {
    "auth": "auth",
    "budget": "budget",
    "busy": "busy",
    "concurrency": "busy",
    "list_too_small": "input",
    "list_too_large": "input",
    "epsilon": "epsilon",
}
_BY_STATUS = {
    grpc.StatusCode.UNAUTHENTICATED: "auth",
    grpc.StatusCode.PERMISSION_DENIED: "auth",
}
# Statuses a server sends only when it refuses before charging, or after charging with
# the session already accepted: never ambiguous about the charge.
_DELIBERATE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
}


def _charge_note(session: ClientSession | None, certain: bool) -> str:
    if session is not None and session.charged:
        return f"the session was charged (epsilon {session.accepted.epsilon:g}) though no count was released"
    if certain:
        return "nothing was charged"
    return "nothing was charged unless the server accepted the session just as the connection failed"


def _failed(exc: grpc.RpcError, session: ClientSession | None = None) -> MatchFailed:
    code = exc.code()
    reason = dict(exc.trailing_metadata() or ()).get("psi-reason", "")
    detail = exc.details() or code.name
    kind = _BY_REASON.get(reason) or _BY_STATUS.get(code, "server")
    certain = bool(reason) or code in _DELIBERATE
    if code == grpc.StatusCode.UNAVAILABLE and not reason:
        kind, detail = connection_failure(detail)
    prefix = "" if reason else f"{code.name}: "
    note = _charge_note(session, certain) if session is not None and "charged" not in detail else ""
    return MatchFailed(kind, f"{prefix}{detail}" + (f"; {note}" if note else ""))


def get_budget(config: ClientConfig, chan: grpc.Channel) -> pb.Budget:
    try:
        return pb_grpc.MatcherStub(chan).GetBudget(
            pb.GetBudgetRequest(), metadata=_metadata(config), timeout=60, wait_for_ready=False
        )
    except grpc.RpcError as exc:
        raise _failed(exc) from None


def match(
    config: ClientConfig,
    items: Sequence[bytes],
    groups: np.ndarray,
    n_groups: int,
    id_types: Sequence[str],
    epsilon: float,
    progress: Progress | None = None,
    chan: grpc.Channel | None = None,
) -> Outcome:
    """One session over distinct encoded identifiers grouped by customer; raises
    ``MatchFailed``."""
    executor = config.executor if config.executor is not None else get_executor(config.workers)
    session = ClientSession(
        items, groups, n_groups, id_types, epsilon, executor,
        min_table_size=config.min_table_size, progress=progress,
    )
    return run(config, session, chan)


def run(config: ClientConfig, session: ClientSession, chan: grpc.Channel | None = None) -> Outcome:
    """Pump one session's messages over gRPC until its outcome; raises ``MatchFailed``.

    ``session`` is a client party: ``open()``, ``receive(msg)``, ``state``, ``charged``,
    ``outcome``, ``fail()`` (``ClientSession``, or any party that speaks the protocol).
    """
    own_channel = chan is None
    chan = chan or channel(config)
    try:
        return _pump(config, session, chan)
    finally:
        session.fail()
        if own_channel:
            chan.close()


def _pump(config: ClientConfig, session: ClientSession, chan: grpc.Channel) -> Outcome:
    outbox: queue.Queue[Iterable[pb.ClientMessage] | None] = queue.Queue()

    def requests() -> Iterator[pb.ClientMessage]:
        while (batch := outbox.get()) is not None:
            yield from batch

    outbox.put([session.open()])
    call = pb_grpc.MatcherStub(chan).Match(requests(), metadata=_metadata(config), timeout=config.timeout)
    closed = False
    try:
        for msg in call:
            outbox.put(session.receive(msg))
            if session.state in ("AWAIT_RESULT", "DONE") and not closed:
                outbox.put(None)  # everything is queued: close our side after it
                closed = True
            if session.state == "DONE":
                break
        if session.outcome is None:
            raise MatchFailed(
                "server", f"the session ended without a result; {_charge_note(session, False)}"
            )
        return session.outcome
    except grpc.RpcError as exc:
        raise _failed(exc, session) from None
    except (ProtocolError, InvalidPointError) as exc:
        call.cancel()
        raise MatchFailed(
            "server", f"refused the server's data: {exc}; {_charge_note(session, True)}"
        ) from None
    finally:
        if not closed:
            outbox.put(None)
