"""A burst admitted at once (``admit_all``) decides and keeps exactly what ``admit`` one by
one does, on both backends, whatever the burst mixes; and instances racing on one
PostgreSQL database still accept each event once."""

from __future__ import annotations

import itertools
import random
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from center.store import WINDOW, Admission, Arrival, Store, StoreError, open_store
from gateway.contract import envelope as E
from gateway.contract.signing import SigningKey
from tests.center.helpers import GW, GW_KEY, SITE, alarm

OTHER_KEY = SigningKey.from_seed(bytes(range(7, 39)))  # a second gateway's key


def trouble(seq: int, *, key: SigningKey = GW_KEY, gw: str = GW) -> E.Envelope:
    body = {"code": "301", "device": "button", "detail": "cut"}
    return E.build(type="trouble", site=SITE, gw=gw, seq=seq, body=body, key=key)


def beat(seq: int, rng: random.Random) -> E.Envelope:
    """A heartbeat of one of two gateways, stamped within a few seconds (so some arrive
    after a newer one, and some carry the same time)."""
    gw = rng.choice([GW, "gw-2"])
    body = {
        "uptime_s": 5,
        "session": rng.randint(1, 3),
        "queue": {"pending": 0, "oldest_s": 0},
        "inputs": {},
        "clock": {"synced": True},
        "disk": {"free_bytes": 1},
    }
    ts = f"2026-12-03T10:00:0{rng.randint(0, 3)}.000Z"
    return E.build(type="heartbeat", site=SITE, gw=gw, seq=seq, body=body, key=GW_KEY, ts=ts)


def state(seq: int, session: int, status: str = "online") -> E.Envelope:
    body = {"status": status, "session": session}
    return E.build(type="state", site=SITE, gw=GW, seq=seq, body=body, key=GW_KEY)


def stream(rng: random.Random) -> list[E.Envelope]:
    """Envelopes as gateways and attackers might send them: new events from two gateways,
    exact re-sends (near and far), events re-signed under a new seq, replayed seqs with
    another id, seqs that fell below the window, heartbeats and states."""
    out: list[E.Envelope] = []
    seqs = {GW_KEY.kid: 0, OTHER_KEY.kid: 0}
    for _ in range(500):
        pick = rng.random()
        if pick < 0.45 or not out:
            key, gw = rng.choice([(GW_KEY, GW), (OTHER_KEY, "gw-2")])
            seqs[key.kid] += rng.choice([1, 1, 1, 2, 5])
            make = rng.choice([alarm, alarm, trouble])
            out.append(make(seqs[key.kid], key=key, gw=gw))
        elif pick < 0.65:
            out.append(rng.choice(out[-30:]))  # a re-send: the same bytes again
        elif pick < 0.72:
            old = rng.choice(out)
            if old.type in ("alarm", "test"):
                seqs[old.kid] += 1
                key = GW_KEY if old.kid == GW_KEY.kid else OTHER_KEY
                gw = GW if key is GW_KEY else "gw-2"
                out.append(alarm(seqs[old.kid], key=key, gw=gw, id=old.id))  # re-signed
        elif pick < 0.78:
            old = rng.choice(out)
            if old.kid == GW_KEY.kid and old.type == "alarm":
                out.append(alarm(old.seq))  # a replayed seq, another id
        elif pick < 0.82:
            seqs[GW_KEY.kid] += WINDOW + rng.choice([0, 3])  # a jump: older seqs fall out
            out.append(alarm(seqs[GW_KEY.kid]))
        elif pick < 0.86:
            out.append(alarm(max(1, seqs[GW_KEY.kid] - WINDOW - rng.randint(0, 3))))
        elif pick < 0.93:
            seqs[GW_KEY.kid] += 1
            out.append(beat(seqs[GW_KEY.kid], rng))
        else:
            seqs[GW_KEY.kid] += 1
            out.append(
                state(seqs[GW_KEY.kid], rng.randint(1, 3), rng.choice(["online", "offline"]))
            )
    return out


def tables(store: Store) -> dict[str, list[Any]]:
    """Everything ingest writes, in a comparable form."""
    queries = {
        "accepted": "SELECT kid, seq, id, type, at FROM accepted ORDER BY kid, seq",
        "signer": "SELECT kid, high FROM signer ORDER BY kid",
        "envelopes": (
            "SELECT id, kid, seq, type, received_at, path, body FROM envelopes ORDER BY id"
        ),
        "alarms": "SELECT id, type, code, kind, fresh, received_at, body FROM alarms ORDER BY id",
        "audit": "SELECT alarm_id, at, action, actor, detail FROM alarm_audit ORDER BY n",
        "state": "SELECT site, gw, session, status FROM gateway_state ORDER BY gw",
        "heartbeats": (
            "SELECT site, gw, id, session, ts, received_at, body FROM heartbeats ORDER BY gw"
        ),
    }
    with store.transaction():
        return {
            name: [tuple(r) for r in store._x(sql).fetchall()]  # type: ignore[attr-defined]
            for name, sql in queries.items()
        }


@pytest.fixture
def two_stores(
    backend: dict[str, object], request: pytest.FixtureRequest
) -> Iterator[tuple[Store, Store]]:
    """Two stores of the backend, each with a database of its own."""
    other = dict(backend)
    if backend["kind"] == "postgresql":
        other["dsn"] = request.getfixturevalue("postgres").new_database()
    else:
        other["state_dir"] = Path(str(backend["state_dir"])) / "other"
    first = open_store(**backend)  # type: ignore[arg-type]
    try:
        second = open_store(**other)  # type: ignore[arg-type]
        try:
            yield first, second
        finally:
            second.close()
    finally:
        first.close()


