"""Typed errors of the core. Messages name the rule that failed, never the input itself."""

from __future__ import annotations


class PSIError(Exception):
    """Base class of every error raised by the core."""


class HashToCurveError(PSIError, ValueError):
    """Invalid arguments to the RFC 9380 functions."""


class InvalidIdentifierError(PSIError, ValueError):
    """An identifier failed normalization. ``rule`` names the check that failed."""

    def __init__(self, id_type: str, rule: str) -> None:
        super().__init__(f"invalid {id_type}: {rule}")
        self.id_type = id_type
        self.rule = rule

    def __reduce__(self):
        return (type(self), (self.id_type, self.rule))


class InvalidPointError(PSIError, ValueError):
    """Received points that must not be exponentiated.

    Counts are reported per reason; the points themselves are never echoed.
    """

    def __init__(self, malformed: int = 0, off_curve: int = 0, low_order: int = 0) -> None:
        parts = []
        if malformed:
            parts.append(f"{malformed} not canonical 32-byte u-coordinates")
        if off_curve:
            parts.append(f"{off_curve} not on Curve25519 (twist points)")
        if low_order:
            parts.append(f"{low_order} of low order (all-zero X25519 result)")
        super().__init__("rejected points: " + "; ".join(parts))
        self.malformed = malformed
        self.off_curve = off_curve
        self.low_order = low_order

    @property
    def count(self) -> int:
        return self.malformed + self.off_curve + self.low_order

    def __reduce__(self):
        return (type(self), (self.malformed, self.off_curve, self.low_order))


class ProtocolError(PSIError, ValueError):
    """A protocol message breaks the protocol's rules (order, sizes, encodings)."""


class SessionError(PSIError):
    """Ends a session. ``status`` names a gRPC status code (``INVALID_ARGUMENT``...);
    ``reason`` is a short word the other party maps to an outcome (``budget``, ``busy``,
    ``list_too_small``...). Messages name the rule that failed, never data."""

    def __init__(self, status: str, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.reason = reason
