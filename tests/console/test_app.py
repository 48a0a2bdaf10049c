"""The console over real HTTP on 127.0.0.1 (in-process server, SQLite store): sign-in and its
rate limit, CSRF, roles, acknowledge/resolve through the lifecycle (a dispatch queued),
escaping of what a gateway sent, the JSON twins and CSV export, bearer tokens."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from center.console.app import Console, build_app
from center.console.auth import hash_password, new_token
from center.present import SiteData
from center.store import open_store
from tests.center.helpers import GW, SITE, alarm, heartbeat

PASSWORD = "correct horse battery"


@pytest.fixture
async def rig(tmp_path: Path) -> AsyncIterator[tuple[TestClient, Console]]:
    store = open_store("sqlite", state_dir=tmp_path, dsn=None)
    for name, role in (("li", "dispatcher"), ("wang", "viewer"), ("boss", "supervisor")):
        store.add_console_user(name, role, hash_password(PASSWORD), now=1.0)  # type: ignore[attr-defined]
    con = Console(
        store=store,
        sites={(SITE, GW): SiteData("No. 1 School", "Road 1", 22.5, 114.0, "110", "Ms Zhou")},
        registry={(SITE, GW): 30.0},
    )
    client = TestClient(TestServer(build_app(con), host="127.0.0.1"))
    await client.start_server()
    try:
        yield client, con
    finally:
        await client.close()
        store.close()


async def login(client: TestClient, name: str = "li", password: str = PASSWORD) -> str:
    resp = await client.post("/login", data={"name": name, "password": password})
    assert resp.status == 200, await resp.text()
    html = await resp.text()
    found = re.search(r'data-csrf="([^"]+)"', html)
    assert found, html
    return found.group(1)


async def test_pages_need_sign_in_and_cookie_flags(rig: tuple[TestClient, Console]) -> None:
    client, _ = rig
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 302 and resp.headers["Location"] == "/login"
    assert (await client.get("/board.json")).status == 401
    resp = await client.post(
        "/login", data={"name": "li", "password": PASSWORD}, allow_redirects=False
    )
    cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie


async def test_login_rate_limited_per_user(rig: tuple[TestClient, Console]) -> None:
    client, con = rig
    for _ in range(5):
        assert (
            await client.post("/login", data={"name": "li", "password": "wrong!!!"})
        ).status == 401
    resp = await client.post("/login", data={"name": "li", "password": PASSWORD})
    assert resp.status == 429
    actions = [e["action"] for e in con.store.audit_log()]
    assert actions.count("login-failed") == 5 and "login-blocked" in actions


async def test_board_escapes_gateway_text_and_acts_with_csrf(
    rig: tuple[TestClient, Console],
) -> None:
    client, con = rig
    env = alarm(10, name="<script>alert(1)</script>")
    con.store.admit(env, received=100.0)
    con.store.admit(alarm(11, code="601", kind="test"), received=101.0)
    con.store.admit(heartbeat(12), received=102.0)
    csrf = await login(client)
    board = await (await client.get("/board.json")).json()
    assert [a["id"] for a in board["alarms"]] == [env.id] and len(board["tests"]) == 1
    page = await (await client.get(f"/alarms/{env.id}")).text()
    assert "<script>alert(1)" not in page and "&lt;script&gt;alert(1)" in page
    assert 'href="tel:110"' in page
    # no CSRF token: refused, nothing changed
    assert (await client.post(f"/alarms/{env.id}/ack", data={})).status == 403
    assert con.store.alarm(env.id)["status"] == "new"
    resp = await client.post(f"/alarms/{env.id}/ack", data={"csrf": csrf})
    assert resp.status == 200
    assert con.store.alarm(env.id)["acked_by"] == "li"
    resp = await client.post(
        f"/alarms/{env.id}/resolve", data={"csrf": csrf, "outcome": "false", "note": "kid"}
    )
    assert resp.status == 200
    got = con.store.alarm(env.id)
    assert (got["status"], got["outcome"], got["resolved_by"]) == ("resolved", "false", "li")
    assert len(con.store.claim_outbox("t", now=200.0)) == 2  # ack and resolve dispatches
    history = await (await client.get("/history.json?outcome=false")).json()
    assert [a["id"] for a in history["alarms"]] == [env.id]
    csv_text = await (await client.get("/history.csv")).text()
    assert env.id in csv_text.splitlines()[1] or env.id in csv_text
    audit = await (await client.get("/audit.json")).json()
    assert {"acknowledged", "resolved", "login"} <= {e["action"] for e in audit["entries"]}


async def test_viewer_cannot_act_and_language_switch(rig: tuple[TestClient, Console]) -> None:
    client, con = rig
    env = alarm(10)
    con.store.admit(env, received=100.0)
    csrf = await login(client, "wang")
    resp = await client.post(f"/alarms/{env.id}/ack", data={"csrf": csrf})
    assert resp.status == 403
    assert "警情看板" in await (await client.get("/")).text()
    await client.post("/lang", data={"csrf": csrf, "lang": "en"})
    text = await (await client.get("/")).text()
    assert "Alarm board" in text and "警情看板" not in text
    assert con.store.console_user("wang")["lang"] == "en"


async def test_bearer_token_api(rig: tuple[TestClient, Console]) -> None:
    client, con = rig
    env = alarm(10)
    con.store.admit(env, received=100.0)
    token, digest = new_token()
    con.store.add_console_token(digest, "cad", "dispatcher", now=1.0)
    auth = {"Authorization": f"Bearer {token}"}
    assert (await client.get("/api/board", headers={"Authorization": "Bearer nope"})).status == 401
    board = await (await client.get("/api/board", headers=auth)).json()
    assert board["alarms"][0]["school"] == "No. 1 School"
    resp = await client.post(f"/api/alarms/{env.id}/ack", json={}, headers=auth)
    assert resp.status == 200 and (await resp.json())["acked_by"] == "token:cad"
    resp = await client.post(f"/api/alarms/{env.id}/ack", json={}, headers=auth)
    assert resp.status == 409
    resp = await client.post(
        f"/api/alarms/{env.id}/resolve", json={"outcome": "bogus"}, headers=auth
    )
    assert resp.status == 409 and "outcome" in (await resp.json())["error"]


async def test_alert_sound_is_a_wav(rig: tuple[TestClient, Console]) -> None:
    client, _ = rig
    await login(client)
    body = await (await client.get("/static/alert.wav")).read()
    assert body[:4] == b"RIFF" and body[8:12] == b"WAVE"


async def test_api_matches_its_openapi_document(rig: tuple[TestClient, Console]) -> None:
    import jsonschema
    import yaml
    from openapi_spec_validator import validate

    spec = yaml.safe_load((Path(__file__).parents[2] / "docs" / "console-api.yaml").read_text())
    validate(spec)
    client, con = rig
    env = alarm(10)
    con.store.admit(env, received=100.0)
    con.store.admit(heartbeat(11), received=101.0)
    token, digest = new_token()
    con.store.add_console_token(digest, "cad", "dispatcher", now=1.0)
    auth = {"Authorization": f"Bearer {token}"}

    async def check(method: str, path: str, name: str, status: int = 200, **kw: object) -> None:
        resp = await client.request(method, path, headers=auth, **kw)  # type: ignore[arg-type]
        assert resp.status == status, await resp.text()
        schema = {**spec, "$ref": f"#/components/schemas/{name}"}
        jsonschema.Draft202012Validator(schema).validate(await resp.json())

    await check("GET", "/api/board", "Board")
    await check("GET", f"/api/alarms/{env.id}", "AlarmDetail")
    await check("GET", "/api/fleet", "Fleet")
    await check("POST", f"/api/alarms/{env.id}/ack", "Alarm", json={})
    await check("POST", f"/api/alarms/{env.id}/ack", "Error", 409, json={})
    await check("POST", f"/api/alarms/{env.id}/resolve", "Alarm", json={"outcome": "real"})
    await check("GET", "/api/history?type=alarm", "History")
    await check("GET", "/api/audit", "Audit")
    resp = await client.get("/api/board", headers={"Authorization": "Bearer x"})
    jsonschema.Draft202012Validator({**spec, "$ref": "#/components/schemas/Error"}).validate(
        await resp.json()
    )


async def test_supervisor_manages_accounts_and_disabling_ends_sessions(
    rig: tuple[TestClient, Console],
) -> None:
    client, con = rig
    csrf = await login(client, "boss")
    resp = await client.post(
        "/users",
        data={
            "csrf": csrf,
            "action": "add",
            "name": "zhao",
            "role": "viewer",
            "password": "zhao password",
        },
    )
    assert resp.status == 200 and "zhao" in await resp.text()
    assert (
        await client.post(
            "/users",
            data={
                "csrf": csrf,
                "action": "add",
                "name": "zhao",
                "role": "viewer",
                "password": "x" * 9,
            },
        )
    ).status == 400
    # li is signed in elsewhere; disabling li ends that session at once
    async with TestClient(TestServer(build_app(con), host="127.0.0.1")) as li:
        li_csrf = await login(li, "li")
        assert (await li.get("/users.json")).status == 403  # a dispatcher
        assert (
            await client.post("/users", data={"csrf": csrf, "action": "disable", "name": "li"})
        ).status == 200
        assert (await li.get("/board.json")).status == 401
        assert li_csrf
    actions = {e["action"] for e in con.store.audit_log()}
    assert {"user-add", "user-disable"} <= actions


async def test_unproven_and_mismatch_are_flagged(rig: tuple[TestClient, Console]) -> None:
    client, con = rig
    env = alarm(70_000, address="Elsewhere 9")
    con.store.admit(env, received=100.0)
    replay = alarm(70_000)  # same seq, another id: kept as unproven
    assert con.store.admit(replay, received=101.0).unproven
    await login(client)
    board = await (await client.get("/board.json")).json()
    flags = {a["id"]: (a["fresh"], a["mismatch"]) for a in board["alarms"]}
    assert flags == {env.id: (True, True), replay.id: (False, False)}
    html = await (await client.get("/")).text()
    assert html.count("unproven-flag") == 1


async def test_session_cookie_is_secure_with_tls(rig: tuple[TestClient, Console]) -> None:
    _, con = rig
    con.secure = True
    async with TestClient(TestServer(build_app(con), host="127.0.0.1")) as client:
        resp = await client.post(
            "/login", data={"name": "li", "password": PASSWORD}, allow_redirects=False
        )
        assert "Secure" in resp.headers["Set-Cookie"]


async def test_login_rate_limited_per_address(rig: tuple[TestClient, Console]) -> None:
    client, _ = rig
    for n in range(20):
        resp = await client.post("/login", data={"name": f"nobody{n}", "password": "x" * 8})
        assert resp.status == 401
    assert (await client.post("/login", data={"name": "li", "password": PASSWORD})).status == 429
