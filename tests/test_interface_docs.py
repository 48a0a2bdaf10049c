"""The command-center interface documents: docs/asyncapi.yaml and docs/schemas/.

- The AsyncAPI document is valid AsyncAPI 3.0 according to the official parser
  (@asyncapi/parser, tools/asyncapi), and its channels and messages are the code's topics and
  envelope types.
- Every JSON Schema is a valid draft-07 schema; the signed vectors (tests/data) and the
  document's example validate; wrong envelopes do not.
- Real emitted messages, captured from the broker, validate against the schema of their type
  and against the payload the AsyncAPI document gives that message on that channel: from the
  real daemon and center as subprocesses (alarm, state online/offline, ack, and heartbeats
  as far as the daemon sends them), and from the relay in process for test, trouble and
  restore (no input of the daemon raises those on demand).
"""

from __future__ import annotations

import asyncio
import copy
import json
import os
import shutil
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft7Validator
from referencing import Registry, Resource

from firmware_sim.broker import Mosquitto
from firmware_sim.gpio import GpioSimClient
from gateway.contract.envelope import EVENT_TYPES, TYPES
from gateway.contract.topics import KINDS, parse_topic
from gateway.delivery.uplink import MqttSettings, Uplink
from tests.harness import PREFIX as HARNESS_PREFIX
from tests.harness import Site, is_event
from tests.test_uplink_relay import PREFIX, rig, wait_until

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"
SCHEMAS = DOCS / "schemas"
VALIDATOR = REPO / "tools" / "asyncapi" / "validate.cjs"
VECTORS = json.loads((REPO / "tests" / "data" / "envelopes.json").read_text())


def schema_registry() -> Registry:
    """Every schema file under its file URI, so relative ``$ref``s resolve as on disk."""
    resources = [
        (path.as_uri(), Resource.from_contents(json.loads(path.read_text())))
        for path in SCHEMAS.rglob("*.schema.json")
    ]
    return Registry().with_resources(resources)  # type: ignore[no-any-return]


REGISTRY = schema_registry()


def validator(kind: str) -> Draft7Validator:
    path = SCHEMAS / f"{kind}.schema.json"
    return Draft7Validator({"$ref": path.as_uri()}, registry=REGISTRY)


def errors(kind: str, envelope: Any) -> list[str]:
    return [f"{list(e.absolute_path)}: {e.message}" for e in validator(kind).iter_errors(envelope)]


