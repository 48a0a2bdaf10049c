"""When the relay tries an event again that the center has not acknowledged.

PROTOCOL.md: without an ack the gateway re-sends the same envelope with backoff. The wait
doubles from ``resend_initial_s`` up to ``resend_max_s``, jittered so a fleet does not
re-send in step: by one factor drawn per gateway, so that events sent in order come due
again in the same order. It never starts below how long the center takes to ack right now: the
smoothed ack time of first attempts plus 4 x its variation (RFC 6298, with Karn's rule:
re-sent events are not measured). So a center that is merely slow (a deep drain with
thousands waiting) is not sent the whole window a second time.
"""

from __future__ import annotations

import random


class ResendTimer:
    """Measured ack times and the backoff derived from them."""

    def __init__(self, initial_s: float, max_s: float) -> None:
        self.initial_s = initial_s
        self.max_s = max_s
        self.srtt: float | None = None  # smoothed ack time of first attempts, seconds
        self.rttvar = 0.0  # its smoothed variation
        self.jitter = 0.8 + 0.4 * random.random()

    def sample(self, rtt: float) -> None:
        """An event acknowledged ``rtt`` seconds after its first and only attempt."""
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
            return
        self.rttvar += (abs(self.srtt - rtt) - self.rttvar) / 4
        self.srtt += (rtt - self.srtt) / 8

    def backoff(self, attempts: int) -> float:
        """Seconds until the next attempt of an event sent ``attempts`` times."""
        base = self.initial_s
        if self.srtt is not None:
            base = max(base, self.srtt + 4 * self.rttvar)
        delay = min(base * 2.0 ** max(attempts - 1, 0), self.max_s)
        return delay * self.jitter
