"""The two parties' steps of server-released PSI cardinality (DESIGN section 2).

Each step is a plain function over numpy arrays, so the gRPC service, the tests and the
benchmarks all run exactly the same code. Order of a session:

1. ``client.blind``: ``A = shuffle(E(a, H(x)))``
2. ``server.build_table`` (once per key epoch): ``T = shuffle(E(b, H(y)))``
3. ``client.double_blind_table``: ``sort(trunc16(E(a, t)) for t in T)``
4. ``server.blind_client_set`` and ``server.count``: ``|trunc16(E(b, A)) ∩ returned|``
"""

from . import client, server
from .common import PROTOCOL_VERSION, shuffled

__all__ = ["PROTOCOL_VERSION", "client", "server", "shuffled"]
