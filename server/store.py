"""The registry database: one SQLite file in WAL mode, schema versioned by migrations.

Append-only tables (consent events and the history of changes, budget ledger, sessions,
releases) are enforced by triggers, so even a bug elsewhere cannot rewrite history; the
one exception is an erasure, which replaces a user's id in history with a tombstone. No
table holds an exact match count.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "RegistryError", "SCHEMA_VERSION", "checkpoint", "connect", "init", "integrity_ok", "transaction",
]

log = logging.getLogger(__name__)

# How long a writer waits for another's lock (an import's final transaction, say)
# before giving up with "database is locked".
BUSY_TIMEOUT_S = 30.0


class RegistryError(Exception):
    """A problem with the registry file itself (missing, not initialised, too new)."""


def _append_only(table: str) -> str:
    return f"""
CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}
BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;
CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;
"""


def _erasable(table: str, kept: tuple[str, ...]) -> str:
    """Append-only, except that an erasure replaces the user id with its tombstone."""
    changed = " OR ".join(f"NEW.{c} IS NOT OLD.{c}" for c in kept)
    return f"""
CREATE TRIGGER {table}_no_update BEFORE UPDATE ON {table}
WHEN {changed} OR NEW.user_id NOT IN (SELECT tombstone FROM erasures)
BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;
CREATE TRIGGER {table}_no_delete BEFORE DELETE ON {table}
BEGIN SELECT RAISE(ABORT, '{table} is append-only'); END;
"""


# THE precedence rule's triggers (see version 4), created again with the table in 6.
_CONSENT_EVENT_TRIGGERS = """CREATE TRIGGER consent_events_apply AFTER INSERT ON consent_events
BEGIN
    UPDATE users
       SET ads_matching = NEW.state,
           consent_effective_at = MAX(COALESCE(consent_effective_at, ''), NEW.effective_at)
     WHERE user_id = NEW.user_id
       AND (NEW.state = 'revoked' OR consent_effective_at IS NULL
            OR NEW.effective_at > consent_effective_at);
END;
CREATE TRIGGER consent_events_changed AFTER INSERT ON consent_events
BEGIN
    INSERT INTO identifier_changes (identifier_id)
    SELECT id FROM identifiers WHERE user_id = NEW.user_id;
END;
"""


# Each entry migrates the schema from version i to i + 1. Never edit a released entry:
# add a new one.
MIGRATIONS: list[str] = [
    """
CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    -- Current ads_matching consent, derived from consent_events by the trigger below:
    -- the event with the latest effective time wins, a revocation winning a tie.
    ads_matching TEXT CHECK (ads_matching IN ('granted', 'revoked')),
    consent_effective_at TEXT
) WITHOUT ROWID;

-- The hashed point H(id_type || 0 || value_hash), computed once per distinct value.
CREATE TABLE points (
    id_type TEXT NOT NULL CHECK (id_type IN ('email', 'phone')),
    value_hash BLOB NOT NULL CHECK (length(value_hash) = 32),
    point BLOB NOT NULL CHECK (length(point) = 32),
    PRIMARY KEY (id_type, value_hash)
) WITHOUT ROWID;

CREATE TABLE identifiers (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (user_id),
    id_type TEXT NOT NULL CHECK (id_type IN ('email', 'phone')),
    value_hash BLOB NOT NULL CHECK (length(value_hash) = 32),
    UNIQUE (user_id, id_type, value_hash)
);
CREATE INDEX identifiers_by_value ON identifiers (id_type, value_hash);

-- Why an identifier was collected. One given only for 'security' never matches.
CREATE TABLE identifier_purposes (
    identifier_id INTEGER NOT NULL REFERENCES identifiers (id),
    purpose TEXT NOT NULL CHECK (purpose IN ('account', 'security', 'advertising')),
    PRIMARY KEY (identifier_id, purpose)
) WITHOUT ROWID;

