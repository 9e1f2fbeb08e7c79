"""An independent model of the registry's rules, for property tests: consent precedence
(a revocation always takes effect, a grant only when dated after every event so far),
purposes added and withdrawn, identifiers removed with their last purpose, users erased,
rows dated in the future refused. Histories are generated here and run against the
real registry through its public functions."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field

from hypothesis import strategies as st
from psi_server.registry import changes, imports
from psi_server.registry.rows import PURPOSES, STATES

HEADER = "user_id,id_type,identifier,purpose,consent,updated_at,action\n"
N_USERS, N_VALUES, N_TIMES = 4, 4, 4
NOW = 10**6  # a command without --at records the current time, after every generated one
FUTURE = "2999-01-01T00:00:00Z"


def email(i: int) -> str:
    return f"person{i}@example.com"


def value_hash(i: int) -> bytes:
    return hashlib.sha256(email(i).encode()).digest()


def when(t: int) -> str:
    return f"2026-01-01T00:00:{t:02d}Z"


@dataclass(frozen=True)
class Row:
    user: int
    value: int
    purpose: str
    consent: str
    t: int
    action: str
    future: bool


rows = st.builds(
    Row, st.integers(0, N_USERS - 1), st.integers(0, N_VALUES - 1), st.sampled_from(PURPOSES),
    st.sampled_from(STATES), st.integers(0, N_TIMES - 1), st.sampled_from(["add", "add", "remove"]),
    st.sampled_from([False] * 6 + [True]),
)
users = st.lists(st.integers(0, N_USERS - 1), min_size=1, max_size=3)
operations = st.one_of(
    st.tuples(st.just("import"), st.lists(rows, min_size=1, max_size=8)),
    st.tuples(st.just("import"), st.lists(rows, min_size=1, max_size=8)),
    st.tuples(st.just("cli"), users, st.sampled_from(STATES), st.one_of(st.none(), st.integers(0, N_TIMES - 1))),
    st.tuples(st.just("erase"), users),
)
histories = st.lists(operations, min_size=1, max_size=8)


@dataclass
class Identifier:
    instance: int
    purposes: dict[str, int] = field(default_factory=dict)  # purpose -> operation that added it


@dataclass
class User:
    instance: int
    state: str | None = None
    latest: int | None = None  # the latest effective time recorded
    events: set[tuple[str, int]] = field(default_factory=set)
    identifiers: dict[int, Identifier] = field(default_factory=dict)  # value -> identifier


class Model:
    def __init__(self) -> None:
        self.users: dict[int, User] = {}
        self._instances = 0

    def _new(self) -> int:
        self._instances += 1
        return self._instances

    def _event(self, user: User, state: str, t: int) -> None:
        user.events.add((state, t))
        if state == "revoked" or user.latest is None or t > user.latest:
            user.state = state
        user.latest = t if user.latest is None else max(user.latest, t)

    def apply(self, index: int, op: tuple) -> None:
        kind = op[0]
        if kind == "import":
            valid = [r for r in op[1] if not r.future]
            for r in valid:
                if r.action == "add" and r.user not in self.users:
                    self.users[r.user] = User(self._new())
            latest: dict[tuple[int, int, str], tuple[int, bool]] = {}
            for r in valid:
                key, rank = (r.user, r.value, r.purpose), (r.t, r.action == "remove")
                latest[key] = max(latest.get(key, rank), rank)
            for (u, v, p), (_, remove) in latest.items():
                if not remove:
                    ident = self.users[u].identifiers.setdefault(v, Identifier(self._new()))
                    ident.purposes.setdefault(p, index)
            for (u, v, p), (_, remove) in latest.items():
                if remove and u in self.users and v in self.users[u].identifiers:
                    self.users[u].identifiers[v].purposes.pop(p, None)
            for (u, v, _), (_, remove) in latest.items():
                ident = self.users[u].identifiers.get(v) if remove and u in self.users else None
                if ident is not None and not ident.purposes:
                    del self.users[u].identifiers[v]
            events = {(r.user, r.consent, r.t) for r in valid
                      if r.user in self.users and (r.consent, r.t) not in self.users[r.user].events}
            for u, state, t in sorted(events, key=lambda e: (e[2], e[1])):
                self._event(self.users[u], state, t)
        elif kind == "cli":
            _, who, state, t = op
            for u in dict.fromkeys(who):
                if u in self.users:
                    self._event(self.users[u], state, NOW + index if t is None else t)
        else:
            for u in op[1]:
                self.users.pop(u, None)

    def matchable(self, purpose: str | None = None, added_by: set[int] | None = None) -> set[tuple[int, int, int]]:
        """``(user instance, identifier instance, value)`` of every identifier matchable
        now through a purpose that passes the filter."""
        out = set()
        for user in self.users.values():
            if user.state != "granted":
                continue
            for value, ident in user.identifiers.items():
                through = [p for p, op in ident.purposes.items() if p != "security"
                           and (purpose is None or p == purpose) and (added_by is None or op in added_by)]
                if through:
                    out.add((user.instance, ident.instance, value))
        return out

    def values_only_for_security(self) -> set[int]:
        """Values no user holds for a purpose other than security."""
        held = {v for u in self.users.values() for v, i in u.identifiers.items() if set(i.purposes) - {"security"}}
        return set(range(N_VALUES)) - held


def run(conn, index: int, op: tuple) -> None:
    """Make the change ``op`` in the registry, named ``op<index>`` in its history."""
    kind = op[0]
    if kind == "import":
        text = HEADER + "".join(
            f"u{r.user},email,{email(r.value)},{r.purpose},{r.consent},{FUTURE if r.future else when(r.t)},"
            f"{r.action}\n" for r in op[1]
        )
        imports.import_file(conn, io.BytesIO(text.encode()), "csv", f"op{index}", workers=1)
    elif kind == "cli":
        _, who, state, t = op
        changes.record_consent(conn, [f"u{u}" for u in who], state, None if t is None else when(t), f"op{index}")
    else:
        changes.erase_users(conn, [f"u{u}" for u in op[1]], f"op{index}")
