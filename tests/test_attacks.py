"""The attacks that singled out one user when tables were reused, run by a deviating
advertiser against a real ``psi-server`` process over gRPC, and against the same state
machine made to reuse its table (a fixed key, entries in registry order, exact counts) to
show that each attack is real and that these tests can fail.

The victim is one of ``C`` candidate users who has just consented. The attacker names
one candidate per trial. SECURITY.md bounds what it can achieve: against a server whose
tables are single-use, each session is within KL divergence epsilon of the same session
without the victim, so over ``s`` sessions of epsilon each, naming the victim among ``C``
equally likely candidates succeeds with probability at most ``1/C + sqrt(s epsilon / 2)``.
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from psi import Key, encode_identifier
from psi.parallel import InlineExecutor
from psi.protocol import Policy, ServerSession, inprocess
from psi_client.session import ClientConfig, run
from psi_server import store
from psi_server.registry.changes import record_consent
from psi_server.live import LiveSet

from .attacks import AmplifyingClient, last_positions, new_entries_last, random_positions
from .support import MemoryLedger, ServerProcess, make_registry

pytestmark = pytest.mark.slow

C = 10  # candidates
STEP = 5  # candidate c is sent (c + 1) * STEP times: a hit on it moves the count by that much
EPSILON = 0.1
TRIALS = 24
FILLERS = [encode_identifier("email", f"filler{i}@nowhere.example") for i in range(20)]


def user_rows():
    """300 consenting users, and the C candidates, who have not consented yet."""
    rows = [(f"user{i}", "email", f"user{i}@example.com", "account", "granted", "2026-01-01T00:00:00Z")
            for i in range(300)]
    rows += [(f"cand{c}", "email", f"cand{c}@example.com", "account", "revoked", "2026-01-01T00:00:00Z")
             for c in range(C)]
    return rows


CANDIDATES = [encode_identifier("email", f"cand{c}@example.com") for c in range(C)]
COPIES = [(c + 1) * STEP for c in range(C)]


def name_from(count: int | None, rng: random.Random) -> int:
    """The candidate whose copies the count says were hit; a guess when none was."""
    c = round((count or 0) / STEP) - 1
    return c if 0 <= c < C else rng.randrange(C)


def bound(sessions: int) -> float:
    return 1 / C + math.sqrt(sessions * EPSILON / 2)


def within(correct: int, sessions: int) -> bool:
    p = bound(sessions)
    return correct / TRIALS <= p + 3 * math.sqrt(p * (1 - p) / TRIALS)


def consent_to(db: str, user: str, state: str) -> None:
    conn = store.connect(db)
    try:
        record_consent(conn, [user], state)
    finally:
        conn.close()


class ReusedTable(ServerSession):
    """The same party made to behave as servers with long-lived keys did: every session
    has the same key, and its table comes in registry order (entries of users who have
    just consented last). Never a configuration of the product: a foil for the tests."""

    def __init__(self, key: Key, live: LiveSet) -> None:
        super().__init__(Policy(noise=False, min_list_size=10), live, MemoryLedger(), InlineExecutor(),
                         new_key=lambda: key)

    @staticmethod
    def _table_order(size: int) -> np.ndarray:
        return np.arange(size)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("attacks")
    db, token_file = make_registry(tmp, user_rows(), budget=1e6)
    return tmp, db, token_file.read_text().strip()


def attack(session_runner, db: str, chooser, with_diff: bool, rng: random.Random) -> tuple[int, list]:
    """TRIALS trials; returns how many named the victim, and each trial's two tables."""
    correct, tables = 0, []
    for _ in range(TRIALS):
        victim = rng.randrange(C)
        previous = None
        if with_diff:
            first = AmplifyingClient(CANDIDATES, COPIES, FILLERS, chooser, EPSILON)
            session_runner(first)
            previous = first.table
        consent_to(db, f"cand{victim}", "granted")
        second = AmplifyingClient(CANDIDATES, COPIES, FILLERS, chooser, EPSILON, previous=previous)
        outcome = session_runner(second)
        consent_to(db, f"cand{victim}", "revoked")
        correct += name_from(outcome.noisy_count, rng) == victim
        tables.append((previous, second.table))
    return correct, tables


@pytest.mark.parametrize("with_diff", [False, True], ids=["amplification", "amplification-after-diff"])
def test_naming_the_user_who_just_consented(registry, with_diff):
    tmp, db, token = registry
    rng = random.Random(2026 + with_diff)
    chooser = new_entries_last if with_diff else random_positions
    sessions = 2 if with_diff else 1

    # The foil: a reused table gives the victim away every time.
    live = LiveSet(db)
    live.build()
    key = Key.generate()
    correct, _ = attack(lambda party: inprocess.run(party, ReusedTable(key, live)), db,
                        new_entries_last, with_diff, rng)
    assert correct == TRIALS and not within(correct, sessions)

    # The product, noise on, over gRPC.
    server = ServerProcess(db, tmp, "--threshold", "0", "--min-list-size", "10")
    config = ClientConfig(server=server.address, token=token, insecure=True, min_table_size=10)
    try:
        correct, tables = attack(lambda party: run(config, party), db, chooser, with_diff, rng)
    finally:
        server.stop()
    assert within(correct, sessions), (correct, TRIALS, bound(sessions))
    for before, after in tables:  # two downloads share no entry
        if before is not None:
            assert not {bytes(r) for r in before} & {bytes(r) for r in after}


def test_an_old_table_replayed_after_a_revocation_matches_nothing(registry):
    tmp, db, token = registry
    victim = [encode_identifier("email", "cand0@example.com")]

    def replay(runner) -> tuple[int, int]:
        consent_to(db, "cand0", "granted")
        first = AmplifyingClient(victim, [1], FILLERS, last_positions, EPSILON)
        before = runner(first).noisy_count
        consent_to(db, "cand0", "revoked")
        again = AmplifyingClient(victim, [1], FILLERS, last_positions, EPSILON, previous=first.table, replay=True)
        return before, runner(again).noisy_count

    live = LiveSet(db)
    live.build()
    key = Key.generate()
    assert replay(lambda party: inprocess.run(party, ReusedTable(key, live))) == (1, 1)  # still counted

    server = ServerProcess(db, tmp, "--unsafe-exact-counts", "--min-list-size", "10")
    config = ClientConfig(server=server.address, token=token, insecure=True, min_table_size=10)
    try:
        assert replay(lambda party: run(config, party)) == (1, 0)
    finally:
        server.stop()
