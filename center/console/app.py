"""The console's aiohttp application: pages (server-rendered, autoescaped), their JSON twins
(``.json``), live updates (``/events``, Server-Sent Events), sign-in, and the integrators' API
(the same JSON routes with ``Authorization: Bearer``). Acknowledge and resolve go through
``center.lifecycle`` like the CLI, so the running service publishes the dispatch."""

from __future__ import annotations

import csv
import io
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp_jinja2
import jinja2
from aiohttp import web
from aiohttp_sse import sse_response

from center.console import views
from center.console.auth import (
    ROLES,
    AccountError,
    LoginLimiter,
    Principal,
    Sessions,
    check_name,
    check_role,
    hash_password,
    token_digest,
    verify_password,
)
from center.console.hub import Hub
from center.console.i18n import LANGS, pick, translations
from center.console.sound import alert_wav
from center.lifecycle import OUTCOMES, Lifecycle, LifecycleError
from center.present import SiteData
from center.store import Store
from center.store.consoledata import ConsoleQueries

HERE = Path(__file__).parent
COOKIE = "alarmgw_session"
LANG_COOKIE = "alarmgw_lang"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class Console:
    """What the console's handlers share."""

    store: Any  # a center store (also ConsoleQueries)
    sites: Mapping[tuple[str, str], SiteData]
    registry: Mapping[tuple[str, str], float]  # (site, gw) -> heartbeat_s
    live: Callable[[str, str], str | None] = lambda _s, _g: None
    secure: bool = False
    idle_s: float = 8 * 3600.0
    hub: Hub = field(default_factory=Hub)
    since: dict[tuple[str, str], float] = field(default_factory=dict)  # liveness changed at
    sessions: Sessions = field(init=False)
    limiter: LoginLimiter = field(default_factory=LoginLimiter)

    def __post_init__(self) -> None:
        store: Store = self.store
        if not isinstance(store, ConsoleQueries):
            raise TypeError("the console needs a SQL store")
        self.sessions = Sessions(self.idle_s)
        self.life = Lifecycle(self.store)

    def live_map(self) -> dict[tuple[str, str], str | None]:
        return {key: self.live(*key) for key in self.registry}


KEY: web.AppKey[Console] = web.AppKey("console", Console)
WHO: web.RequestKey[Principal | None] = web.RequestKey("who", object)  # type: ignore[arg-type]
LANG: web.RequestKey[str] = web.RequestKey("lang", str)
PUBLIC = ("/login", "/static/")


def _wants_json(request: web.Request) -> bool:
    return request.path.endswith(".json") or request.path.startswith("/api/")


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    con = request.app[KEY]
    who: Principal | None = None
    bearer = request.headers.get("Authorization", "")
    if bearer.startswith("Bearer "):
        token = con.store.console_token(token_digest(bearer[7:].strip()))
        if token is None:
            return web.json_response({"error": "unknown or disabled token"}, status=401)
        who = Principal(token["name"], token["role"], "token")
    else:
        who = con.sessions.get(request.cookies.get(COOKIE))
        if who is not None:
            account = con.store.console_user(who.name)
            if account is None or account["disabled"] or account["role"] != who.role:
                con.sessions.close_user(who.name)  # disabled or changed: sign in again
                who = None
        if who is not None and request.method == "POST" and request.path != "/login":
            sent = request.headers.get("X-CSRF-Token")
            if sent is None and request.content_type == "application/x-www-form-urlencoded":
                sent = str((await request.post()).get("csrf", ""))
            if sent != who.csrf:
                return web.json_response({"error": "missing or wrong CSRF token"}, status=403)
    request[WHO] = who
    lang = pick(request.cookies.get(LANG_COOKIE), who.lang if who else None)
    request[LANG] = lang
    if who is None and not request.path.startswith(PUBLIC):
        if _wants_json(request) or request.method != "GET":
            return web.json_response({"error": "sign in or send a bearer token"}, status=401)
        raise web.HTTPFound("/login")
    response = await handler(request)
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("X-Frame-Options", "DENY")
    response.headers.setdefault(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data:; media-src 'self'; frame-ancestors 'none'",
    )
    return response


