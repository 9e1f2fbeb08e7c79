"""What the server writes to its log at start: each unsafe setting once, and never
gRPC traces of request headers, which show bearer tokens, unless told explicitly."""

import os
import subprocess

import grpc
import pytest

from psi_proto.v2 import matcher_pb2 as pb
from psi_proto.v2 import matcher_pb2_grpc as pb_grpc
from psi_server.grpc_options import HEADER_TRACERS
from psi_server.synthetic import generate

from .support import SERVER, ServerProcess, make_registry

pytestmark = pytest.mark.slow

SYN = generate(300, seed=12)


@pytest.fixture
def registry(tmp_path):
    db, token_file = make_registry(tmp_path, SYN.rows)
    return tmp_path, db, token_file.read_text().strip()


def ask_budget(address: str, token: str) -> str:
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.MatcherStub(channel).GetBudget(
            pb.GetBudgetRequest(), metadata=(("authorization", f"Bearer {token}"),), timeout=30
        )
    return reply.advertiser


def test_unsafe_exact_counts_warned_once(registry):
    tmp, db, token = registry
    server = ServerProcess(db, tmp, "--unsafe-exact-counts")
    server.stop()
    assert server.logs().count("UNSAFE: --unsafe-exact-counts is on") == 1, server.logs()


@pytest.mark.parametrize("value", ["chttp2_hpack_parser", "all", "tcp,api", "http*", "-http,all"])
def test_header_tracing_refused(registry, value):
    _, db, _ = registry
    out = subprocess.run(
        SERVER + ["serve", "--db", db, "--listen", "127.0.0.1:0", "--insecure", "--workers", "1"],
        env={**os.environ, "GRPC_TRACE": value}, capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: GRPC_TRACE={value} turns on gRPC tracers"), lines
    assert "bearer tokens" in lines[0] and "--unsafe-allow-header-tracing" in lines[0]


def test_every_other_tracer_logs_no_token(registry, monkeypatch):
    # everything gRPC can trace, but the header tracers: the server starts, and no
    # trace line holds the token
    tmp, db, token = registry
    monkeypatch.setenv("GRPC_TRACE", ",".join(["all", *(f"-{name}" for name in HEADER_TRACERS)]))
    server = ServerProcess(db, tmp)
    try:
        assert ask_budget(server.address, token) == "acme"
    finally:
        server.stop()
    logs = server.logs()
    assert "gRPC Tracers: " in logs and logs.count("\n") > 500, logs  # tracing was on
    assert token not in logs and token.split(".")[-1] not in logs


def test_header_tracing_when_allowed(registry, monkeypatch):
    # what the refusal prevents: the token in clear in the server's log
    tmp, db, token = registry
    monkeypatch.setenv("GRPC_TRACE", "chttp2_hpack_parser")
    server = ServerProcess(db, tmp, "--unsafe-allow-header-tracing")
    try:
        assert ask_budget(server.address, token) == "acme"
    finally:
        server.stop()
    logs = server.logs()
    assert logs.count("UNSAFE: GRPC_TRACE logs request headers (chttp2_hpack_parser)") == 1, logs
    assert f"Bearer {token}" in logs
