"""One contract, two backends: every test here runs against SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from center.lifecycle import Lifecycle, LifecycleError
from center.store import WINDOW, SchemaTooNew, Store, StoreError, open_store
from center.store.schema import LATEST
from tests.center.helpers import GW, GW_KEY, SITE, alarm, heartbeat


def test_migrated_once_and_reopened(store: Store, backend: dict[str, object]) -> None:
    assert store.schema_version() == LATEST  # type: ignore[attr-defined]
    again = open_store(**backend)  # type: ignore[arg-type]
    try:
        assert again.schema_version() == LATEST  # type: ignore[attr-defined]
    finally:
        again.close()


def test_a_newer_schema_is_refused_in_one_line(store: Store, backend: dict[str, object]) -> None:
    with store.transaction():
        store._x("INSERT INTO schema_version (version) VALUES (?)", (LATEST + 1,))  # type: ignore[attr-defined]
    with pytest.raises(SchemaTooNew) as err:
        open_store(**backend)  # type: ignore[arg-type]
    assert "\n" not in str(err.value) and "upgrade alarmgw" in str(err.value)


def test_accept_duplicate_replay_and_window(store: Store) -> None:
    env = alarm(WINDOW + 10)
    assert store.admit(env, received=1.0).result == "accepted"
    assert store.admit(env, received=2.0).result == "duplicate"
    other = alarm(WINDOW + 10)  # same (kid, seq), another id
    got = store.admit(other, received=3.0)
    assert (got.result, got.reason, got.unproven) == ("rejected", "replayed-seq", True)
    below = alarm(5)
    old = store.admit(below, received=4.0)
    assert (old.result, old.reason) == ("rejected", "seq-below-window")
    # the same event re-signed under a new seq: a duplicate, not a second alarm
    resigned = alarm(WINDOW + 11, id=env.id)
    assert store.admit(resigned, received=5.0).result == "duplicate"
    alarms = store.alarms()
    fresh = [a for a in alarms if a["fresh"]]
    assert [a["id"] for a in fresh] == [env.id]
    assert {a["id"] for a in alarms if not a["fresh"]} == {other.id, below.id}


def test_window_pruned_at_commit_and_kept_across_reopen(
    store: Store, backend: dict[str, object]
) -> None:
    store.begin_batch()
    for seq in (100, 101, WINDOW + 100):
        assert store.admit(alarm(seq), received=1.0).result == "accepted"
    store.commit_batch()
    store.close()
    again = open_store(**backend)  # type: ignore[arg-type]
    try:
        assert again.high(GW_KEY.kid) == WINDOW + 100
        assert again.admit(alarm(100), received=2.0).reason == "seq-below-window"
        assert again.admit(alarm(101), received=2.0).reason == "replayed-seq"
        assert again.admit(alarm(102), received=2.0).result == "accepted"
    finally:
        again.close()


def test_an_aborted_batch_leaves_no_trace(store: Store) -> None:
    store.begin_batch()
    assert store.admit(alarm(WINDOW * 3), received=1.0).result == "accepted"
    store.abort_batch()
    assert store.high(GW_KEY.kid) == 0
    assert store.alarms() == []
    assert store.admit(alarm(5), received=1.0).result == "accepted"


def test_rejections_bodies_and_latest_heartbeat_are_kept(store: Store) -> None:
    store.reject(
        topic="t", reason="bad-signature", detail="x", env=alarm(3), payload=b"{}", received=1.0
    )
    store.reject(topic="t", reason="not-json", detail="", env=None, payload=b"\xff", received=1.0)
    env = alarm(7, kind="panic\nFAKE LINE")
    store.admit(env, received=2.0)
    assert store.alarm(env.id)["body"]["kind"] == "panic\nFAKE LINE"  # type: ignore[index]
    store.admit(heartbeat(8, session=1), received=3.0)
    store.admit(heartbeat(9, session=2), received=4.0)
    assert store.last_heartbeat(SITE, GW) == 4.0
    summary = store.summary(now=10.0)
    assert summary["rejected"] == {"bad-signature": 1, "not-json": 1}
    assert summary["accepted_envelopes"] == 1


def test_an_unproven_alarm_becomes_proven_when_it_comes_fresh(store: Store) -> None:
    assert store.admit(alarm(WINDOW + 10), received=1.0).result == "accepted"
    lost = alarm(9)  # a gateway that lost its state: below the window
    assert store.admit(lost, received=2.0).unproven
    assert store.alarm(lost.id)["fresh"] is False  # type: ignore[index]
    resigned = alarm(WINDOW + 11, id=lost.id)  # after a resync: same id, new seq
    assert store.admit(resigned, received=3.0).result == "accepted"
    assert store.alarm(lost.id)["fresh"] is True  # type: ignore[index]
    actions = [a["action"] for a in store.audit(lost.id)]
    assert actions == ["received-unproven", "received"]


def test_concurrent_instances_accept_each_event_once(backend: dict[str, object]) -> None:
    stores = [open_store(**backend) for _ in range(3)]  # type: ignore[arg-type]
    envs = [alarm(seq) for seq in range(1, 201)]
    # the same 200 events, some re-signed under new seqs, fed to three instances at once
    resigned = [alarm(1000 + i, id=e.id) for i, e in enumerate(envs[:50])]
    results: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def feed(store: Store, batch: list) -> None:
        try:
            for i in range(0, len(batch), 20):
                for attempt in range(20):
                    try:
                        store.begin_batch()
                        got = [store.admit(e, received=1.0).result for e in batch[i : i + 20]]
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
        assert results.count("accepted") == 200
        assert len(stores[0].alarms()) == 200
    finally:
        for s in stores:
            s.close()


def test_lifecycle_queues_dispatches_and_keeps_an_append_only_trail(store: Store) -> None:
    env, test = alarm(1), alarm(2, code="601")
    store.admit(env, received=1.0)
    store.admit(test, received=1.0)
    life = Lifecycle(store, clock=lambda: 50.0)
    life.acknowledge(env.id, by="Officer Li")
    with pytest.raises(LifecycleError, match="already acknowledged by Officer Li"):
        life.acknowledge(env.id, by="someone else")
    life.resolve(env.id, outcome="real", by="Officer Li", note="patrol sent")
    with pytest.raises(LifecycleError, match="outcome must be one of"):
        life.resolve(test.id, outcome="maybe", by="x")
    life.resolve(test.id, outcome="test", by="x")
    with pytest.raises(LifecycleError, match="no alarm"):
        life.acknowledge("nope", by="x")
    got = store.alarm(env.id)
    assert got is not None and (got["status"], got["outcome"], got["note"]) == (
        "resolved",
        "real",
        "patrol sent",
    )
    assert [a["action"] for a in store.audit(env.id)] == ["received", "acknowledged", "resolved"]
    items = store.claim_outbox("one", now=60.0)
    assert [(i.type, i.body["status"]) for i in items] == [
        ("dispatch", "acknowledged"),
        ("dispatch", "resolved"),
    ]  # none for the test
    assert all(i.body["ids"] == [env.id] for i in items)
    assert store.claim_outbox("two", now=61.0) == []  # claimed by one
    store.mark_sent(items[0].n, "x", now=62.0)
    assert [i.n for i in store.claim_outbox("two", now=200.0)] == [items[1].n]  # lease over
    with pytest.raises(StoreError, match="append-only"), store.transaction():
        store._x("UPDATE alarm_audit SET actor = 'forged'")  # type: ignore[attr-defined]
    assert store.summary(now=70.0)["open_alarms"] == {}


def test_resync_and_liveness_are_decided_once(store: Store) -> None:
    assert store.claim_resync("k", now=100.0, every_s=10.0)
    assert not store.claim_resync("k", now=105.0, every_s=10.0)
    assert store.claim_resync("k", now=111.0, every_s=10.0)
    assert store.report_liveness(SITE, GW, "online", now=1.0)
    assert not store.report_liveness(SITE, GW, "online", now=2.0)
    assert store.report_liveness(SITE, GW, "stale", now=3.0)


def test_bad_dsn_and_unreachable_database_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as err:
        open_store("postgresql", state_dir=tmp_path, dsn="host=127.0.0.1 port")
    assert "not a valid PostgreSQL connection string" in str(err.value)
    port = __import__("tests.pg", fromlist=["free_port"]).free_port()
    with pytest.raises(StoreError) as err:
        open_store(
            "postgresql",
            state_dir=tmp_path,
            dsn=f"postgresql://u:secret@127.0.0.1:{port}/db?connect_timeout=2",
        )
    text = str(err.value)
    assert "cannot reach PostgreSQL at 127.0.0.1" in text and "\n" not in text
    assert "secret" not in text
