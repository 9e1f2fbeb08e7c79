"""The server's gRPC transport: its options, in one place, whether it can listen, and
whether gRPC's tracing would log request headers.

Keepalive: a client that vanishes without closing its connection (its host died, or a
NAT or proxy on the way stopped forwarding) would otherwise hold its session slot until
``--session-timeout``, an hour by default. The server pings every connection that has
been quiet for ``KEEPALIVE_TIME_S`` and drops it when a ping is not answered within
``KEEPALIVE_TIMEOUT_S``, which ends its session and frees the slot within a minute.
It also accepts the keepalive pings of ``psi-match`` (one every 10 s at most), which
gRPC's defaults would punish as abuse when no data flows for a while.
"""

from __future__ import annotations

import fnmatch
import socket

__all__ = [
    "KEEPALIVE_TIME_S",
    "KEEPALIVE_TIMEOUT_S",
    "MAX_RECEIVE_BYTES",
    "check_listen",
    "header_tracers",
    "server_options",
]

MAX_RECEIVE_BYTES = 1 << 20  # a chunk of points or digests is at most 512 KiB
KEEPALIVE_TIME_S = 10
KEEPALIVE_TIMEOUT_S = 10
# Pings from a client closer together than this, while the server sends no data, are
# strikes (two are tolerated): below the client's 10 s, so its pings never count.
MIN_CLIENT_PING_INTERVAL_S = 5


def server_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.max_send_message_length", 4 * MAX_RECEIVE_BYTES),
        ("grpc.so_reuseport", 0),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_S * 1000),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),
        # Any unanswered ping ends the connection after this long, not only keepalive's:
        # a flow-control (BDP) ping already in flight holds the keepalive ping back, and
        # it waits a minute by default. gRPC core's name for it, GRPC_ARG_PING_TIMEOUT_MS,
        # is not in its public header; tests/test_keepalive.py checks it still works.
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),
        # keep pinging while a session waits for a client that sends nothing back (by
        # default only two pings go out between data frames the server sends)
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_recv_ping_interval_without_data_ms", MIN_CLIENT_PING_INTERVAL_S * 1000),
    ]


def check_listen(listen: str) -> None:
    """Raise ``OSError`` saying why the server could not listen on ``listen``
    (``HOST:PORT``), before gRPC tries: gRPC itself logs the reason in a line of its own
    and raises a ``RuntimeError`` that does not say it.

    Like gRPC, it succeeds when at least one of the host's addresses can be bound, and
    reuses addresses, so that connections of an earlier server still closing do not
    count as in use.
    """
    host, sep, port = listen.rpartition(":")
    host = host.strip("[]")
    if not sep or not port.isdigit():
        raise OSError(f"cannot listen on {listen}: expected HOST:PORT")
    try:
        addresses = socket.getaddrinfo(
            host or None, int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as exc:
        raise OSError(f"cannot listen on {listen}: {exc.strerror.lower()}") from None
    reason = "no address"
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
                return
            except OSError as exc:
                reason = exc.strerror.lower() if exc.strerror else str(exc)
    raise OSError(f"cannot listen on {listen}: {reason}")


# gRPC tracers that print request headers, ``authorization: Bearer <token>`` included:
# found by running a server and a client under each tracer that grpcio 1.85 lists
# (GRPC_TRACE=list_tracers); ``http`` printed them in earlier versions.
HEADER_TRACERS = ("api", "chttp2_hpack_parser", "http")


def header_tracers(grpc_trace: str) -> list[str]:
    """The tracers of ``HEADER_TRACERS`` that a ``GRPC_TRACE`` value turns on.

    gRPC reads the value as a comma-separated list applied in order: ``all``, names and
    glob patterns turn tracers on, the same prefixed with ``-`` turn them off.
    """
    enabled = []
    for tracer in HEADER_TRACERS:
        on = False
        for entry in grpc_trace.split(","):
            entry = entry.strip().lower()
            off = entry.startswith("-")
            pattern = entry[1:] if off else entry
            if pattern == "all" or fnmatch.fnmatchcase(tracer, pattern):
                on = not off
        if on:
            enabled.append(tracer)
    return enabled
