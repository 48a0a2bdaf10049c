"""The rows the center's store writes for a received envelope, and their statements (with
``?`` parameters, as ``center.store.sql``), shared by the one-by-one and the burst paths of
both backends."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from center.store.base import Admission, Arrival
from gateway.contract.envelope import Envelope

ALARM_TYPES = frozenset({"alarm", "test"})

ACCEPTED = Admission("accepted")
DUPLICATE = Admission("duplicate")
KNOWN_MAX = 1024  # envelopes looked up per statement (each one three parameters)
# What admit_all decides from its look-up and writes together (a state goes one by one).
BULK_TYPES = frozenset({"alarm", "test", "trouble", "restore", "heartbeat"})

INSERT_ACCEPTED = (
    "INSERT INTO accepted (kid, seq, id, type, at) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (kid, seq) DO NOTHING"
)
INSERT_ENVELOPE = (
    "INSERT INTO envelopes (id, kid, seq, type, site, gw, ts, received_at, path, body) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)
INSERT_ALARM = (
    "INSERT INTO alarms (id, site, gw, type, code, kind, input, ts, received_at, path, fresh, "
    "body) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) "
    "DO UPDATE SET fresh = excluded.fresh WHERE alarms.fresh < excluded.fresh"
)
INSERT_HEARTBEAT = (
    "INSERT INTO heartbeats (site, gw, id, session, ts, received_at, body) "
    "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (site, gw) DO UPDATE SET "
    "id = excluded.id, session = excluded.session, ts = excluded.ts, "
    "received_at = excluded.received_at, body = excluded.body "
    "WHERE heartbeats.ts <= excluded.ts"
)
INSERT_AUDIT = (
    "INSERT INTO alarm_audit (alarm_id, at, action, actor, detail) VALUES (?, ?, ?, ?, ?)"
)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def storable(value: str) -> str:
    """A gateway's text as both backends can keep it: PostgreSQL refuses NUL in text, and
    one refused row would hold back every burst after it, so NUL becomes U+FFFD."""
    return value.replace("\x00", "\ufffd")


def accepted_row(env: Envelope, received: float) -> tuple[Any, ...]:
    return (env.kid, env.seq, env.id, env.type, received)


def envelope_row(env: Envelope, received: float, path: str, body: str) -> tuple[Any, ...]:
    return (env.id, env.kid, env.seq, env.type, env.site, env.gw, env.ts, received, path, body)


def heartbeat_row(env: Envelope, received: float, body: str) -> tuple[Any, ...]:
    """The gateway's latest heartbeat (kept only if not older than the one there)."""
    return (env.site, env.gw, env.id, int(env.body["session"]), env.ts, received, body)


def alarm_fields(body: Mapping[str, Any]) -> tuple[str, str, str]:
    """An alarm's own columns (code, kind, input)."""
    return (
        storable(str(body.get("code"))),
        storable(str(body.get("kind"))),
        storable(str(body.get("input"))),
    )


def alarm_row(
    env: Envelope, received: float, path: str, body: str, *, fresh: bool
) -> tuple[Any, ...]:
    code, kind, inp = alarm_fields(env.body)
    where = (env.ts, received, path, int(fresh), body)
    return (env.id, env.site, env.gw, env.type, code, kind, inp, *where)


def received_audit(env: Envelope, path: str) -> tuple[str, str]:
    """(actor, detail) of an alarm's ``received`` audit row."""
    return f"{env.site}/{env.gw}", f"seq {env.seq} via {path}"


@dataclass(slots=True)
class NewRows:
    """The rows of a run of envelopes the store has not seen: each one's accepted row; for
    an event its envelope, and for an alarm or test its row (fresh) and ``received`` audit
    row; for a heartbeat the gateway's latest one."""

    accepted: list[tuple[Any, ...]] = field(default_factory=list)
    envelopes: list[tuple[Any, ...]] = field(default_factory=list)
    alarms: list[tuple[Any, ...]] = field(default_factory=list)
    audits: list[tuple[Any, ...]] = field(default_factory=list)
    heartbeats: list[tuple[Any, ...]] = field(default_factory=list)

    def statements(self) -> list[tuple[str, list[tuple[Any, ...]], bool]]:
        """(statement, rows, whether each row must change one row), in writing order."""
        return [
            (INSERT_ACCEPTED, self.accepted, True),
            (INSERT_ENVELOPE, self.envelopes, True),
            (INSERT_ALARM, self.alarms, True),
            (INSERT_AUDIT, self.audits, True),
            (INSERT_HEARTBEAT, self.heartbeats, False),  # an older one changes nothing
        ]


