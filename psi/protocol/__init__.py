"""Server-released PSI cardinality over single-use tables, one state machine per party.

Neither party does I/O here: each takes the other's messages and returns its own, with
the executor (and, on the server, the table source and the ledger) injected. A session:

1. client ``Open``; server checks it, draws a session key ``s`` and both noises, charges
   the budget and records the session, and replies ``Accepted``;
2. client ``A = E(a, H(x))`` for its items, grouped by customer, groups in random order;
3. server ``T' = E(s, H(y))`` for every matchable ``y`` of the requested types, plus
   dummies, in a random order, streamed as computed;
4. client ``sort(trunc16(E(a, t)))`` for every ``t`` in ``T'``;
5. server counts the groups with an item ``trunc16(E(s, A))`` in that set and releases
   ``count + noise`` (or "fewer than the threshold").
"""

from __future__ import annotations

from .._exports import lazy

# name -> the module of this package that defines it (loaded on first use, so that the
# operator's command line reads ``Policy`` without the protocol's computation)
_EXPORTS = {
    "MAX_GROUP_SIZE": "policy",
    "Policy": "policy",
    "PROTOCOL_VERSION": "common",
    "SessionError": "common",
    "ClientSession": "client",
    "Outcome": "client",
    "Progress": "client",
    "ArrayTable": "server",
    "Ledger": "server",
    "ServerSession": "server",
    "SessionRecord": "server",
    "TableSource": "server",
    "inprocess": "inprocess",
}

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy(__name__, _EXPORTS, globals())
