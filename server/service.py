"""The gRPC pump: authentication, limits, status codes, health, TLS and shutdown.

Protocol logic lives in ``psi.protocol.server``; this module only moves messages between
the stream and a ``ServerSession`` and maps ``SessionError`` to gRPC statuses.
"""

from __future__ import annotations

import ipaddress
import logging
import queue
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from psi.parallel import Executor, get_executor, start_workers
from psi.protocol import PROTOCOL_VERSION, ServerSession, SessionError
from psi.tls import check_certificates, check_key_pair
from psi_proto.v2 import matcher_pb2 as pb
from psi_proto.v2 import matcher_pb2_grpc as pb_grpc

from . import advertisers, budget, store
from .config import ServerConfig
from .grpc_options import check_listen, server_options
from .health import Availability
from .live import LiveSet

log = logging.getLogger(__name__)

__all__ = ["MatcherService", "ServerConfig", "is_loopback", "start_server", "wait_serving"]

SERVICE_NAME = "psi.v2.Matcher"
# Clients of earlier protocol versions call these; they are told which version to use.
RETIRED_SERVICES = ("psi.v1.Matcher",)
# Session errors name their gRPC status; every status a session can end with is here.
STATUS = {
    name: getattr(grpc.StatusCode, name)
    for name in (
        "INVALID_ARGUMENT", "OUT_OF_RANGE", "FAILED_PRECONDITION", "RESOURCE_EXHAUSTED",
        "UNAUTHENTICATED", "UNAVAILABLE", "CANCELLED", "INTERNAL",
    )
}


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _bearer(context: grpc.ServicerContext) -> str | None:
    for key, value in context.invocation_metadata():
        if key == "authorization" and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return None


class _Slots:
    """Concurrent session limits, overall and per advertiser."""

    def __init__(self, total: int, per_advertiser: int) -> None:
        self.total, self.per_advertiser = total, per_advertiser
        self._lock = threading.Lock()
        self._by_advertiser: Counter[int] = Counter()

    def acquire(self, advertiser_id: int) -> None:
        with self._lock:
            if sum(self._by_advertiser.values()) >= self.total:
                raise SessionError("RESOURCE_EXHAUSTED", "the server is at its session limit; retry later", "busy")
            if self._by_advertiser[advertiser_id] >= self.per_advertiser:
                raise SessionError(
                    "RESOURCE_EXHAUSTED",
                    f"at most {self.per_advertiser} concurrent sessions per advertiser",
                    "concurrency",
                )
            self._by_advertiser[advertiser_id] += 1

    def active(self) -> int:
        with self._lock:
            return sum(self._by_advertiser.values())

    def release(self, advertiser_id: int) -> None:
        with self._lock:
            self._by_advertiser[advertiser_id] -= 1
            if self._by_advertiser[advertiser_id] <= 0:
                del self._by_advertiser[advertiser_id]