def new_rows(new: Sequence[Arrival]) -> NewRows:
    out = NewRows()
    for a in new:
        env = a.env
        body = a.body if a.body is not None else dumps(env.body)
        out.accepted.append(accepted_row(env, a.received))
        if env.type == "heartbeat":
            out.heartbeats.append(heartbeat_row(env, a.received, body))
            continue
        out.envelopes.append(envelope_row(env, a.received, a.path, body))
        if env.type in ALARM_TYPES:
            out.alarms.append(alarm_row(env, a.received, a.path, body, fresh=True))
            out.audits.append((env.id, a.received, "received", *received_audit(env, a.path)))
    return out


@dataclass(slots=True)
class Known:
    """What the store has about a burst's events (``SqlStore._known``), and what the burst
    wrote since: enough to decide a new event or a duplicate without asking again."""

    by_seq: dict[tuple[str, int], str] = field(default_factory=dict)  # (kid, seq) -> id
    ids: set[tuple[str, str]] = field(default_factory=set)  # (kid, id) accepted
    kept: set[str] = field(default_factory=set)  # ids with an envelope row
    unsure: set[object] = field(default_factory=set)  # (kid, seq) and ids admit's path wrote

    def add(self, kind: int, kid: str | None, seq: int | None, event_id: str) -> None:
        """One row of ``known_query``."""
        if kind == 0 and kid is not None and seq is not None:
            self.by_seq[(kid, int(seq))] = event_id
        elif kind == 1 and kid is not None:
            self.ids.add((kid, event_id))
        else:
            self.kept.add(event_id)


def padded_values(rows: Sequence[Sequence[Any]], width: int) -> tuple[str, list[Any]]:
    """``VALUES (?, ...), ...`` for ``rows`` and their parameters, padded with NULL rows to
    a power of two (at least 8), so that a few statement shapes serve every burst."""
    size = 8
    while size < len(rows):
        size *= 2
    params: list[Any] = [value for row in rows for value in row]
    params += [None] * (width * (size - len(rows)))
    marks = "(" + ", ".join(["?"] * width) + ")"
    return "VALUES " + ", ".join([marks] * size), params


def known_query(envs: Sequence[Envelope]) -> tuple[str, list[Any]]:
    """One statement for what the store has about ``envs`` (at most ``KNOWN_MAX``), as rows
    for ``Known.add``: (0, kid, seq, id) accepted under (kid, seq); (1, kid, NULL, id)
    accepted from kid; (2, NULL, NULL, id) an envelope with that id."""
    values, params = padded_values([(e.kid, e.seq, e.id) for e in envs], 3)
    sql = (
        f"WITH v (kid, seq, id) AS ({values}) "  # noqa: S608 - placeholders only
        "SELECT 0, a.kid, a.seq, a.id FROM v JOIN accepted a ON a.kid = v.kid AND a.seq = v.seq "
        "UNION ALL SELECT 1, a.kid, NULL, a.id FROM v JOIN accepted a "
        "ON a.id = v.id AND a.kid = v.kid "
        "UNION ALL SELECT 2, NULL, NULL, e.id FROM v JOIN envelopes e ON e.id = v.id"
    )
    return sql, params


def sessions_query(gateways: Sequence[tuple[str, str]]) -> tuple[str, list[Any]]:
    """One statement for the latest session of each of ``gateways`` (at most
    ``KNOWN_MAX``): rows (site, gw, session), none for a gateway without a state yet."""
    values, params = padded_values(gateways, 2)
    sql = (
        f"WITH v (site, gw) AS ({values}) "  # noqa: S608 - placeholders only
        "SELECT s.site, s.gw, s.session FROM v JOIN gateway_state s "
        "ON s.site = v.site AND s.gw = v.gw"
    )
    return sql, params
