"""Accounts, sessions, API tokens and login rate limits of the web console.

Passwords are hashed with scrypt (memory-hard; n=2**14, r=8, p=1: 16 MiB per check) and a
random salt; API tokens are random and only their SHA-256 is stored. Sessions live in the
running center's memory: a restart signs everybody out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.errors import AlarmgwError

ROLES = ("dispatcher", "supervisor", "viewer")
CAN_ACT = frozenset({"dispatcher", "supervisor"})  # acknowledge and resolve
NAME_MAX = 64
PASSWORD_MIN = 8
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
LOGIN_WINDOW_S = 300.0
LOGIN_MAX_PER_USER = 5  # failed attempts per user name in the window
LOGIN_MAX_PER_ADDRESS = 20  # failed attempts per client address in the window


class AccountError(AlarmgwError):
    """An account operation that cannot be done; one line."""


def check_name(name: str) -> str:
    if not 1 <= len(name) <= NAME_MAX or not name.isprintable() or name != name.strip():
        raise AccountError(f"a user name is 1..{NAME_MAX} printable characters (got {name!r})")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)} (got {role!r})")
    return role


def hash_password(password: str) -> str:
    if len(password) < PASSWORD_MIN:
        raise AccountError(f"a password has at least {PASSWORD_MIN} characters")
    salt = secrets.token_bytes(16)
    digest = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    b64 = base64.b64encode
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${b64(salt).decode()}${b64(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        got = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except ValueError:
        return False
    return hmac.compare_digest(got, base64.b64decode(digest))


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode(), salt=salt, n=n, r=r, p=p, maxmem=256 * 1024 * 1024, dklen=32
    )


def new_token() -> tuple[str, str]:
    """A bearer token and the digest that is stored."""
    token = "agw_" + secrets.token_urlsafe(32)
    return token, token_digest(token)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(slots=True)
class Principal:
    """Who makes a request: a signed-in person or an integrator's token."""

    name: str
    role: str
    via: str  # session | token
    csrf: str = ""
    lang: str | None = None

    @property
    def can_act(self) -> bool:
        return self.role in CAN_ACT

    @property
    def actor(self) -> str:
        """The name in the audit trail."""
        return self.name if self.via == "session" else f"token:{self.name}"


@dataclass(slots=True)
class Session:
    principal: Principal
    last: float


@dataclass(slots=True)
class Sessions:
    """Signed-in sessions by their random cookie value."""

    idle_s: float
    clock: Callable[[], float] = time.time
    _by_id: dict[str, Session] = field(default_factory=dict)

    def open(self, name: str, role: str, lang: str | None) -> tuple[str, Principal]:
        sid = secrets.token_urlsafe(32)
        who = Principal(name, role, "session", csrf=secrets.token_urlsafe(32), lang=lang)
        self._by_id[sid] = Session(who, self.clock())
        return sid, who

    def get(self, sid: str | None) -> Principal | None:
        if not sid:
            return None
        found = self._by_id.get(sid)
        now = self.clock()
        if found is None or now - found.last > self.idle_s:
            self._by_id.pop(sid, None)
            return None
        found.last = now
        return found.principal

    def close(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def close_user(self, name: str) -> None:
        for sid in [s for s, v in self._by_id.items() if v.principal.name == name]:
            del self._by_id[sid]


@dataclass(slots=True)
class LoginLimiter:
    """Failed logins per user name and per client address in a sliding window."""

    clock: Callable[[], float] = time.time
    _fails: dict[str, deque[float]] = field(default_factory=dict)

    def _recent(self, key: str) -> deque[float]:
        got = self._fails.setdefault(key, deque())
        cut = self.clock() - LOGIN_WINDOW_S
        while got and got[0] < cut:
            got.popleft()
        return got

    def blocked(self, user: str, address: str) -> bool:
        return (
            len(self._recent("u:" + user)) >= LOGIN_MAX_PER_USER
            or len(self._recent("a:" + address)) >= LOGIN_MAX_PER_ADDRESS
        )

    def failed(self, user: str, address: str) -> None:
        now = self.clock()
        self._recent("u:" + user).append(now)
        self._recent("a:" + address).append(now)

    def succeeded(self, user: str) -> None:
        self._fails.pop("u:" + user, None)
