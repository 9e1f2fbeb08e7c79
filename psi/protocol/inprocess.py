"""Both parties in one process, messages passed by hand: the protocol without a network,
for tests and benchmarks (the gRPC pumps move the same messages between processes)."""

from __future__ import annotations

from .client import ClientSession, Outcome
from .server import ServerSession

__all__ = ["run"]


def run(client: ClientSession, server: ServerSession) -> Outcome:
    """One whole session; raises what either party raises."""

    def to_server(messages) -> None:
        for msg in messages:
            for reply in server.receive(msg):
                to_client([reply])

    def to_client(messages) -> None:
        for msg in messages:
            to_server(client.receive(msg))

    to_server([client.open()])
    to_client(server.table())
    if client.outcome is None:
        server.end_of_stream()
    return client.outcome