def _signed_in(request: web.Request) -> Principal:
    who = request[WHO]
    if who is None:
        raise web.HTTPUnauthorized(text="sign in first")
    return who


def _ctx(request: web.Request, **data: Any) -> dict[str, Any]:
    lang = request[LANG]
    tr = translations(lang)
    return {
        "_": tr.gettext,
        "lang": lang,
        "langs": LANGS,
        "who": request[WHO],
        "path": request.path,
        "fmt_time": _fmt_time,
        "fmt_age": _fmt_age,
        **data,
    }


def _fmt_time(at: float | None) -> str:
    if at is None:
        return "-"
    return datetime.fromtimestamp(float(at), UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _fmt_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    return (
        f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"
    )


def _page(request: web.Request, template: str, data: dict[str, Any]) -> web.StreamResponse:
    if _wants_json(request):
        return web.json_response(data, dumps=_dumps)
    return aiohttp_jinja2.render_template(template, request, _ctx(request, data=data))


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, default=str)


# -- sign-in ----------------------------------------------------------------------------


async def login_form(request: web.Request) -> web.StreamResponse:
    return aiohttp_jinja2.render_template("login.html", request, _ctx(request, error=None))


async def login(request: web.Request) -> web.StreamResponse:
    con = request.app[KEY]
    form = await request.post()
    name, password = str(form.get("name", "")), str(form.get("password", ""))
    address = request.remote or "?"
    if con.limiter.blocked(name, address):
        con.store.console_audit_add(name or "?", "login-blocked", address, now=time.time())
        return aiohttp_jinja2.render_template(
            "login.html", request, _ctx(request, error="blocked"), status=429
        )
    user = con.store.console_user(name) if name else None
    if user is None or user["disabled"] or not verify_password(password, user["pw_hash"]):
        con.limiter.failed(name, address)
        con.store.console_audit_add(name or "?", "login-failed", address, now=time.time())
        return aiohttp_jinja2.render_template(
            "login.html", request, _ctx(request, error="bad"), status=401
        )
    con.limiter.succeeded(name)
    sid, _who = con.sessions.open(user["name"], user["role"], user["lang"])
    con.store.console_audit_add(user["name"], "login", address, now=time.time())
    response = web.HTTPFound("/")
    response.set_cookie(COOKIE, sid, httponly=True, samesite="Strict", secure=con.secure, path="/")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    con = request.app[KEY]
    con.sessions.close(request.cookies.get(COOKIE))
    con.store.console_audit_add(_signed_in(request).actor, "logout", "", now=time.time())
    response = web.HTTPFound("/login")
    response.del_cookie(COOKIE, path="/")
    raise response


async def set_lang(request: web.Request) -> web.StreamResponse:
    con = request.app[KEY]
    lang = str((await request.post()).get("lang", ""))
    if lang not in LANGS:
        raise web.HTTPBadRequest(text=f"unknown language {lang!r}")
    who = _signed_in(request)
    if who.via == "session":
        who.lang = lang
        con.store.update_console_user(who.name, lang=lang)
    response = web.HTTPFound(request.headers.get("Referer") or "/")
    response.set_cookie(LANG_COOKIE, lang, samesite="Strict", secure=con.secure, path="/")
    raise response


# -- pages ------------------------------------------------------------------------------


async def board(request: web.Request) -> web.StreamResponse:
    con = request.app[KEY]
    data = views.board(con.store, con.sites)
    if request.query.get("fragment"):
        return aiohttp_jinja2.render_template("board_body.html", request, _ctx(request, data=data))
    return _page(request, "board.html", data)


