"""The registry's history: the impact report against an independent model of random
histories, naming sources, and the records of processing."""

import io
import time
from datetime import datetime, timezone

from hypothesis import given, settings
from hypothesis import strategies as st
from psi_server import advertisers, budget, store
from psi_server.registry import changes, history, imports, processing, times

from psi.noise import EPSILON_RESOLUTION
from psi.protocol import SessionRecord

from . import registry_model as model


def text(instant: float) -> str:
    return times.utc_text(datetime.fromtimestamp(instant, timezone.utc))


def charge(conn, adv, session_id: str, instant: float, epsilon: float = 0.1) -> None:
    record = SessionRecord(session_id, ("email",), 100, 100, 1000, round(epsilon * EPSILON_RESOLUTION), 1, 100, True)
    budget.charge(conn, adv, record, now=instant, started=instant)


@settings(max_examples=80, deadline=None)
@given(model.histories, st.data())
def test_impact_report_equals_the_model(tmp_path_factory, ops, data):
    """Whatever the history, for any window between changes and any filter, the report
    counts exactly the users and identifiers the model had matchable at some moment of
    the window, and exactly the sessions that ran while one of them was."""
    path = tmp_path_factory.mktemp("impact") / "r.db"
    store.init(path)
    conn = store.connect(path)
    advertisers.add(conn, "acme", 1000, 30)
    adv = advertisers.by_name(conn, "acme")
    imported = [i for i, op in enumerate(ops) if op[0] == "import"]
    purpose = data.draw(st.sampled_from([None, None, "account", "advertising"]), label="purpose")
    source = data.draw(st.sampled_from([None, *imported]), label="source")
    added_by = None if source is None else {source}
    sessions = data.draw(st.lists(st.booleans(), min_size=len(ops) + 1, max_size=len(ops) + 1), label="sessions")

    expected = model.Model()
    instants, states = [], []

    def observe() -> None:
        # between two changes: what the registry holds now, and a session if drawn
        instants.append(time.time())
        states.append(expected.matchable(purpose, added_by))
        k = len(instants) - 1
        if sessions[k]:
            charge(conn, adv, f"s{k}", instants[k])

    observe()
    for index, op in enumerate(ops):
        model.run(conn, index, op)
        expected.apply(index, op)
        observe()
    sources = None if source is None else history.find_sources(conn, f"op{source}")
    assert sources is None or [s.name for s in sources] == [f"op{source}"]
    last = len(instants) - 1
    windows = [(0, last)] + data.draw(
        st.lists(st.tuples(st.integers(0, last), st.integers(0, last)).map(sorted), max_size=4), label="windows")
    for i, j in windows:
        report = history.impact(conn, text(instants[i]), text(instants[j]), purpose, None, sources)
        seen = set().union(*states[i : j + 1])
        assert report.users == len({u for u, _, _ in seen})
        assert report.identifiers == len({ident for _, ident, _ in seen})
        assert report.identifiers_by_type == ({"email": report.identifiers} if seen else {})
        affected = [k for k in range(i, j + 1) if sessions[k] and states[k]]
        assert report.sessions == len(affected)
        assert report.sessions_in_window == sum(sessions[i : j + 1])
        assert report.epsilon == round(0.1 * len(affected), 6)
        assert [(a.advertiser, a.sessions) for a in report.by_advertiser] == ([("acme", len(affected))] if affected else [])
    assert history.impact(conn, text(instants[0]), text(instants[last]), purpose, "phone", sources).users == 0
    conn.close()


HEADER = "user_id,id_type,identifier,purpose,consent,updated_at\n"


def test_sources_are_found_by_file_digest_name_and_kind(tmp_path):
    path = tmp_path / "r.db"
    store.init(path)
    conn = store.connect(path)
    data = (HEADER + "u1,email,a@example.com,account,granted,2026-01-01T00:00:00Z\n").encode()
    report = imports.import_file(conn, io.BytesIO(data), "csv", "users.csv", workers=1)
    again = imports.import_file(conn, io.BytesIO(data), "csv", "renamed.csv", workers=1)
    changes.record_consent(conn, ["u1"], "revoked", source="ticket-7")
    import hashlib

    digest = hashlib.sha256(data).digest()
    assert report.digest == again.digest == digest.hex()
    by_file = history.find_sources(conn, "whatever", digest)
    assert [s.name for s in by_file] == ["users.csv", "renamed.csv"]
    assert [s.name for s in history.find_sources(conn, digest.hex()[:8])] == ["users.csv", "renamed.csv"]
    assert [s.name for s in history.find_sources(conn, "users.csv")] == ["users.csv"]
    assert [s.name for s in history.find_sources(conn, "cli")] == ["ticket-7"]
    assert history.find_sources(conn, "1234567") == []  # too short to be a digest prefix
    conn.close()


def test_records_of_processing(tmp_path):
    path = tmp_path / "r.db"
    store.init(path)
    conn = store.connect(path)
    rows = [
        "u1,email,a@example.com,account,granted,2026-01-01T00:00:00Z",
        "u1,phone,+1 650 253 0000,security,granted,2026-01-01T00:00:00Z",
        "u2,email,b@example.com,advertising,granted,2026-01-01T00:00:00Z",
        "u3,email,c@example.com,account,revoked,2026-01-01T00:00:00Z",
    ]
    imports.import_file(conn, io.BytesIO((HEADER + "\n".join(rows) + "\n").encode()), "csv", "f", workers=1)
    changes.erase_users(conn, ["u2"])
    advertisers.add(conn, "acme", 2, 30)
    advertisers.add(conn, "globex", 1, 30)
    advertisers.revoke_token(conn, "globex")
    adv = advertisers.by_name(conn, "acme")
    charge(conn, adv, "s1", time.time(), 0.25)
    charge(conn, adv, "s2", time.time(), 0.5)
    records = processing.processing_records(conn)
    assert records["data_subjects"] == {"users": 2, "consent_granted": 1, "consent_revoked": 1, "erased": 1}
    assert records["personal_data"] == [
        {"id_type": "email", "purpose": "account", "identifiers": 2},
        {"id_type": "phone", "purpose": "security", "identifiers": 1},
    ]
    assert records["matchable"] == [{"id_type": "email", "identifiers": 1, "users": 1}]
    acme, globex = records["recipients"]
    assert (acme["advertiser"], acme["access"], acme["sessions"], acme["epsilon_spent"]) == ("acme", "active", 2, 0.75)
    assert (globex["access"], globex["sessions"], globex["first_session"]) == ("revoked", 0, None)
    assert records["history"]["sessions"] == 2 and records["retention"]
    conn.close()
