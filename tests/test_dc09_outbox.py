"""The outbox with two delivery paths: a row leaves only when every path it is owed to has it."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
from pathlib import Path

from gateway.contract import envelope as E
from gateway.contract.signing import SigningKey
from gateway.delivery.outbox import Outbox

KEY = SigningKey.generate()
ALARMS = ("alarm", "test")


def env(kind: str, seq: int) -> E.Envelope:
    body: dict[str, object] = {"code": "137", "device": "gateway", "detail": "x"}
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


def test_center_ack_first_then_dc09(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", dc09_types=ALARMS)
    alarm, trouble = env("alarm", 1), env("trouble", 2)
    ob.add(alarm)
    ob.add(trouble)
    assert [p.id for p in ob.pending_dc09(10)] == [alarm.id]  # troubles: MQTT only
    assert sorted(ob.remove([alarm.id, trouble.id])) == sorted([alarm.id, trouble.id])
    # The alarm waits for the DC-09 receiver, invisible to the MQTT side.
    assert ob.get(alarm.id) is None
    assert ob.pending() == []
    assert ob.after(None, 10) == []
    assert ob.count() == 0
    assert ob.count_dc09() == 1
    assert ob.summary() == {}  # what the center owes, as /status counts it
    assert ob.remove([alarm.id]) == []  # a duplicate ack is not news
    assert ob.mark_dc09_delivered(alarm.id) is True
    assert ob.count_dc09() == 0
    assert ob.summary() == {}
    assert ob.mark_dc09_delivered(alarm.id) is False


def test_dc09_ack_first_then_center(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", dc09_types=ALARMS)
    alarm = env("alarm", 1)
    ob.add(alarm)
    assert ob.mark_dc09_delivered(alarm.id) is True
    assert ob.pending_dc09() == []
    assert ob.get(alarm.id) is not None  # still owed to the center
    assert ob.remove([alarm.id]) == [alarm.id]
    assert ob.summary() == {}


def test_all_events_over_dc09(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite", dc09_types=("alarm", "test", "trouble", "restore"))
    woken: list[int] = []
    ob.listeners.append(lambda: woken.append(1))
    trouble, alarm = env("trouble", 1), env("alarm", 2)
    ob.add(trouble, now=1.0)
    ob.add(alarm, now=2.0)
    assert len(woken) == 2
    assert [p.id for p in ob.pending_dc09(10)] == [alarm.id, trouble.id]  # alarms first


def test_without_dc09_nothing_waits(tmp_path: Path) -> None:
    ob = Outbox(tmp_path / "o.sqlite")
    alarm = env("alarm", 1)
    ob.add(alarm)
    assert ob.pending_dc09() == []
    assert ob.remove([alarm.id]) == [alarm.id]
    assert ob.summary() == {}


def test_dc09_part_survives_reopen_and_unconfiguring_drops_it(tmp_path: Path) -> None:
    path = tmp_path / "o.sqlite"
    ob = Outbox(path, dc09_types=ALARMS)
    done, waiting = env("alarm", 1), env("alarm", 2)
    ob.add(done)
    ob.add(waiting)
    ob.remove([done.id])
    ob.close()
    again = Outbox(path, dc09_types=ALARMS)
    assert [p.id for p in again.pending_dc09(10)] == [done.id, waiting.id]
    assert [p.id for p in again.pending()] == [waiting.id]
    again.close()
    # [dc09] removed from the config: nothing is owed to it any more.
    plain = Outbox(path)
    assert plain.pending_dc09(10) == []
    assert [p.id for p in plain.pending()] == [waiting.id]
    assert set(plain.summary()) == {"alarm"}
    assert plain.summary()["alarm"]["pending"] == 1


OLD_SCHEMA = """
CREATE TABLE outbox (
    id TEXT PRIMARY KEY, type TEXT NOT NULL, prio INTEGER NOT NULL, seq INTEGER NOT NULL,
    payload BLOB NOT NULL, created REAL NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX outbox_send_order ON outbox (prio, created, seq);
CREATE TABLE dedupe (key TEXT PRIMARY KEY, event_id TEXT NOT NULL, at REAL NOT NULL);
CREATE TABLE kv (k TEXT PRIMARY KEY, v INTEGER NOT NULL);
"""


def test_migrates_an_outbox_without_path_columns(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = env("alarm", 1)
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute(
        "INSERT INTO outbox (id, type, prio, seq, payload, created) VALUES (?,?,?,?,?,?)",
        (old.id, "alarm", 0, 1, old.to_bytes(), 1.0),
    )
    db.commit()
    db.close()
    ob = Outbox(path, dc09_types=ALARMS)
    assert [p.id for p in ob.pending()] == [old.id]
    assert ob.pending_dc09() == []  # queued before DC-09 existed: owed to the center only
    new = env("alarm", 2)
    ob.add(new)
    assert [p.id for p in ob.pending_dc09()] == [new.id]
    assert ob.remove([old.id]) == [old.id]
    assert ob.get(old.id) is None
    ob.close()
    cols = {r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(outbox)")}
    assert {"mqtt_done", "dc09"} <= cols


def _ack_mqtt_and_die(path: str, conn: object) -> None:
    ob = Outbox(path, dc09_types=ALARMS)
    a, b = env("alarm", 1), env("alarm", 2)
    ob.add(a)
    ob.add(b)
    ob.remove([a.id])
    ob.mark_dc09_delivered(b.id)
    conn.send((a.id, b.id))  # type: ignore[attr-defined]
    os.kill(os.getpid(), signal.SIGKILL)


def test_kill9_keeps_each_path_state(tmp_path: Path) -> None:
    path = str(tmp_path / "o.sqlite")
    parent, child = multiprocessing.Pipe()
    p = multiprocessing.get_context("fork").Process(target=_ack_mqtt_and_die, args=(path, child))
    p.start()
    a_id, b_id = parent.recv()
    p.join()
    assert p.exitcode == -signal.SIGKILL
    ob = Outbox(path, dc09_types=ALARMS)
    # a: the center has it, DC-09 not yet; b: the other way round. Neither is lost.
    assert [x.id for x in ob.pending_dc09(10)] == [a_id]
    assert [x.id for x in ob.pending()] == [b_id]
