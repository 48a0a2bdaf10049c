"""Before the recorder was asked, the heartbeat says its camera is unknown (``ok`` and
``recording`` null), which the schema, the envelope check and the center all accept."""

from __future__ import annotations

import json
from pathlib import Path

from jsonschema import Draft7Validator

from center.present import heartbeat_summary
from gateway import checks
from gateway.contract import envelope as E
from gateway.contract.signing import SigningKey
from gateway.monitors.heartbeat import heartbeat_body
from gateway.snapshots import CameraSnapshot
from tests.test_snapshots import QUEUE, gpio, monitors, process

SCHEMA = Path(__file__).resolve().parent.parent / "docs/schemas/body/heartbeat.schema.json"


def test_camera_not_polled_yet_is_unknown_and_valid() -> None:
    verdict = checks.camera([], "", polled=False)
    camera = CameraSnapshot(False, None, 30, None, verdict, polled=False)
    body = heartbeat_body(process(), QUEUE, (gpio(),), monitors(camera=camera))
    assert body["camera"] == {"recording": None, "required_days": 30, "ok": None}
    body = {**body, "session": 1}
    assert not list(Draft7Validator(json.loads(SCHEMA.read_text())).iter_errors(body))
    env = E.build(
        type="heartbeat", site="school-1", gw="gw-1", seq=1, body=body, key=SigningKey.generate()
    )
    line = heartbeat_summary(env.body)
    assert "camera unknown" in line and "NOT ok" not in line