def test_a_burst_at_once_decides_and_keeps_what_one_by_one_does(
    two_stores: tuple[Store, Store],
) -> None:
    one, at_once = two_stores
    rng = random.Random(20261203)
    envs = stream(rng)
    cuts = [0]
    while cuts[-1] < len(envs):
        cuts.append(cuts[-1] + rng.choice([1, 2, 7, 30, 120]))
    got_one: list[Admission] = []
    got_all: list[Admission] = []
    one_by_one = at_once._admit  # type: ignore[attr-defined]
    slow: list[str] = []  # what the burst path left to admit's path

    def counted(env: E.Envelope, received: float, path: str) -> Admission:
        got: Admission = one_by_one(env, received, path)
        slow.append(f"{env.type} {got.result}")
        return got

    at_once._admit = counted  # type: ignore[attr-defined]
    for n, (start, end) in enumerate(itertools.pairwise(cuts)):
        burst, received = envs[start:end], float(n)
        one.begin_batch()
        got_one += [one.admit(e, received=received) for e in burst]
        one.commit_batch()
        at_once.begin_batch()
        got_all += at_once.admit_all([Arrival(e, received) for e in burst])
        at_once.commit_batch()
    assert got_all == got_one
    assert {a.result for a in got_one} == {"accepted", "duplicate", "rejected"}
    assert {a.reason for a in got_one} >= {"replayed-seq", "seq-below-window"}
    assert tables(at_once) == tables(one)
    # Events go one by one only to be refused (that writes) or near one that did.
    events = [s for s in slow if s.split()[0] in ("alarm", "trouble")]
    assert len([s for s in events if not s.endswith("rejected")]) <= len(envs) // 20


def test_instances_racing_with_bursts_accept_each_event_once(
    backend: dict[str, object],
) -> None:
    stores = [open_store(**backend) for _ in range(3)]  # type: ignore[arg-type]
    envs = [alarm(seq) for seq in range(1, 301)]
    resigned = [alarm(1000 + i, id=e.id) for i, e in enumerate(envs[:80])]
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def feed(store: Store, batch: list[E.Envelope]) -> None:
        try:
            for i in range(0, len(batch), 40):
                chunk = [Arrival(e, 1.0) for e in batch[i : i + 40]]
                for attempt in range(20):
                    try:
                        store.begin_batch()
                        got = [a.result for a in store.admit_all(chunk)]
                        store.commit_batch()
                        break
                    except StoreError:  # a deadlock between instances: that burst again
                        store.abort_batch()
                        if attempt == 19:
                            raise
                with lock:
                    results.extend(got)
        except BaseException as err:
            errors.append(err)

    threads = [
        threading.Thread(target=feed, args=(stores[0], envs)),
        threading.Thread(target=feed, args=(stores[1], list(reversed(envs)))),
        threading.Thread(target=feed, args=(stores[2], resigned + envs[::3])),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    try:
        assert not errors
        assert results.count("accepted") == 300
        alarms = stores[0].alarms()
        assert len(alarms) == 300 and all(a["fresh"] for a in alarms)
        for a in alarms[::30]:
            assert [x["action"] for x in stores[0].audit(a["id"])] == ["received"]
    finally:
        for s in stores:
            s.close()


def test_nul_in_a_gateways_text_does_not_hold_back_the_store(store: Store) -> None:
    # PostgreSQL refuses NUL in text: a refused row would fail every burst after it.
    store.reject(
        topic="t", reason="not-json", detail="a\x00b", env=None, payload=b'{"\x00', received=1.0
    )
    env = alarm(3, kind="panic\x00")
    store.begin_batch()
    assert [a.result for a in store.admit_all([Arrival(env, 2.0)])] == ["accepted"]
    store.commit_batch()
    kept = store.alarm(env.id)
    assert kept is not None and kept["kind"] == "panic\ufffd"
    assert kept["body"]["kind"] == "panic\x00"  # the body as signed
    assert store.summary(now=3.0)["rejected"] == {"not-json": 1}


def test_a_bursts_heartbeats_leave_the_gateways_latest(two_stores: tuple[Store, Store]) -> None:
    # The newest ts wins, and the last of equal ones, as when written one after the other.
    rng = random.Random(5)
    stamps = ["02", "03", "03", "01", "03", "00"]
    envs = []
    for seq, sec in enumerate(stamps, start=1):
        env = beat(seq, rng)
        envs.append(
            E.build(
                type="heartbeat",
                site=SITE,
                gw=GW,
                seq=seq,
                body=env.body,
                key=GW_KEY,
                ts=f"2026-12-03T10:00:{sec}.000Z",
            )
        )
    one, at_once = two_stores
    one.begin_batch()
    for env in envs:
        one.admit(env, received=1.0)
    one.commit_batch()
    at_once.begin_batch()
    at_once.admit_all([Arrival(env, 1.0) for env in envs])
    at_once.commit_batch()
    assert tables(at_once)["heartbeats"] == tables(one)["heartbeats"]
    assert tables(one)["heartbeats"][0][2] == envs[4].id


def test_sessions_of_many_gateways_in_one_look_up(store: Store) -> None:
    store.set_state(SITE, GW, 2, "online")
    store.set_state(SITE, "gw-2", 5, "offline")
    got = store.sessions({(SITE, GW), (SITE, "gw-2"), (SITE, "gw-3")})
    assert got == {(SITE, GW): 2, (SITE, "gw-2"): 5, (SITE, "gw-3"): -1}
    many = {(SITE, f"gw-{n}") for n in range(2000)}  # more than one statement's worth
    assert store.sessions(many)[(SITE, "gw-2")] == 5
