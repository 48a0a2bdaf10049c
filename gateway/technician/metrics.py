"""Prometheus text exposition (format 0.0.4) for ``/metrics``, without a client library.

Counters live where they are cheap to bump (an integer in the relay, the uplink, the inputs);
this module only turns a snapshot (gateway/snapshots.py) into text at scrape time, so the
alarm path pays no more than an increment. ``Histogram`` is the one metric object kept here
(ack latency).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.snapshots import (
    GatewaySnapshot,
    GpioInput,
    LinkSnapshot,
    MonitorsSnapshot,
    QueueSnapshot,
    SerialInput,
    input_state,
)

MetricType = Literal["counter", "gauge", "histogram"]

# Seconds from "committed to the outbox" to "the center's signed ack arrived": loopback is a
# few ms, a healthy 4G link tens to hundreds of ms, an outage minutes.
ACK_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)

Labels = Mapping[str, str]


@dataclass
class Family:
    """One metric family: ``samples`` are (labels, value); for a histogram use
    ``Histogram.samples`` which yields the ``_bucket``/``_sum``/``_count`` series."""

    name: str
    type: MetricType
    help: str
    samples: list[tuple[str, Labels, float]] = field(default_factory=list)

    def add(self, value: float, labels: Labels | None = None, *, suffix: str = "") -> Family:
        self.samples.append((self.name + suffix, labels or {}, value))
        return self


class Histogram:
    """Cumulative-bucket histogram. Not thread-safe by itself: the caller holds a lock."""

    def __init__(self, buckets: Sequence[float] = ACK_BUCKETS_S) -> None:
        self.bounds = tuple(sorted(buckets))
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy: bounds, per-bucket (non-cumulative) counts, sum, count."""
        return {
            "bounds": list(self.bounds),
            "counts": list(self.counts),
            "sum": self.sum,
            "count": self.count,
        }


def histogram_family(name: str, help_: str, snap: Mapping[str, Any]) -> Family:
    """A ``Family`` from ``Histogram.snapshot()`` output (cumulative ``le`` buckets)."""
    fam = Family(name, "histogram", help_)
    running = 0
    for bound, n in zip([*snap["bounds"], math.inf], snap["counts"], strict=True):
        running += n
        fam.add(running, {"le": _number(bound)}, suffix="_bucket")
    fam.add(snap["sum"], suffix="_sum")
    fam.add(snap["count"], suffix="_count")
    return fam


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if math.isnan(value):
        return "NaN"
    if float(value).is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def render(families: Iterable[Family]) -> str:
    """The text exposition of ``families`` (HELP and TYPE lines, then the samples)."""
    out: list[str] = []
    for fam in families:
        out.append(f"# HELP {fam.name} {_escape(fam.help)}")
        out.append(f"# TYPE {fam.name} {fam.type}")
        for name, labels, value in fam.samples:
            if labels:
                inner = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
                out.append(f"{name}{{{inner}}} {_number(value)}")
            else:
                out.append(f"{name} {_number(value)}")
    return "\n".join(out) + "\n"


def families(
    snap: GatewaySnapshot,
    queue: QueueSnapshot,
    *,
    healthy: bool,
    ack_latency: Mapping[str, Any],
) -> list[Family]:
    """The gateway's metrics from one snapshot (gateway/snapshots.py), the queue as read
    from the outbox, the ``/healthz`` verdict and ``Histogram.snapshot()`` of ack latency."""
    p, d = snap.process, snap.delivery
    fams = [
        Family("alarmgw_info", "gauge", "Build and identity of this gateway (always 1).").add(
            1, {"version": p.version, "site": p.site, "gw": p.id, "kid": p.kid}
        ),
        Family("alarmgw_uptime_seconds", "gauge", "Seconds since the daemon started.").add(
            p.uptime_s
        ),
        Family("alarmgw_healthy", "gauge", "1 when /healthz says the alarm path is alive.").add(
            1 if healthy else 0
        ),
    ]
    presses = Family(
        "alarmgw_presses_total", "counter", "Presses that raised a new alarm, per input."
    )
    raised = Family(
        "alarmgw_alarms_raised_total", "counter", "Alarms and tests raised (repeats excluded)."
    )
    by_type: dict[str, int] = {"alarm": 0, "test": 0}
    for row in d.raised:
        by_type[row.type] = by_type.get(row.type, 0) + row.count
    for i in snap.inputs:
        presses.add(i.alarms, {"input": i.ref})
    for kind, n in sorted(by_type.items()):
        raised.add(n, {"type": kind})
    fams += [presses, raised]
    c = d.counters
    fams.append(
        Family(
            "alarmgw_events_sent_total",
            "counter",
            "Publish attempts of queued events (re-sends included).",
        ).add(c.events_sent)
    )
    by_path = Family(
        "alarmgw_events_sent_by_path_total", "counter", "Publish attempts per broker path."
    )
    for path, n in d.sent_by_path:
        by_path.add(n, {"path": path})
    fams.append(by_path)
    fams.append(
        Family(
            "alarmgw_events_acked_total", "counter", "Events the center acknowledged (signed ack)."
        ).add(c.events_acked)
    )
    fams.append(
        Family(
            "alarmgw_publish_refused_total",
            "counter",
            "Publishes the broker refused (MQTT 5 reason >= 128, e.g. ACL).",
        ).add(c.publish_refused)
    )
    fams.append(
        Family(
            "alarmgw_acks_rejected_total", "counter", "Acks ignored (bad signature, wrong target)."
        ).add(c.acks_rejected)
    )
    refused = Family(
        "alarmgw_acks_refused_total",
        "counter",
        "Acks ignored, by reason (unknown-kid, bad-signature: a wrong or rotated center key).",
    )
    for r in d.refused_acks:
        refused.add(r.count, {"reason": r.reason})
    fams.append(refused)
    fams.append(
        histogram_family(
            "alarmgw_ack_latency_seconds",
            "Seconds from an event's commit to the center's signed ack.",
            ack_latency,
        )
    )
    fams += _queue_families(queue, d.memory_only)
    fams += _uplink_families(d.primary)
    fams += _serial_families([i for i in snap.inputs if isinstance(i, SerialInput)])
    gpio = [i for i in snap.inputs if isinstance(i, GpioInput)]
    if gpio:
        bounces = Family(
            "alarmgw_gpio_bounces_ignored_total", "counter", "GPIO edges ignored as bounce."
        )
        for g in gpio:
            bounces.add(g.bounces_ignored, {"input": g.ref})
        fams.append(bounces)
    up = Family("alarmgw_input_up", "gauge", "1 when the input is ok, 0 on trouble or unknown.")
    for i in snap.inputs:
        up.add(1 if input_state(i, snap.monitors) == "ok" else 0, {"input": i.ref})
    fams.append(up)
    if snap.monitors is not None:
        fams += site_families(snap.monitors)
    return fams


