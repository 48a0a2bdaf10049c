"""A burst admitted at once (``admit_all``), mixed into ``SqlStore``: one look-up of what
the store has about the burst, duplicates decided from it, new envelopes written together;
what it cannot decide so goes through ``SqlStore._admit`` one by one."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Any

from center.store.base import WINDOW, Admission, Arrival
from center.store.rows import (
    ACCEPTED,
    BULK_TYPES,
    DUPLICATE,
    KNOWN_MAX,
    Known,
    known_query,
    new_rows,
)
from gateway.contract.envelope import EVENT_TYPES, Envelope


class BurstAdmission(ABC):
    """``SqlStore`` supplies the transaction, the statements and the one-by-one path."""

    _high: dict[str, int]  # kid -> highest accepted seq, this transaction's moves included
    _dirty: set[str]  # kids whose high moved in the open transaction

    @abstractmethod
    def transaction(self) -> AbstractContextManager[None]: ...

    @abstractmethod
    def _x(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

    @abstractmethod
    def _many(self, sql: str, rows: Sequence[Sequence[Any]]) -> int: ...

    @abstractmethod
    def high(self, kid: str) -> int: ...

    @abstractmethod
    def _raise_high(self, env: Envelope) -> None: ...

    @abstractmethod
    def _admit(self, env: Envelope, received: float, path: str) -> Admission: ...

    def admit_all(self, arrivals: Sequence[Arrival]) -> list[Admission]:
        """``admit`` each envelope of a burst, in order and with the same decisions, in a
        few statements for the whole burst: one look-up of what the store has (``_known``),
        then new events and heartbeats are written together (``_write_new``) and
        duplicates need nothing more; anything else (a state, a refused envelope) takes
        ``admit``'s path once everything before it is written. Should a write find a row
        the look-up did not (another instance wrote it meanwhile), the burst is admitted
        again one by one."""
        with self.transaction():
            self._x("SAVEPOINT admit_all")
            start = dict(self._high), set(self._dirty)
            out = self._admit_known(arrivals)
            if out is None:
                self._x("ROLLBACK TO SAVEPOINT admit_all")
                self._high, self._dirty = start
                out = [self._admit(a.env, a.received, a.path) for a in arrivals]
        return out

    def _admit_known(self, arrivals: Sequence[Arrival]) -> list[Admission] | None:
        out: list[Admission] = []
        known = self._known([a.env for a in arrivals if a.env.type in BULK_TYPES])
        new: list[Arrival] = []
        for a in arrivals:
            env = a.env
            got = self._decide(env, known) if env.type in BULK_TYPES else None
            if got is DUPLICATE:
                out.append(got)
            elif got is ACCEPTED:
                new.append(a)
                out.append(got)
                self._raise_high(env)  # a later envelope's window counts this one
                known.by_seq[(env.kid, env.seq)] = env.id
                known.ids.add((env.kid, env.id))
                if env.type in EVENT_TYPES:
                    known.kept.add(env.id)
            else:
                if new and not self._write_new(new):
                    return None
                new = []
                out.append(self._admit(env, a.received, a.path))
                known.unsure |= {(env.kid, env.seq), env.id}
        if new and not self._write_new(new):
            return None
        return out

    def _decide(self, env: Envelope, known: Known) -> Admission | None:
        """``_admit``'s decision from what is known: DUPLICATE (nothing to write), ACCEPTED
        (new: to be written), or None (``_admit`` decides: it writes, or it must ask)."""
        key = (env.kid, env.seq)
        if key in known.unsure or env.id in known.unsure:
            return None
        earlier = known.by_seq.get(key)
        if earlier is not None:
            return DUPLICATE if earlier == env.id else None  # else replayed-seq
        if env.seq <= self.high(env.kid) - WINDOW:
            return None  # seq-below-window
        if (env.kid, env.id) in known.ids:
            return DUPLICATE  # the same event re-signed under a new seq
        if env.type in EVENT_TYPES and env.id in known.kept:
            return None  # accepted, then its (kid, seq) left the window: admit decides
        return ACCEPTED

    def _known(self, envs: Sequence[Envelope]) -> Known:
        """What the store has about ``envs`` (see ``Known``)."""
        known = Known()
        for start in range(0, len(envs), KNOWN_MAX):
            for row in self._x(*known_query(envs[start : start + KNOWN_MAX])):
                known.add(*row)
        return known

    def _write_new(self, new: Sequence[Arrival]) -> bool:
        """Write envelopes the store did not have with one statement per table; False if a
        row was there after all (another writer; with one SQLite writer, never)."""
        for sql, batch, exact in new_rows(new).statements():
            if self._many(sql, batch) != len(batch) and exact:
                return False
        return True
