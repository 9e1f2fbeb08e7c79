"""Build of the C core, ``psi._native`` (sources in ``psi/csrc/``); the rest of the
package is configured in pyproject.toml.

The extension is built with the system C compiler (gcc or clang) for any x86-64 or
64-bit ARM CPU: the AVX2 functions carry a target attribute and run only where the CPU
reports AVX2, so the build never needs ``-march``. A failed build fails the install,
because the Python fallback is more than twice as slow and nothing would say so; set
``PSI_NATIVE=off`` to install without the extension on purpose.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

SOURCES = ["module", "x25519", "x25519_avx2", "hash_to_curve", "sha512", "sha512_avx2"]
HEADERS = ["native.h", "fe51.h", "ct.h", "sha512_rounds.h"]
CFLAGS = ["-std=gnu11", "-O3", "-fvisibility=hidden", "-Wall", "-Wextra"]

native = Extension(
    "psi._native",
    sources=[f"psi/csrc/{name}.c" for name in SOURCES],
    depends=[f"psi/csrc/{name}" for name in HEADERS],
    extra_compile_args=CFLAGS,
)



class BuildNative(build_ext):
    """Says what to do when the compiler is missing or fails, under the compiler's own
    message."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:
            raise SystemExit(
                f"building the native core {ext.name} failed: {exc}\n"
                "Install a C compiler (gcc or clang) and retry, or set PSI_NATIVE=off to "
                "install without it (X25519 and hashing then run 2-3x slower)."
            ) from exc


# tests/test_native_ct.py reads SOURCES and CFLAGS from here to build its driver alike
if __name__ == "__main__":
    setup(
        ext_modules=[] if os.environ.get("PSI_NATIVE") == "off" else [native],
        cmdclass={"build_ext": BuildNative},
    )
