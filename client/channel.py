"""The gRPC channel ``psi-match`` talks to the server through, and its options.

Keepalive: a connection that stops forwarding without closing (the server's host died,
or a NAT or proxy on the way dropped the connection silently) would otherwise leave the
session waiting until ``--timeout``, an hour by default. The client pings the server
after ``KEEPALIVE_TIME_S`` without receiving anything and gives up when a ping is not
answered within ``KEEPALIVE_TIMEOUT_S``: the session then fails with ``UNAVAILABLE``
within a minute. The server accepts pings this often (``psi_server.grpc_options``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import grpc

from psi.tls import check_certificates, check_key_pair

if TYPE_CHECKING:
    from .session import ClientConfig

__all__ = [
    "KEEPALIVE_TIME_S",
    "KEEPALIVE_TIMEOUT_S",
    "MAX_RECEIVE_BYTES",
    "channel",
    "channel_options",
    "connection_failure",
]

MAX_RECEIVE_BYTES = 4 << 20
KEEPALIVE_TIME_S = 10
KEEPALIVE_TIMEOUT_S = 10


def channel_options() -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
        ("grpc.keepalive_time_ms", KEEPALIVE_TIME_S * 1000),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),
        # Any unanswered ping ends the connection after this long, not only keepalive's:
        # a flow-control (BDP) ping already in flight holds the keepalive ping back, and
        # it waits a minute by default. gRPC core's name for it, GRPC_ARG_PING_TIMEOUT_MS,
        # is not in its public header; tests/test_keepalive.py checks it still works.
        ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_S * 1000),
        # keep pinging in the quiet phases of a session (the client exponentiating or
        # sorting while the server waits); gRPC sends only two pings between data
        # frames by default
        ("grpc.http2.max_pings_without_data", 0),
    ]


def channel(config: ClientConfig) -> grpc.Channel:
    """A channel to ``config.server``. TLS files are read and checked first: ``OSError``
    when one cannot be read, ``psi.tls.TLSFileError`` when one is not what its option
    needs."""
    options = channel_options()
    if config.insecure:
        return grpc.insecure_channel(config.server, options=options)
    ca = cert = key = None
    if config.ca_cert:
        ca = Path(config.ca_cert).read_bytes()
        check_certificates(ca, f"--ca-cert {config.ca_cert}")
    if config.client_cert and config.client_key:
        cert = Path(config.client_cert).read_bytes()
        key = Path(config.client_key).read_bytes()
        check_key_pair(
            cert, key, f"--client-cert {config.client_cert}", f"--client-key {config.client_key}"
        )
    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    return grpc.secure_channel(config.server, creds, options=options)


def connection_failure(detail: str) -> tuple[str, str]:
    """``(kind, message)`` for an ``UNAVAILABLE`` status with gRPC's ``detail``: the
    connection failed, as opposed to the server refusing the session."""
    verify = re.search(r"CERTIFICATE_VERIFY_FAILED: ([^:)]+)", detail)
    if verify:
        return "tls", (
            f"the server's TLS certificate is not trusted ({verify.group(1).strip()}): "
            "--ca-cert must name the CA that signed it"
        )
    if "ping timeout" in detail or "keepalive watchdog timeout" in detail:
        return "server", (
            "the connection to the server went silent (a ping got no answer within "
            f"{KEEPALIVE_TIMEOUT_S} s)"
        )
    if "failed to connect" in detail and "Socket closed" in detail:
        # what a TLS server that does not trust the client's certificate looks like
        return "server", (
            "the server closed the connection while it was being set up; a server that "
            "requires client certificates does this to a client without one it trusts"
        )
    return "server", f"server unavailable at this address ({detail})"
