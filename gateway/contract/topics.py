"""MQTT topics of PROTOCOL.md "Transport": ``P/{site}/{gw}/{kind}``."""

from __future__ import annotations

from typing import Literal

Kind = Literal["event", "heartbeat", "state", "ack"]
KINDS: tuple[Kind, ...] = ("event", "heartbeat", "state", "ack")


def topic(prefix: str, site: str, gw: str, kind: Kind) -> str:
    return f"{prefix}/{site}/{gw}/{kind}"


def parse_topic(prefix: str, name: str) -> tuple[str, str, str] | None:
    """(site, gw, kind) of a topic under ``prefix``, or None when it is not one of ours."""
    head = prefix + "/"
    if not name.startswith(head):
        return None
    parts = name[len(head) :].split("/")
    if len(parts) != 3 or parts[2] not in KINDS or not parts[0] or not parts[1]:
        return None
    return parts[0], parts[1], parts[2]
