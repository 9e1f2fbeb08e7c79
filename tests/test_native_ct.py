"""Constant time of the native core, checked with valgrind's memcheck (ctgrind style).

tests/ctgrind.c is built from the extension's own sources with the extension's compiler
flags, marks the scalar and the hashed identifiers undefined, and runs X25519 and both
hash-to-curve suites (each on the AVX2 and the portable path) under memcheck, which reports any branch or
memory index that depends on them. Its printed results are checked here against OpenSSL
and the Python path, and a deliberately leaky branch shows that the harness would notice.
"""

from __future__ import annotations

import runpy
import shlex
import shutil
import subprocess
import sysconfig
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from psi import backend, encode_to_curve, hash_to_curve

ROOT = Path(__file__).resolve().parent.parent
VALGRIND = shutil.which("valgrind")

pytestmark = pytest.mark.skipif(VALGRIND is None, reason="valgrind is not installed")


@pytest.fixture(scope="module")
def driver(tmp_path_factory) -> Path:
    build = runpy.run_path(str(ROOT / "setup.py"), run_name="build_settings")
    sources = [ROOT / "psi" / "csrc" / f"{name}.c" for name in build["SOURCES"] if name != "module"]
    exe = tmp_path_factory.mktemp("ctgrind") / "ctgrind"
    cc = shlex.split(sysconfig.get_config_var("CC") or "cc")
    cflags = shlex.split(sysconfig.get_config_var("CFLAGS") or "") + build["CFLAGS"]
    # the same flags as the extension, since the compiler decides where branches are
    subprocess.run(
        [*cc, *cflags, "-DPSI_CTGRIND", f"-I{ROOT / 'psi' / 'csrc'}",
         str(ROOT / "tests" / "ctgrind.c"), *map(str, sources), "-o", str(exe)],
        check=True,
    )
    return exe


def memcheck(exe: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [VALGRIND, "--tool=memcheck", "--error-exitcode=99", "--track-origins=yes",
         str(exe), *args],
        capture_output=True, text=True, timeout=300,
    )


def test_harness_reports_a_secret_dependent_branch(driver):
    run = memcheck(driver, "leak")
    assert run.returncode == 99
    assert "Conditional jump or move depends on uninitialised value" in run.stderr


def test_no_secret_dependent_branch_or_index(driver):
    run = memcheck(driver)
    assert run.returncode == 0, run.stderr[-4000:]
    assert "ERROR SUMMARY: 0 errors" in run.stderr
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines())

    msgs = [b"identity" + bytes([ord("0") + i]) for i in range(5)]
    dst = b"ctgrind-DST"
    hashed = hash_to_curve(msgs, dst, workers=1).tobytes()
    encoded = encode_to_curve(msgs, dst).tobytes().hex()
    for suffix in ("", "-portable"):
        assert lines[f"hash{suffix}"] == hashed.hex()
        assert lines[f"encode{suffix}"] == encoded

    scalar = bytes((7 * i + 1) % 256 for i in range(32))
    exchange = X25519PrivateKey.from_private_bytes(scalar).exchange
    expected = b"".join(
        exchange(X25519PublicKey.from_public_bytes(hashed[i : i + 32])) for i in range(0, 160, 32)
    ).hex()
    for label in ("checked", "portable", "secret-points"):
        assert lines[label] == expected, label
        assert lines[f"{label}-counts"] == "0 0 0"
    assert lines["low-order"] == expected + "00" * 32
    assert lines["low-order-counts"] == "0 0 1"
    if backend.describe()["cpu_avx2"]:
        assert lines["avx2"] == "1"  # the AVX2 ladder ran under memcheck too
