"""Core of the consent-scoped PSI cardinality matcher.

Pure computation over numpy arrays: identifier encoding, RFC 9380 hash to curve,
batched X25519, exact counting, differentially private noise, and each party's protocol
as a state machine (``psi.protocol``). No files, no network, no database; the server and
client packages supply those.

The names below are loaded on first use: the operator's commands that only read and
write the registry start without numpy or the native core.
"""

from __future__ import annotations

from ._exports import lazy

# name -> the module of this package that defines it
_EXPORTS = {
    "HashToCurveError": "errors",
    "InvalidIdentifierError": "errors",
    "InvalidPointError": "errors",
    "ProtocolError": "errors",
    "PSIError": "errors",
    "PRODUCT_DST": "to_curve",
    "encode_to_curve": "to_curve",
    "expand_message_xmd": "to_curve",
    "hash_to_curve": "to_curve",
    "hash_to_curve_stream": "to_curve",
    "ID_TYPES": "identifiers",
    "encode_identifier": "identifiers",
    "encode_identifiers": "identifiers",
    "normalize_email": "identifiers",
    "normalize_phone": "identifiers",
    "count_intersection": "intersection",
    "truncate": "intersection",
    "Key": "keys",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy(__name__, _EXPORTS, globals())
