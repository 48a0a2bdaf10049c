"""The delivery rules on ``DeliveryCore`` alone: a fake clock, no broker, no disk.

The last test joins the real ``Relay`` (outbox in a temp dir) to a center stand-in over
the in-memory transport pair."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.contract.envelope import build, parse
from gateway.contract.signing import SigningKey
from gateway.delivery.core import PRIMARY, SECONDARY, DeliveryCore
from gateway.delivery.events import (
    AckRefused,
    Action,
    Feedback,
    Forget,
    Need,
    Outcome,
    Overdue,
    Publish,
    Resign,
    Row,
)
from gateway.delivery.lifecycle import ProtocolViolation, Stage
from gateway.delivery.memory import MemoryCenter, MemoryTransport
from gateway.delivery.outbox import Outbox
from gateway.delivery.relay import Identity, Relay
from gateway.delivery.seq import SeqCounter

SITE, GW, PREFIX = "school-1", "gw-1", "schoolalarm/v1"
GW_KEY = SigningKey.generate()
CENTER_KEY = SigningKey.generate()
ALARM_BODY = {
    "code": "120",
    "kind": "panic",
    "input": "gpio:gate",
    "test": False,
    "location": {"name": "Gate", "address": "Road 1", "lat": 1.0, "lon": 2.0},
    "contact": {"phone": "110"},
}
TEST_BODY = {**ALARM_BODY, "code": "601", "test": True}
TROUBLE_BODY = {"code": "330", "device": "gateway", "detail": "t"}
BODIES = {"alarm": ALARM_BODY, "test": TEST_BODY, "trouble": TROUBLE_BODY}
A = TypeVar("A")


def row(kind: str = "alarm", seq: int = 1, created: float = 1000.0) -> Row:
    env = build(type=kind, site=SITE, gw=GW, seq=seq, body=BODIES[kind], key=GW_KEY)
    return Row(env.id, kind, seq, env.to_bytes(), created)


def ack(
    ids: Sequence[str], *, key: SigningKey = CENTER_KEY, site: str = SITE, gw: str = GW
) -> bytes:
    return build(type="ack", site=site, gw=gw, seq=1, body={"ids": list(ids)}, key=key).to_bytes()


def of(kind: type[A], actions: Sequence[Action]) -> list[A]:
    return [a for a in actions if isinstance(a, kind)]


@dataclass
class Clock:
    """The fake clock and a core fed from it, with both paths attached."""

    core: DeliveryCore
    now: float = 0.0
    seq_next: int = 100
    seq_sent: int = 0
    log: list[Action] = field(default_factory=list)

    def tick(self, dt: float = 0.0) -> list[Action]:
        self.now += dt
        out = self.core.tick(self.now, seq_next=self.seq_next, seq_sent=self.seq_sent)
        self.log.extend(out)
        return out

    def puback(self, publishes: Sequence[Publish], outcome: Outcome = Outcome.OK) -> None:
        for p in publishes:
            self.core.published(p.id, outcome, self.now)

    def ack(self, ids: Sequence[str], **kw: object) -> list[Action]:
        return self.core.message(self.core.ack_topic, ack(ids, **kw), self.now)  # type: ignore[arg-type]


def clock(*, secondary: bool = False, **options: float) -> Clock:
    core = DeliveryCore(
        site=SITE,
        gw=GW,
        prefix=PREFIX,
        center_keys={CENTER_KEY.kid: CENTER_KEY.verify_key},
        **options,  # type: ignore[arg-type]
    )
    core.link(PRIMARY, True, 0.0)
    if secondary:
        core.link(SECONDARY, True, 0.0)
    core.loaded([], Need(None, 1), 0.0)  # an empty outbox at start
    return Clock(core)


def test_window_full_holds_the_rest() -> None:
    c = clock(max_inflight=4, max_unacked=6)
    c.core = DeliveryCore(
        site=SITE, gw=GW, prefix=PREFIX, center_keys={}, max_inflight=4, max_unacked=6
    )
    c.core.link(PRIMARY, True, 0.0)
    need = c.core.need()
    assert need == Need(None, 4)
    c.core.loaded([row(seq=i, created=i) for i in range(1, 5)], need, 0.0)
    first = of(Publish, c.tick())
    assert [p.seq for p in first] == [1, 2, 3, 4]
    assert c.core.need() is None and of(Publish, c.tick()) == []  # four in flight
    c.puback(first[:2])
    need = c.core.need()
    assert need is not None and need.limit == 2 and need.after == (0, 4.0, 4)
    c.core.loaded([row(seq=5, created=5), row(seq=6, created=6)], need, 0.0)
    assert [p.seq for p in of(Publish, c.tick())] == [5, 6]
    c.puback(first[2:])
    assert len(c.core) == 6 and c.core.need() is None  # six wait for the center: no more


def test_alarms_then_tests_then_troubles_oldest_first() -> None:
    c = clock()
    trouble, test, alarm_new, alarm_old = (
        row("trouble", 1, created=1.0),
        row("test", 2, created=2.0),
        row("alarm", 4, created=4.0),
        row("alarm", 3, created=3.0),
    )
    for r in (trouble, test, alarm_new, alarm_old):
        c.core.committed(r, c.now)
    sent = of(Publish, c.tick())
    assert [p.id for p in sent] == [alarm_old.id, alarm_new.id, test.id, trouble.id]


def test_a_resend_never_overtakes_an_alarm_that_waited_as_long() -> None:
    c = clock(resend_initial_s=2.0)
    alarm, test = row("alarm", 1, created=1.0), row("test", 2, created=2.0)
    c.core.committed(alarm, c.now)
    c.core.committed(test, c.now)
    sent = of(Publish, c.tick())
    assert [p.id for p in sent] == [alarm.id, test.id]
    c.puback(sent[1:])  # the broker took the test first; the alarm's PUBACK is slower
    c.now += 0.3
    c.puback(sent[:1])
    # Nobody received them (the center came back after the gateway). The test's re-send
    # comes due first, and the alarm goes with it, ahead of it.
    again: list[Publish] = []
    while not again:
        again = of(Publish, c.tick(0.05))
    assert [p.id for p in again] == [alarm.id, test.id]


def test_resends_come_due_in_the_order_the_events_went_out() -> None:
    c = clock(resend_initial_s=2.0)
    rows = [row("trouble", i, created=float(i)) for i in range(1, 13)]
    for r in rows:
        c.core.committed(r, c.now)
    sent = of(Publish, c.tick())
    for p in sent:  # one PUBACK after the other, in send order
        c.now += 0.001
        c.puback([p])
    resent: list[str] = []
    while len(resent) < len(rows):
        resent.extend(p.id for p in of(Publish, c.tick(0.01)))
    assert resent == [r.id for r in rows]


def test_a_press_goes_out_at_once_and_blinks_once_durable() -> None:
    c = clock()
    r = row()
    out = c.core.committed(r, 0.0, live=True, presser=True)
    assert [type(a) for a in out] == [Feedback, Publish]
    assert out[0] == Feedback(r.id, "blink") and out[1].flush  # type: ignore[union-attr]
    held = row(seq=2)
    assert of(Feedback, c.core.committed(held, 0.0, live=True, presser=True, durable=False)) == []


def test_live_trouble_waits_for_the_backlog_before_it() -> None:
    core = DeliveryCore(site=SITE, gw=GW, prefix=PREFIX, center_keys={}, max_inflight=2)
    core.link(PRIMARY, True, 0.0)
    old = [row("trouble", i, created=float(i)) for i in (1, 2, 3)]
    need = core.need()
    assert need is not None
    core.loaded(old[:2], need, 0.0)
    live = row("trouble", 9, created=9.0)
    core.committed(live, 0.0)
    sent = of(Publish, core.tick(0.0, seq_next=10, seq_sent=0))
    assert [p.id for p in sent] == [old[0].id, old[1].id]
    for p in sent:
        core.published(p.id, Outcome.OK, 0.0)
    need = core.need()
    assert need is not None and need.after == (2, 2.0, 2)
    core.loaded([old[2], live], need, 0.0)  # the outbox returns the live one too: held once
    assert [p.id for p in of(Publish, core.tick(0.0, seq_next=10, seq_sent=0))] == [
        old[2].id,
        live.id,
    ]


def test_failover_to_the_secondary_after_failover_after_s() -> None:
    c = clock(secondary=True, failover_after_s=30.0)
    c.core.link(PRIMARY, False, 0.0)
    trouble = row("trouble")
    c.core.committed(trouble, 0.0)
    assert of(Publish, c.tick(1.0)) == []  # not yet: the primary may come back
    alarm = row("alarm", 2)
    (p,) = of(Publish, c.core.committed(alarm, c.now, live=True))
    assert p.path == SECONDARY  # alarms and tests at once
    assert of(Publish, c.tick(28.0)) == []
    (late,) = of(Publish, c.tick(1.0))  # 30 s after the primary went down
    assert late.id == trouble.id and late.path == SECONDARY
    c.core.link(PRIMARY, True, c.now)
    assert c.core.route("trouble", c.now) == PRIMARY
    c.core.link(PRIMARY, False, c.now)
    assert c.core.route("trouble", c.now + 29.0) is None  # a new outage: a new wait
    assert c.core.route("alarm", c.now) == SECONDARY


def test_no_path_holds_everything() -> None:
    c = clock()
    c.core.link(PRIMARY, False, 0.0)
    assert of(Publish, c.core.committed(row(), 0.0, live=True)) == []
    assert of(Publish, c.tick(100.0)) == []
    c.core.link(PRIMARY, True, c.now)
    assert len(of(Publish, c.tick())) == 1


def test_resend_backoff_follows_measured_acks_with_karns_rule() -> None:
    c = clock(resend_initial_s=2.0, resend_max_s=600.0)
    timer = c.core.resend
    first = row(seq=1)
    (p,) = of(Publish, c.core.committed(first, c.now, live=True))
    c.puback([p])
    c.now = 3.0
    c.ack([first.id])
    assert timer.srtt == 3.0 and timer.rttvar == 1.5
    rto = 3.0 + 4 * 1.5
    # A second event: its first re-send waits at least 0.8 x rto, then it doubles.
    second = row(seq=2)
    (p,) = of(Publish, c.core.committed(second, c.now, live=True))
    c.puback([p])
    assert of(Publish, c.tick(0.8 * rto - 0.01)) == []
    c.now += 1.2 * rto - 0.8 * rto + 0.02
    (again,) = of(Publish, c.tick())
    assert (again.id, again.seq, again.attempt) == (second.id, p.seq, 2)
    assert again.payload == b""  # the same bytes, read back from the outbox
    c.puback([again])
    assert of(Publish, c.tick(0.8 * 2 * rto - 0.05)) == []  # doubled
    # Karn: the ack of a re-sent event is not a sample, however long it took.
    c.now += 40.0
    c.ack([second.id])
    assert timer.srtt == 3.0 and timer.rttvar == 1.5


def test_refused_publish_is_noted_and_retried_with_backoff() -> None:
    c = clock(resend_initial_s=2.0)
    r = row()
    (p,) = of(Publish, c.core.committed(r, 0.0, live=True))
    notes = c.core.published(p.id, Outcome.REFUSED, 0.0, "135 Not authorized")
    assert [(n.id, n.error) for n in notes] == [(r.id, "135 Not authorized")]  # type: ignore[union-attr]
    assert c.core.publish_refused == 1 and c.core.stage(r.id) is Stage.WAITING
    assert of(Publish, c.tick(1.5)) == []
    assert len(of(Publish, c.tick(1.0))) == 1


def test_lost_session_resends_as_soon_as_a_path_is_back() -> None:
    c = clock(resend_initial_s=30.0)
    r = row()
    (p,) = of(Publish, c.core.committed(r, 0.0, live=True))
    c.puback([p])
    c.core.link(PRIMARY, False, 1.0)
    c.core.link(PRIMARY, True, 2.0)
    (again,) = of(Publish, c.tick(2.0))  # not 30 s later: a new session
    assert again.id == r.id
    c.puback([again], Outcome.NOT_CONNECTED)
    assert [a.id for a in of(Publish, c.tick())] == [r.id]


def test_event_near_the_seq_window_edge_is_resigned_first() -> None:
    c = clock()
    old = row(seq=5)
    c.core.committed(old, 0.0)
    c.seq_next, c.seq_sent = 100_000, 10  # nothing newer than seq 10 ever left
    (p,) = of(Publish, c.tick())
    assert p.seq == 5  # a backlog drained in order needs no re-signing
    c.puback([p])
    # A re-send is measured against the newest seq issued: seq 5 is too old now.
    out = c.tick(1000.0)
    assert of(Publish, out) == []
    (resign,) = of(Resign, out)
    assert [i.id for i in resign.items] == [old.id]
    fresh = build(
        type="alarm", site=SITE, gw=GW, seq=100_000, body=ALARM_BODY, key=GW_KEY, id=old.id
    )
    (sent,) = of(Publish, c.core.resigned(c.now, fresh={old.id: (100_000, fresh.to_bytes())}))
    assert sent.id == old.id and sent.seq == 100_000 and parse(sent.payload).seq == 100_000


def test_first_send_is_resigned_once_something_newer_went_out() -> None:
    c = clock()
    old = row(seq=5)
    c.core.committed(old, 0.0)
    c.seq_next, c.seq_sent = 100_000, 99_999
    (resign,) = of(Resign, c.tick())
    # The store failed: nothing goes out now; the next tick tries again.
    assert c.core.resigned(c.now, fresh={}, failed=[old.id]) == []
    assert of(Resign, c.tick(1.0))
    # A damaged row: sent as it is, the center decides.
    (sent,) = of(Publish, c.core.resigned(c.now, fresh={}, as_is=[old.id]))
    assert sent.seq == 5 and resign.items[0].payload == sent.payload


def test_ack_forgets_and_turns_the_led_solid() -> None:
    c = clock()
    r = row()
    (p,) = of(Publish, c.core.committed(r, 0.0, live=True, presser=True, input_ref="gpio:gate"))
    c.puback([p])
    c.now = 0.25
    out = c.ack([r.id])
    assert of(Feedback, out) == [Feedback(r.id, "solid")]
    (forget,) = of(Forget, out)
    assert forget.ids == (r.id,)
    (d,) = forget.delivered
    assert (d.input, d.attempts, d.first_sent_at, d.acked_at) == ("gpio:gate", 1, 0.0, 0.25)
    assert not c.core.holds(r.id)
    assert c.core.published(p.id, Outcome.OK, 1.0) == []  # a late PUBACK changes nothing


def test_ack_for_an_unknown_id_only_forgets_the_row() -> None:
    c = clock()
    stranger = row()
    out = c.ack([stranger.id])
    # Maybe a row of a large backlog not loaded yet: the outbox drops it; nothing else.
    assert out == [Forget((stranger.id,), ())]
    assert c.core.resend.srtt is None


def test_ack_from_an_untrusted_kid_is_ignored() -> None:
    c = clock()
    r = row()
    (p,) = of(Publish, c.core.committed(r, 0.0, live=True, presser=True))
    c.puback([p])
    out = c.ack([r.id], key=SigningKey.generate())
    assert [a.reason for a in of(AckRefused, out)] == ["unknown-kid"]
    assert of(Forget, out) == [] and of(Feedback, out) == []
    assert c.core.holds(r.id) and c.core.acks_refused["unknown-kid"] == 1


@pytest.mark.parametrize(("site", "gw"), [(SITE, "gw-2"), ("school-2", GW)])
def test_ack_naming_another_gateway_is_ignored(site: str, gw: str) -> None:
    c = clock()
    r = row()
    c.core.committed(r, 0.0, live=True)
    out = c.ack([r.id], site=site, gw=gw)
    assert [a.reason for a in of(AckRefused, out)] == ["wrong-target"]
    assert c.core.holds(r.id) and c.core.acks_refused["wrong-target"] == 1


@pytest.mark.parametrize("payload", [b"garbage", b"{}", ack([row().id])[:-3]])
def test_garbage_on_the_ack_topic_is_counted(payload: bytes) -> None:
    c = clock()
    (refused,) = c.core.message(c.core.ack_topic, payload, 0.0)
    assert isinstance(refused, AckRefused) and sum(c.core.acks_refused.values()) == 1
    assert c.core.message(PREFIX + "/school-1/gw-1/other", payload, 0.0) == []


def test_no_ack_in_time_turns_the_led_fast_and_resending_goes_on() -> None:
    c = clock(ack_timeout_s=15.0, resend_initial_s=2.0)
    r = row()
    (p,) = of(Publish, c.core.committed(r, 0.0, live=True, presser=True))
    c.puback([p])
    assert c.core.next_deadline() is not None
    for _ in range(6):
        out = c.tick(2.4)
        assert of(Feedback, out) == []
        c.puback(of(Publish, out))
    out = c.tick(15.0 - c.now)
    assert of(Feedback, out) == [Feedback(r.id, "fast")] and of(Overdue, out)[0].id == r.id
    assert of(Feedback, c.tick(100.0)) == []  # once
    assert of(Feedback, c.ack([r.id])) == [Feedback(r.id, "solid")]


def test_a_repeated_press_blinks_again_and_hears_the_ack() -> None:
    c = clock()
    r = row()
    c.core.committed(r, 0.0, live=True)
    assert c.core.repeat(r.id, 1.0) == [Feedback(r.id, "blink")]
    assert of(Feedback, c.ack([r.id])) == [Feedback(r.id, "solid")]
    assert c.core.repeat(r.id, 2.0) == []


def test_the_lifecycle_refuses_an_impossible_step() -> None:
    c = clock()
    r = row()
    (p,) = of(Publish, c.core.committed(r, 0.0, live=True))
    with pytest.raises(ProtocolViolation, match="resign while inflight"):
        c.core.resigned(0.0, fresh={r.id: (7, p.payload)})


# -- the real Relay over the in-memory pair ------------------------------------------


@dataclass
class Led:
    modes: list[str] = field(default_factory=list)

    def led(self, mode: str) -> None:
        self.modes.append(mode)


async def wait_until(cond: object, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():  # type: ignore[operator]
            await asyncio.sleep(0.005)


def memory_relay(tmp: Path) -> Relay:
    return Relay(
        ident=Identity(SITE, GW, PREFIX),
        key=GW_KEY,
        seq=SeqCounter(tmp / "gseq"),
        outbox=Outbox(tmp / "outbox.sqlite"),
        center_keys={CENTER_KEY.kid: CENTER_KEY.verify_key},
        location=ALARM_BODY["location"],  # type: ignore[arg-type]
        contact={"phone": "110"},
    )


async def test_press_durable_published_acked_forgotten_solid(tmp_path: Path) -> None:
    relay = memory_relay(tmp_path)
    center = MemoryCenter(CENTER_KEY, {GW_KEY.kid: GW_KEY.verify_key}, PREFIX)
    link = MemoryTransport(center, relay.on_message)
    relay.attach(link)
    pump = asyncio.create_task(relay.pump())
    try:
        led = Led()
        raised = relay.raise_alarm(input_ref="gpio:gate", feedback=led)
        assert relay.outbox.get(raised.event_id) is not None  # durable when it returns
        assert [e.id for e in center.received] == [raised.event_id]  # straight onto the wire
        await wait_until(lambda: led.modes == ["blink", "solid"])
        assert relay.outbox.count() == 0 and relay.stats["events_acked"] == 1
        # A backlog raised while the path is down drains in order once it is back.
        link.connected = False
        relay.on_link(False)
        ids = [relay.raise_event("trouble", TROUBLE_BODY) for _ in range(3)]
        alarm = relay.raise_alarm(input_ref="gpio:gate", feedback=None).event_id
        link.connected = True
        relay.on_link(True)
        await wait_until(lambda: relay.outbox.count() == 0)
        assert [e.id for e in center.received[1:]] == [alarm, *ids]
        assert relay.stats["events_sent"] == 5 and relay.sent_by_path[PRIMARY] == 5
    finally:
        pump.cancel()
        await asyncio.gather(pump, return_exceptions=True)
        relay.outbox.close()


# -- any sequence of events ----------------------------------------------------------

OPS = st.lists(
    st.one_of(
        st.tuples(st.just("commit"), st.sampled_from(["alarm", "test", "trouble"]), st.booleans()),
        st.tuples(st.just("tick"), st.floats(0.0, 30.0), st.booleans()),
        st.tuples(st.just("end"), st.sampled_from(list(Outcome)), st.integers(0, 30)),
        st.tuples(st.just("ack"), st.integers(0, 60), st.booleans()),
        st.tuples(st.just("link"), st.sampled_from([PRIMARY, SECONDARY]), st.booleans()),
        st.tuples(st.just("resync"), st.integers(1, 100), st.booleans()),
    ),
    max_size=80,
)


@settings(max_examples=150, deadline=None)
@given(OPS)
def test_any_sequence_keeps_the_window_and_delivers_everything(ops: list[tuple[Any, ...]]) -> None:
    c = clock(secondary=True, max_inflight=4)
    ids: list[str] = []
    inflight: list[str] = []
    for op in ops:
        if op[0] == "commit":
            r = row(op[1], len(ids) + 1, created=float(len(ids)))
            ids.append(r.id)
            out = c.core.committed(r, c.now, live=op[2] and op[1] != "trouble", presser=op[2])
        elif op[0] == "tick":
            out = c.tick(op[1])
        elif op[0] == "end" and inflight:
            event_id = inflight.pop(op[2] % len(inflight))
            out = c.core.published(event_id, op[1], c.now)
        elif op[0] == "ack" and ids:
            out = c.ack([ids[op[1] % len(ids)]])
        elif op[0] == "link":
            c.core.link(op[1], op[2], c.now)
            out = []
        elif op[0] == "resync":
            body = {"kid": "0123456789abcdef", "next_seq": op[1]}
            msg = build(type="resync", site=SITE, gw=GW, seq=1, body=body, key=CENTER_KEY)
            out = c.core.message(c.core.ack_topic, msg.to_bytes(), c.now)
        else:
            out = []
        for resign in of(Resign, out):
            ready = {i.id: (1000 + n, b"x") for n, i in enumerate(resign.items)}
            fail = [i.id for i in resign.items] if op[-1] else []
            out += c.core.resigned(c.now, fresh={} if fail else ready, failed=fail)
        inflight += [p.id for p in of(Publish, out)]
        assert c.core.inflight == len(inflight) <= 4
    # Whatever happened, once a path is up and the center acks, everything is delivered.
    c.core.link(PRIMARY, True, c.now)
    for _ in range(200):
        for event_id in inflight:
            c.core.published(event_id, Outcome.OK, c.now)
        inflight = []
        out = c.tick(120.0)
        for resign in of(Resign, out):
            fresh = {i.id: (1000, b"x") for i in resign.items}
            out += c.core.resigned(c.now, fresh=fresh)
        inflight = [p.id for p in of(Publish, out)]
        if inflight:
            c.ack(inflight)
        if not len(c.core):
            break
    assert not len(c.core)
