"""The MQTT session to the command center's broker (PROTOCOL.md "Transport").

paho-mqtt 2 (``CallbackAPIVersion.VERSION2``) driven from the asyncio loop, the way aiomqtt
does it: the client's socket is registered with ``add_reader``/``add_writer`` and
``loop_misc`` runs once a second, so every paho callback runs on the event-loop thread and
there is no hidden network thread that an exception could silently kill (an
exception in a ``loop_start`` callback kills that thread while ``is_connected()`` stays True).
Only the blocking TCP/TLS connect runs in a worker thread.

A fresh paho client per connection: paho keeps unacked QoS 1 messages in RAM and numbers
them per client object, so the durable outbox, not paho, owns re-sending.

A session the broker hands to another client with our client id (MQTT 5 reason 0x8E) is
said in one line and followed by longer waits (gateway/delivery/takeover.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
import structlog
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from gateway import retry
from gateway.delivery.mqtt_client import Readiness, tcp_socket
from gateway.delivery.takeover import NewRun, SessionTakenOver, Takeover, Takeovers, is_takeover
from gateway.errors import AlarmgwError

log = structlog.get_logger("alarmgw.uplink")

# MQTT 5 reason codes >= 0x80 are failures; 16 "no matching subscribers" is a success,
# 135 "not authorized" is how an ACL refusal shows up.


class PublishRefused(AlarmgwError):
    """The broker answered a publish with a failure reason code (e.g. 135 not authorised)."""

    def __init__(self, topic: str, code: int, name: str) -> None:
        self.topic = topic
        self.code = code
        super().__init__(f"broker refused publish to {topic}: reason {code} ({name})")


class NotConnected(AlarmgwError):
    """The session dropped before the broker acknowledged a publish."""


@dataclass(frozen=True, slots=True)
class Session:
    """What one connection needs from the gateway: set before each connect attempt."""

    will_topic: str
    will_payload: bytes
    birth_topic: str
    birth_payload: bytes


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """The subset of the ``[mqtt]`` config the session uses (gateway and center alike)."""

    host: str
    port: int
    keepalive_s: int
    client_id: str
    protocol: str = "5"
    tls: bool = False
    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    username: str | None = None
    password: str | None = None
    # Limits of the connect and reconnect policies (gateway/retry.py) where a test needs
    # them shorter; None keeps the policy's.
    backoff_initial_s: float | None = None
    backoff_max_s: float | None = None
    # The same for the waits after a session takeover (retry.TAKEOVER).
    takeover_first_s: float | None = None
    takeover_cap_s: float | None = None

    @classmethod
    def from_config(cls, section: Any, client_id: str) -> MqttSettings:
        def opt(name: str) -> str | None:
            value = getattr(section, name, None)
            return None if value is None else str(value)

        return cls(
            host=section.host,
            port=section.port,
            keepalive_s=getattr(section, "keepalive_s", 10),
            client_id=getattr(section, "client_id", None) or client_id,
            protocol=getattr(section, "protocol", "5"),
            tls=getattr(section, "tls", False),
            ca_file=opt("ca_file"),
            cert_file=opt("cert_file"),
            key_file=opt("key_file"),
            username=opt("username"),
            password=opt("password"),
        )


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """TLS 1.2+ with the configured CA; client certificate for mTLS when configured."""
    ctx = ssl.create_default_context(cafile=settings.ca_file)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if settings.cert_file:
        ctx.load_cert_chain(settings.cert_file, settings.key_file)
    return ctx


# What a failed connection attempt raises; anything else is a bug and ends ``run``.
CONNECT_ERRORS = (OSError, ssl.SSLError, TimeoutError, mqtt.WebsocketConnectionError)
# A session that lasted this long was a working one: the next reconnect starts from the
# reconnect policy's first attempt (immediately) instead of going on backing off.
STABLE_SESSION_S = 10.0


class NoSession(ConnectionError):
    """The connection closed, or the broker refused it, before a session began."""


class SessionLost(ConnectionError):
    """A session ended before it counted as stable; retried by policy."""


def _retry_event(err: BaseException | None) -> str:
    if isinstance(err, SessionLost):
        return "broker session ended early, reconnecting"
    return "broker unreachable"


class Uplink:
    """Keeps one MQTT session up, forever, retrying with the connect and reconnect
    policies of gateway/retry.py (jittered exponential, capped at a few seconds).

    ``prepare`` is called before every connect attempt and returns the birth/will pair (the
    gateway signs a new ``state`` with a new session number each time; the center passes
    None). ``on_message(topic, payload)`` and ``on_state(connected)`` are called on the loop.
    ``who`` names this kind of client in the takeover line ("gateway").
    """

    def __init__(
        self,
        settings: MqttSettings,
        *,
        subscriptions: list[str],
        on_message: Callable[[str, bytes], None],
        prepare: Callable[[], Session | None] = lambda: None,
        on_state: Callable[[bool], None] = lambda _up: None,
        who: str = "client",
    ) -> None:
        self.settings = settings
        self._subscriptions = subscriptions
        self._on_message = on_message
        self._prepare = prepare
        self._on_state = on_state
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._writer_on = False  # a writer callback is registered for the current socket
        self._in_callback = 0  # inside a paho callback: no paho I/O from here (see publish)
        self._client: mqtt.Client | None = None
        self._pending: dict[int, tuple[asyncio.Future[int], str]] = {}
        self._connected = asyncio.Event()
        self._lost: asyncio.Event = asyncio.Event()
        self._session: Session | None = None
        self._suback_mid = -1  # the SUBSCRIBE of the current session
        self.reconnects = 0
        self.last_error: str | None = None
        self.loop_heartbeat = 0.0  # loop time of the last misc tick: a stuck loop shows here
        self._last_rx = 0.0  # loop time the broker last sent us anything
        self.takeovers = Takeovers(
            who=who,
            client_id=settings.client_id,
            broker=f"{settings.host}:{settings.port}",
            first_s=settings.takeover_first_s,
            cap_s=settings.takeover_cap_s,
        )
        self._taken_over = False  # the current connection was taken over
        self._pending_takeover: SessionTakenOver | None = None
        self._was_stable = False  # a session has lasted STABLE_SESSION_S: RECONNECT policy

    # -- public ---------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def wait_connected(self) -> None:
        await self._connected.wait()

    @property
    def takeover(self) -> Takeover | None:
        """The session takeover not yet over (no session has held since), or None."""
        return self.takeovers.open

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        retain: bool = False,
        expiry_s: int | None = None,
        flush: bool = True,
    ) -> asyncio.Future[int]:
        """QoS 1 publish; the future resolves with the PUBACK reason code, or fails with
        ``PublishRefused`` (reason >= 128) or ``NotConnected`` (session lost first)."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[int] = loop.create_future()
        client = self._client
        if client is None or not self.connected:
            fut.set_exception(NotConnected("not connected to the broker"))
            return fut
        props = None
        if expiry_s is not None and self.settings.protocol == "5":
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            props.MessageExpiryInterval = int(expiry_s)
        info = client.publish(topic, payload, qos=1, retain=retain, properties=props)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            fut.set_exception(NotConnected(f"publish failed locally: {mqtt.error_string(info.rc)}"))
            return fut
        self._pending[info.mid] = (fut, topic)
        # paho defers the write to our writer callback (one loop turn later); on the alarm
        # path that turn can be slow (LED threads, logging), so push the bytes out now. A
        # burst (the outbox pump) passes flush=False and leaves one write for the loop turn.
        # Never from inside a paho callback (the birth in on_connect, an answer in
        # on_message): paho holds a non-reentrant lock there, and a write that fails makes
        # it call on_disconnect under that same lock, which would hang the loop for good.
        if flush and not self._in_callback and client.want_write():
            self._write(client)
        fut.add_done_callback(functools.partial(self._forget, info.mid))
        return fut

    def _forget(self, mid: int, _fut: asyncio.Future[int]) -> None:
        self._pending.pop(mid, None)

    async def run(self) -> None:
        """Connect, stay connected, reconnect; returns only when cancelled.

        Connection attempts follow ``retry.CONNECT`` until a session is up, then
        ``retry.RECONNECT``: a stable session ends in an immediate reconnect, one that ends
        within ``STABLE_SESSION_S`` (a broker that accepts and drops us) counts as a failed
        attempt and the waits go on growing. A session taken over by another client with
        our id is followed by the longer waits of ``retry.TAKEOVER``, growing while the
        takeovers go on and from the first again once a session has held."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        misc = asyncio.create_task(self._misc_loop(), name="uplink-misc")
        try:
            while True:
                with contextlib.suppress(NewRun):
                    async for attempt in self.takeovers.retrying():
                        with attempt:
                            await self._serve()
        finally:
            misc.cancel()
            await self.close()

    async def _serve(self) -> None:
        """Sessions, reconnecting by the connect and reconnect policies, until one is taken
        over (``SessionTakenOver``, or ``NewRun`` for the first of a new run)."""
        pending, self._pending_takeover = self._pending_takeover, None
        if pending is not None:
            raise pending  # the takeover that began this run: its wait comes first
        s = self.settings
        limits = {"first_s": s.backoff_initial_s, "cap_s": s.backoff_max_s}
        while True:
            policy = retry.RECONNECT if self._was_stable else retry.CONNECT
            attempts = policy.limited(**limits).retrying(
                *CONNECT_ERRORS, log=log, event=_retry_event, host=s.host, port=s.port
            )
            async for attempt in attempts:
                with attempt:
                    await self._one_session()
            self._was_stable = True

    async def _one_session(self) -> None:
        """One connection: connect, serve until it is lost. Returns after a stable session;
        raises (``CONNECT_ERRORS``) when the connection failed or ended early, and
        ``SessionTakenOver`` (or ``NewRun``) when another client took the session over."""
        assert self._loop is not None
        self._lost.clear()
        self._taken_over = False
        try:
            await self._connect_once()
            waits = {
                asyncio.ensure_future(self._connected.wait()),
                asyncio.ensure_future(self._lost.wait()),  # e.g. CONNACK with a refusal
            }
            try:
                async with asyncio.timeout(self.settings.keepalive_s * 2):
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiting in waits:
                    waiting.cancel()
            if not self._connected.is_set():
                raise NoSession(self.last_error or "connection lost before CONNACK")
        except CONNECT_ERRORS as err:
            if not isinstance(err, NoSession):
                self.last_error = retry.describe(err)
            self._teardown()
            raise
        started = self._loop.time()
        if not await self._lost_within(self.takeovers.clear_s):
            self.takeovers.held()
            await self._lost.wait()
        self._teardown()
        self.reconnects += 1
        if self._taken_over:
            new_run = self.takeovers.cleared
            taken = self.takeovers.happened()
            if new_run:
                self._pending_takeover = taken
                raise NewRun
            raise taken
        if self._loop.time() - started < STABLE_SESSION_S:
            raise SessionLost(self.last_error or "session lost")

    async def _lost_within(self, timeout_s: float) -> bool:
        """Whether the session is lost within ``timeout_s``."""
        try:
            async with asyncio.timeout(timeout_s):
                await self._lost.wait()
        except TimeoutError:
            return False
        return True

    async def close(self, *, final: tuple[str, bytes] | None = None) -> None:
        """Clean shutdown: optionally publish a last retained message (the gateway's
        ``offline`` state), wait briefly for its PUBACK, then disconnect."""
        client = self._client
        if client is None:
            return
        if final is not None and self.connected:
            try:
                async with asyncio.timeout(2.0):
                    await self.publish(final[0], final[1], retain=True)
            except (TimeoutError, AlarmgwError) as err:
                log.warning("offline state not confirmed", error=str(err))
        if self.connected:
            client.disconnect()
            client.loop_write()
        self._teardown()

    # -- connection ------------------------------------------------------------------

    def _new_client(self) -> mqtt.Client:
        s = self.settings
        proto = mqtt.MQTTv5 if s.protocol == "5" else mqtt.MQTTv311
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=s.client_id,
            protocol=proto,
            clean_session=None if proto == mqtt.MQTTv5 else True,
        )
        client.suppress_exceptions = True  # belt and braces: our callbacks also catch
        if s.username:
            client.username_pw_set(s.username, s.password)
        if s.tls:
            client.tls_set_context(tls_context(s))
        # Our outbox owns flow control; keep paho's window at Mosquitto's default.
        client.max_inflight_messages_set(20)
        client.on_connect = self._cb(self._handle_connect)
        client.on_subscribe = self._cb(self._handle_subscribe)
        client.on_disconnect = self._cb(self._handle_disconnect)
        client.on_publish = self._cb(self._handle_publish)
        client.on_message = self._cb(self._handle_message)
        client.on_socket_open = self._cb(self._socket_open)
        client.on_socket_close = self._cb(self._socket_close)
        client.on_socket_register_write = self._cb(self._register_write)
        client.on_socket_unregister_write = self._cb(self._unregister_write)
        return client

    async def _connect_once(self) -> None:
        assert self._loop is not None
        self._session = self._prepare()
        client = self._new_client()
        self._client = client
        if self._session is not None:
            client.will_set(
                self._session.will_topic, self._session.will_payload, qos=1, retain=True
            )
        s = self.settings
        kwargs: dict[str, Any] = {"keepalive": s.keepalive_s}
        if s.protocol == "5":
            kwargs["clean_start"] = True
        # The TCP (and TLS) handshake blocks: keep it off the loop so presses keep flowing.
        await self._loop.run_in_executor(None, lambda: client.connect(s.host, s.port, **kwargs))

    def _teardown(self) -> None:
        client, self._client = self._client, None
        was_up = self._connected.is_set()
        self._connected.clear()
        for fut, _topic in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(NotConnected("connection lost before PUBACK"))
        self._pending.clear()
        if client is not None:
            sock = client.socket()
            if sock is not None and self._loop is not None:
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
            self._writer_on = False
            # Close without DISCONNECT (the broker publishes our will) and drop paho's state;
            # the callbacks are gone afterwards, so a late paho call reaches nothing of ours.
            with contextlib.suppress(OSError):
                client.reinitialise()
        if was_up:
            self._on_state(False)

    @property
    def silence_limit_s(self) -> float:
        """How long the broker may stay silent before the link counts as dead."""
        return self.settings.keepalive_s * 1.5

    async def _misc_loop(self) -> None:
        # paho's keepalive lives in loop_misc: it sends PINGREQ once nothing went in or out
        # for keepalive_s. paho alone notices a dead link only a further keepalive_s later (2x);
        # a blackholed broker (no RST) must be noticed within 1.5x, so we also watch
        # for silence ourselves: a live broker answers PINGREQ within a round trip.
        assert self._loop is not None
        tick = min(1.0, self.settings.keepalive_s / 8)
        while True:
            now = self._loop.time()
            self.loop_heartbeat = now
            client = self._client
            if client is not None and client.socket() is not None:
                try:
                    client.loop_misc()
                except Exception as err:
                    log.error("mqtt housekeeping failed", error=repr(err))
                silent = now - self._last_rx
                if self.connected and silent > self.silence_limit_s and client is self._client:
                    self._mark_lost(
                        f"no traffic from the broker for {silent:.1f} s "
                        f"(keepalive {self.settings.keepalive_s} s)"
                    )
            await asyncio.sleep(tick)

    # -- paho callbacks (all on the loop thread, or handed to it) ----------------------

    def _cb(self, fn: Callable[..., None]) -> Callable[..., None]:
        """Wrap a callback: run it on the loop thread and never let it raise into paho."""

        def wrapper(*args: Any) -> None:
            loop = self._loop
            if loop is not None and threading.get_ident() != self._loop_thread:
                loop.call_soon_threadsafe(self._safe, fn, args)
            else:
                self._safe(fn, args)

        return wrapper

    def _safe(self, fn: Callable[..., None], args: tuple[Any, ...]) -> None:
        self._in_callback += 1
        try:
            fn(*args)
        except Exception:
            log.exception("mqtt callback failed", callback=fn.__name__)
        finally:
            self._in_callback -= 1

    def _socket_open(self, client: mqtt.Client, _ud: Any, sock: Any) -> None:
        if client is not self._client or self._loop is None:
            return
        tcp = tcp_socket(sock)
        if tcp is not None:
            with contextlib.suppress(OSError):  # without Nagle control it only is slower
                tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._loop.add_reader(sock, self._read, client, Readiness(sock))

    def _socket_close(self, client: mqtt.Client, _ud: Any, sock: Any) -> None:
        if self._loop is not None:
            self._loop.remove_reader(sock)
            self._loop.remove_writer(sock)
            if client is self._client:
                self._writer_on = False

    def _register_write(self, client: mqtt.Client, _ud: Any, sock: Any) -> None:
        # paho asks for every packet it queues; one registration serves them all.
        if client is self._client and self._loop is not None and not self._writer_on:
            self._loop.add_writer(sock, self._write, client)
            self._writer_on = True

    def _unregister_write(self, client: mqtt.Client, _ud: Any, sock: Any) -> None:
        if self._loop is not None:
            self._loop.remove_writer(sock)
            if client is self._client:
                self._writer_on = False

    def _read(self, client: mqtt.Client, ready: Readiness) -> None:
        if self._loop is not None:
            self._last_rx = self._loop.time()
        try:
            # paho reads a few packets per call; go on while bytes wait, so a burst is read
            # in one loop turn (bounded: writes and other callbacks get their turn).
            rc = client.loop_read()
            for _ in range(1_000):
                if rc != mqtt.MQTT_ERR_SUCCESS or not ready.more():
                    break
                rc = client.loop_read()
        except Exception:
            log.exception("mqtt read failed")
            rc = mqtt.MQTT_ERR_CONN_LOST
        if rc != mqtt.MQTT_ERR_SUCCESS and client is self._client:
            self._mark_lost(f"read: {mqtt.error_string(rc)}")
        elif client.want_write():
            self._write(client)  # the PUBACKs for what was read

    def _write(self, client: mqtt.Client) -> None:
        # paho sends what it has queued, as far as the socket takes it, and asks for the
        # writer callback (on_socket_register_write) while anything is left.
        why = ""
        try:
            rc = client.loop_write()
        except OSError as err:
            rc, why = mqtt.MQTT_ERR_CONN_LOST, f"write: {err}"
        except Exception:
            log.exception("mqtt write failed")
            rc = mqtt.MQTT_ERR_CONN_LOST
        if rc != mqtt.MQTT_ERR_SUCCESS and client is self._client:
            self._mark_lost(why or f"write: {mqtt.error_string(rc)}")

    def _mark_lost(self, why: str, *, quiet: bool = False) -> None:
        if not self._lost.is_set():
            self.last_error = why
            if self._connected.is_set() and not quiet:
                log.warning("broker connection lost", error=why)
            self._lost.set()

    def _handle_connect(
        self, client: mqtt.Client, _ud: Any, _flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if client is not self._client:
            return
        if reason.is_failure:
            self.last_error = f"connect refused: {reason}"
            log.error("broker refused connection", reason=str(reason), code=reason.value)
            self._mark_lost(self.last_error)
            return
        if self._subscriptions:
            # One SUBSCRIBE for all; "subscribed" is logged on its SUBACK (what a center
            # receives before then is not routed to it, so tests and the demo wait for it).
            _rc, mid = client.subscribe([(sub, 1) for sub in self._subscriptions])
            self._suback_mid = -1 if mid is None else mid
        self._connected.set()
        self.last_error = None
        log.info("connected to broker", host=self.settings.host, port=self.settings.port)
        if self._session is not None:
            self.publish(self._session.birth_topic, self._session.birth_payload, retain=True)
        self._on_state(True)

    def _handle_subscribe(
        self, client: mqtt.Client, _ud: Any, mid: int, reasons: list[ReasonCode], _props: Any
    ) -> None:
        if client is not self._client or mid != self._suback_mid:
            return
        refused = [
            f"{sub} ({reason})"
            for sub, reason in zip(self._subscriptions, reasons, strict=False)
            if reason.is_failure
        ]
        if refused:  # e.g. the ACL: nothing on those topics will ever arrive
            log.error("broker refused subscription", topics=refused)
        else:
            log.info("subscribed", topics=len(self._subscriptions))

    def _handle_disconnect(
        self, client: mqtt.Client, _ud: Any, flags: Any, reason: ReasonCode, _props: Any
    ) -> None:
        if client is not self._client:
            return
        if is_takeover(reason):
            # Said once, with the wait, by the takeover policy's line (not as a lost link).
            self._taken_over = True
            t = self.takeovers
            self._mark_lost(f"{t.problem}; {t.fix}", quiet=True)
        else:
            # Our own DISCONNECT (``close``) is no lost link worth a warning.
            ours = not flags.is_disconnect_packet_from_server and reason.value == 0
            self._mark_lost(f"disconnected: {reason}", quiet=ours)

    def _handle_publish(
        self, client: mqtt.Client, _ud: Any, mid: int, reason: ReasonCode, _props: Any
    ) -> None:
        entry = self._pending.pop(mid, None)
        if entry is None or entry[0].done():
            return
        fut, topic = entry
        code = int(reason.value) if isinstance(reason, ReasonCode) else int(reason)
        if code >= 0x80:
            err = PublishRefused(topic, code, str(reason))
            # Loud on purpose: an ACL refusal must never look like a delivered alarm.
            log.error("broker refused publish", topic=topic, code=code, reason=str(reason))
            fut.set_exception(err)
        else:
            fut.set_result(code)

    def _handle_message(self, client: mqtt.Client, _ud: Any, msg: mqtt.MQTTMessage) -> None:
        self._on_message(msg.topic, bytes(msg.payload))
