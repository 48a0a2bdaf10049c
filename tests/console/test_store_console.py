"""The console's store queries (schema version 2) on both backends."""

from __future__ import annotations

from center.store import Store
from center.store.consoledata import ConsoleQueries
from tests.center.helpers import GW, SITE, alarm, heartbeat


def test_accounts_tokens_and_console_audit(store: Store) -> None:
    assert isinstance(store, ConsoleQueries)
    assert store.add_console_user("li", "dispatcher", "h1", now=1.0)
    assert not store.add_console_user("li", "viewer", "h2", now=2.0)
    assert store.update_console_user("li", disabled=1, lang="en")
    user = store.console_user("li")
    assert user is not None and (user["role"], user["disabled"], user["lang"]) == (
        "dispatcher",
        1,
        "en",
    )
    assert not store.update_console_user("nobody", disabled=1)
    store.add_console_token("d" * 64, "cad", "viewer", now=3.0)
    assert store.console_token("d" * 64) == {"name": "cad", "role": "viewer"}
    assert store.disable_console_token("cad") == 1
    assert store.console_token("d" * 64) is None
    store.console_audit_add("li", "login", "127.0.0.1", now=4.0)
    assert store.audit_log()[0]["action"] == "login"


def test_search_fleet_and_troubles(store: Store) -> None:
    assert isinstance(store, ConsoleQueries)
    first, test = alarm(10), alarm(11, code="601", kind="test")
    store.admit(first, received=100.0)
    store.admit(test, received=200.0)
    store.admit(heartbeat(12), received=250.0)
    store.report_liveness(SITE, GW, "online", now=260.0)
    assert [a["id"] for a in store.search_alarms()] == [test.id, first.id]
    assert [a["id"] for a in store.search_alarms(kind="alarm")] == [first.id]
    assert [a["id"] for a in store.search_alarms(since=150.0)] == [test.id]
    assert store.search_alarms(sites=[("other", "gw")]) == []
    assert [a["id"] for a in store.search_alarms(sites=[(SITE, GW)], until=150.0)] == [first.id]
    (gw,) = list(store.fleet())
    assert (gw["status"], gw["heartbeat_at"], gw["heartbeat"]["queue"]["pending"]) == (
        "online",
        250.0,
        0,
    )
    assert store.troubles() == []


def test_open_alarms_oldest_first(store: Store) -> None:
    assert isinstance(store, ConsoleQueries)
    first, second = alarm(10), alarm(11)
    store.admit(second, received=200.0)
    store.admit(first, received=100.0)
    assert [a["id"] for a in store.open_alarms()] == [first.id, second.id]
    assert store.open_alarms()[0]["body"]["code"] == "120"
