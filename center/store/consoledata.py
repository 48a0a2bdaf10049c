"""What the web console reads and writes beyond the alarm lifecycle, shared by both SQL
backends: accounts, API tokens, the console's own audit trail, the history search and the
fleet's latest heartbeats and liveness (schema version 2)."""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager
from typing import Any

from center.store.base import rows


class ConsoleQueries(ABC):
    """Mixed into ``SqlStore``, which supplies ``_x`` and ``transaction``."""

    @abstractmethod
    def _x(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """Run one statement in the current transaction."""

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]:
        """A transaction (or the batch already open)."""

    # -- accounts ---------------------------------------------------------------------

    def console_user(self, name: str) -> dict[str, Any] | None:
        with self.transaction():
            found = list(rows(self._x("SELECT * FROM console_users WHERE name = ?", (name,))))
        return found[0] if found else None

    def console_users(self) -> list[dict[str, Any]]:
        with self.transaction():
            return list(
                rows(
                    self._x(
                        "SELECT name, role, disabled, lang, created_at FROM console_users "
                        "ORDER BY name"
                    )
                )
            )

    def add_console_user(self, name: str, role: str, pw_hash: str, *, now: float) -> bool:
        """False when the name is taken."""
        with self.transaction():
            row = self._x(
                "INSERT INTO console_users (name, role, pw_hash, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (name) DO NOTHING RETURNING name",
                (name, role, pw_hash, now),
            ).fetchone()
        return row is not None

    def update_console_user(self, name: str, **fields: Any) -> bool:
        """Set ``pw_hash``, ``disabled``, ``role`` or ``lang``; False for an unknown name."""
        allowed = {"pw_hash", "disabled", "role", "lang"}
        if not fields or not fields.keys() <= allowed:
            raise ValueError("not an account column")
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.transaction():
            row = self._x(
                f"UPDATE console_users SET {sets} WHERE name = ? RETURNING name",  # noqa: S608 - checked names
                (*fields.values(), name),
            ).fetchone()
        return row is not None

    def add_console_token(self, digest: str, name: str, role: str, *, now: float) -> None:
        with self.transaction():
            self._x(
                "INSERT INTO console_tokens (digest, name, role, created_at) VALUES (?, ?, ?, ?)",
                (digest, name, role, now),
            )

    def console_token(self, digest: str) -> dict[str, Any] | None:
        with self.transaction():
            found = list(
                rows(
                    self._x(
                        "SELECT name, role FROM console_tokens WHERE digest = ? AND disabled = 0",
                        (digest,),
                    )
                )
            )
        return found[0] if found else None

    def disable_console_token(self, name: str) -> int:
        with self.transaction():
            found = self._x(
                "UPDATE console_tokens SET disabled = 1 WHERE name = ? RETURNING name", (name,)
            ).fetchall()
        return len(found)

    # -- the console's audit trail ----------------------------------------------------

    def console_audit_add(self, actor: str, action: str, detail: str, *, now: float) -> None:
        with self.transaction():
            self._x(
                "INSERT INTO console_audit (at, actor, action, detail) VALUES (?, ?, ?, ?)",
                (now, actor, action, detail),
            )

    def audit_log(self, *, limit: int = 200) -> list[dict[str, Any]]:
        """The latest alarm steps and console actions together, newest first."""
        with self.transaction():
            steps = list(
                rows(
                    self._x(
                        "SELECT at, alarm_id, action, actor, detail FROM alarm_audit "
                        "ORDER BY n DESC LIMIT ?",
                        (limit,),
                    )
                )
            )
            other = list(
                rows(
                    self._x(
                        "SELECT at, action, actor, detail FROM console_audit "
                        "ORDER BY n DESC LIMIT ?",
                        (limit,),
                    )
                )
            )
        for row in other:
            row["alarm_id"] = None
        return sorted(steps + other, key=lambda r: -float(r["at"]))[:limit]

    # -- history and fleet ------------------------------------------------------------

    def open_alarms(self, *, limit: int = 5000) -> list[dict[str, Any]]:
        """Alarms and tests not resolved, oldest first (through the status index)."""
        with self.transaction():
            found = list(
                rows(
                    self._x(
                        "SELECT * FROM alarms WHERE status IN ('new', 'acknowledged') "
                        "ORDER BY received_at LIMIT ?",
                        (limit,),
                    )
                )
            )
        for row in found:
            row["body"] = json.loads(row["body"])
            row["fresh"] = bool(row["fresh"])
        return found

    def search_alarms(
        self,
        *,
        sites: Sequence[tuple[str, str]] | None = None,
        since: float | None = None,
        until: float | None = None,
        kind: str | None = None,
        outcome: str | None = None,
        limit: int = 500,
    ) -> list[dict[str, Any]]:
        """Alarms newest first, filtered by gateway, received time, type and outcome."""
        where: list[str] = ["1 = 1"]
        params: list[Any] = []
        if sites is not None:
            if not sites:
                return []
            where.append("(" + " OR ".join("(site = ? AND gw = ?)" for _ in sites) + ")")
            for site, gw in sites:
                params += [site, gw]
        for clause, value in (
            ("received_at >= ?", since),
            ("received_at < ?", until),
            ("type = ?", kind),
            ("outcome = ?", outcome),
        ):
            if value is not None:
                where.append(clause)
                params.append(value)
        query = (
            f"SELECT * FROM alarms WHERE {' AND '.join(where)} "  # noqa: S608 - fixed clauses
            "ORDER BY received_at DESC LIMIT ?"
        )
        with self.transaction():
            found = list(rows(self._x(query, (*params, limit))))
        for row in found:
            row["body"] = json.loads(row["body"])
            row["fresh"] = bool(row["fresh"])
        return found

    def fleet(self) -> Iterator[dict[str, Any]]:
        """Per gateway seen: its latest heartbeat (body parsed) and reported liveness."""
        with self.transaction():
            beats = list(rows(self._x("SELECT site, gw, received_at, body FROM heartbeats")))
            live = {
                (r["site"], r["gw"]): r
                for r in rows(self._x("SELECT site, gw, status, at FROM liveness"))
            }
        for beat in beats:
            status = live.pop((beat["site"], beat["gw"]), None)
            yield {
                "site": beat["site"],
                "gw": beat["gw"],
                "heartbeat_at": float(beat["received_at"]),
                "heartbeat": json.loads(beat["body"]),
                "status": status["status"] if status else None,
                "status_at": float(status["at"]) if status else None,
            }
        for (site, gw), status in live.items():
            yield {
                "site": site,
                "gw": gw,
                "heartbeat_at": None,
                "heartbeat": None,
                "status": status["status"],
                "status_at": float(status["at"]),
            }

    def troubles(self) -> list[dict[str, Any]]:
        """Trouble and restore envelopes, oldest first (bodies parsed)."""
        with self.transaction():
            found = list(
                rows(
                    self._x(
                        "SELECT site, gw, type, received_at, body FROM envelopes "
                        "WHERE type IN ('trouble', 'restore') ORDER BY received_at"
                    )
                )
            )
        for row in found:
            row["body"] = json.loads(row["body"])
        return found
