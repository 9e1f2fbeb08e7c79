"""Secret exponents and batched X25519.

``E(k, u) = X25519(k, u)``. Clamping makes every scalar a multiple of the cofactor, so
exponentiations commute: ``E(a, E(b, u)) == E(b, E(a, u))``. A key lives only in memory:
it cannot be pickled or printed, and it reaches pool workers only as an argument of the
task that uses it.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable, Iterator

import numpy as np
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from . import backend
from .errors import InvalidPointError
from .parallel import Executor, InlineExecutor, Pipeline, get_executor, imap, task_bounds
from .points import as_points, canonical_mask, off_curve_count

__all__ = ["CHUNK", "Key"]

# Points per task at most: about 0.3 s of native X25519. The pool costs the caller 1 to
# 1.5 ms of CPU per task, taken from the workers' cores: at 2,048 points a task that was
# 2 to 3% of two workers' time.
CHUNK = 16384
# Up to this many points (30 ms of X25519) a call is one task; more are split over the
# workers (``task_bounds``).
ONE_TASK = 2048


def _apply_chunk(scalar: bytes, points: np.ndarray, check: bool):
    """One task: returns ``(result, malformed, off_curve, low_order)``.

    With ``check``, nothing is exponentiated unless the whole chunk is canonical and on
    the curve, so a hostile chunk costs a Legendre symbol per point, not an X25519.
    """
    lib = backend.native()
    if lib is not None:
        # one call for the chunk, checks included, without the GIL
        out = np.empty(points.shape, dtype=np.uint8)
        malformed, off_curve, low_order = lib.x25519(scalar, points, out, check, backend.avx2())
        if malformed or off_curve or low_order:
            return None, malformed, off_curve, low_order
        return out, 0, 0, 0
    return _apply_chunk_python(scalar, points, check)


def _apply_chunk_python(scalar: bytes, points: np.ndarray, check: bool):
    if check:
        malformed = int(len(points) - np.count_nonzero(canonical_mask(points)))
        if malformed:
            return None, malformed, 0, 0
        off_curve = off_curve_count(points)
        if off_curve:
            return None, 0, off_curve, 0
    exchange = X25519PrivateKey.from_private_bytes(scalar).exchange
    load = X25519PublicKey.from_public_bytes
    raw = points.tobytes()
    out = bytearray(len(raw))
    low_order = 0
    for i in range(0, len(raw), 32):
        try:
            out[i : i + 32] = exchange(load(raw[i : i + 32]))
        except ValueError:  # all-zero shared secret: a low-order input (RFC 7748 6.1)
            low_order += 1
    if low_order:
        return None, 0, 0, low_order
    return np.frombuffer(out, dtype=np.uint8).reshape(-1, 32), 0, 0, 0


class Key:
    """A clamped X25519 scalar used as a commutative blinding exponent."""

    __slots__ = ("_scalar",)

    def __init__(self, scalar: bytes, _token: object = None) -> None:
        if _token is not _FACTORY:
            raise TypeError("use Key.generate() or Key.from_bytes()")
        self._scalar = scalar

    @classmethod
    def generate(cls) -> Key:
        """A fresh key from the operating system's random source."""
        return cls(secrets.token_bytes(32), _FACTORY)

    @classmethod
    def from_bytes(cls, scalar: bytes) -> Key:
        """A key from 32 given bytes.

        Reusing one key across sessions lets the other party link identical items between
        those sessions; prefer ``generate()`` unless that trade is intended.
        """
        if not isinstance(scalar, (bytes, bytearray)) or len(scalar) != 32:
            raise ValueError("a key is exactly 32 bytes")
        return cls(bytes(scalar), _FACTORY)

    def __repr__(self) -> str:
        return "Key(<secret>)"

    def __reduce__(self):
        raise TypeError("keys stay in memory: they cannot be pickled or persisted")

    def _tasks(self, chunks: Iterable[np.ndarray], check: bool):
        for chunk in chunks:
            yield (self._scalar, chunk, check)

    def apply_chunks(
        self,
        chunks: Iterable,
        workers: int | None = None,
        *,
        executor: Executor | None = None,
        check: bool = True,
    ) -> Iterator[np.ndarray]:
        """Exponentiate a stream of chunks, yielding results in order as they finish.

        Chunks are consumed lazily, so a caller can feed chunks as they arrive from the
        network. Raises ``InvalidPointError`` for the first chunk with a bad point.
        """
        pool = executor if executor is not None else get_executor(workers)
        arrays = (as_points(c) for c in chunks)
        for out, malformed, off_curve, low_order in imap(
            pool, _apply_chunk, self._tasks(arrays, check)
        ):
            if out is None:
                raise InvalidPointError(malformed, off_curve, low_order)
            yield out

    def pipeline(self, executor: Executor | None = None, *, check: bool = True) -> KeyPipeline:
        """Exponentiation of chunks pushed one at a time, for a caller that receives them
        from the network: see ``KeyPipeline``."""
        pool = executor if executor is not None else get_executor()
        return KeyPipeline(Pipeline(pool, _apply_chunk, self._scalar), check)

    def apply(
        self,
        points,
        workers: int | None = None,
        *,
        executor: Executor | None = None,
        check: bool = True,
    ) -> np.ndarray:
        """``E(k, u)`` for every row of an ``(N, 32)`` uint8 array, across all workers.

        ``check=False`` skips the canonical and on-curve checks; use it only for points
        this process produced itself (hash to curve output). All-zero results are always
        rejected. The result is identical whatever the number of workers.
        """
        arr = as_points(points)
        pool = executor if executor is not None else get_executor(workers)
        if isinstance(pool, InlineExecutor) or len(arr) <= ONE_TASK:
            bounds = [(0, len(arr))] if len(arr) else []
        else:
            bounds = task_bounds(len(arr), pool.workers, CHUNK)
        chunks = (arr[start:stop] for start, stop in bounds)
        parts = list(self.apply_chunks(chunks, executor=pool, check=check))
        if not parts:
            return np.empty((0, 32), dtype=np.uint8)
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


class KeyPipeline:
    """``push(points)`` submits a chunk and returns the exponentiated chunks that are
    ready, in order; ``finish()`` returns the rest. Raises ``InvalidPointError`` for the
    first chunk with a bad point."""

    def __init__(self, pipeline: Pipeline, check: bool) -> None:
        self._pipeline = pipeline
        self._check = check

    @staticmethod
    def _unpack(results) -> list[np.ndarray]:
        out = []
        for arr, malformed, off_curve, low_order in results:
            if arr is None:
                raise InvalidPointError(malformed, off_curve, low_order)
            out.append(arr)
        return out

    def push(self, points) -> list[np.ndarray]:
        try:
            return self._unpack(self._pipeline.push(as_points(points), self._check))
        except BaseException:
            self._pipeline.cancel()
            raise

    def finish(self) -> list[np.ndarray]:
        try:
            return self._unpack(self._pipeline.finish())
        except BaseException:
            self._pipeline.cancel()
            raise

    def cancel(self) -> None:
        self._pipeline.cancel()


_FACTORY = object()
