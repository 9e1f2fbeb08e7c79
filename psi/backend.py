"""Which implementation runs X25519, hash to curve and the on-curve check.

Three paths compute bit-identical results:

- ``avx2``: the C extension ``psi._native`` with four Montgomery ladders (or four hash
  to curve maps' exponentiations) per AVX2 instruction stream (CPUs with AVX2);
- ``portable``: the same extension in plain 64-bit C (any CPU);
- ``python``: OpenSSL's X25519 through ``cryptography``, and gmpy2.

``PSI_NATIVE`` chooses, read when the core is imported (pool workers inherit it):
``auto`` (the default) takes ``avx2`` where the CPU has it, else ``portable``, and
``python`` only when the extension was not built; ``avx2`` and ``portable`` insist on that
path and fail at import when it cannot run; ``off`` takes ``python``. ``use`` switches
the calling process for a while (tests and benchmarks compare paths with it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from types import ModuleType

__all__ = ["ENV", "MODES", "PATHS", "BackendError", "avx2", "describe", "native", "path", "use"]

ENV = "PSI_NATIVE"
MODES = ("auto", "avx2", "portable", "off")
PATHS = ("avx2", "portable", "python")

try:
    from . import _native as _extension
except ImportError:  # built without it (PSI_NATIVE=off at install) or not built at all
    _extension = None


class BackendError(RuntimeError):
    """The requested path cannot run here."""


def _resolve(mode: str) -> str:
    if mode not in MODES:
        raise BackendError(f"{ENV} must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == "off":
        return "python"
    if _extension is None:
        if mode == "auto":
            return "python"
        raise BackendError(
            f"{ENV}={mode} but the extension psi._native is not built (reinstall the package "
            f"with a C compiler, or set {ENV}=off)"
        )
    has_avx2 = _extension.avx2_supported()
    if mode == "avx2" and not has_avx2:
        raise BackendError(f"{ENV}=avx2 but this CPU has no AVX2")
    return "avx2" if mode != "portable" and has_avx2 else "portable"


_path = _resolve(os.environ.get(ENV, "auto").strip().lower() or "auto")


def path() -> str:
    """The path this process runs: ``avx2``, ``portable`` or ``python``."""
    return _path


def native() -> ModuleType | None:
    """The extension module when a native path is selected, else None."""
    return None if _path == "python" else _extension


def avx2() -> bool:
    """Whether the native calls should take the AVX2 path."""
    return _path == "avx2"


def describe() -> dict[str, object]:
    """What a benchmark records: the path, and what the machine could have run."""
    return {
        "path": _path,
        "extension": _extension is not None,
        "cpu_avx2": bool(_extension is not None and _extension.avx2_supported()),
        "env": os.environ.get(ENV, "auto"),
    }


@contextmanager
def use(mode: str) -> Iterator[str]:
    """Run this process's calls on ``mode`` (a ``PSI_NATIVE`` value) inside the block.

    Pool workers keep the path they started with; compare paths with ``workers=1``.
    """
    global _path
    before, _path = _path, _resolve(mode)
    try:
        yield _path
    finally:
        _path = before
