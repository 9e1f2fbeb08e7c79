"""What the figures were measured on: machine, load, library versions, GMP build."""

from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

import gmpy2
from cryptography.hazmat.backends.openssl import backend

from psi.parallel import cpu_count

__all__ = ["describe", "gmp_library"]

ROOT = Path(__file__).resolve().parent.parent


def _proc_field(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            name, _, value = line.partition(":")
            if name.strip() == key:
                return value.strip()
    except OSError:
        pass
    return None


def _run(*cmd: str) -> str:
    try:
        return subprocess.run(
            cmd, capture_output=True, text=True, check=True, cwd=ROOT
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def gmp_library() -> str | None:
    """Path of the GMP library gmpy2 loaded, or None when it is linked into gmpy2 itself."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    for line in maps:
        path = line.split()[-1]
        if Path(path).name.startswith("libgmp"):
            return path
    return None


def _gmp() -> str:
    library = gmp_library()
    # wheels ship their own GMP inside the package (gmpy2.libs/ or the extension itself)
    system = library is not None and "site-packages" not in library
    where = f"system GMP: yes ({library})" if system else f"system GMP: no ({library or 'bundled'})"
    return f"{gmpy2.version()}, {gmpy2.mp_version()}, {where}"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def _commit() -> str:
    commit = _run("git", "rev-parse", "--short", "HEAD")
    if not commit:
        return "unknown"
    # others edit the tree while benchmarks run: say whether it matches the commit
    dirty = _run("git", "status", "--porcelain")
    return f"{commit} with uncommitted changes" if dirty else commit


def describe() -> dict[str, str]:
    memory = _proc_field("/proc/meminfo", "MemTotal")
    return {
        "CPU": _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "Cores": f"{cpu_count()} usable by this process, {os.cpu_count()} online",
        "Memory": f"{int(memory.split()[0]) / 2**20:.1f} GiB" if memory else "unknown",
        "OS": platform.platform(),
        "Commit": _commit(),
        "Python": platform.python_version(),
        "numpy": _version("numpy"),
        "cryptography": f"{_version('cryptography')} ({backend.openssl_version_text()})",
        "gmpy2": _gmp(),
        "openmined-psi": _version("openmined-psi"),
        "openssl CLI": _run("openssl", "version") or "not found",
        "matplotlib": _version("matplotlib"),
        "dask": _version("dask"),
    }
