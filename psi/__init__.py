"""Core of the consent-scoped PSI cardinality matcher.

Pure computation over numpy arrays: identifier encoding, RFC 9380 hash to curve,
batched X25519, exact counting, differentially private noise, and each party's protocol
as a state machine (``psi.protocol``). No files, no network, no database; the server and
client packages supply those.
"""

from .errors import (
    HashToCurveError,
    InvalidIdentifierError,
    InvalidPointError,
    ProtocolError,
    PSIError,
)
from .hash_to_curve import (
    PRODUCT_DST,
    encode_to_curve,
    expand_message_xmd,
    hash_to_curve,
    hash_to_curve_stream,
)
from .identifiers import (
    ID_TYPES,
    encode_identifier,
    encode_identifiers,
    normalize_email,
    normalize_phone,
)
from .intersection import count_intersection, truncate
from .keys import Key

__all__ = [
    "ID_TYPES",
    "PRODUCT_DST",
    "HashToCurveError",
    "InvalidIdentifierError",
    "InvalidPointError",
    "Key",
    "PSIError",
    "ProtocolError",
    "count_intersection",
    "encode_identifier",
    "encode_identifiers",
    "encode_to_curve",
    "expand_message_xmd",
    "hash_to_curve",
    "hash_to_curve_stream",
    "normalize_email",
    "normalize_phone",
    "truncate",
]
