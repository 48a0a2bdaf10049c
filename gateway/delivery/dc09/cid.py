"""Envelopes as Contact ID events (PROTOCOL.md "Bodies" → SIA DC-09 ``ADM-CID``).

``alarm`` / ``test``: the body's code, qualifier 1, the zone of the input that fired.
``trouble`` / ``restore``: the body's code with qualifier 1 / 3, the zone of the device when it
is an input, else zone 0. Zones come from the config: ``[dc09] zones`` or the inputs' order.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

FALLBACK_CODE = "330"  # a body without a 3-digit code still reaches the receiver as a trouble


@dataclass(frozen=True, slots=True)
class CidEvent:
    qualifier: int
    code: str
    zone: int


def zone_map(inputs: list[str], overrides: Mapping[str, int]) -> dict[str, int]:
    """Input ref (``gpio:<name>``, ``serial:<name>``) → zone: ``overrides`` first, the others
    numbered 1, 2, ... in config order, skipping the zones the overrides use."""
    zones = dict(overrides)
    used = set(zones.values())
    n = 0
    for ref in inputs:
        if ref in zones:
            continue
        n += 1
        while n in used:
            n += 1
        zones[ref] = n
    return zones


def from_payload(payload: bytes, zones: Mapping[str, int]) -> CidEvent | None:
    """The Contact ID event for one queued envelope; None if it is not one we carry."""
    try:
        env = json.loads(payload)
    except ValueError:
        return None
    if not isinstance(env, dict) or not isinstance(env.get("body"), dict):
        return None
    kind, body = env.get("type"), env["body"]
    code = body.get("code")
    if not (isinstance(code, str) and len(code) == 3 and code.isdigit()):
        code = FALLBACK_CODE
    if kind in ("alarm", "test"):
        ref = body.get("input")
        return CidEvent(1, code, zones.get(ref, 0) if isinstance(ref, str) else 0)
    if kind in ("trouble", "restore"):
        device = body.get("device")
        zone = zones.get(device, 0) if isinstance(device, str) else 0
        return CidEvent(1 if kind == "trouble" else 3, code, zone)
    return None