CREATE TABLE consent_events (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users (user_id),
    scope TEXT NOT NULL CHECK (scope = 'ads_matching'),
    state TEXT NOT NULL CHECK (state IN ('granted', 'revoked')),
    effective_at TEXT NOT NULL,
    recorded_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    source TEXT NOT NULL,
    UNIQUE (user_id, scope, state, effective_at)
);

CREATE TRIGGER consent_events_apply AFTER INSERT ON consent_events
BEGIN
    UPDATE users
       SET ads_matching = NEW.state, consent_effective_at = NEW.effective_at
     WHERE user_id = NEW.user_id
       AND (consent_effective_at IS NULL
            OR NEW.effective_at > consent_effective_at
            OR (NEW.effective_at = consent_effective_at AND NEW.state = 'revoked'));
END;

-- Every change that can alter whether a user's identifiers match, in commit order, so a
-- live epoch can apply consent changes incrementally. (A new identifier matters only
-- once it has a purpose, so purposes are tracked rather than identifiers.)
CREATE TABLE user_changes (
    seq INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL
);
CREATE TRIGGER consent_events_changed AFTER INSERT ON consent_events
BEGIN INSERT INTO user_changes (user_id) VALUES (NEW.user_id); END;
CREATE TRIGGER identifier_purposes_changed AFTER INSERT ON identifier_purposes
BEGIN
    INSERT INTO user_changes (user_id)
    SELECT user_id FROM identifiers WHERE id = NEW.identifier_id;
END;

-- THE definition of matchable. Everything that builds or updates a
-- table reads this view; nothing else decides.
CREATE VIEW matchable AS
SELECT i.id AS identifier_id, i.user_id, i.id_type, i.value_hash
  FROM identifiers AS i
  JOIN users AS u ON u.user_id = i.user_id
 WHERE u.ads_matching = 'granted'
   AND EXISTS (SELECT 1 FROM identifier_purposes AS p
                WHERE p.identifier_id = i.id AND p.purpose <> 'security');

CREATE TABLE advertisers (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash BLOB NOT NULL CHECK (length(token_hash) = 32),
    -- Epsilons are stored in millionths, so budgets add up exactly.
    budget_micro INTEGER NOT NULL CHECK (budget_micro >= 0),
    period_days REAL NOT NULL CHECK (period_days > 0),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    revoked_at TEXT
);

-- Epsilon charged per release. A reset is a row of its own (epsilon 0): spending counts
-- only after the latest reset, so history is never rewritten.
CREATE TABLE budget_ledger (
    id INTEGER PRIMARY KEY,
    advertiser_id INTEGER NOT NULL REFERENCES advertisers (id),
    charged_at REAL NOT NULL,
    epsilon_micro INTEGER NOT NULL CHECK (epsilon_micro >= 0),
    session_id TEXT NOT NULL,
    reason TEXT NOT NULL CHECK (reason IN ('release', 'reset'))
);
CREATE INDEX budget_ledger_by_advertiser ON budget_ledger (advertiser_id, charged_at);

-- Every release. Holds the noisy count that was sent, never the exact one.
CREATE TABLE audit_log (
    id INTEGER PRIMARY KEY,
    advertiser_id INTEGER NOT NULL REFERENCES advertisers (id),
    released_at TEXT NOT NULL,
    session_id TEXT NOT NULL,
    epoch_id TEXT NOT NULL,
    id_type TEXT NOT NULL,
    n_items INTEGER NOT NULL,
    epsilon_micro INTEGER NOT NULL,
    sensitivity INTEGER NOT NULL,
    threshold INTEGER NOT NULL,
    -- 0 only on a server started with --unsafe-exact-counts: then the released value
    -- below is exact, and this row says so.
    noise INTEGER NOT NULL CHECK (noise IN (0, 1)),
    noisy_count INTEGER,
    suppressed INTEGER NOT NULL CHECK (suppressed IN (0, 1))
);
CREATE INDEX audit_log_by_advertiser ON audit_log (advertiser_id, released_at);
"""
    + _append_only("consent_events")
    + _append_only("budget_ledger")
    + _append_only("audit_log"),
    # 2: each identifier carries its hashed point. A table build then reads points in
    # the order it scans identifiers instead of looking each one up in a separate
    # B-tree in random order (2.8x less reading per epoch); identifiers_by_value still
    # finds an already-hashed value at import.
    """
