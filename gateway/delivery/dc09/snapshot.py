"""What the DC-09 transmitter knows of its path, as one frozen value for ``/status``,
``/metrics`` and ``alarmgw status`` (no I/O, no cryptography: cheap to import)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# "starting": no frame answered or failed yet since the daemon started; "up": the last
# attempt was acknowledged; "down": the last attempt got no usable answer.
PathState = Literal["starting", "up", "down"]
# Why the last attempt failed: no TCP connection, no answer in time, the receiver closed
# the connection, NAK even with the receiver's time, DUH.
FailureKind = Literal["connect", "timeout", "closed", "nak", "duh"]


@dataclass(frozen=True, slots=True)
class Dc09Snapshot:
    receivers: tuple[str, ...]  # host:port, the primary first
    target: str  # the receiver the next attempt goes to
    transport: str  # "tcp" or "udp"
    encrypted: bool
    account: str
    state: PathState
    connected: bool  # a TCP connection (a UDP endpoint) to the receiver is open
    last_ack_age_s: float | None  # since the receiver last acknowledged any frame
    failing_for_s: float | None  # since the first failed attempt in a row
    last_error: str | None  # the last failed attempt's reason (kept after recovery)
    error_kind: FailureKind | None
    offset_s: float  # the receiver's clock minus ours, learnt from NAK
    frames_sent: int
    acks: int
    naks: int
    duhs: int
    failures: int  # attempts without a usable answer
    resyncs: int
    trouble_open: bool  # trouble 350 sent to the center and not yet restored
    supervision_s: float
    trouble_after_s: float
