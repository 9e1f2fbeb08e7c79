"""The systems compared on identical inputs, and the registry the harness runs.

A system is a function ``run(inputs: Inputs) -> Outcome``: it computes the intersection
size of ``inputs.client`` and ``inputs.server`` from the raw identifiers, both parties
included, and reports its count, the bytes each party would send and the duration of
each of its steps. The harness calls it in a fresh process and measures wall time, CPU
time (the process and every child it has waited for) and peak memory around the call.
A system that starts processes must wait for them before returning, so that they count.

Registering another system is one decorated function::

    @register("consent-psi-grpc", warm_up=...)
    def consent_psi_grpc(inputs: Inputs) -> Outcome: ...

``warm_up``, if given, runs in the same process before the clock starts.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import private_set_intersection.python as openmined

from psi import Key, encode_identifiers, hash_to_curve
from psi.keys import CHUNK
from psi.protocol import client, server

from .endtoend import run_processes
from .inputs import ID_TYPE, Inputs
from .pool import warm_up as warm_up_pool

__all__ = ["BASELINE", "SYSTEMS", "Outcome", "Steps", "System", "register"]


@dataclass(frozen=True)
class Outcome:
    count: int
    bytes_client_to_server: int
    bytes_server_to_client: int
    steps: dict[str, float]  # seconds per step, in the order run
    process_peaks_kib: dict[str, int] = field(default_factory=dict)  # for multi-process systems


@dataclass(frozen=True)
class System:
    run: Callable[[Inputs], Outcome]
    warm_up: Callable[[], None] | None = None


SYSTEMS: dict[str, System] = {}
BASELINE = "openmined-psi"  # every other system is reported as a ratio to this one


def register(name: str, warm_up: Callable[[], None] | None = None):
    def add(run: Callable[[Inputs], Outcome]) -> Callable[[Inputs], Outcome]:
        SYSTEMS[name] = System(run, warm_up)
        return run

    return add


class Steps:
    """Wall time of each named step."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = time.perf_counter() - start


def _encode(identifiers: list[str]) -> list[bytes]:
    encoded = encode_identifiers(ID_TYPE, enumerate(identifiers))
    if encoded.invalid or encoded.duplicates:
        raise ValueError(
            f"generated inputs must be valid and distinct: {len(encoded.invalid)} invalid, "
            f"{encoded.duplicates} duplicates"
        )
    return encoded.encoded


@register("consent-psi", warm_up=warm_up_pool)
def consent_psi(inputs: Inputs) -> Outcome:
    """This project's protocol steps in one process, on all cores. The first three steps
    are the server's per-epoch work (in service, hashing happens once at ingest)."""
    steps = Steps()
    a, b = Key.generate(), Key.generate()
    with steps("encode server"):
        server_encoded = _encode(inputs.server)
    with steps("hash server"):
        server_hashed = hash_to_curve(server_encoded)
    with steps("server.build_table"):
        table = server.build_table(b, server_hashed)
    with steps("encode client"):
        client_encoded = _encode(inputs.client)
    with steps("hash client"):
        client_hashed = hash_to_curve(client_encoded)
    with steps("client.blind"):
        sent = client.blind(a, client_hashed)
    # The table arrives over the network in chunks; feeding it the same way keeps the
    # pipelined path (and its per-chunk checks) in the measurement.
    chunks = (table[i : i + CHUNK] for i in range(0, len(table), CHUNK))
    with steps("client.double_blind_table"):
        returned = client.double_blind_table(a, chunks)
    with steps("server.blind_client_set"):
        blinded = server.blind_client_set(b, sent)
    with steps("server.count"):
        count = server.count(blinded, returned, len(table))
    return Outcome(count, sent.nbytes + returned.nbytes, table.nbytes, steps.seconds)


@register(BASELINE)
def openmined_psi(inputs: Inputs) -> Outcome:
    """OpenMined PSI (single-threaded C++) in its cardinality-only mode."""
    steps = Steps()
    n = len(inputs.client)
    # reveal_intersection=False: the server shuffles its answer, so the client learns the
    # size alone, which is what this project's protocol releases too.
    with steps("server.CreateSetupMessage"):
        om_server = openmined.server.CreateWithNewKey(False)
        setup = om_server.CreateSetupMessage(1e-9, n, inputs.server, openmined.DataStructure.GCS)
    with steps("client.CreateRequest"):
        om_client = openmined.client.CreateWithNewKey(False)
        request = om_client.CreateRequest(inputs.client)
    with steps("server.ProcessRequest"):
        response = om_server.ProcessRequest(request)
    with steps("client.GetIntersectionSize"):
        count = om_client.GetIntersectionSize(setup, response)
    up = len(request.SerializeToString())
    down = len(setup.SerializeToString()) + len(response.SerializeToString())
    return Outcome(count, up, down, steps.seconds)


@register("consent-psi-grpc")
def consent_psi_grpc(inputs: Inputs) -> Outcome:
    """The product: ``psi-server`` (import, epoch build, serve) and ``psi-match`` as
    separate processes over gRPC on loopback, each on all cores."""
    steps = Steps()
    count, peaks, up, down = run_processes(inputs.client, inputs.server, steps)
    return Outcome(count, up, down, steps.seconds, peaks)