@pytest.fixture(scope="module")
def asyncapi() -> dict[str, Any]:
    """What the official parser says about docs/asyncapi.yaml (tools/asyncapi/validate.cjs)."""
    installed = (VALIDATOR.parent / "node_modules" / "@asyncapi" / "parser").is_dir()
    if not (shutil.which("node") and installed):
        if os.environ.get("CI"):
            pytest.fail(
                "node or tools/asyncapi/node_modules missing: run scripts/ensure-system-deps.sh"
            )
        pytest.skip("node or the AsyncAPI parser is not installed (make test installs them)")
    result = subprocess.run(
        ["node", str(VALIDATOR), str(DOCS / "asyncapi.yaml")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    report: dict[str, Any] = json.loads(result.stdout)
    report["exit"] = result.returncode
    return report


def test_asyncapi_document_is_valid(asyncapi: dict[str, Any]) -> None:
    assert asyncapi["valid"] and asyncapi["exit"] == 0, asyncapi["errors"]
    assert asyncapi["errors"] == [] and asyncapi["warnings"] == []
    assert asyncapi["version"] == "3.0.0"


def test_asyncapi_describes_the_code(asyncapi: dict[str, Any]) -> None:
    channels = {c["id"]: c for c in asyncapi["channels"]}
    assert set(channels) == set(KINDS)
    for kind, channel in channels.items():
        assert channel["address"] == f"{PREFIX}/{{site}}/{{gw}}/{kind}"
    assert set(channels["event"]["messages"]) == EVENT_TYPES
    carried = [m for c in channels.values() for m in c["messages"]]
    assert sorted(carried) == sorted(TYPES)  # each type on exactly one channel
    actions = {o["id"]: (o["action"], o["channels"]) for o in asyncapi["operations"]}
    assert actions == {
        "sendEvent": ("send", ["event"]),
        "sendHeartbeat": ("send", ["heartbeat"]),
        "sendState": ("send", ["state"]),
        "receiveAck": ("receive", ["ack"]),
    }


def test_schemas_are_valid_draft7() -> None:
    files = sorted(SCHEMAS.rglob("*.schema.json"))
    assert {p.name for p in files if p.parent == SCHEMAS} == {
        f"{t}.schema.json" for t in [*TYPES, "envelope"]
    }
    assert {p.name for p in files if p.parent.name == "body"} == {f"{t}.schema.json" for t in TYPES}
    for path in files:
        Draft7Validator.check_schema(json.loads(path.read_text()))


def test_vectors_and_the_documented_example_validate() -> None:
    for vector in VECTORS["envelopes"]:
        signed = vector["signed"]
        assert errors(signed["type"], signed) == [], vector["name"]
    document = yaml.safe_load((DOCS / "asyncapi.yaml").read_text())
    example = document["components"]["messages"]["alarm"]["examples"][0]["payload"]
    alarm = next(v["signed"] for v in VECTORS["envelopes"] if v["name"] == "alarm")
    assert example == alarm  # the document shows the reference vector, byte for byte


def mutated(envelope: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(envelope)
    target = out
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return out


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (["sig"], ...),
        (["extra"], 1),
        (["v"], 2),
        (["seq"], 0),
        (["ts"], "2026-11-28T07:41:05Z"),
        (["id"], "019ac8a4-7f3e-4a21-9c4b-5d2e8f1a3b6c"),
        (["site"], "Not-An-Identity"),
        (["type"], "test"),
        (["body", "test"], True),
        (["body", "code"], "601"),
        (["body", "input"], "gate-main"),
        (["body", "location", "lat"], 91),
        (["body", "contact"], ...),
    ],
)
def test_schemas_reject_wrong_envelopes(path: list[str], value: Any) -> None:
    alarm = next(v["signed"] for v in VECTORS["envelopes"] if v["name"] == "alarm")
    assert errors("alarm", mutated(alarm, path, value)) != []


# -- real emitted messages --------------------------------------------------------------


@asynccontextmanager
async def tap(port: int, prefix: str) -> AsyncIterator[list[tuple[str, bytes]]]:
    """Everything published under ``prefix``, as seen by another client of the broker."""
    seen: list[tuple[str, bytes]] = []
    uplink = Uplink(
        MqttSettings("127.0.0.1", port, 5, "schema-tap", backoff_max_s=1.0),
        subscriptions=[f"{prefix}/#"],
        on_message=lambda name, payload: seen.append((name, payload)),
    )
    task = asyncio.create_task(uplink.run())
    try:
        await wait_until(lambda: uplink.connected)
        yield seen
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def check_captured(
    seen: list[tuple[str, bytes]], prefix: str, payloads: dict[str, Any]
) -> dict[str, int]:
    """Validate every captured message; returns how many of each type."""
    channel_messages = {c: set(TYPES_ON[c]) for c in TYPES_ON}
    counts: dict[str, int] = {}
    for name, raw in seen:
        where = parse_topic(prefix, name)
        assert where is not None, name
        envelope = json.loads(raw)
        kind = envelope["type"]
        assert kind in channel_messages[where[2]], f"{kind} on {name}"
        assert errors(kind, envelope) == [], (name, envelope)
        # And against the payload the AsyncAPI document itself gives this message.
        documented = Draft7Validator(payloads[kind]["schema"])
        assert list(documented.iter_errors(envelope)) == [], (name, envelope)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def acked_ids(seen: list[tuple[str, bytes]]) -> set[str]:
    acks = (json.loads(p) for name, p in seen if name.endswith("/ack"))
    return {i for ack in acks for i in ack["body"]["ids"]}


TYPES_ON = {
    "event": EVENT_TYPES,
    "heartbeat": frozenset({"heartbeat"}),
    "state": frozenset({"state"}),
    "ack": frozenset({"ack"}),
}


async def test_relay_emits_what_the_schemas_describe(
    tmp_path: Path, broker: Mosquitto, asyncapi: dict[str, Any]
) -> None:
    async with tap(broker.port, PREFIX) as seen, rig(tmp_path, broker.port) as r:
        ids = [
            r.relay.raise_alarm(input_ref="gpio:gate", feedback=None).event_id,
            r.relay.raise_alarm(
                input_ref="serial:box-1", feedback=None, code="601", kind="test", test=True
            ).event_id,
            r.relay.raise_event(
                "trouble", {"code": "137", "device": "serial:box-1", "detail": "lid open"}
            ),
            r.relay.raise_event(
                "restore", {"code": "137", "device": "serial:box-1", "detail": "lid closed"}
            ),
        ]
        await wait_until(lambda: r.relay.outbox.count() == 0)
        await wait_until(lambda: set(ids) <= acked_ids(seen))
        assert r.relay.will is not None
        await r.gw_uplink.close(final=r.relay.will)  # the clean-shutdown "offline" state
        await wait_until(lambda: any(b'"offline"' in p for _, p in seen))
    counts = check_captured(seen, PREFIX, asyncapi["payloads"])
    assert {"alarm", "test", "trouble", "restore", "state", "ack"} <= set(counts)


@pytest.mark.slow
async def test_daemon_emits_what_the_schemas_describe(
    site: Site, tmp_path: Path, asyncapi: dict[str, Any]
) -> None:
    site.buttons = [{"name": "gate-main", "pin": 17, "led_pin": 27}]
    site.heartbeat_s = 1.0  # heartbeats too, as far as the daemon sends them
    site.write_configs()
    sock = tmp_path / "gpio.sock"
    async with tap(site.broker.port, HARNESS_PREFIX) as seen:
        center = site.start_center()
        gateway = site.start_gateway(
            {"GPIOZERO_PIN_FACTORY": "mock", "ALARMGW_GPIO_SIM": str(sock)}
        )
        await asyncio.to_thread(
            gateway.wait_for, lambda e: e["event"] == "GPIO simulator listening", 20
        )
        async with GpioSimClient(sock) as gpio:
            await gpio.tap(17, 150)
        line = await asyncio.to_thread(
            gateway.wait_for, lambda e: e["event"] == "alarm registered", 20
        )
        await asyncio.to_thread(
            center.wait_for, lambda e: is_event("accepted")(e) and e["id"] == line["id"], 20
        )
        await asyncio.to_thread(
            gateway.wait_for, lambda e: e["event"] == "acknowledged by the center", 20
        )
        assert gateway.stop() == 0
        await wait_until(lambda: any(b'"offline"' in p for _, p in seen))
    counts = check_captured(seen, HARNESS_PREFIX, asyncapi["payloads"])
    assert {"alarm", "state", "ack"} <= set(counts), counts
    assert counts["state"] >= 2  # online (birth) and offline (clean stop)