ALTER TABLE identifiers ADD COLUMN point BLOB;
UPDATE identifiers SET point = (
    SELECT p.point FROM points AS p
     WHERE p.id_type = identifiers.id_type AND p.value_hash = identifiers.value_hash);
DROP TABLE points;
-- ADD COLUMN cannot declare NOT NULL without a default, so the rule is a trigger.
CREATE TRIGGER identifiers_point_insert BEFORE INSERT ON identifiers
WHEN NEW.point IS NULL OR length(NEW.point) <> 32
BEGIN SELECT RAISE(ABORT, 'identifiers.point must be a 32-byte point'); END;
CREATE TRIGGER identifiers_point_update BEFORE UPDATE OF point ON identifiers
WHEN NEW.point IS NULL OR length(NEW.point) <> 32
BEGIN SELECT RAISE(ABORT, 'identifiers.point must be a 32-byte point'); END;
""",
    # 3: protocol version 2. The live matchable set follows changes per identifier: a
    # change of a user's consent or purposes is logged for each of the user's identifiers
    # (the per-user cap can move to another one), and a removed identifier by its row id
    # alone, so the log never holds a user id or a value. AUTOINCREMENT keeps sequence
    # numbers increasing after the log is pruned. Sessions are charged and recorded when
    # opened, and what each released is appended when it releases; the audit log of
    # version 1, which recorded only releases, is carried over into both.
    """
DROP TRIGGER consent_events_changed;
DROP TRIGGER identifier_purposes_changed;
DROP TABLE user_changes;
CREATE TABLE identifier_changes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    identifier_id INTEGER NOT NULL
);
-- Everything before this sequence number has been pruned: a reader that synced to an
-- earlier one must rebuild.
CREATE TABLE identifier_changes_pruned (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    upto INTEGER NOT NULL
);
INSERT INTO identifier_changes_pruned (id, upto) VALUES (1, 0);
CREATE TRIGGER consent_events_changed AFTER INSERT ON consent_events
BEGIN
    INSERT INTO identifier_changes (identifier_id)
    SELECT id FROM identifiers WHERE user_id = NEW.user_id;
END;
CREATE TRIGGER identifier_purposes_added AFTER INSERT ON identifier_purposes
BEGIN
    INSERT INTO identifier_changes (identifier_id)
    SELECT id FROM identifiers
     WHERE user_id = (SELECT user_id FROM identifiers WHERE id = NEW.identifier_id);
END;
CREATE TRIGGER identifier_purposes_removed AFTER DELETE ON identifier_purposes
BEGIN
    INSERT INTO identifier_changes (identifier_id)
    SELECT id FROM identifiers
     WHERE user_id = (SELECT user_id FROM identifiers WHERE id = OLD.identifier_id);
END;
CREATE TRIGGER identifiers_removed AFTER DELETE ON identifiers
BEGIN
    INSERT INTO identifier_changes (identifier_id) VALUES (OLD.id);
    INSERT INTO identifier_changes (identifier_id)
    SELECT id FROM identifiers WHERE user_id = OLD.user_id;
END;

CREATE TABLE sessions (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL UNIQUE,
    advertiser_id INTEGER NOT NULL REFERENCES advertisers (id),
    opened_at TEXT NOT NULL,
    id_types TEXT NOT NULL,            -- comma-separated
    n_groups INTEGER NOT NULL,         -- customers in the list
    n_items INTEGER NOT NULL,
    table_size INTEGER,                -- m' as released; NULL for version 1 sessions
    epsilon_micro INTEGER NOT NULL,
    sensitivity INTEGER NOT NULL,
    threshold INTEGER NOT NULL,
    -- 0 only on a server started with --unsafe-exact-counts: its releases are exact.
    noise INTEGER NOT NULL CHECK (noise IN (0, 1))
);
CREATE INDEX sessions_by_advertiser ON sessions (advertiser_id, opened_at);
CREATE INDEX sessions_by_time ON sessions (opened_at);

