"""seq blocks never reuse a number after a crash; the outbox orders, dedupes and survives."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
from pathlib import Path

import pytest

from gateway.contract import envelope as E
from gateway.contract.signing import SigningKey
from gateway.delivery.outbox import Outbox
from gateway.delivery.seq import SeqCounter
from gateway.errors import OutboxError

KEY = SigningKey.generate()


def env(kind: str, seq: int) -> E.Envelope:
    body: dict = {"code": "137", "device": "gateway", "detail": "x"}
    if kind == "alarm":
        body = {
            "code": "120",
            "kind": "panic",
            "input": "gpio:a",
            "test": False,
            "location": {"name": "n", "address": "a", "lat": 1, "lon": 2},
            "contact": {"phone": "1"},
        }
    return E.build(type=kind, site="s", gw="g", seq=seq, body=body, key=KEY)


def test_seq_clean_restart_continues(tmp_path: Path) -> None:
    c = SeqCounter(tmp_path / "seq.json", block=10)
    assert [c.next() for _ in range(3)] == [1, 2, 3]
    c.close()
    assert SeqCounter(tmp_path / "seq.json", block=10).next() == 4


def _use_and_die(path: str, n: int, conn: object) -> None:
    c = SeqCounter(path, block=10)
    last = 0
    for _ in range(n):
        last = c.next()
    conn.send(last)  # type: ignore[attr-defined]
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("n", [1, 9, 10, 11, 25])
def test_seq_never_reused_after_kill9(tmp_path: Path, n: int) -> None:
    path = str(tmp_path / "seq.json")
    parent, child = multiprocessing.Pipe()
    p = multiprocessing.get_context("fork").Process(target=_use_and_die, args=(path, n, child))
    p.start()
    last = parent.recv()
    p.join()
    assert p.exitcode == -signal.SIGKILL
    state = json.loads(Path(path).read_text())
    assert state["clean"] is False
    assert SeqCounter(path, block=10).next() > last


def test_seq_one_write_per_block(tmp_path: Path) -> None:
    path = tmp_path / "seq.json"
    c = SeqCounter(path, block=100)
    c.next()
    before = path.stat().st_mtime_ns, path.stat().st_ino
    for _ in range(98):
        c.next()
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before  # no write inside a block
    c.next()
    c.next()
    assert path.stat().st_ino != before[1]  # the next block was reserved with a new file


def test_seq_corrupt_file_refuses_to_guess(tmp_path: Path) -> None:
    (tmp_path / "seq.json").write_text("{")
    with pytest.raises(OutboxError, match="corrupt"):
        SeqCounter(tmp_path / "seq.json")


def test_outbox_order_alarms_first_then_oldest(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    t = env("trouble", 1)
    a1 = env("alarm", 2)
    a2 = env("alarm", 3)
    ob.add(t, now=100.0)
    ob.add(a1, now=101.0)
    ob.add(a2, now=102.0)
    assert [p.id for p in ob.pending()] == [a1.id, a2.id, t.id]
    assert [p.id for p in ob.pending(exclude=[a1.id])] == [a2.id, t.id]
    assert ob.pending()[0].payload == a1.to_bytes()
    assert ob.remove([a1.id, "nope"]) == [a1.id]
    assert ob.count() == 2
    s = ob.summary()
    assert s["alarm"]["pending"] == 1 and s["trouble"]["pending"] == 1
    ob.close()
    reopened = Outbox(tmp_path / "o.sqlite")
    assert [p.id for p in reopened.pending()] == [a2.id, t.id]


def test_outbox_dedupe_window_and_forget(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    a = env("alarm", 1)
    ob.add(a, dedupe_key="serial:box:7", now=1000.0)
    assert ob.dedupe_lookup("serial:box:7", window_s=30, now=1010.0) == a.id
    assert ob.dedupe_lookup("serial:box:7", window_s=30, now=1031.0) is None
    assert ob.dedupe_lookup("serial:box:8", window_s=30, now=1010.0) is None
    ob.forget_dedupe("serial:box_")  # LIKE wildcards are escaped: this matches nothing
    assert ob.dedupe_lookup("serial:box:7", window_s=30, now=1010.0) == a.id
    ob.forget_dedupe("serial:box:")
    assert ob.dedupe_lookup("serial:box:7", window_s=30, now=1010.0) is None


def test_outbox_session_counter_persists(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    assert [ob.incr("session"), ob.incr("session")] == [1, 2]
    ob.close()
    assert Outbox(tmp_path / "o.sqlite").incr("session") == 3


def test_outbox_duplicate_id_is_an_error_not_a_crash(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    a = env("alarm", 1)
    ob.add(a)
    with pytest.raises(OutboxError, match="cannot commit"):
        ob.add(a)
    assert ob.count() == 1


def test_outbox_bounds_telemetry_never_alarms(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", max_events=10)
    alarms = [env("alarm", i) for i in range(1, 4)]
    troubles = [env("trouble", i) for i in range(10, 25)]
    for i, a in enumerate(alarms):
        ob.add(a, now=float(i))
    for i, t in enumerate(troubles):
        ob.add(t, now=100.0 + i)
    summary = ob.summary()
    assert summary["alarm"]["pending"] == 3
    assert summary["trouble"]["pending"] == 10
    assert ob.evicted == 5
    kept = {p.id for p in ob.pending(limit=100)}
    assert {t.id for t in troubles[:5]}.isdisjoint(kept)  # the oldest went first
    assert {t.id for t in troubles[5:]} <= kept
    ob.close()
    reopened = Outbox(tmp_path / "o.sqlite", max_events=10)
    reopened.add(env("trouble", 99), now=200.0)  # the count survives a restart
    assert reopened.summary()["trouble"]["pending"] == 10


@pytest.mark.parametrize("garbage", [b"not a database at all" * 100, b""])
def test_corrupt_outbox_is_moved_aside(tmp_path: Path, garbage: bytes) -> None:
    path = tmp_path / "o.sqlite"
    good = Outbox(path)
    good.add(env("alarm", 1))
    good.close()
    if garbage:
        path.write_bytes(garbage)
    else:  # a torn page in the middle of a real database
        data = bytearray(path.read_bytes())
        data[100:4096] = b"\xff" * (4096 - 100)
        path.write_bytes(bytes(data))
    fresh = Outbox(path)
    assert fresh.moved_aside is not None and fresh.moved_aside.exists()
    assert fresh.count() == 0
    fresh.add(env("alarm", 2))  # and it works
    assert fresh.count() == 1


def test_sent_bound_survives_restarts(tmp_path: Path) -> None:
    # The highest seq that may have left the gateway: exact after a clean stop, an upper
    # bound (reserved ahead, plus a margin) after a crash, everything issued for old files.
    path = tmp_path / "seq.json"
    c = SeqCounter(path, block=10)
    assert c.sent_high == 0  # a new counter: nothing was ever sent
    for _ in range(30):
        c.next()
    c.mark_sent(7)
    c.mark_sent(3)  # lower: no change
    assert c.sent_high == 7
    c.close()
    c2 = SeqCounter(path, block=10)
    assert c2.sent_high == 7  # clean stop: exact
    c2.next()
    c2.mark_sent(12)
    # no close: a crash. The bound never falls below what was sent.
    c3 = SeqCounter(path, block=10)
    assert c3.sent_high >= 12
    assert c3.sent_high < c3.peek  # and never above what was issued
    path.write_text(json.dumps({"next": 500, "reserved": 500, "clean": True}))  # older file
    assert SeqCounter(path, block=10).sent_high == 499


def test_sent_bound_is_written_ahead_in_blocks(tmp_path: Path) -> None:
    path = tmp_path / "seq.json"
    c = SeqCounter(path, block=10_000)
    for _ in range(9000):
        c.next()
    writes = []
    real = c._write
    c._write = lambda **kw: (writes.append(kw), real(**kw))  # type: ignore[method-assign]
    for seq in range(1, 9000):
        c.mark_sent(seq)
    assert len(writes) <= 3  # one durable write per 4,096 sent, not one per envelope
    assert json.loads(path.read_text())["sent"] >= 8999
