"""Snapshots (gateway/snapshots.py): immutable values, rendered into ``/status``, ``/metrics``
and the heartbeat; the HTTP endpoint and the monitors hold no reference to the gateway; the
gateway package has no import cycle."""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import gc
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import checks
from gateway.config import load_config
from gateway.contract import envelope as E
from gateway.contract.signing import SigningKey
from gateway.daemon import Gateway
from gateway.monitors.heartbeat import heartbeat_body
from gateway.snapshots import (
    BollardSnapshot,
    CameraSnapshot,
    DeliveryCounters,
    DeliverySnapshot,
    GatewaySnapshot,
    GpioInput,
    HeartbeatStats,
    LastAlarm,
    LinkSnapshot,
    MonitorsSnapshot,
    ProcessSnapshot,
    QueueRow,
    QueueSnapshot,
    Raised,
    SelfCheckSnapshot,
    SerialInput,
    SupervisorSnapshot,
    Trouble,
)
from gateway.technician import metrics, status
from tests.harness import Site

GATEWAY = Path(__file__).resolve().parent.parent / "gateway"
STATUS_KEYS = {
    "gateway",
    "health",
    "inputs",
    "uplink",
    "secondary",
    "sent_by_path",
    "loops",
    "queue",
    "last_alarm",
    "counters",
    "raised",
    "ack_latency",
    "bollard",
    "camera",
    "supervision",
    "selfcheck",
    "acks",
}


def link(path: str = "primary", connected: bool = True) -> LinkSnapshot:
    return LinkSnapshot(path, "127.0.0.1:1883", False, "5", connected, 2, None, 0.4)


def process() -> ProcessSnapshot:
    return ProcessSnapshot(
        "school-1", "gw-1", "k" * 16, "1.0", (("alarmgw", "1.0"),), 42, 3600.4, "/c", "/s"
    )


def delivery(memory_only: int = 0) -> DeliverySnapshot:
    return DeliverySnapshot(
        session=3,
        memory_only=memory_only,
        primary=link(),
        secondary=None,
        sent_by_path=(("primary", 5),),
        counters=DeliveryCounters(1, 5, 4, 0, 0),
        raised=(Raised("gpio:gate", "alarm", 1),),
        last_alarm=LastAlarm("01J0000000000000000000000", "alarm", "gpio:gate", "t", None),
        pump_age_s=0.1,
    )


def gpio(started: bool = True) -> GpioInput:
    state = "ok" if started else "trouble"
    return GpioInput("gpio:gate", "gate", state, 17, 27, started, False, 1, 0, 0, "solid", 1)


def serial(connected: bool = True, stale: bool = False, age: float | None = 1.0) -> SerialInput:
    verdict = checks.serial_link(
        "box", connected=connected, stale=stale, last_frame_age_s=age, limit_s=6.0
    )
    state = {"ok": "ok", "warning": "unknown", "failing": "trouble"}[verdict.level]
    return SerialInput(
        ref="serial:box",
        name="box",
        state=state,  # type: ignore[arg-type]
        link=verdict,
        port="/dev/ttyUSB0",
        baud=9600,
        connected=connected,
        stale=stale,
        box_id="B-1",
        fw="1.2",
        frames_ok=10,
        frame_errors=(("crc", 1),),
        last_frame_age_s=age,
        alarms=0,
    )


def monitors(
    *,
    bollard: BollardSnapshot | None = None,
    camera: CameraSnapshot | None = None,
    selfcheck: SelfCheckSnapshot | None = None,
    troubles: tuple[Trouble, ...] = (),
    device_states: tuple[tuple[str, Any], ...] = (),
) -> MonitorsSnapshot:
    return MonitorsSnapshot(
        bollard=bollard,
        camera=camera,
        selfcheck=selfcheck or SelfCheckSnapshot(True, 10**9, ()),
        troubles=troubles,
        flapping=(),
        device_states=device_states,
        heartbeat=HeartbeatStats(30.0, 3, 3, 0, 0, False),
    )


def snapshot(**over: Any) -> GatewaySnapshot:
    parts: dict[str, Any] = {
        "process": process(),
        "delivery": delivery(),
        "inputs": (gpio(), serial()),
        "monitors": monitors(),
        "supervisor": SupervisorSnapshot(()),
    }
    parts.update(over)
    return GatewaySnapshot(**parts)


QUEUE = QueueSnapshot((QueueRow("alarm", 1, 4.0, 0, None), QueueRow("trouble", 2, 9.5, 1, "x")))


