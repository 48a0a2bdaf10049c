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
SEEN_MAX = 1024  # envelopes looked up per statement (each one three parameters)

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
INSERT_AUDIT = (
    "INSERT INTO alarm_audit (alarm_id, at, action, actor, detail) VALUES (?, ?, ?, ?, ?)"
)


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def accepted_row(env: Envelope, received: float) -> tuple[Any, ...]:
    return (env.kid, env.seq, env.id, env.type, received)


def envelope_row(env: Envelope, received: float, path: str, body: str) -> tuple[Any, ...]:
    return (env.id, env.kid, env.seq, env.type, env.site, env.gw, env.ts, received, path, body)


def alarm_fields(body: Mapping[str, Any]) -> tuple[str, str, str]:
    """An alarm's own columns (code, kind, input)."""
    return str(body.get("code")), str(body.get("kind")), str(body.get("input"))


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
    """The rows of a run of events the store has not seen: each one's accepted row and
    envelope, and for an alarm or test its row (fresh) and ``received`` audit row."""

    accepted: list[tuple[Any, ...]] = field(default_factory=list)
    envelopes: list[tuple[Any, ...]] = field(default_factory=list)
    alarms: list[tuple[Any, ...]] = field(default_factory=list)
    audits: list[tuple[Any, ...]] = field(default_factory=list)

    def statements(self) -> list[tuple[str, list[tuple[Any, ...]]]]:
        return [
            (INSERT_ACCEPTED, self.accepted),
            (INSERT_ENVELOPE, self.envelopes),
            (INSERT_ALARM, self.alarms),
            (INSERT_AUDIT, self.audits),
        ]


def new_rows(new: Sequence[Arrival]) -> NewRows:
    out = NewRows()
    for a in new:
        env = a.env
        body = a.body if a.body is not None else dumps(env.body)
        out.accepted.append(accepted_row(env, a.received))
        out.envelopes.append(envelope_row(env, a.received, a.path, body))
        if env.type in ALARM_TYPES:
            out.alarms.append(alarm_row(env, a.received, a.path, body, fresh=True))
            out.audits.append((env.id, a.received, "received", *received_audit(env, a.path)))
    return out


def seen_query(envs: Sequence[Envelope]) -> tuple[str, list[Any]]:
    """One statement finding which of ``envs`` (at most ``SEEN_MAX``) the store has: rows
    (kid, seq, NULL) for an accepted (kid, seq), (NULL, NULL, id) for a known id. The
    list is padded to a power of two, so that a few statement shapes serve every burst."""
    size = 8
    while size < len(envs):
        size *= 2
    params: list[Any] = []
    for env in envs:
        params += (env.kid, env.seq, env.id)
    params += (None, None, None) * (size - len(envs))
    values = ", ".join(["(?, ?, ?)"] * size)
    sql = (
        f"WITH v (kid, seq, id) AS (VALUES {values}) "  # noqa: S608 - placeholders only
        "SELECT a.kid, a.seq, NULL FROM v JOIN accepted a ON a.kid = v.kid AND a.seq = v.seq "
        "UNION ALL SELECT NULL, NULL, a.id FROM v JOIN accepted a ON a.id = v.id "
        "UNION ALL SELECT NULL, NULL, e.id FROM v JOIN envelopes e ON e.id = v.id"
    )
    return sql, params