class MatcherService(pb_grpc.MatcherServicer):
    def __init__(
        self, config: ServerConfig, live: LiveSet, executor: Executor, availability: Availability
    ) -> None:
        self.config = config
        self.live = live
        self.executor = executor
        self.availability = availability
        self.slots = _Slots(config.max_sessions, config.max_sessions_per_advertiser)

    def _authenticate(self, context: grpc.ServicerContext) -> advertisers.Advertiser:
        conn = store.connect(self.config.db)
        try:
            return advertisers.authenticate(conn, _bearer(context))
        except advertisers.AuthError as exc:
            raise SessionError("UNAUTHENTICATED", str(exc), "auth") from None
        finally:
            conn.close()

    @staticmethod
    def _abort(context: grpc.ServicerContext, err: SessionError) -> None:
        if err.reason:
            context.set_trailing_metadata((("psi-reason", err.reason),))
        context.abort(STATUS[err.status], err.message)

    def Match(self, request_iterator, context):
        """One session. Requests arrive as raw bytes (see ``_handlers``) and are parsed
        here, so that a message that does not decode ends the session with
        INVALID_ARGUMENT rather than gRPC's generic INTERNAL."""
        try:
            self.availability.admit()
            adv = self._authenticate(context)
            self.slots.acquire(adv.id)
        except SessionError as err:
            self._abort(context, err)
        timer = threading.Timer(self.config.session_timeout, context.cancel)
        timer.daemon = True
        ended = threading.Lock()

        def end() -> None:
            # Runs once, either when the handler finishes or when gRPC reports the call
            # over: a client that cancels while the table streams leaves this generator
            # suspended, and its finally block would then never run.
            if ended.acquire(blocking=False):
                timer.cancel()
                self.slots.release(adv.id)

        context.add_callback(end)
        timer.start()
        session = ServerSession(
            self.config.policy,
            self.live,
            budget.RegistryLedger(self.config.db, adv),
            self.executor,
        )
        requests = _decoded(request_iterator)
        try:
            first = next(requests, None)
            if first is None:
                session.end_of_stream()
            yield from session.receive(first)
            replies = _Reader(session, requests)
            for msg in session.table():
                if replies.failed.is_set() or not context.is_active():
                    break
                yield msg
            yield from replies
            log.info(
                "session %s advertiser=%s types=%s customers=%d released",
                session.session_id, adv.name, ",".join(session.id_types), session.n_groups,
            )
        except SessionError as err:
            session.fail()
            log.info("session for %s ended: %s %s%s", adv.name, err.status, err.message,
                     " (charged)" if session.charged else "")
            self._abort(context, err)
        except grpc.RpcError:
            session.fail()
            log.info("session for %s ended: the client went away%s", adv.name,
                     " (charged)" if session.charged else "")
        except Exception:
            session.fail()
            if context.is_active():
                refusal = self.availability.lost_cluster(session.charged)
                if refusal is not None:
                    log.info("session for %s ended: %s", adv.name, refusal.message)
                    self._abort(context, refusal)
                log.exception("session for %s failed", adv.name)
                charged = "the session was charged" if session.charged else "nothing was charged"
                context.abort(grpc.StatusCode.INTERNAL, f"internal error; {charged}")
        finally:
            end()

    def GetBudget(self, request, context):
        try:
            adv = self._authenticate(context)
        except SessionError as err:
            self._abort(context, err)
        conn = store.connect(self.config.db)
        try:
            st = budget.status(conn, adv)
        finally:
            conn.close()
        return pb.Budget(
            advertiser=adv.name,
            epsilon_budget=st.budget,
            epsilon_spent=st.spent,
            epsilon_remaining=st.remaining,
            period_days=st.period_days,
            epsilon_min=self.config.policy.epsilon_min,
            epsilon_max=self.config.policy.epsilon_max,
        )


class _Reader:
    """Feeds the client's half of the stream to the session in a thread of its own, while
    the table streams out; iterating it yields the session's replies (the result) once
    the table has gone, and raises the reader's error."""

    _END = object()

    def __init__(self, session: ServerSession, requests: Iterator[pb.ClientMessage]) -> None:
        self.session = session
        self.requests = requests
        self.failed = threading.Event()
        self._out: queue.Queue = queue.Queue()
        threading.Thread(target=self._run, daemon=True, name="session-reader").start()

    def _run(self) -> None:
        try:
            for msg in self.requests:
                for reply in self.session.receive(msg):
                    self._out.put(reply)
                if self.session.state == "DONE":
                    break
            else:
                self.session.end_of_stream()
        except BaseException as exc:  # handed to the handler's thread
            self.failed.set()
            self._out.put(exc)
        self._out.put(self._END)

    def __iter__(self) -> Iterator[pb.ServerMessage]:
        while (item := self._out.get()) is not self._END:
            if isinstance(item, BaseException):
                raise item
            yield item


def _decoded(raw_messages) -> Iterator[pb.ClientMessage]:
    for raw in raw_messages:
        msg = pb.ClientMessage()
        try:
            msg.ParseFromString(raw)
        except DecodeError:
            raise SessionError("INVALID_ARGUMENT", "a message is not a valid psi.v2.ClientMessage") from None
        yield msg


def _retired(request, context):
    context.abort(
        grpc.StatusCode.FAILED_PRECONDITION,
        f"this server speaks protocol version {PROTOCOL_VERSION} ({SERVICE_NAME}); "
        "upgrade psi-match to 0.2 or later",
    )


def _retired_stream(request_iterator, context):
    _retired(None, context)
    yield  # pragma: no cover - abort raises


