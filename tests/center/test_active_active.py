"""Two center instances on one shared subscription and one PostgreSQL: 1,000 alarms from 10
gateways that re-send what is not acked; one instance is killed (SIGKILL) mid-burst. Every
alarm is stored exactly once, and received (dispatched to a person) once."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest

from firmware_sim.broker import Mosquitto
from gateway.contract import envelope as E
from tests import pg
from tests.center.helpers import SITE, FakeGateway, alarm_body
from tests.center.rig import CenterRig

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

GATEWAYS, PER_GATEWAY = 10, 100


def test_two_instances_one_database_kill_one_mid_burst(
    tmp_path: Path, postgres: pg.Postgres
) -> None:
    dsn = postgres.new_database()
    gws = [(SITE, f"gw-{i}") for i in range(GATEWAYS)]
    with Mosquitto(tmp_path / "broker") as broker:
        rig = CenterRig(
            tmp_path,
            broker,
            {"kind": "postgresql", "dsn": dsn},
            gateways=gws,
            share_group="centers",
        )
        first = rig.start("center-a")
        rig.start("center-b")
        fakes = [FakeGateway(broker.port, site=s, gw=g, center_key=rig.center_key) for s, g in gws]
        try:
            sent = {
                fake.gw: [
                    # one key for all ten here: each gateway its own range of seqs
                    E.build(
                        type="alarm",
                        site=SITE,
                        gw=fake.gw,
                        seq=i * 1000 + n,
                        body=alarm_body(),
                        key=rig.gw_key,
                    )
                    for n in range(1, PER_GATEWAY + 1)
                ]
                for i, fake in enumerate(fakes)
            }
            for n in range(PER_GATEWAY):
                for fake in fakes:
                    fake.publish(sent[fake.gw][n], wait=False)
                if n == PER_GATEWAY // 4:
                    first.wait_for(lambda e: e.get("result") == "accepted", timeout=60)
                    first.kill()  # SIGKILL, mid-burst
            deadline = time.monotonic() + 240
            while True:  # the gateways re-send what is not acked yet, as a real one does
                missing = {
                    fake.gw: [e for e in sent[fake.gw] if e.id not in fake.acked_ids()]
                    for fake in fakes
                }
                if not any(missing.values()) or time.monotonic() > deadline:
                    break
                for fake in fakes:
                    for env in missing[fake.gw]:
                        fake.publish(env, wait=False)
                time.sleep(2.0)  # the re-send interval of this simulated gateway
            assert not any(missing.values()), {g: len(m) for g, m in missing.items() if m}
        finally:
            for fake in fakes:
                fake.close()
            rig.close()
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT COUNT(*) FROM alarms").fetchone() == (1000,)
        assert conn.execute("SELECT COUNT(*) FROM envelopes").fetchone() == (1000,)
        received = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT alarm_id) FROM alarm_audit WHERE action = 'received'"
        ).fetchone()
        assert received == (1000, 1000)
