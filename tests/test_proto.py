"""The committed gRPC code is exactly what the pinned generator makes of the schema."""

import shutil
from pathlib import Path

import grpc
import pytest
from google.protobuf import __version__ as protobuf_version

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto"
GENERATED = ["matcher_pb2.py", "matcher_pb2.pyi", "matcher_pb2_grpc.py"]


def test_generated_code_is_current(tmp_path):
    grpc_tools = pytest.importorskip("grpc_tools.protoc")
    shutil.copytree(PROTO, tmp_path / "proto", ignore=shutil.ignore_patterns(*GENERATED, "__pycache__"))
    src = tmp_path / "proto"
    rc = grpc_tools.main([
        "protoc", f"-I{src}", f"--python_out={src}", f"--pyi_out={src}", f"--grpc_python_out={src}",
        str(src / "psi_proto/v2/matcher.proto"),
    ])
    assert rc == 0
    for name in GENERATED:
        fresh = (src / "psi_proto/v2" / name).read_text()
        committed = (PROTO / "psi_proto/v2" / name).read_text()
        assert fresh == committed, f"{name} is stale: run 'make proto' and commit the result"


def test_generated_code_matches_installed_runtimes():
    from psi_proto.v2 import matcher_pb2, matcher_pb2_grpc  # both check versions on import

    source = (PROTO / "psi_proto/v2/matcher_pb2_grpc.py").read_text()
    generated_for = source.split("GRPC_GENERATED_VERSION = '")[1].split("'")[0]
    assert tuple(map(int, grpc.__version__.split(".")[:2])) >= tuple(map(int, generated_for.split(".")[:2]))
    gencode = (PROTO / "psi_proto/v2/matcher_pb2.py").read_text()
    major = gencode.split("_runtime_version.Domain.PUBLIC,\n")[1].split(",")[0].strip()
    assert protobuf_version.split(".")[0] == major
    assert matcher_pb2.DESCRIPTOR.package == "psi.v2"
    assert hasattr(matcher_pb2_grpc, "MatcherStub")
