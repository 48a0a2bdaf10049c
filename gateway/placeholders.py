"""Placeholders in a config: values a technician must replace before the file is valid.

The shipped examples (``config/*.example.toml``) are complete but name no real school: their
site-specific values are placeholders, so ``alarmgw config check`` and the daemon refuse them
with "replace this" until someone fills them in:

- any text containing ``REPLACE-ME`` (any case): ids such as ``replace-me-gw``, names,
  addresses, phone numbers, key paths;
- an IP address from the documentation ranges (RFC 5737 ``192.0.2.0/24``,
  ``198.51.100.0/24``, ``203.0.113.0/24``; RFC 3849 ``2001:db8::/32``), alone, as
  ``host:port`` or in a URL;
- ``lat = 0`` together with ``lon = 0`` (no school is at 0°, 0°).

Checked on the raw TOML, so every placeholder is reported in the same run as every other
problem, and before the values are otherwise judged.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from gateway.configerrors import Problems
from gateway.tomlpos import Loc

MARKER = "replace-me"
DOCUMENTATION_NETS = tuple(
    ipaddress.ip_network(net)
    for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)


def _documentation_address(text: str) -> str | None:
    """The documentation IP address in ``text`` (an address, host:port or URL), or None."""
    candidates = [text.strip("[]")]
    if "://" in text:
        candidates.append(urlsplit(text).hostname or "")
    else:
        host, sep, port = text.rpartition(":")
        if sep and port.isdigit():
            candidates.append(host.strip("[]"))
    for candidate in candidates:
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        if any(address in net for net in DOCUMENTATION_NETS):
            return str(address)
    return None


def placeholder_problems(data: Any, loc: Loc = ()) -> Problems:
    """Every placeholder in the raw TOML ``data``, as (key path, message)."""
    found: Problems = []
    if isinstance(data, Mapping):
        lat, lon = data.get("lat"), data.get("lon")
        if lat == 0 and lon == 0 and not isinstance(lat, bool) and not isinstance(lon, bool):
            found.append(((*loc, "lat"), "lat = 0, lon = 0 is a placeholder: replace this"))
        for key, value in data.items():
            found += placeholder_problems(value, (*loc, key))
    elif isinstance(data, list):
        for index, value in enumerate(data):
            found += placeholder_problems(value, (*loc, index))
    elif isinstance(data, str):
        address = _documentation_address(data)
        if MARKER in data.lower():
            shown = "" if loc and loc[-1] == "password" else f" {data!r}"  # never echo a secret
            found.append((loc, f"placeholder{shown}: replace this with the real value"))
        elif address is not None:
            found.append(
                (loc, f"{address} is a documentation address (a placeholder): replace this")
            )
    return found