async def alarm(request: web.Request) -> web.StreamResponse:
    con = request.app[KEY]
    found = con.store.alarm(request.match_info["id"])
    if found is None:
        raise web.HTTPNotFound(text="no such alarm")
    data = views.detail(con.store, found, con.store.audit(found["id"]), con.sites)
    if data["gateway"] is not None:
        data["gateway"]["status"] = (
            con.live(found["site"], found["gw"]) or data["gateway"]["status"]
        )
    data["outcomes"] = OUTCOMES
    return _page(request, "alarm.html", data)


async def act(request: web.Request) -> web.StreamResponse:
    """Acknowledge or resolve (form or JSON)."""
    con = request.app[KEY]
    who = _signed_in(request)
    alarm_id, action = request.match_info["id"], request.match_info["action"]
    if not who.can_act:
        return web.json_response({"error": f"role {who.role} may not {action}"}, status=403)
    if request.content_type == "application/json":
        try:
            form: Mapping[str, Any] = await request.json()
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        if not isinstance(form, dict):
            return web.json_response({"error": "body must be a JSON object"}, status=400)
    else:
        form = await request.post()
    outcome, note = form.get("outcome", ""), form.get("note", "")
    if not isinstance(outcome, str) or not isinstance(note, str):
        return web.json_response({"error": "outcome and note are text"}, status=400)
    try:
        if action == "ack":
            done = con.life.acknowledge(alarm_id, by=who.actor)
        else:
            done = con.life.resolve(alarm_id, outcome=outcome, by=who.actor, note=note)
    except LifecycleError as err:
        return web.json_response({"error": str(err)}, status=409)
    con.hub.notify("alarms")
    if who.via == "token" or request.content_type == "application/json":
        return web.json_response(views.alarm_item(done, con.sites, time.time()), dumps=_dumps)
    raise web.HTTPSeeOther(f"/alarms/{alarm_id}")


async def fleet(request: web.Request) -> web.StreamResponse:
    con = request.app[KEY]
    data = views.fleet(
        con.store,
        con.registry,
        con.sites,
        con.live_map(),
        since=con.since,
        state=request.query.get("state") or None,
        q=request.query.get("q") or None,
    )
    if request.query.get("fragment"):
        return aiohttp_jinja2.render_template("fleet_body.html", request, _ctx(request, data=data))
    return _page(request, "fleet.html", data)


def _day(value: str | None, *, end: bool = False) -> float | None:
    if not value:
        return None
    try:
        day = datetime.strptime(value, "%Y-%m-%d").astimezone()
    except ValueError as err:
        raise web.HTTPBadRequest(text=f"a date is YYYY-MM-DD (got {value!r})") from err
    return day.timestamp() + (86400 if end else 0)


async def history(request: web.Request) -> web.StreamResponse:
    con = request.app[KEY]
    q = request.query
    school = (q.get("school") or "").strip()
    sites = None
    if school:
        needle = school.casefold()
        sites = [
            key
            for key in con.registry
            if needle
            in f"{key[0]} {key[1]} {con.sites[key].school if key in con.sites else ''}".casefold()
        ]
    found = con.store.search_alarms(
        sites=sites,
        since=_day(q.get("from")),
        until=_day(q.get("to"), end=True),
        kind=q.get("type") or None,
        outcome=q.get("outcome") or None,
        limit=500,
    )
    now = time.time()
    items = [views.alarm_item(a, con.sites, now) for a in found]
    data = {"filters": dict(q), "alarms": items, "outcomes": OUTCOMES}
    if request.path.endswith(".csv"):
        out = io.StringIO()
        cols = [
            "id",
            "received_at",
            "ts",
            "site",
            "gw",
            "school",
            "type",
            "code",
            "kind",
            "input",
            "status",
            "acked_by",
            "resolved_by",
            "outcome",
            "note",
            "fresh",
        ]
        writer = csv.writer(out)
        writer.writerow(cols)
        for item in items:
            writer.writerow([_csv_cell(item.get(c)) for c in cols])
        return web.Response(
            text=out.getvalue(),
            content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="alarms.csv"'},
        )
    return _page(request, "history.html", data)