BOLLARD_STATES = ("up", "down", "moving", "fault", "unknown")


def site_families(m: MonitorsSnapshot) -> list[Family]:
    """The site as the monitors see it: bollard, recorder, open troubles, clock, disk and
    certificates. A figure not known yet (a recorder not asked) is left out, not zero."""
    fams: list[Family] = []
    if m.bollard is not None:
        state = Family("alarmgw_bollard_state", "gauge", "1 for the bollard's current state.")
        for name in BOLLARD_STATES:
            state.add(1 if m.bollard.state == name else 0, {"state": name})
        fams.append(state)
    c = m.camera
    if c is not None and c.polled:
        fams.append(
            Family("alarmgw_camera_recording", "gauge", "1 when the recorder records.").add(
                1 if c.recording else 0
            )
        )
        if c.retention_days is not None:
            fams.append(
                Family(
                    "alarmgw_camera_retention_days",
                    "gauge",
                    "Days of video the recorder holds (its worst channel's).",
                ).add(c.retention_days)
            )
    if c is not None:
        fams.append(
            Family(
                "alarmgw_camera_required_days", "gauge", "Days of video the policy requires."
            ).add(c.required_days)
        )
    troubles = Family("alarmgw_troubles_open", "gauge", "Open troubles by code and device.")
    counts: dict[tuple[str, str], int] = {}
    for t in m.troubles:
        counts[(t.code, t.device)] = counts.get((t.code, t.device), 0) + 1
    for (code, device), n in sorted(counts.items()):
        troubles.add(n, {"code": code, "device": device})
    fams.append(troubles)
    s = m.selfcheck
    if s.clock_synced is not None:
        fams.append(
            Family("alarmgw_clock_synced", "gauge", "1 when the system clock is synchronised.").add(
                1 if s.clock_synced else 0
            )
        )
    if s.free_bytes is not None:
        fams.append(
            Family(
                "alarmgw_disk_free_bytes", "gauge", "Free bytes on the state directory's disk."
            ).add(s.free_bytes)
        )
    if s.cert_days:
        days = Family(
            "alarmgw_certificate_days_left", "gauge", "Days until each TLS certificate expires."
        )
        for path, left in s.cert_days:
            days.add(left, {"file": path})
        fams.append(days)
    return fams


def _queue_families(queue: QueueSnapshot, memory_only: int) -> list[Family]:
    depth = Family("alarmgw_queue_pending", "gauge", "Events waiting for the center's ack.")
    oldest = Family("alarmgw_queue_oldest_age_seconds", "gauge", "Age of the oldest waiting event.")
    rows = {r.type: r for r in queue.rows}
    for kind in ("alarm", "test", "trouble", "restore"):
        row = rows.get(kind)
        depth.add(row.pending if row else 0, {"type": kind})
        oldest.add(row.oldest_age_s if row else 0, {"type": kind})
    memory = Family(
        "alarmgw_queue_memory_only", "gauge", "Events not durable (the outbox cannot be written)."
    ).add(memory_only)
    return [depth, oldest, memory]


def _uplink_families(uplink: LinkSnapshot) -> list[Family]:
    return [
        Family("alarmgw_mqtt_connected", "gauge", "1 while connected to the broker.").add(
            1 if uplink.connected else 0
        ),
        Family(
            "alarmgw_mqtt_reconnects_total", "counter", "Broker sessions lost and re-established."
        ).add(uplink.reconnects),
        Family(
            "alarmgw_uplink_loop_age_seconds",
            "gauge",
            "Seconds since the uplink loop last ticked (about 1 when healthy).",
        ).add(uplink.loop_age_s if uplink.loop_age_s is not None else -1),
    ]


def _serial_families(boxes: list[SerialInput]) -> list[Family]:
    if not boxes:
        return []
    frames = Family("alarmgw_serial_frames_total", "counter", "Valid frames from each box.")
    errors = Family(
        "alarmgw_serial_frame_errors_total", "counter", "Frames dropped, per box and reason."
    )
    connected = Family("alarmgw_serial_connected", "gauge", "1 while the serial port is open.")
    for b in boxes:
        frames.add(b.frames_ok, {"input": b.ref})
        connected.add(1 if b.connected else 0, {"input": b.ref})
        for reason, n in b.frame_errors:
            errors.add(n, {"input": b.ref, "reason": reason})
    return [frames, errors, connected]