-- The value sent, never the exact count (unless the session's noise is 0).
CREATE TABLE releases (
    session_id TEXT PRIMARY KEY REFERENCES sessions (session_id),
    released_at TEXT NOT NULL,
    noisy_count INTEGER,
    suppressed INTEGER NOT NULL CHECK (suppressed IN (0, 1))
) WITHOUT ROWID;

INSERT INTO sessions (session_id, advertiser_id, opened_at, id_types, n_groups, n_items,
                      table_size, epsilon_micro, sensitivity, threshold, noise)
SELECT session_id, advertiser_id, released_at, id_type, n_items, n_items, NULL,
       epsilon_micro, sensitivity, threshold, noise
  FROM audit_log ORDER BY id;
INSERT INTO releases (session_id, released_at, noisy_count, suppressed)
SELECT session_id, released_at, noisy_count, suppressed FROM audit_log;
DROP TABLE audit_log;
"""
    + _append_only("sessions")
    + _append_only("releases"),
    # 4: history, withdrawal and erasure. Every change of purposes and consent is kept
    # with its source (change_sources), so the registry can say who was matchable when.
    # Consent events no longer need to be unique: an explicit revocation is recorded even
    # when one with the same time exists. The precedence rule changes (see the
    # consent_events_apply trigger) and is replayed over the existing events, so a user
    # kept matchable by a grant dated in the future is revoked by the upgrade.
    """
-- Where each change came from. A transaction's row is written last, when its time is
-- taken, so the references to it are checked at commit (DEFERRABLE INITIALLY DEFERRED).
CREATE TABLE change_sources (
    id INTEGER PRIMARY KEY,
    -- 'earlier': a batch of consent events recorded before version 4, named as it was;
    -- 'upgrade': what the upgrade to version 4 changed.
    kind TEXT NOT NULL CHECK (kind IN ('import', 'cli', 'erase', 'earlier', 'upgrade')),
    name TEXT NOT NULL,
    digest BLOB CHECK (digest IS NULL OR length(digest) = 32),
    applied_at TEXT NOT NULL,      -- in the source's transaction: no later than its commit
    committed_at TEXT              -- just after the commit: no earlier (NULL if unrecorded)
);
CREATE TRIGGER change_sources_no_update BEFORE UPDATE ON change_sources
WHEN OLD.committed_at IS NOT NULL OR NEW.committed_at IS NULL
  OR NEW.id IS NOT OLD.id OR NEW.kind IS NOT OLD.kind OR NEW.name IS NOT OLD.name
  OR NEW.digest IS NOT OLD.digest OR NEW.applied_at IS NOT OLD.applied_at
BEGIN SELECT RAISE(ABORT, 'change_sources is append-only'); END;
CREATE TRIGGER change_sources_no_delete BEFORE DELETE ON change_sources
BEGIN SELECT RAISE(ABORT, 'change_sources is append-only'); END;

-- The source of the transaction being written: set at its start and cleared before it
-- commits, so the triggers below can stamp changes with it (and a change made without
-- one fails on the history's NOT NULL source_id).
CREATE TABLE writing_source (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    source_id INTEGER
);
INSERT INTO writing_source (id, source_id) VALUES (1, NULL);

-- Erased users: their history stays under a random tombstone id, nothing else of them.
CREATE TABLE erasures (
    tombstone TEXT PRIMARY KEY,
    source_id INTEGER NOT NULL REFERENCES change_sources (id) DEFERRABLE INITIALLY DEFERRED
) WITHOUT ROWID;

-- Each batch of earlier consent events (one import or command) becomes a source.
INSERT INTO change_sources (kind, name, applied_at, committed_at)
SELECT 'earlier', source, at, at FROM (
    SELECT source, substr(recorded_at, 1, 23) || '000Z' AS at, MIN(id) AS first
      FROM consent_events GROUP BY source, recorded_at
) ORDER BY first;
-- (Only a registry that holds users has anything the upgrade could change.)
INSERT INTO change_sources (kind, name, applied_at, committed_at)
SELECT 'upgrade', 'schema version 4', at, at
  FROM (SELECT strftime('%Y-%m-%dT%H:%M:%f', 'now') || '000Z' AS at)
 WHERE EXISTS (SELECT 1 FROM users);

CREATE TABLE consent_events_v4 (
    id INTEGER PRIMARY KEY,
    -- Not a foreign key: history outlives the user (an erased user's becomes a tombstone).
    user_id TEXT NOT NULL,
    scope TEXT NOT NULL CHECK (scope = 'ads_matching'),
    state TEXT NOT NULL CHECK (state IN ('granted', 'revoked')),
    effective_at TEXT NOT NULL,
    source_id INTEGER NOT NULL REFERENCES change_sources (id) DEFERRABLE INITIALLY DEFERRED
);
INSERT INTO consent_events_v4 (id, user_id, scope, state, effective_at, source_id)
SELECT e.id, e.user_id, e.scope, e.state, e.effective_at, s.id
  FROM consent_events AS e
  JOIN change_sources AS s
    ON s.kind = 'earlier' AND s.name = e.source
   AND s.applied_at = substr(e.recorded_at, 1, 23) || '000Z';
DROP TABLE consent_events;
ALTER TABLE consent_events_v4 RENAME TO consent_events;
CREATE INDEX consent_events_by_user ON consent_events (user_id, state, effective_at);

-- A user's ads_matching state each time it changed.
CREATE TABLE consent_changes (
    id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('granted', 'revoked')),
    source_id INTEGER NOT NULL REFERENCES change_sources (id) DEFERRABLE INITIALLY DEFERRED
);
-- The earlier rule, replayed batch by batch: the event with the latest effective time
-- won, a revocation winning a tie.
INSERT INTO consent_changes (user_id, state, source_id)
SELECT user_id, state, source_id FROM (
    SELECT user_id, source_id, state,
           LAG(state) OVER (PARTITION BY user_id ORDER BY source_id) AS before
      FROM (
        SELECT user_id, source_id,
               CASE substr(MAX(best) OVER (PARTITION BY user_id ORDER BY source_id
                                           ROWS UNBOUNDED PRECEDING), -1)
                    WHEN '1' THEN 'revoked' ELSE 'granted' END AS state
          FROM (SELECT user_id, source_id, MAX(effective_at || (state = 'revoked')) AS best
                  FROM consent_events GROUP BY user_id, source_id)
      )
) WHERE before IS NULL OR before <> state
ORDER BY source_id, user_id;

-- The rule from now on, replayed over every event (see consent_events_apply). A time
-- in the future counts as the upgrade's, so that it cannot outrank later grants.
CREATE TEMP TABLE consent_v4 AS
SELECT user_id, state, MIN(latest, (SELECT applied_at FROM change_sources WHERE kind = 'upgrade')) AS latest
  FROM (
    SELECT user_id, state, MAX(effective_at) OVER (PARTITION BY user_id) AS latest,
           ROW_NUMBER() OVER (PARTITION BY user_id
                              ORDER BY source_id DESC, effective_at DESC, state DESC) AS last
      FROM (
        SELECT user_id, source_id, state, effective_at,
               MAX(effective_at) OVER (PARTITION BY user_id ORDER BY source_id, effective_at, state
                                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before
          FROM consent_events
      )
     WHERE state = 'revoked' OR before IS NULL OR effective_at > before
  )
 WHERE last = 1;
CREATE TEMP TABLE consent_flipped AS
SELECT u.user_id, c.state FROM users AS u JOIN temp.consent_v4 AS c ON c.user_id = u.user_id
 WHERE u.ads_matching IS NOT c.state;
UPDATE users SET ads_matching = c.state, consent_effective_at = c.latest
  FROM temp.consent_v4 AS c
 WHERE c.user_id = users.user_id
   AND (users.ads_matching IS NOT c.state OR users.consent_effective_at IS NOT c.latest);
INSERT INTO consent_changes (user_id, state, source_id)
SELECT user_id, state, (SELECT id FROM change_sources WHERE kind = 'upgrade')
  FROM temp.consent_flipped ORDER BY user_id;
INSERT INTO identifier_changes (identifier_id)
SELECT i.id FROM identifiers AS i JOIN temp.consent_flipped AS f ON f.user_id = i.user_id;
DROP TABLE temp.consent_v4;
DROP TABLE temp.consent_flipped;

-- Every identifier row ever created, by id: whose it was and its type, never its value,
-- so that history can count people after an identifier is gone. Identifier ids are
-- never reused (imports number them past this table), so an id names one identifier.
CREATE TABLE identifier_history (
    identifier_id INTEGER PRIMARY KEY,
    user_id TEXT NOT NULL,
    id_type TEXT NOT NULL
);
INSERT INTO identifier_history (identifier_id, user_id, id_type)
SELECT id, user_id, id_type FROM identifiers;
CREATE TRIGGER identifiers_recorded AFTER INSERT ON identifiers
BEGIN
    INSERT INTO identifier_history (identifier_id, user_id, id_type)
    VALUES (NEW.id, NEW.user_id, NEW.id_type);
END;

-- Each purpose an identifier gained (held = 1) or lost (held = 0).
CREATE TABLE purpose_changes (
    id INTEGER PRIMARY KEY,
    identifier_id INTEGER NOT NULL REFERENCES identifier_history (identifier_id),
    purpose TEXT NOT NULL,
    held INTEGER NOT NULL CHECK (held IN (0, 1)),
    source_id INTEGER NOT NULL REFERENCES change_sources (id) DEFERRABLE INITIALLY DEFERRED
);
-- Purposes held before version 4 have no recorded origin: each is dated from the batch
-- that first recorded its user, the earliest it can have been added.
INSERT INTO purpose_changes (identifier_id, purpose, held, source_id)
SELECT p.identifier_id, p.purpose, 1,
       COALESCE((SELECT MIN(e.source_id) FROM consent_events AS e WHERE e.user_id = i.user_id),
                (SELECT id FROM change_sources WHERE kind = 'upgrade'))
  FROM identifier_purposes AS p JOIN identifiers AS i ON i.id = p.identifier_id
 ORDER BY p.identifier_id, p.purpose;

-- The history's source_id is NOT NULL: a change made outside a sourced transaction fails.
CREATE TRIGGER purpose_added AFTER INSERT ON identifier_purposes
BEGIN
    INSERT INTO purpose_changes (identifier_id, purpose, held, source_id)
    VALUES (NEW.identifier_id, NEW.purpose, 1, (SELECT source_id FROM writing_source));
END;
CREATE TRIGGER purpose_withdrawn AFTER DELETE ON identifier_purposes
BEGIN
    INSERT INTO purpose_changes (identifier_id, purpose, held, source_id)
    VALUES (OLD.identifier_id, OLD.purpose, 0, (SELECT source_id FROM writing_source));
END;

CREATE TRIGGER users_consent_changed AFTER UPDATE OF ads_matching ON users
WHEN NEW.ads_matching IS NOT OLD.ads_matching
BEGIN
    INSERT INTO consent_changes (user_id, state, source_id)
    VALUES (NEW.user_id, NEW.ads_matching, (SELECT source_id FROM writing_source));
END;

-- THE precedence rule. A revocation always takes effect, whatever the dates of the
-- grants recorded before it. A grant takes effect only when dated after every event
-- recorded for the user so far (consent_effective_at keeps the latest date seen), so an
-- old grant replayed by a later import cannot undo a revocation. Within one transaction
-- the writers insert a user's events in date order, a revocation after a grant of the
-- same time, so a file is read as the history it describes: its latest row wins.
"""
    + _CONSENT_EVENT_TRIGGERS
    + """
ALTER TABLE advertisers ADD COLUMN previous_token_hash BLOB
    CHECK (previous_token_hash IS NULL OR length(previous_token_hash) = 32);
-- The previous token keeps working until then (an overlap for rotation), if set.
ALTER TABLE advertisers ADD COLUMN previous_token_until TEXT;
-- When the session's stream began: its table was read between this and opened_at.
ALTER TABLE sessions ADD COLUMN started_at TEXT;
"""
    + _append_only("erasures")
    + _append_only("purpose_changes")
    + _erasable("consent_events", ("id", "scope", "state", "effective_at", "source_id"))
    + _erasable("consent_changes", ("id", "state", "source_id"))
    + _erasable("identifier_history", ("identifier_id", "id_type")),
    # 5: each value's hashed point is stored once, keyed by the value, with the number of
    # identifier rows that hold it. An import writes its new points in key order, one
    # sequential pass, where keeping them on the identifiers row meant an index on the
    # value inserted in random order (most of an import's final transaction). The index
    # goes: the points table finds a value already hashed, and the count says when its
    # last holder is deleted, and the point with it.
    """
CREATE TABLE points (
    id_type TEXT NOT NULL CHECK (id_type IN ('email', 'phone')),
    value_hash BLOB NOT NULL CHECK (length(value_hash) = 32),
    point BLOB NOT NULL CHECK (length(point) = 32),
    holders INTEGER NOT NULL CHECK (holders >= 0),
    PRIMARY KEY (id_type, value_hash)
) WITHOUT ROWID;
INSERT INTO points (id_type, value_hash, point, holders)
SELECT id_type, value_hash, MIN(point), COUNT(*) FROM identifiers
 GROUP BY id_type, value_hash ORDER BY id_type, value_hash;
DROP TRIGGER identifiers_point_insert;
DROP TRIGGER identifiers_point_update;
DROP INDEX identifiers_by_value;
ALTER TABLE identifiers DROP COLUMN point;
CREATE TRIGGER identifiers_point_held AFTER INSERT ON identifiers
BEGIN
    SELECT RAISE(ABORT, 'an identifier needs its hashed point in points')
     WHERE NOT EXISTS (SELECT 1 FROM points
                        WHERE id_type = NEW.id_type AND value_hash = NEW.value_hash);
    UPDATE points SET holders = holders + 1
     WHERE id_type = NEW.id_type AND value_hash = NEW.value_hash;
END;
CREATE TRIGGER identifiers_point_released AFTER DELETE ON identifiers
BEGIN
    UPDATE points SET holders = holders - 1
     WHERE id_type = OLD.id_type AND value_hash = OLD.value_hash;
    DELETE FROM points
     WHERE id_type = OLD.id_type AND value_hash = OLD.value_hash AND holders = 0;
END;
""",
    # 6: consent events are keyed by what finds them (a user's events of a state and
    # date, as an import looks each of its events up), with no row number and no separate
    # index: an import of a million new users wrote both, 134 MiB, where this writes 75.
    # The source completes the key: one command or file records an event once per user.
    """
CREATE TABLE consent_events_v6 (
    -- Not a foreign key: history outlives the user (an erased user's becomes a tombstone).
    user_id TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('granted', 'revoked')),
    effective_at TEXT NOT NULL,
    source_id INTEGER NOT NULL REFERENCES change_sources (id) DEFERRABLE INITIALLY DEFERRED,
    scope TEXT NOT NULL CHECK (scope = 'ads_matching'),
    PRIMARY KEY (user_id, state, effective_at, source_id)
) WITHOUT ROWID;
INSERT INTO consent_events_v6 (user_id, state, effective_at, source_id, scope)
SELECT user_id, state, effective_at, source_id, scope FROM consent_events
 ORDER BY user_id, state, effective_at, source_id;
DROP TABLE consent_events;
ALTER TABLE consent_events_v6 RENAME TO consent_events;
"""
    + _CONSENT_EVENT_TRIGGERS
    + _erasable("consent_events", ("scope", "state", "effective_at", "source_id")),
]
SCHEMA_VERSION = len(MIGRATIONS)


# Bytes per database page of a new registry (and of an import's scratch databases). An
# import writes each page it fills to the log and then to the file, a system call
# each, and most of a large import's system time is those calls: 16 KiB pages make a
# quarter as many as SQLite's default 4 KiB, for the same bytes.
PAGE_SIZE = 16384


def connect(path: str | Path, *, create: bool = False) -> sqlite3.Connection:
    """Open the registry. Refuses a missing file unless ``create``, and an old schema."""
    path = Path(path)
    if not create and not path.exists():
        raise RegistryError(f"no registry at {path}: run 'psi-server init --db {path}' first")
    conn = sqlite3.connect(
        path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False
    )
    if create:
        conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")  # a new file's; others keep theirs
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute("PRAGMA foreign_keys=ON")
    # Deleted rows are overwritten with zeros, so a withdrawn or erased identifier's
    # value hash and point do not linger in free space (see also ``checkpoint``).
    conn.execute("PRAGMA main.secure_delete=ON")
    if not create:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            conn.close()
            raise RegistryError(f"{path} is not an initialised registry: run 'psi-server init'")
        if version > SCHEMA_VERSION:
            conn.close()
            raise RegistryError(
                f"{path} has schema version {version}, newer than this program's "
                f"{SCHEMA_VERSION}: upgrade the program"
            )
        if version < SCHEMA_VERSION:
            migrate(conn)
    return conn


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations, each in its own transaction. Returns the new version."""
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    for target in range(version + 1, SCHEMA_VERSION + 1):
        if version:  # a new file's first steps are not an upgrade worth announcing
            log.info(
                "upgrading the registry schema to version %d (may take minutes on tens of "
                "millions of rows)",
                target,
            )
        with transaction(conn):
            for statement in _split(MIGRATIONS[target - 1]):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {target}")
    return SCHEMA_VERSION


def _split(script: str) -> list[str]:
    """Split a migration into statements (``executescript`` would commit implicitly)."""
    statements, current = [], []
    for line in script.splitlines():
        current.append(line)
        candidate = "\n".join(current).strip()
        if candidate and sqlite3.complete_statement(candidate):
            statements.append(candidate)
            current = []
    tail = "\n".join(current).strip()
    if tail:
        raise ValueError("incomplete SQL statement in migration")
    return statements


def init(path: str | Path) -> int:
    """Create (or upgrade) the registry file; idempotent. Returns the schema version."""
    conn = connect(path, create=True)
    try:
        return migrate(conn)
    finally:
        conn.close()


@contextmanager
def transaction(conn: sqlite3.Connection, immediate: bool = True) -> Iterator[sqlite3.Connection]:
    """One atomic transaction. ``BEGIN IMMEDIATE`` takes the write lock up front, so two
    writers serialize instead of failing half-way with SQLITE_BUSY on upgrade."""
    conn.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
    try:
        yield conn
    except BaseException:
        # SQLite has already rolled back after some errors (a full disk, for one); a
        # second ROLLBACK would then replace the real error with a confusing one.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def checkpoint(conn: sqlite3.Connection) -> bool:
    """Copy the write-ahead log into the main file and truncate it to nothing, so that
    pages holding deleted content are gone from both files. Waits for readers up to the
    busy timeout; False if some still held an older snapshot."""
    busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    return busy == 0


def integrity_ok(conn: sqlite3.Connection) -> bool:
    rows = conn.execute("PRAGMA integrity_check").fetchall()
    fk = conn.execute("PRAGMA foreign_key_check").fetchall()
    return rows == [("ok",)] and not fk
