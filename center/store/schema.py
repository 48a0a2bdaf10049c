"""The center's database schema and its versioned migrations, shared by both backends.

Each migration is a list of statements with dialect placeholders (``{int}``, ``{real}``,
``{serial}``); the ``schema_version`` table records which ones a database has. A database
written by a newer alarmgw (a version above ``LATEST``) is refused, never downgraded.
"""

from __future__ import annotations

from collections.abc import Mapping

# The first version's tables keep the names and columns of the anti-replay state the
# reference receiver always had (accepted, signer, gateway_state), so an existing SQLite
# state file is adopted as it is.
_V1 = [
    """CREATE TABLE IF NOT EXISTS accepted (
        kid TEXT NOT NULL, seq {int} NOT NULL, id TEXT NOT NULL, type TEXT NOT NULL,
        at {real} NOT NULL, PRIMARY KEY (kid, seq))""",
    "CREATE INDEX IF NOT EXISTS accepted_id ON accepted (id)",
    "CREATE TABLE IF NOT EXISTS signer (kid TEXT PRIMARY KEY, high {int} NOT NULL)",
    """CREATE TABLE IF NOT EXISTS gateway_state (
        site TEXT NOT NULL, gw TEXT NOT NULL, session {int} NOT NULL, status TEXT NOT NULL,
        at {real} NOT NULL, PRIMARY KEY (site, gw))""",
    # Every accepted envelope but heartbeats, with its full body (JSON text).
    """CREATE TABLE IF NOT EXISTS envelopes (
        id TEXT PRIMARY KEY, kid TEXT NOT NULL, seq {int} NOT NULL, type TEXT NOT NULL,
        site TEXT NOT NULL, gw TEXT NOT NULL, ts TEXT NOT NULL, received_at {real} NOT NULL,
        path TEXT NOT NULL, body TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS envelopes_gw ON envelopes (site, gw, received_at)",
    """CREATE TABLE IF NOT EXISTS rejections (
        n {serial}, at {real} NOT NULL, topic TEXT NOT NULL, reason TEXT NOT NULL,
        detail TEXT NOT NULL, site TEXT, gw TEXT, kid TEXT, seq {int}, id TEXT,
        payload TEXT NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS heartbeats (
        site TEXT NOT NULL, gw TEXT NOT NULL, id TEXT NOT NULL, session {int} NOT NULL,
        ts TEXT NOT NULL, received_at {real} NOT NULL, body TEXT NOT NULL,
        PRIMARY KEY (site, gw))""",
    # Alarms and tests, with their lifecycle; fresh = 0: refused for its seq (PROTOCOL.md
    # "resync"), so its freshness could not be proven.
    """CREATE TABLE IF NOT EXISTS alarms (
        id TEXT PRIMARY KEY, site TEXT NOT NULL, gw TEXT NOT NULL, type TEXT NOT NULL,
        code TEXT NOT NULL, kind TEXT NOT NULL, input TEXT NOT NULL, ts TEXT NOT NULL,
        received_at {real} NOT NULL, path TEXT NOT NULL, fresh {int} NOT NULL,
        body TEXT NOT NULL, status TEXT NOT NULL DEFAULT 'new',
        acked_by TEXT, acked_at {real}, resolved_by TEXT, resolved_at {real},
        outcome TEXT, note TEXT)""",
    "CREATE INDEX IF NOT EXISTS alarms_status ON alarms (status, received_at)",
    """CREATE TABLE IF NOT EXISTS alarm_audit (
        n {serial}, alarm_id TEXT NOT NULL, at {real} NOT NULL, action TEXT NOT NULL,
        actor TEXT NOT NULL, detail TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS alarm_audit_alarm ON alarm_audit (alarm_id, n)",
    # center -> gateway envelopes a person caused (dispatch), waiting for the service.
    """CREATE TABLE IF NOT EXISTS outbox (
        n {serial}, type TEXT NOT NULL, site TEXT NOT NULL, gw TEXT NOT NULL,
        body TEXT NOT NULL, created_at {real} NOT NULL, claimed_by TEXT, claimed_at {real},
        sent_at {real}, sent_id TEXT)""",
    "CREATE INDEX IF NOT EXISTS outbox_unsent ON outbox (sent_at, n)",
    "CREATE TABLE IF NOT EXISTS resync_sent (kid TEXT PRIMARY KEY, at {real} NOT NULL)",
    # The liveness last reported per gateway: the instance whose update changes it reports.
    """CREATE TABLE IF NOT EXISTS liveness (
        site TEXT NOT NULL, gw TEXT NOT NULL, status TEXT NOT NULL, at {real} NOT NULL,
        PRIMARY KEY (site, gw))""",
]

# The web console's accounts, integrators' API tokens (only their SHA-256 is kept) and what
# people did there besides alarm steps (logins, account changes), append-only by use.
_V2 = [
    """CREATE TABLE IF NOT EXISTS console_users (
        name TEXT PRIMARY KEY, role TEXT NOT NULL, pw_hash TEXT NOT NULL,
        disabled {int} NOT NULL DEFAULT 0, lang TEXT, created_at {real} NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS console_tokens (
        digest TEXT PRIMARY KEY, name TEXT NOT NULL, role TEXT NOT NULL,
        disabled {int} NOT NULL DEFAULT 0, created_at {real} NOT NULL)""",
    """CREATE TABLE IF NOT EXISTS console_audit (
        n {serial}, at {real} NOT NULL, actor TEXT NOT NULL, action TEXT NOT NULL,
        detail TEXT NOT NULL)""",
    "CREATE INDEX IF NOT EXISTS alarms_received ON alarms (received_at)",
    "CREATE INDEX IF NOT EXISTS alarms_gw ON alarms (site, gw, received_at)",
]

MIGRATIONS: list[list[str]] = [_V1, _V2]
LATEST = len(MIGRATIONS)

# Append-only audit trail, enforced by the database.
APPEND_ONLY: Mapping[str, list[str]] = {
    "sqlite": [
        """CREATE TRIGGER IF NOT EXISTS alarm_audit_no_update BEFORE UPDATE ON alarm_audit
           BEGIN SELECT RAISE(ABORT, 'alarm_audit is append-only'); END""",
        """CREATE TRIGGER IF NOT EXISTS alarm_audit_no_delete BEFORE DELETE ON alarm_audit
           BEGIN SELECT RAISE(ABORT, 'alarm_audit is append-only'); END""",
    ],
    "postgresql": [
        """CREATE OR REPLACE FUNCTION alarm_audit_append_only() RETURNS trigger
           LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'alarm_audit is append-only'; END $$""",
        """CREATE OR REPLACE TRIGGER alarm_audit_append_only BEFORE UPDATE OR DELETE
           ON alarm_audit FOR EACH ROW EXECUTE FUNCTION alarm_audit_append_only()""",
    ],
}

DIALECTS: Mapping[str, Mapping[str, str]] = {
    "sqlite": {"int": "INTEGER", "real": "REAL", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgresql": {"int": "BIGINT", "real": "DOUBLE PRECISION", "serial": "BIGSERIAL PRIMARY KEY"},
}


def statements(dialect: str, version: int) -> list[str]:
    """The statements that bring a database from ``version - 1`` to ``version``."""
    words = DIALECTS[dialect]
    out = [sql.format(**words) for sql in MIGRATIONS[version - 1]]
    if version == 1:
        out += APPEND_ONLY[dialect]
    return out
