"""The local HTTP endpoint (``[http] listen``, loopback by default) for technicians, the CLI
and monitoring.

==========================  ===========================================================
``GET /healthz``            200 ``{"ok": true}`` while the alarm path is alive; 503 with
                            ``"problems"`` (uplink down or stuck, outbox not writable, ...)
``GET /status``             JSON: inputs, uplink, queue (and who owes each queued event
                            an ack), last alarm, versions, uptime, bollard, camera, open
                            troubles, self-checks, the DC-09 path (with ``[dc09]``)
``GET /metrics``            Prometheus text format
``POST /test-alarm``        raise a ``test`` (code 601) through the real path → its id
``GET /events/{id}``        ``pending``/``acked``/``unknown``; ``?wait=S`` waits for the ack
                           (``&path=dc09``: for the DC-09 receiver's ACK, under ``dc09``)
``POST /boxes/{name}/ping`` PING a button box on the port the daemon owns
==========================  ===========================================================

POSTs are accepted only from a loopback peer, only with ``Content-Type:
application/json`` (a web page cannot send that cross-site without a preflight) and only
authenticated with the local token (gateway/technician/token.py): 401 without. Test alarms
are rate-limited (429).

Why a thread of its own: a health check that runs on the event loop it is checking cannot
say that loop is stuck. aiohttp runs here on a second loop in its own thread; ``/healthz``
judges a liveness snapshot of single attributes, everything that iterates the daemon's
state is a snapshot taken on the daemon's loop with a timeout, and a timeout there is itself
the answer ("event loop not responding"). For the daemon this is one more task:
``HealthServer.run``. The server holds a ``SnapshotSource`` and a few callables, not the
gateway: it reads snapshots (gateway/snapshots.py), never the live parts.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import math
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import structlog
from aiohttp import web

from gateway import retry
from gateway.delivery.dc09.snapshot import Dc09Snapshot
from gateway.delivery.outbox import Pending
from gateway.snapshots import GatewaySnapshot, QueueSnapshot, SnapshotSource
from gateway.technician import dc09 as dc09_view
from gateway.technician import metrics, status
from gateway.technician import token as tok
from gateway.technician.http_guard import GuardedConnections

log = structlog.get_logger("alarmgw.health")

ADDR_FILE = "http.addr"  # in state_dir: where the CLI finds a daemon listening on port 0
MAIN_TIMEOUT_S = 2.0  # the daemon's loop answers in microseconds; 2 s of silence is a stall
MAX_WAIT_S = 30.0  # longest ?wait= for GET /events/{id}
PING_TIMEOUT_S = 2.0
# Connection bounds (gateway/technician/http_guard.py): far below the daemon's descriptor
# limit, so the alarm path always has descriptors to reconnect with.
MAX_CONNECTIONS = 64
BACKLOG = 32
FIRST_BYTE_S = 5.0  # a connection that sends nothing this long is closed
MAX_LIFE_S = MAX_WAIT_S + 30.0  # a half-sent request is cut off after this
KEEPALIVE_S = 5.0  # an idle keep-alive connection between requests
# Test alarms: a bucket of TEST_BURST, refilled one per TEST_EVERY_S; refused while
# MAX_QUEUED_TESTS are still waiting for the center's ack (tests are never evicted).
TEST_BURST = 3
TEST_EVERY_S = 2.0
MAX_QUEUED_TESTS = 10
SEEN_NONCES = 4096  # authenticated requests remembered against replay
JSON = "application/json"
PROMETHEUS = "text/plain; version=0.0.4; charset=utf-8"

T = TypeVar("T")


def is_loopback(peer: str | None) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback; False for anything else."""
    if not peer:
        return False
    try:
        ip = ipaddress.ip_address(peer.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped.is_loopback
    return ip.is_loopback


def connect_address(host: str, port: int) -> str:
    """``host:port`` a local client can connect to (a wildcard bind becomes loopback)."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _bind_event(err: BaseException | None) -> str:
    return "http endpoint cannot listen" if isinstance(err, OSError) else "http endpoint failed"


@dataclass(frozen=True, slots=True)
class Reading:
    """What ``/status`` and ``/metrics`` render: the gateway's and the DC-09 path's
    snapshots, the queue and who owes what (read from the outbox file), the health."""

    snap: GatewaySnapshot
    dc09: Dc09Snapshot | None
    queue: QueueSnapshot
    owed: dict[str, Any]
    problems: list[str]


class BoxPing(Protocol):
    """What ``POST /boxes/{name}/ping`` needs of ``gateway.inputs.serial_box.BoxLink``."""

    @property
    def name(self) -> str: ...
    @property
    def port(self) -> str: ...
    @property
    def connected(self) -> bool: ...
    @property
    def box_id(self) -> str | None: ...
    @property
    def box_fw(self) -> str | None: ...
    async def ping(self, timeout_s: float = ...) -> float: ...


class HealthServer:
    """Serves the endpoint of one gateway from ``source`` (its snapshots).

    ``raise_test(input_ref)`` raises a test alarm and returns its id; ``pending(id)`` is an
    event's outbox row (None once acked); both run on the daemon's loop. ``boxes`` are the
    button-box links (filled when the inputs start). ``acks`` records ack times and the
    latency histogram: register ``acks.record`` as a relay ack listener."""

    def __init__(
        self,
        source: SnapshotSource,
        *,
        listen: str,
        host: str,
        port: int,
        state_dir: Path,
        outbox: Path,
        inputs: Sequence[str],
        raise_test: Callable[[str], str],
        pending: Callable[[str], Pending | None],
        boxes: Sequence[BoxPing] = (),
        owes_dc09: Callable[[str], bool] | None = None,
        dc09: Callable[[], Dc09Snapshot] | None = None,
    ) -> None:
        self.source = source
        self.listen, self.host, self.port = listen, host, port
        self.outbox = outbox
        self.inputs = list(inputs)
        self._raise_test = raise_test
        self._pending = pending
        self.boxes = boxes
        self.acks = status.AckLog()
        # Weak: the relay holds the ack log, and must not keep this server alive through it.
        self.acks.on_record = weakref.WeakMethod(self._ack_recorded)
        self.addr_file = state_dir / ADDR_FILE
        # With a DC-09 path: whether the outbox still owes the receiver an event (daemon's
        # loop), and the receiver's ACKs of recent events (id → wall time): ``dc09_acked`` is
        # the transmitter's ack listener.
        self._owes_dc09 = owes_dc09
        self.dc09_acks: dict[str, float] = {}
        # The DC-09 transmitter's snapshot (daemon's loop), for status and metrics.
        self._dc09 = dc09
        self.address: str | None = None
        self._main: asyncio.AbstractEventLoop | None = None
        self._http: asyncio.AbstractEventLoop | None = None
        self._ack_event: asyncio.Event | None = None
        self._waiters = 0
        self.connections: GuardedConnections | None = None  # the HTTP thread's, once serving
        self.token = tok.create_token(state_dir)
        self._seen: dict[str, None] = {}  # nonces of authenticated requests, oldest first
        self._tests = float(TEST_BURST)  # the test-alarm bucket
        self._tests_at = time.monotonic()

    # -- lifecycle (daemon loop) ---------------------------------------------------

    async def run(self) -> None:
        """Serve until cancelled. Never ends by itself: a failure to bind (port taken) is
        logged and retried, because the endpoint must never take the alarm path down."""
        self._main = asyncio.get_running_loop()
        while True:  # _serve_once only ends by raising; the loop makes "never ends" plain
            attempts = retry.BIND.retrying(
                Exception, log=log, event=_bind_event, listen=self.listen
            )
            async for attempt in attempts:
                with attempt:
                    await self._serve_once()

    async def _serve_once(self) -> None:
        assert self._main is not None
        loop = asyncio.new_event_loop()
        stop = asyncio.Event()  # bound to the HTTP loop on its first wait
        ready: concurrent.futures.Future[tuple[str, int]] = concurrent.futures.Future()
        finished: asyncio.Future[None] = self._main.create_future()
        thread = threading.Thread(
            target=self._thread_main,
            args=(loop, stop, ready, finished),
            name="alarmgw-http",
            daemon=True,
        )
        thread.start()
        written = False
        try:
            host, port = await asyncio.wrap_future(ready)
            self.address = connect_address(host, port)
            self._write_addr(self.address)
            written = True
            log.info("http endpoint listening", address=self.address, addr_file=str(self.addr_file))
            await finished
            raise RuntimeError("http thread ended")
        finally:
            if written:
                self.addr_file.unlink(missing_ok=True)
            self.address = None
            with contextlib.suppress(RuntimeError):  # its loop is closed already
                loop.call_soon_threadsafe(stop.set)
            await asyncio.to_thread(thread.join, 5.0)

    def _write_addr(self, address: str) -> None:
        tmp = self.addr_file.with_name(f".{ADDR_FILE}.tmp")
        tmp.write_text(address + "\n")
        tmp.replace(self.addr_file)

    def _thread_main(
        self,
        loop: asyncio.AbstractEventLoop,
        stop: asyncio.Event,
        ready: concurrent.futures.Future[tuple[str, int]],
        finished: asyncio.Future[None],
    ) -> None:
        asyncio.set_event_loop(loop)
        self._http = loop
        try:
            loop.run_until_complete(self._http_main(stop, ready))
        except BaseException as err:
            if not ready.done():
                ready.set_exception(err)
            else:
                log.error("http endpoint stopped", error=repr(err))
        finally:
            self._http = None
            with contextlib.suppress(Exception):
                loop.run_until_complete(loop.shutdown_default_executor())
            loop.close()
            main = self._main
            if main is not None:
                with contextlib.suppress(RuntimeError):  # the daemon's loop is gone
                    main.call_soon_threadsafe(_resolve, finished)

    async def _http_main(
        self, stop: asyncio.Event, ready: concurrent.futures.Future[tuple[str, int]]
    ) -> None:
        self._ack_event = asyncio.Event()
        runner = web.AppRunner(
            self.app(),
            access_log=None,
            handle_signals=False,
            keepalive_timeout=KEEPALIVE_S,
            shutdown_timeout=1.0,
        )
        await runner.setup()
        handlers = runner.server
        assert handlers is not None  # set up
        guard = GuardedConnections(
            handlers,
            limit=MAX_CONNECTIONS,
            first_byte_s=FIRST_BYTE_S,
            max_life_s=MAX_LIFE_S,
        )
        self.connections = guard
        server: asyncio.Server | None = None
        try:
            server = await asyncio.get_running_loop().create_server(
                guard, self.host or None, self.port, reuse_address=True, backlog=BACKLOG
            )
            bound = server.sockets[0].getsockname()
            if not ready.set_running_or_notify_cancel():
                return  # the daemon stopped while we were binding
            ready.set_result((str(bound[0]), int(bound[1])))
            await stop.wait()
        finally:
            if server is not None:
                server.close()
            guard.close_all()
            await runner.cleanup()

    def app(self) -> web.Application:
        app = web.Application()
        app.on_response_prepare.append(self._prove)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_post("/test-alarm", self._test_alarm)
        app.router.add_get("/events/{id}", self._event)
        app.router.add_post("/boxes/{name}/ping", self._ping_box)
        return app

    async def _prove(self, request: web.Request, response: web.StreamResponse) -> None:
        """Every answer to a request with a nonce proves this daemon holds the token: the
        CLI trusts nothing else on the port (a squatter cannot answer this)."""
        nonce = request.headers.get(tok.NONCE)
        if tok.valid_nonce(nonce):
            assert nonce is not None
            response.headers[tok.PROOF] = tok.daemon_proof(self.token, nonce)

    # -- crossing to the daemon's loop (HTTP thread) ---------------------------------

    async def _on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the daemon's loop; TimeoutError when that loop does not get to it."""
        assert self._main is not None
        cf: concurrent.futures.Future[T] = concurrent.futures.Future()

        def call() -> None:
            if cf.set_running_or_notify_cancel():
                try:
                    cf.set_result(fn())
                except BaseException as err:
                    cf.set_exception(err)

        self._main.call_soon_threadsafe(call)
        return await asyncio.wait_for(asyncio.wrap_future(cf), MAIN_TIMEOUT_S)

    def _ack_recorded(self) -> None:
        # On the daemon's loop, right after an ack: wake GET /events waiters, if any.
        loop = self._http
        if loop is not None and self._waiters:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._pulse)

    def dc09_acked(self, event_id: str, at: float) -> None:
        self.dc09_acks[event_id] = at
        while len(self.dc09_acks) > 1000:
            del self.dc09_acks[next(iter(self.dc09_acks))]
        self._ack_recorded()

    def _pulse(self) -> None:
        event, self._ack_event = self._ack_event, asyncio.Event()
        if event is not None:
            event.set()

    # -- handlers (HTTP thread) ----------------------------------------------------

    def _problems(self) -> list[str]:
        return status.health_problems(self.source.liveness())

    async def _healthz(self, _request: web.Request) -> web.Response:
        problems = self._problems()
        return web.json_response(
            {"ok": not problems, "problems": problems}, status=503 if problems else 200
        )

    async def _snapshot(self) -> Reading:
        """A snapshot taken on the daemon's loop, the queue read from the outbox file here,
        the health judged here."""
        dc09 = self._dc09
        snap, dc09_snap = await self._on_main(
            lambda: (self.source.snapshot(), dc09() if dc09 is not None else None)
        )
        queue, owed = await asyncio.to_thread(self._read_outbox)
        return Reading(snap, dc09_snap, queue, owed, self._problems())

    def _read_queue(self) -> QueueSnapshot:
        with status.readonly_outbox(self.outbox) as conn:
            return status.read_queue(conn)

    def _read_outbox(self) -> tuple[QueueSnapshot, dict[str, Any]]:
        """The center's queue by type, and who owes an ack for what (``read_owed``)."""
        with status.readonly_outbox(self.outbox) as conn:
            owed = status.read_owed(conn, dc09=self._dc09 is not None)
            return status.read_queue(conn), owed

    def _not_responding(self) -> web.Response:
        problems = self._problems()
        problems.insert(0, f"event loop not responding within {MAIN_TIMEOUT_S:.0f} s")
        return web.json_response({"ok": False, "problems": problems}, status=503)

    async def _status(self, _request: web.Request) -> web.Response:
        try:
            r = await self._snapshot()
        except TimeoutError:
            return self._not_responding()
        doc = status.to_json(
            r.snap, queue=r.queue, problems=r.problems, acks=self.acks, owed=r.owed
        )
        if r.dc09 is not None:
            doc["dc09"] = dc09_view.section(r.dc09, r.owed["by_path"].get("dc09"))
        return web.json_response(doc)

    async def _metrics(self, _request: web.Request) -> web.Response:
        try:
            r = await self._snapshot()
        except TimeoutError:
            return self._not_responding()
        fams = metrics.families(
            r.snap, r.queue, healthy=not r.problems, ack_latency=self.acks.histogram()
        )
        if r.dc09 is not None:
            fams += dc09_view.families(r.dc09, r.owed["by_path"].get("dc09"))
        text = metrics.render(fams)
        return web.Response(body=text.encode(), headers={"Content-Type": PROMETHEUS})

    def _refuse(self, request: web.Request) -> web.Response | None:
        """Why a POST is refused (None: accepted)."""
        if not is_loopback(request.remote):
            return web.json_response({"error": "only from this machine (loopback)"}, status=403)
        if request.content_type != JSON:
            return web.json_response({"error": f"Content-Type must be {JSON}"}, status=415)
        nonce = request.headers.get(tok.NONCE)
        want = tok.request_auth(self.token, request.method, request.path_qs, nonce or "")
        if not tok.valid_nonce(nonce) or not tok.same(request.headers.get(tok.AUTH), want):
            return web.json_response(
                {"error": f"not authenticated: use the alarmgw CLI (token in {tok.TOKEN_FILE})"},
                status=401,
            )
        assert nonce is not None
        if nonce in self._seen:
            return web.json_response({"error": "not authenticated: nonce reused"}, status=401)
        self._seen[nonce] = None
        while len(self._seen) > SEEN_NONCES:
            del self._seen[next(iter(self._seen))]
        return None

    def _take_test(self) -> float:
        """0 when a test alarm may be raised now (and takes it), else seconds to wait."""
        now = time.monotonic()
        self._tests = min(TEST_BURST, self._tests + (now - self._tests_at) / TEST_EVERY_S)
        self._tests_at = now
        if self._tests >= 1.0:
            self._tests -= 1.0
            return 0.0
        return (1.0 - self._tests) * TEST_EVERY_S

    def _queued_tests(self) -> int:
        queue = self._read_queue()
        return sum(r.pending for r in queue.rows if r.type == "test")

    async def _test_alarm(self, request: web.Request) -> web.Response:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        try:
            body = await request.json() if request.can_read_body else {}
        except ValueError:
            return web.json_response({"error": "body is not JSON"}, status=400)
        ref = body.get("input") if isinstance(body, dict) else None
        if ref is None:
            if not self.inputs:
                return web.json_response({"error": "no inputs configured"}, status=409)
            ref = self.inputs[0]
        if ref not in self.inputs:
            known = ", ".join(self.inputs) or "none"
            return web.json_response(
                {"error": f"unknown input {ref!r} (configured: {known})"}, status=400
            )
        queued = await asyncio.to_thread(self._queued_tests)
        if queued >= MAX_QUEUED_TESTS:
            return web.json_response(
                {"error": f"{queued} test alarms still wait for the center's ack; try later"},
                status=429,
            )
        wait = self._take_test()
        if wait:
            return web.json_response(
                {"error": f"too many test alarms; try again in {wait:.0f} s"},
                status=429,
                headers={"Retry-After": str(max(1, math.ceil(wait)))},
            )
        try:
            event_id = await self._on_main(lambda: self._raise_test(ref))
        except TimeoutError:
            return self._not_responding()
        except Exception as err:
            return web.json_response({"error": f"not raised: {err}"}, status=500)
        return web.json_response(
            {"id": event_id, "input": ref, "type": "test", "code": "601", "raised_at": time.time()},
            status=202,
        )

    async def _event_state(self, event_id: str) -> dict[str, Any]:
        out: dict[str, Any] = {"id": event_id, "state": "unknown"}
        owes = self._owes_dc09
        if owes is not None:
            # The DC-09 path ([dc09]): "acked" (with acked_at), "pending" or "unknown".
            at = self.dc09_acks.get(event_id)
            if at is not None:
                out["dc09"] = {"state": "acked", "acked_at": at}
            elif await self._on_main(lambda: owes(event_id)):
                out["dc09"] = {"state": "pending"}
            else:
                at = self.dc09_acks.get(event_id)  # acked between the two looks
                out["dc09"] = {"state": "unknown" if at is None else "acked", "acked_at": at}
        acked = self.acks.get(event_id)
        if acked is None:
            row = await self._on_main(lambda: self._pending(event_id))
            if row is not None:
                out.update(
                    state="pending",
                    type=row.type,
                    failed_attempts=row.attempts,
                    last_error=row.last_error,
                )
                return out
            acked = self.acks.get(event_id)  # acked between the two looks
        if acked is not None:
            at, latency = acked
            out.update(
                state="acked",
                acked_at=at,
                ack_ms=None if latency is None else round(latency * 1000, 1),
            )
        return out

    async def _event(self, request: web.Request) -> web.Response:
        event_id = request.match_info["id"]
        try:
            wait = float(request.query.get("wait", "0"))
        except ValueError:
            wait = math.nan
        if not math.isfinite(wait):
            return web.json_response({"error": "wait must be a number of seconds"}, status=400)
        wait = min(max(wait, 0.0), MAX_WAIT_S)
        path = request.query.get("path", "mqtt")
        if path not in ("mqtt", "dc09"):
            return web.json_response({"error": "path must be mqtt or dc09"}, status=400)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        try:
            while True:
                info = await self._event_state(event_id)
                left = deadline - loop.time()
                state = info.get("dc09", {}).get("state") if path == "dc09" else info["state"]
                transport = request.transport
                gone = transport is None or transport.is_closing()  # the client left
                if state != "pending" or left <= 0 or gone:
                    break
                event = self._ack_event
                assert event is not None
                self._waiters += 1
                try:
                    with contextlib.suppress(TimeoutError):
                        # Re-read at least once a second: attempts and errors change too.
                        await asyncio.wait_for(event.wait(), min(left, 1.0))
                finally:
                    self._waiters -= 1
        except TimeoutError:
            return self._not_responding()
        return web.json_response(info, status=404 if info["state"] == "unknown" else 200)

    async def _ping_box(self, request: web.Request) -> web.Response:
        refused = self._refuse(request)
        if refused is not None:
            return refused
        name = request.match_info["name"]
        box = next((b for b in self.boxes if b.name == name), None)
        if box is None:
            return web.json_response({"error": f"no [[serial]] box named {name!r}"}, status=404)
        assert self._main is not None
        out: dict[str, Any] = {"name": name, "port": box.port}
        cf = asyncio.run_coroutine_threadsafe(box.ping(PING_TIMEOUT_S), self._main)
        try:
            rtt = await asyncio.wait_for(asyncio.wrap_future(cf), PING_TIMEOUT_S + MAIN_TIMEOUT_S)
        except TimeoutError:
            out.update(ok=False, error=f"no HB answer to PING within {PING_TIMEOUT_S:.0f} s")
        except ConnectionError as err:
            out.update(ok=False, error=str(err))
        else:
            out.update(ok=True, rtt_ms=round(rtt * 1000, 1))
        out.update(box_id=box.box_id, fw=box.box_fw, connected=box.connected)
        return web.json_response(out)


def _resolve(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)