def test_snapshots_are_immutable_all_the_way_down() -> None:
    snap = snapshot(
        monitors=monitors(
            bollard=BollardSnapshot("up", None, checks.bollard("up", [], "")),
            camera=CameraSnapshot(True, 34.0, 30, None, checks.camera([], "", polled=True)),
        )
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        snap.delivery.counters.events_sent = 9  # type: ignore[misc]
    hash(snap)  # only immutable values inside: no list or dict shared with the loop
    assert not hasattr(snap, "__dict__")  # slotted


def test_status_document_keeps_its_shape() -> None:
    doc = status.to_json(snapshot(), queue=QUEUE, problems=[])
    assert set(doc) == STATUS_KEYS
    assert doc["queue"] == {
        "pending": 3,
        "oldest_age_s": 9.5,
        "by_type": {
            "alarm": {"pending": 1, "oldest_age_s": 4.0, "failed_attempts": 0, "last_error": None},
            "trouble": {
                "pending": 2,
                "oldest_age_s": 9.5,
                "failed_attempts": 1,
                "last_error": "x",
            },
        },
        "memory_only": 0,
    }
    assert doc["uplink"]["session"] == 3 and doc["counters"]["events_acked"] == 4
    assert [i["state"] for i in doc["inputs"]] == ["ok", "ok"]
    assert doc["bollard"] == {"status": "not configured", "ok": None}


def test_metrics_from_a_snapshot_parse() -> None:
    snap = snapshot()
    fams = metrics.families(snap, QUEUE, healthy=True, ack_latency=status.AckLog().histogram())
    parsed = {f.name: f for f in text_string_to_metric_families(metrics.render(fams))}
    pending = {s.labels["type"]: s.value for s in parsed["alarmgw_queue_pending"].samples}
    assert pending == {"alarm": 1, "test": 0, "trouble": 2, "restore": 0}
    up = {s.labels["input"]: s.value for s in parsed["alarmgw_input_up"].samples}
    assert up == {"gpio:gate": 1, "serial:box": 1}


def test_a_box_with_an_open_trouble_is_trouble_in_status_metrics_and_heartbeat() -> None:
    tamper = Trouble("serial:box", "137", "open", "cover open")
    snap = snapshot(
        monitors=monitors(troubles=(tamper,), device_states=(("serial:box", "trouble"),))
    )
    doc = status.to_json(snap, queue=QUEUE)
    assert doc["inputs"][1]["state"] == "trouble"
    body = heartbeat_body(snap.process, QUEUE, snap.inputs, snap.monitors)  # type: ignore[arg-type]
    assert body["inputs"] == {"gpio:gate": "ok", "serial:box": "trouble"}
    fams = metrics.families(snap, QUEUE, healthy=True, ack_latency=status.AckLog().histogram())
    up = next(f for f in fams if f.name == "alarmgw_input_up")
    assert [v for _, _, v in up.samples] == [1, 0]


def test_heartbeat_body_from_snapshots_is_a_valid_heartbeat() -> None:
    m = monitors(
        bollard=BollardSnapshot("up", "2026-01-01T00:00:00.000Z", checks.bollard("up", [], "")),
        camera=CameraSnapshot(True, 34.0, 30, None, checks.camera([], "", polled=True)),
    )
    body = heartbeat_body(process(), QUEUE, (gpio(), serial()), m)
    assert body["queue"] == {"pending": 3, "oldest_s": 9.5} and body["uptime_s"] == 3600
    assert body["camera"] == {
        "recording": True,
        "retention_days": 34,
        "required_days": 30,
        "ok": True,
    }
    E.build(
        type="heartbeat",
        site="school-1",
        gw="gw-1",
        seq=1,
        body={**body, "session": 1},
        key=SigningKey.generate(),
    )


# -- the object graph ------------------------------------------------------------------------


def _referents(obj: object) -> list[object]:
    if isinstance(obj, types.FunctionType):
        # What a function keeps alive of its own: its closure and defaults (its module's
        # globals are shared by everything and hold no gateway).
        cells = [c.cell_contents for c in obj.__closure__ or () if c.cell_contents is not None]
        return [*cells, obj.__defaults__, obj.__kwdefaults__]
    return list(gc.get_referents(obj))


def reaches(start: object, target: object) -> bool:
    seen: set[int] = set()
    stack = [start]
    while stack:
        obj = stack.pop()
        if obj is target:
            return True
        if id(obj) in seen or isinstance(obj, type | types.ModuleType):
            continue
        seen.add(id(obj))
        stack.extend(_referents(obj))
    return False


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Gateway]:
    site = Site(root=tmp_path, broker=types.SimpleNamespace(port=1883))  # type: ignore[arg-type]
    site.tables["bollard"] = {"status_url": "http://127.0.0.1:9/status"}
    site.tables["camera"] = {"url": "http://127.0.0.1:9/nvr"}
    site.write_configs()
    gw = Gateway(load_config(site.gateway_toml))
    try:
        yield gw
    finally:
        gw.seq.close()
        gw.outbox.close()


async def test_endpoint_and_monitors_read_snapshots_not_the_gateway(gateway: Gateway) -> None:
    monitors = gateway.make_monitors()
    assert not reaches(gateway.health, gateway)
    assert not reaches(monitors, gateway)
    assert not reaches(gateway.snapshots, gateway)
    snap = gateway.snapshots.snapshot()
    assert snap.monitors is not None and snap.monitors.camera is not None
    doc = status.to_json(snap, queue=QueueSnapshot(()), problems=[])
    assert set(doc) == STATUS_KEYS
    assert doc["camera"]["verdict"]["level"] == "warning"  # not polled yet
    live = gateway.snapshots.liveness()
    assert {loop.name for loop in live.loops} == {"uplink", "outbox-pump"}
    assert "uplink loop is not running" in status.health_problems(live)
    await asyncio.sleep(0)


def test_the_gateway_package_has_no_import_cycle() -> None:
    """Module-level imports only (TYPE_CHECKING and function-local imports break no cycle
    at run time and are allowed)."""
    names = {
        ".".join(p.relative_to(GATEWAY.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in GATEWAY.rglob("*.py")
    }
    graph: dict[str, set[str]] = {}
    for name, path in names.items():
        deps: set[str] = set()
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                deps |= {node.module} & names.keys()
                deps |= {f"{node.module}.{a.name}" for a in node.names} & names.keys()
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names} & names.keys()
        graph[name] = deps - {name}

    def cycle_from(start: str) -> list[str] | None:
        stack: list[tuple[str, list[str]]] = [(start, [start])]
        seen: set[str] = set()
        while stack:
            node, path = stack.pop()
            for dep in graph[node]:
                if dep == start:
                    return [*path, dep]
                if dep not in seen:
                    seen.add(dep)
                    stack.append((dep, [*path, dep]))
        return None

    cycles = [c for c in map(cycle_from, sorted(graph)) if c]
    assert not cycles, cycles[0]