def _csv_cell(value: Any) -> Any:
    # A cell starting with = + - @ would be a formula in a spreadsheet.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@"):
        return "'" + value
    return value


def _account_change(con: Console, who: Principal, form: Mapping[str, Any]) -> tuple[str, str]:
    """Add or disable an account from the form; the action and the audit detail."""
    name, action = str(form.get("name", "")), str(form.get("action", ""))
    if action == "add":
        role = check_role(str(form.get("role", "")))
        pw_hash = hash_password(str(form.get("password", "")))
        if not con.store.add_console_user(check_name(name), role, pw_hash, now=time.time()):
            raise AccountError(f"user {name!r} exists")
        return action, f"{name} ({role})"
    if action == "disable":
        if name == who.name or not con.store.update_console_user(name, disabled=1):
            raise AccountError(f"cannot disable {name!r}")
        con.sessions.close_user(name)
        return action, name
    raise AccountError(f"unknown action {action!r}")


async def users(request: web.Request) -> web.StreamResponse:
    """Supervisors: the accounts; add one or disable one."""
    con = request.app[KEY]
    who = _signed_in(request)
    if who.role != "supervisor":
        return web.json_response({"error": "only a supervisor manages accounts"}, status=403)
    error = None
    if request.method == "POST":
        form = await request.post()
        try:
            action, detail = _account_change(con, who, form)
        except AccountError as err:
            error = str(err)
        else:
            con.store.console_audit_add(who.actor, f"user-{action}", detail, now=time.time())
            raise web.HTTPSeeOther("/users")
    data = {"users": con.store.console_users(), "roles": ROLES, "error": error}
    page = _page(request, "users.html", data)
    if error is not None:
        page.set_status(400)
    return page


async def audit(request: web.Request) -> web.StreamResponse:
    con = request.app[KEY]
    return _page(request, "audit.html", {"entries": con.store.audit_log(limit=500)})


async def events(request: web.Request) -> web.StreamResponse:
    con = request.app[KEY]
    q = con.hub.subscribe()
    try:
        async with sse_response(request) as resp:
            try:
                await resp.send("hello", event="hello")
                while resp.is_connected():
                    kind = await q.get()
                    await resp.send(kind, event=kind)
            except ConnectionResetError:
                pass  # the page went away
        return resp
    finally:
        con.hub.unsubscribe(q)


async def sound(_request: web.Request) -> web.StreamResponse:
    return web.Response(body=alert_wav(), content_type="audio/wav")


def build_app(con: Console) -> web.Application:
    app = web.Application(middlewares=[_auth], client_max_size=64 * 1024)
    app[KEY] = con
    aiohttp_jinja2.setup(
        app,
        loader=jinja2.FileSystemLoader(HERE / "templates"),
        autoescape=True,
        undefined=jinja2.ChainableUndefined,
    )
    r = app.router
    r.add_get("/login", login_form)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_post("/lang", set_lang)
    for path in ("/", "/board.json", "/api/board"):
        r.add_get(path, board)
    for path in ("/alarms/{id}", "/alarms/{id}.json", "/api/alarms/{id}"):
        r.add_get(path, alarm)
    for prefix in ("/alarms", "/api/alarms"):
        r.add_post(prefix + "/{id}/{action:ack|resolve}", act)
    for path in ("/fleet", "/fleet.json", "/api/fleet"):
        r.add_get(path, fleet)
    for path in ("/history", "/history.json", "/history.csv", "/api/history"):
        r.add_get(path, history)
    r.add_route("*", "/users", users)
    r.add_get("/users.json", users)
    for path in ("/audit", "/audit.json", "/api/audit"):
        r.add_get(path, audit)
    r.add_get("/events", events)
    r.add_get("/static/alert.wav", sound)
    r.add_static("/static/", HERE / "static")
    return app
