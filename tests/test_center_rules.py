"""The center's verify / de-duplicate / anti-replay rules (PROTOCOL.md "Delivery semantics"),
on a real SQLite state file, without a broker."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from center.service import CHECKING_MAX, Center, console, human_line
from center.state import WINDOW
from gateway.contract import envelope as E
from gateway.contract.signing import SigningKey
from tests import helpers

SITE, GW, PREFIX = "school-1", "gw-1", "schoolalarm/v1"
GW_KEY = SigningKey.generate()
OTHER_KEY = SigningKey.generate()
CENTER_KEY = SigningKey.generate()
EVENT_TOPIC = f"{PREFIX}/{SITE}/{GW}/event"
BODY = {
    "code": "120",
    "kind": "panic",
    "input": "gpio:gate",
    "test": False,
    "location": {"name": "Gate", "address": "Road 1", "lat": 22.5, "lon": 114.0},
    "contact": {"phone": "110"},
}


def make_center(tmp_path: Path) -> Center:
    return helpers.make_center(tmp_path, [(SITE, GW, GW_KEY.verify_key)], key=CENTER_KEY)


def alarm(seq: int, key: SigningKey = GW_KEY, **kw: object) -> E.Envelope:
    args: dict = {"type": "alarm", "site": SITE, "gw": GW, "seq": seq, "body": BODY, "key": key}
    args.update(kw)
    return E.build(**args)


def test_accept_then_duplicate(tmp_path: Path) -> None:
    c = make_center(tmp_path)
    env = alarm(5)
    assert c.receive(EVENT_TOPIC, env.to_bytes()).result == "accepted"
    again = c.receive(EVENT_TOPIC, env.to_bytes())
    assert again.result == "duplicate"
    assert "not dispatched again" in human_line(again)


def test_state_survives_restart(tmp_path: Path) -> None:
    env = alarm(5)
    c = make_center(tmp_path)
    c.receive(EVENT_TOPIC, env.to_bytes())
    c.state.close()
    c2 = make_center(tmp_path)
    assert c2.receive(EVENT_TOPIC, env.to_bytes()).result == "duplicate"
    replay = alarm(5)  # same seq, another id
    v = c2.receive(EVENT_TOPIC, replay.to_bytes())
    assert (v.result, v.reason) == ("rejected", "replayed-seq")


def test_forged_tampered_and_misaddressed(tmp_path: Path) -> None:
    c = make_center(tmp_path)
    forged = alarm(7, key=OTHER_KEY)
    assert c.receive(EVENT_TOPIC, forged.to_bytes()).reason == "kid-not-registered"
    # signed by another key but claiming the registered kid
    claim = E.Envelope(**{**alarm(8, key=OTHER_KEY).to_dict(), "kid": GW_KEY.kid})
    assert c.receive(EVENT_TOPIC, claim.to_bytes()).reason == "bad-signature"
    good = alarm(9).to_dict()
    tampered = {**good, "body": {**good["body"], "input": "gpio:other"}}
    assert c.receive(EVENT_TOPIC, json.dumps(tampered).encode()).reason == "bad-signature"
    other_topic = f"{PREFIX}/{SITE}/gw-2/event"
    assert c.receive(other_topic, alarm(10).to_bytes()).reason == "topic-mismatch"
    v = c.receive(f"{PREFIX}/{SITE}/{GW}/heartbeat", alarm(11).to_bytes())
    assert v.reason == "wrong-topic"
    stranger = E.build(type="alarm", site=SITE, gw="gw-9", seq=1, body=BODY, key=GW_KEY)
    assert c.receive(f"{PREFIX}/{SITE}/gw-9/event", stranger.to_bytes()).reason == "unknown-gateway"
    # none of these was accepted, so the genuine envelopes still go through
    assert c.receive(EVENT_TOPIC, alarm(9).to_bytes()).result == "accepted"


def test_seq_window(tmp_path: Path) -> None:
    c = make_center(tmp_path)
    assert c.receive(EVENT_TOPIC, alarm(WINDOW + 100).to_bytes()).result == "accepted"
    assert c.receive(EVENT_TOPIC, alarm(101).to_bytes()).result == "accepted"  # inside window
    v = c.receive(EVENT_TOPIC, alarm(100).to_bytes())
    assert (v.result, v.reason) == ("rejected", "seq-below-window")


def test_window_and_pruning_survive_a_restart_after_a_group_commit(tmp_path: Path) -> None:
    # The signer's high-water mark lives in memory during a batch and reaches the table with
    # the batch's commit, together with the pruning of rows below the window.
    c = make_center(tmp_path)
    c.state.begin_batch()
    for seq in (100, 101, WINDOW + 100):
        assert c.receive(EVENT_TOPIC, alarm(seq).to_bytes()).result == "accepted"
    c.state.commit_batch()
    rows = c.state._db.execute("SELECT seq FROM accepted ORDER BY seq").fetchall()
    assert rows == [(101,), (WINDOW + 100,)]  # 100 fell below the window and was pruned
    c.state.close()
    c2 = make_center(tmp_path)
    assert c2.state.high(GW_KEY.kid) == WINDOW + 100
    v = c2.receive(EVENT_TOPIC, alarm(100).to_bytes())
    assert (v.result, v.reason) == ("rejected", "seq-below-window")
    v = c2.receive(EVENT_TOPIC, alarm(101).to_bytes())
    assert (v.result, v.reason) == ("rejected", "replayed-seq")  # another id, same seq
    assert c2.receive(EVENT_TOPIC, alarm(102).to_bytes()).result == "accepted"


def test_an_uncommitted_batch_leaves_no_trace(tmp_path: Path) -> None:
    c = make_center(tmp_path)
    c.state.begin_batch()
    assert c.receive(EVENT_TOPIC, alarm(WINDOW * 3).to_bytes()).result == "accepted"
    c.state.abort_batch()  # what a failed commit does
    assert c.state.high(GW_KEY.kid) == 0  # re-read from the table, not the lost batch
    assert c.receive(EVENT_TOPIC, alarm(5).to_bytes()).result == "accepted"


def test_stale_state_session_is_ignored(tmp_path: Path) -> None:
    c = make_center(tmp_path)
    st_topic = f"{PREFIX}/{SITE}/{GW}/state"

    def state(seq: int, status: str, session: int) -> bytes:
        return E.build(
            type="state",
            site=SITE,
            gw=GW,
            seq=seq,
            key=GW_KEY,
            body={"status": status, "session": session, "version": "t"},
        ).to_bytes()

    assert not c.receive(st_topic, state(1, "online", 2)).stale
    late_will = c.receive(st_topic, state(2, "offline", 1))
    assert late_will.stale and "stale" in human_line(late_will)
    assert c.state.session(SITE, GW) == 2


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(payload=st.binary(max_size=200), name=st.text(max_size=40))
def test_garbage_is_a_rejection_never_a_crash(tmp_path: Path, payload: bytes, name: str) -> None:
    c = make_center(tmp_path)
    try:
        for t in (EVENT_TOPIC, name):
            v = c.receive(t, payload)
            assert v.result == "rejected" and v.reason
            human_line(v)
            json.dumps(v.to_json())
    finally:
        c.state.close()


@pytest.mark.parametrize("kind", ["alarm", "test"])
def test_test_events_are_labelled_not_dispatched(tmp_path: Path, kind: str) -> None:
    c = make_center(tmp_path)
    body = {**BODY, "test": kind == "test", "code": "601" if kind == "test" else "120"}
    env = E.build(type=kind, site=SITE, gw=GW, seq=3, body=body, key=GW_KEY)
    v = c.receive(EVENT_TOPIC, env.to_bytes())
    assert v.result == "accepted"
    line = human_line(v)
    assert ("TEST (not dispatched)" in line) == (kind == "test")
    assert v.to_json()["test"] is (kind == "test")


class _Up:
    connected = True

    def __init__(self) -> None:
        self.acks: list[bytes] = []

    def publish(self, _topic: str, payload: bytes, **_kw: object) -> asyncio.Future[int]:
        self.acks.append(payload)
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        fut.set_result(0)
        return fut


@pytest.mark.parametrize("workers", ["thread", "process"])
async def test_bursts_are_checked_aside_and_decided_in_order(tmp_path: Path, workers: str) -> None:
    # A burst is checked by a worker (a process for ``alarmgw center``); if that worker is
    # killed, its burst is checked here and the next burst gets a new worker: nothing waits
    # for a re-send.
    c = make_center(tmp_path)
    c.workers = workers
    up = _Up()
    c.attach(up)  # type: ignore[arg-type]
    verdicts: list = []
    c.listeners.append(verdicts.append)
    killed = None
    try:
        for round_ in range(3):
            for seq in range(1, 11):
                c.on_message(EVENT_TOPIC, alarm(round_ * 100 + seq).to_bytes())
            if workers == "process" and round_ == 1:
                await asyncio.sleep(0)  # the burst is now with the checker
                killed = c._pool
                for proc in list(c._pool._processes.values()):  # type: ignore[union-attr]
                    os.kill(proc.pid, signal.SIGKILL)
            async with asyncio.timeout(60):
                while len(verdicts) < 10 * (round_ + 1):
                    await asyncio.sleep(0.01)
        assert [v.result for v in verdicts] == ["accepted"] * 30
        assert [v.env.seq for v in verdicts] == [
            r * 100 + s for r in range(3) for s in range(1, 11)
        ]
        ids = {i for a in up.acks for i in E.parse(a).body["ids"]}
        assert ids == {v.env.id for v in verdicts}
        if workers == "process":
            assert c._pool is not killed  # the dead checker was let go
    finally:
        pids = list(getattr(c._pool, "_processes", {}))
        c.close()
        for pid in pids:  # this test's checker stops with it
            assert await _gone(pid, 10.0), f"checker {pid} still running"
        c.state.close()


async def test_what_arrives_while_the_checker_is_full_goes_as_one_burst(tmp_path: Path) -> None:
    # Two bursts at the checker at once; what arrives meanwhile, over many loop turns, waits
    # and is then checked, committed and acknowledged as one burst (one ack), in order.
    c = make_center(tmp_path)
    up = _Up()
    c.attach(up)  # type: ignore[arg-type]
    verdicts: list = []
    c.listeners.append(verdicts.append)
    gate = threading.Event()
    check = c._precheck_all

    def slow_check(burst: list) -> list:
        gate.wait(30)
        return check(burst)

    c._precheck_all = slow_check  # type: ignore[method-assign]
    try:
        for first in (1, 11):  # fills the checker: CHECKING_MAX bursts
            for seq in range(first, first + 10):
                c.on_message(EVENT_TOPIC, alarm(seq).to_bytes())
            await asyncio.sleep(0.01)
        assert len(c._checking) == CHECKING_MAX
        for seq in range(21, 61):  # 40 more, one per loop turn
            c.on_message(EVENT_TOPIC, alarm(seq).to_bytes())
            await asyncio.sleep(0)
        assert len(c._checking) == CHECKING_MAX and len(c._incoming) == 40
        gate.set()
        async with asyncio.timeout(30):
            while len(verdicts) < 60:
                await asyncio.sleep(0.01)
        assert [v.env.seq for v in verdicts] == list(range(1, 61))
        assert [len(E.parse(a).body["ids"]) for a in up.acks] == [10, 10, 40]
    finally:
        gate.set()
        c.close()
        c.state.close()


async def test_the_checker_process_starts_with_the_center(tmp_path: Path) -> None:
    # Not with the first burst: spawning an interpreter takes a few hundred milliseconds
    # that the first alarms after a center start would otherwise wait for.
    c = make_center(tmp_path)
    c.workers = "process"
    c.start_checker()
    pids: list[int] = []
    try:
        async with asyncio.timeout(30):
            while not pids:
                await asyncio.sleep(0.05)
                pids = list(getattr(c._pool, "_processes", {}))
        up = _Up()
        c.attach(up)  # type: ignore[arg-type]
        verdicts: list = []
        c.listeners.append(verdicts.append)
        for seq in range(1, 11):
            c.on_message(EVENT_TOPIC, alarm(seq).to_bytes())
        async with asyncio.timeout(30):
            while len(verdicts) < 10:
                await asyncio.sleep(0.01)
        assert list(getattr(c._pool, "_processes", {})) == pids  # the same checker did it
    finally:
        c.close()
        for pid in pids:
            assert await _gone(pid, 10.0), f"checker {pid} still running"
        c.state.close()


class _CountingOut(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)


async def test_console_writes_once_per_burst_in_order(tmp_path: Path) -> None:
    # alarmgw center's output: a burst's lines in one write (not a system call per line
    # under PYTHONUNBUFFERED), and a status change after the lines that came before it.
    c = make_center(tmp_path)
    c.attach(_Up())  # type: ignore[arg-type]
    out = _CountingOut()
    console(c, out, as_json=False)
    online = E.build(
        type="state",
        site=SITE,
        gw=GW,
        seq=11,
        key=GW_KEY,
        body={"status": "online", "session": 1, "version": "t"},
    )
    try:
        for seq in range(1, 11):
            c.on_message(EVENT_TOPIC, alarm(seq).to_bytes())
        c.on_message(f"{PREFIX}/{SITE}/{GW}/state", online.to_bytes())
        async with asyncio.timeout(30):
            while out.getvalue().count("\n") < 12:  # 11 verdicts and "online"
                await asyncio.sleep(0.01)
        lines = out.getvalue().splitlines()
        assert [("ALARM" in x) for x in lines[:10]] == [True] * 10
        assert "online" in lines[-1] and len(lines) == 12
        assert out.writes == 1  # the whole burst, the status line in its place
    finally:
        c.close()
        c.state.close()


async def _gone(pid: int, timeout: float) -> bool:
    """The process has exited (gone, or a zombie its reaper has not collected yet). Asked
    of the OS: ``Process.is_alive()`` can say True while the pool's own thread reaps it."""
    status = Path(f"/proc/{pid}/status")
    for _ in range(int(timeout / 0.05)):
        try:
            state = next(x for x in status.read_text().splitlines() if x.startswith("State:"))
        except (FileNotFoundError, ProcessLookupError):  # reaped while we looked
            return True
        if "zombie" in state:
            return True
        await asyncio.sleep(0.05)
    return False
