"""Session takeover as trouble: device ``gateway``, code ``350`` communication trouble.

Another client with this gateway's MQTT client id took its broker session over
(gateway/delivery/takeover.py): two gateways share one id, so the command center may hear
either, and each delivers only between the other's sessions. PROTOCOL.md "Bodies" names no
code for it; ``350`` (communication trouble) is the link to the center failing, and the
device is ``gateway`` because the fault is the gateway's identity, not a peripheral's. The
DC-09 path raises ``350`` on ``gateway`` too; the details tell them apart ("MQTT session
taken over ..." here, "DC-09 ..." there).

The trouble opens at the first takeover and is restored once a session has held long
enough for a takeover to count as over (``Takeovers.clear_s``), on either broker path.
"""

from __future__ import annotations

import functools

from gateway.delivery.takeover import Takeover
from gateway.delivery.uplink import Uplink
from gateway.monitors.reporter import TroubleReporter

DEVICE = "gateway"
CODE = "350"
REASON = "session-takeover"


class TakeoverMonitor:
    """Reports (gateway, 350) while any watched broker path is taken over."""

    def __init__(self, reporter: TroubleReporter) -> None:
        self._reporter = reporter
        self._open: dict[str, Takeover] = {}

    def watch(self, uplink: Uplink, path: str = "primary") -> None:
        """Hear ``uplink``'s takeovers (``path``: which broker, for the detail)."""
        uplink.takeovers.listeners.append(functools.partial(self.changed, path))

    def changed(self, path: str, takeover: Takeover | None) -> None:
        if takeover is None:
            self._open.pop(path, None)
        else:
            self._open[path] = takeover
        if not self._open:
            self._reporter.set(DEVICE, CODE, False, detail="MQTT session held again")
            return
        where = ", ".join(
            f"{name} broker {t.count} time(s)" for name, t in sorted(self._open.items())
        )
        self._reporter.set(
            DEVICE,
            CODE,
            True,
            reason=REASON,
            detail=f"MQTT session taken over by another client with this gateway's id "
            f"({where}): two gateways share one id",
        )
