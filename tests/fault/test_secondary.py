"""The second broker path: while the primary is down, alarms go out on the
secondary at once and other events and heartbeats after ``failover_after_s``; the center
listens on both and dispatches each event once; which path carried what is counted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from center.service import Center, Registry, Verdict
from center.state import CenterState
from firmware_sim.broker import Mosquitto
from gateway.contract.signing import SigningKey
from gateway.contract.topics import topic
from gateway.delivery.outbox import Outbox
from gateway.delivery.relay import Identity, Relay
from gateway.delivery.seq import SeqCounter
from gateway.delivery.uplink import MqttSettings, Uplink
from gateway.monitors.heartbeat import Heartbeat
from tests.test_heartbeat_liveness import BODY as HEARTBEAT
from tests.test_uplink_relay import GW, PREFIX, SITE, Led, wait_until

BEAT = topic(PREFIX, SITE, GW, "heartbeat")
FAILOVER_S = 3.0


@dataclass
class TwoPaths:
    b1: Mosquitto
    relay: Relay
    hb: Heartbeat
    verdicts: list[Verdict]  # everything the center decided
    via_second: list[str]  # topics the center got from the secondary broker
    uplinks: tuple[Uplink, Uplink, Uplink, Uplink]  # center 1, center 2, gateway 1, gateway 2

    def accepted(self, event_id: str) -> bool:
        return any(v.env and v.env.id == event_id and v.result == "accepted" for v in self.verdicts)


@contextlib.asynccontextmanager
async def two_paths(tmp_path: Path, *, primary_up: bool = True) -> AsyncIterator[TwoPaths]:
    """Two real brokers; a center listening on both; a relay and a heartbeat wired as the
    daemon wires them (the heartbeat on the relay's path for its type)."""
    gw_key, c_key = SigningKey.generate(), SigningKey.generate()
    with Mosquitto(tmp_path / "b1") as b1, Mosquitto(tmp_path / "b2") as b2:
        if not primary_up:
            b1.stop()
        reg = Registry()
        reg.add(SITE, GW, gw_key.verify_key)
        center = Center(
            prefix=PREFIX,
            key=c_key,
            seq=SeqCounter(tmp_path / "cseq"),
            state=CenterState(tmp_path / "c.sqlite"),
            registry=reg,
        )
        verdicts: list[Verdict] = []
        center.listeners.append(verdicts.append)
        via_second: list[str] = []

        def from_second(name: str, payload: bytes) -> None:
            via_second.append(name)
            center.on_message(name, payload, via=c2)

        def center_link(port: int, on_message: Callable[[str, bytes], None]) -> Uplink:
            return Uplink(
                MqttSettings("127.0.0.1", port, 5, "center", backoff_max_s=1.0),
                subscriptions=center.subscriptions(),
                on_message=on_message,
            )

        c1 = center_link(b1.port, center.on_message)
        center.attach(c1)
        c2 = center_link(b2.port, from_second)
        gseq = SeqCounter(tmp_path / "gseq")
        relay = Relay(
            ident=Identity(SITE, GW, PREFIX),
            key=gw_key,
            seq=gseq,
            outbox=Outbox(tmp_path / "o.sqlite"),
            center_keys={c_key.kid: c_key.verify_key},
            location={"name": "Gate", "address": "Road 1", "lat": 1.0, "lon": 2.0},
            contact={"phone": "110"},
            resend_initial_s=0.3,
            resend_max_s=1.0,
        )
        ack = [topic(PREFIX, SITE, GW, "ack")]
        g1 = Uplink(
            MqttSettings("127.0.0.1", b1.port, 5, "gw", backoff_max_s=1.0),
            subscriptions=ack,
            on_message=relay.on_message,
            prepare=relay.prepare_session,
            on_state=relay.on_link,
        )
        g2 = Uplink(
            MqttSettings("127.0.0.1", b2.port, 5, "gw", backoff_max_s=1.0),
            subscriptions=ack,
            on_message=relay.on_message,
            on_state=lambda up: relay.on_link(up, path="secondary"),
        )
        relay.attach(g1, g2, failover_after_s=FAILOVER_S)
        hb = Heartbeat(
            ident=relay.ident,
            key=gw_key,
            seq=gseq,
            uplink=g1,
            interval_s=0.5,
            snapshot=lambda: dict(HEARTBEAT),
            session=lambda: relay.session,
            route=lambda: relay.route("heartbeat"),
        )
        jobs = (c1.run(), c2.run(), g1.run(), g2.run(), relay.pump(), hb.run())
        tasks = [asyncio.create_task(c) for c in jobs]
        try:
            yield TwoPaths(b1, relay, hb, verdicts, via_second, (c1, c2, g1, g2))
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            relay.outbox.close()
            gseq.close()
            center.state.close()


async def test_alarm_on_secondary_at_once_trouble_after_failover(tmp_path: Path) -> None:
    async with two_paths(tmp_path) as r:
        g1 = r.uplinks[2]
        relay = r.relay
        await wait_until(lambda: all(u.connected for u in r.uplinks))
        await wait_until(lambda: r.hb.stats["sent"] >= 2)
        assert BEAT not in r.via_second  # the primary carries heartbeats while it is up
        r.b1.stop()  # the primary goes away
        await wait_until(lambda: not g1.connected)
        loop = asyncio.get_running_loop()
        down_at = loop.time()
        trouble = relay.raise_event("trouble", {"code": "330", "device": "gateway", "detail": "t"})
        led = Led()
        alarm = relay.raise_alarm(input_ref="gpio:gate", feedback=led)
        await wait_until(lambda: led.modes[-1:] == ["solid"])  # acked via the secondary
        assert loop.time() - down_at < FAILOVER_S  # before failover: the alarm did not wait
        assert not any(v.env and v.env.id == trouble for v in r.verdicts)  # trouble waits
        await wait_until(lambda: r.accepted(trouble))
        assert relay.sent_by_path["secondary"] >= 2
        # Heartbeats too follow after the failover time, so the center does not call a
        # gateway stale that is alive on the second path.
        await wait_until(lambda: BEAT in r.via_second)
        r.b1.start()  # the primary comes back: un-acked work would go there again
        await wait_until(lambda: g1.connected)
        follow = Led()
        relay.raise_alarm(input_ref="gpio:gate", feedback=follow)
        await wait_until(lambda: follow.modes[-1:] == ["solid"])
        assert relay.sent_by_path["primary"] >= 1
        dispatched = [
            v.env.id
            for v in r.verdicts
            if v.result == "accepted" and v.env and v.env.type in ("alarm", "trouble")
        ]
        assert len(dispatched) == len(set(dispatched)) == 3
        assert alarm.event_id in dispatched
        assert relay.outbox.count() == 0


async def test_failover_when_the_primary_never_came_up(tmp_path: Path) -> None:
    # A gateway that starts while its primary broker is down: there was no "link lost" to
    # start the failover clock, which then starts when the relay first needs a path.
    async with two_paths(tmp_path, primary_up=False) as r:
        _, c2, g1, g2 = r.uplinks
        await wait_until(lambda: c2.connected and g2.connected)
        loop = asyncio.get_running_loop()
        started = loop.time()
        trouble = r.relay.raise_event(
            "trouble", {"code": "330", "device": "gateway", "detail": "t"}
        )
        await wait_until(lambda: r.accepted(trouble))
        assert loop.time() - started >= FAILOVER_S - 1.0  # the failover time still applies
        await wait_until(lambda: BEAT in r.via_second)
        assert not g1.connected and r.relay.sent_by_path["secondary"] >= 1
