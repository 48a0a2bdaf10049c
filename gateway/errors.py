"""Error types. Ours and the peer's are different types; each carries what a technician
needs to act on it (which file line, which port, which key), and its str() is one line."""

from __future__ import annotations


class AlarmgwError(Exception):
    """An expected, explainable failure: the CLI prints str(err) on one line, no traceback."""


class ConfigError(AlarmgwError):
    """The config file is invalid. ``problems`` holds one line per problem
    (``FILE:LINE: key: what is wrong``)."""

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        first = problems[0] if problems else f"{path}: invalid config"
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(first + more)


class KeyFileError(AlarmgwError):
    """A key file is missing, unreadable, has the wrong mode or holds no Ed25519 key."""


class EnvelopeError(AlarmgwError):
    """An envelope from a peer is malformed or fails verification. ``reason`` is a short
    machine-friendly token (e.g. ``bad-signature``) used in the center's logs and --json."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class SerialProtocolError(AlarmgwError):
    """A line from a button box violates SERIAL.md. Never fatal to the link."""

    def __init__(self, reason: str, line: bytes = b"") -> None:
        self.reason = reason
        self.line = line
        shown = line[:40].decode("ascii", "backslashreplace")
        super().__init__(f"{reason}: {shown!r}" if line else reason)


class OutboxError(AlarmgwError):
    """The durable outbox could not be opened or written."""