def _handlers(service: MatcherService) -> list[grpc.GenericRpcHandler]:
    """The generated registration, except that Match takes its requests undecoded; and
    the services of earlier protocol versions, which refuse with the version to use."""
    current = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "Match": grpc.stream_stream_rpc_method_handler(
                service.Match,
                request_deserializer=bytes,
                response_serializer=pb.ServerMessage.SerializeToString,
            ),
            "GetBudget": grpc.unary_unary_rpc_method_handler(
                service.GetBudget,
                request_deserializer=pb.GetBudgetRequest.FromString,
                response_serializer=pb.Budget.SerializeToString,
            ),
        },
    )
    retired = [
        grpc.method_handlers_generic_handler(
            name,
            {
                "Match": grpc.stream_stream_rpc_method_handler(_retired_stream, request_deserializer=bytes),
                "GetBudget": grpc.unary_unary_rpc_method_handler(_retired, request_deserializer=bytes),
            },
        )
        for name in RETIRED_SERVICES
    ]
    return [current, *retired]


def _credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    if config.insecure:
        if not is_loopback(config.listen):
            raise ValueError("--insecure is only allowed on a loopback address (127.0.0.1, ::1)")
        return None
    if not (config.tls_cert and config.tls_key):
        raise ValueError("TLS needs --tls-cert and --tls-key (or --insecure on loopback)")
    key = Path(config.tls_key).read_bytes()
    cert = Path(config.tls_cert).read_bytes()
    check_key_pair(cert, key, f"--tls-cert {config.tls_cert}", f"--tls-key {config.tls_key}")
    ca = Path(config.client_ca).read_bytes() if config.client_ca else None
    if ca is not None:
        check_certificates(ca, f"--client-ca {config.client_ca}")
    return grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=ca is not None)


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    availability: Availability
    live: LiveSet
    service: MatcherService
    stop_event: threading.Event

    def stop(self, grace: float) -> None:
        self.availability.stopping()
        done = self.server.stop(grace)
        log.info("refusing new sessions; running ones have %.0fs to finish", grace)
        done.wait()
        self.stop_event.set()


def start_server(config: ServerConfig) -> RunningServer:
    """Listen at once (health says NOT_SERVING), build the live set, then serve."""
    creds = _credentials(config)
    live = LiveSet(config.db, config.identifiers_per_user)
    executor = config.executor if config.executor is not None else get_executor(config.workers)
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=2 * config.max_sessions + 8, thread_name_prefix="rpc"),
        options=server_options(),
        maximum_concurrent_rpcs=2 * config.max_sessions + 8,
    )
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    availability = Availability(health_servicer, (SERVICE_NAME,), executor)
    service = MatcherService(config, live, executor, availability)
    server.add_generic_rpc_handlers(_handlers(service))
    check_listen(config.listen)
    try:
        if creds is None:
            port = server.add_insecure_port(config.listen)
        else:
            port = server.add_secure_port(config.listen, creds)
    except RuntimeError:  # gRPC logged why; check_listen covers the common causes
        raise OSError(f"cannot listen on {config.listen}") from None
    server.start()
    start_workers(executor)  # while the live set is read
    live.build()
    availability.ready()
    return RunningServer(server, port, availability, live, service, threading.Event())


def wait_serving(
    address: str,
    timeout: float = 120.0,
    credentials: grpc.ChannelCredentials | None = None,
    alive=lambda: True,
) -> None:
    """Block until the server at ``address`` reports SERVING on the health service.

    ``alive`` lets a caller that started the server as a process give up as soon as the
    process exits. Raises ``TimeoutError`` or ``RuntimeError``.
    """
    deadline = time.monotonic() + timeout
    request = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
    with (grpc.secure_channel(address, credentials) if credentials else grpc.insecure_channel(address)) as chan:
        stub = health_pb2_grpc.HealthStub(chan)
        while time.monotonic() < deadline:
            if not alive():
                raise RuntimeError(f"the server at {address} exited while starting")
            try:
                if stub.Check(request, timeout=2).status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise TimeoutError(f"the server at {address} did not become ready within {timeout:.0f} s")


def serve_forever(config: ServerConfig) -> None:
    """Run until SIGTERM or SIGINT; then stop taking sessions and let running ones
    finish for up to ``grace`` seconds."""
    running = start_server(config)
    log.info("serving on %s (port %d)", config.listen, running.port)

    def _stop(signum, _frame):
        log.info("signal %d: shutting down, grace %.0fs", signum, config.grace)
        threading.Thread(target=running.stop, args=(config.grace,), daemon=True).start()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # Wake up now and then: the kernel may deliver the signal to one of gRPC's threads,
    # and Python runs handlers only in the main thread, which a wait without timeout
    # would keep blocked.
    while not running.stop_event.wait(0.2):
        pass
    running.server.wait_for_termination()
    log.info("stopped")
