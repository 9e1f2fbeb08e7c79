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

import numpy as np

from psi import encode_identifiers, hash_to_curve
from psi.parallel import get_executor
from psi.protocol import ArrayTable, ClientSession, Policy, ServerSession, inprocess

from .endtoend import run_processes
from .inputs import ID_TYPE, Inputs
from .pool import warm_up as warm_up_pool

__all__ = ["BASELINE", "SYSTEMS", "Outcome", "Steps", "System", "Unmetered", "register"]


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


class Unmetered:
    """A ledger that charges nothing: the benchmark measures computation, not budgets."""

    def open(self, record) -> float:
        return 1.0

    def release(self, session_id, release) -> None:
        pass


class _Timed:
    """One party with the wall time spent in its own calls added up. The in-process
    pump calls the parties one after the other, so the two totals add up to the session
    (work each leaves in flight on the shared pool is counted where it is collected)."""

    def __init__(self, party) -> None:
        self.party = party
        self.seconds = 0.0

    def _timed(self, fn, *args):
        start = time.perf_counter()
        try:
            result = fn(*args)
            return list(result) if isinstance(result, Iterator) else result
        finally:
            self.seconds += time.perf_counter() - start

    def open(self):
        return self._timed(self.party.open)

    def receive(self, msg):
        return self._timed(self.party.receive, msg)

    def table(self):
        chunks = self.party.table()
        while True:
            start = time.perf_counter()
            chunk = next(chunks, None)
            self.seconds += time.perf_counter() - start
            if chunk is None:
                return
            yield chunk

    def end_of_stream(self):
        self.party.end_of_stream()

    @property
    def outcome(self):
        return self.party.outcome


@register("consent-psi", warm_up=warm_up_pool)
def consent_psi(inputs: Inputs) -> Outcome:
    """This project's two parties (the state machines the service and the client run)
    in one process, messages passed by hand, on all cores. Hashing the server's
    identifiers is the import's work, done once at ingest in service."""
    steps = Steps()
    pool = get_executor()
    with steps("encode server"):
        server_encoded = _encode(inputs.server)
    with steps("hash server (import)"):
        source = ArrayTable({ID_TYPE: hash_to_curve(server_encoded, executor=pool)})
    with steps("encode client"):
        client_encoded = _encode(inputs.client)
    policy = Policy(noise=False, min_list_size=1, threshold=0)
    party = ClientSession(client_encoded, np.arange(len(client_encoded)), len(client_encoded), [ID_TYPE],
                          0.1, pool, min_table_size=1)
    client, server = _Timed(party), _Timed(ServerSession(policy, source, Unmetered(), pool))
    outcome = inprocess.run(client, server)
    steps.seconds["session: client (hash, blind, table)"] = client.seconds
    steps.seconds["session: server (table, items, count)"] = server.seconds
    n, m = len(client_encoded), outcome.table_size
    return Outcome(outcome.noisy_count, 32 * n + 16 * m, 32 * m, steps.seconds)


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
    """The product: ``psi-server`` (import, live set build, serve) and ``psi-match`` as
    separate processes over gRPC on loopback, each on all cores."""
    steps = Steps()
    count, peaks, up, down = run_processes(inputs.client, inputs.server, steps)
    return Outcome(count, up, down, steps.seconds, peaks)
