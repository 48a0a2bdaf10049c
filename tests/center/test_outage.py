"""PostgreSQL stopped for a while: the center withholds acks while it cannot commit, then
stores everything once and acknowledges it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from firmware_sim.broker import Mosquitto
from gateway.contract import envelope as E
from tests import pg
from tests.center.helpers import GW, SITE, FakeGateway, alarm_body
from tests.center.rig import CenterRig
from tests.helpers import poll as wait_until

pytestmark = pytest.mark.slow


def test_no_ack_while_the_database_is_down_then_each_alarm_once(
    tmp_path: Path, postgres: pg.Postgres
) -> None:
    # A server of its own: stopping it must not disturb the other tests' databases.
    server = pg.Postgres()
    try:
        with Mosquitto(tmp_path / "broker") as broker:
            rig = CenterRig(tmp_path, broker, {"kind": "postgresql", "dsn": server.dsn()})
            center = rig.start()
            gw = FakeGateway(broker.port, center_key=rig.center_key)
            try:
                before = E.build(
                    type="alarm", site=SITE, gw=GW, seq=1, body=alarm_body(), key=rig.gw_key
                )
                gw.publish(before)
                wait_until(lambda: before.id in gw.acked_ids(), what="ack")
                server.stop()
                during = [
                    E.build(
                        type="alarm", site=SITE, gw=GW, seq=s, body=alarm_body(), key=rig.gw_key
                    )
                    for s in range(2, 12)
                ]
                for env in during:
                    gw.publish(env)
                center.wait_for(
                    lambda e: e.get("event") == "cannot record a burst; not acknowledged",
                    stderr=True,
                )
                assert not {e.id for e in during} & gw.acked_ids()  # nothing acked uncommitted
                url = f"http://127.0.0.1:{rig.health_port}/healthz"
                with pytest.raises(urllib.error.HTTPError) as unhealthy:
                    urllib.request.urlopen(url, timeout=30)
                assert unhealthy.value.code == 503
                assert json.loads(unhealthy.value.read())["database"]["ok"] is False
                for env in during[:3]:
                    gw.publish(env)  # a gateway re-sends meanwhile
                server.start()
                wait_until(
                    lambda: {e.id for e in during} <= gw.acked_ids(),
                    timeout=60,
                    what="acks after the database came back",
                )
                ids = [a["id"] for a in rig.cli_json("alarms")]
                assert sorted(ids) == sorted([before.id] + [e.id for e in during])
                assert "Traceback" not in "\n".join(map(str, center.errors))
            finally:
                gw.close()
                rig.close()
    finally:
        server.close()
