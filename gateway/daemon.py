"""``alarmgw run``: wires config, keys, outbox, uplink, relay and inputs, and shuts down
cleanly (inputs first, then the signed ``offline`` state, then the session).

Start-up imports the alarm path only; ``READY=1`` goes out once it is built. The technician
endpoint and the site monitors (which bring in the HTTP stack, aiohttp) are built right
after, before the event loop runs any task, and the DC-09 transmitter only with ``[dc09]``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import resource
import signal
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from gateway import __version__, watchdog
from gateway.config import GatewayConfig
from gateway.contract.signing import key_mode_problem, load_signing_key, load_verify_key
from gateway.contract.topics import topic
from gateway.delivery.outbox import Outbox
from gateway.delivery.relay import Identity, Relay
from gateway.delivery.seq import SeqCounter
from gateway.delivery.uplink import MqttSettings, Uplink
from gateway.errors import AlarmgwError
from gateway.private_files import private_dir
from gateway.sdnotify import notify
from gateway.sources import CoreSnapshots, GatewaySnapshots
from gateway.statelock import StateLock
from gateway.supervise import Supervisor

if TYPE_CHECKING:
    from gateway.delivery.dc09.transmitter import Dc09Transmitter
    from gateway.monitors.site import SiteMonitors
    from gateway.technician.health import HealthServer

log = structlog.get_logger("alarmgw.daemon")


def raise_test_alarm(relay: Relay, input_ref: str) -> str:
    """Raise a test alarm from ``input_ref``; its event id."""
    # PROTOCOL.md "alarm / test": code 601 is a manual test; delivered and acked like an
    # alarm, never dispatched. No feedback: nobody at the gate should see an LED.
    raised = relay.raise_alarm(
        input_ref=input_ref, feedback=None, code="601", kind="test", test=True
    )
    return raised.event_id


class Gateway:
    """One running gateway. ``start`` opens everything; ``run`` until ``stop``."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        g = cfg.gateway
        self.key = load_signing_key(g.key_file)
        problem = key_mode_problem(Path(g.key_file))
        if problem:
            log.warning("key file permissions", problem=problem)
        center_keys = [load_verify_key(p) for p in cfg.mqtt.center_keys]
        state_dir = Path(g.state_dir)
        try:
            private_dir(state_dir, "state_dir")
        except OSError as err:
            raise AlarmgwError(f"{state_dir}: cannot create state_dir: {err.strerror}") from err
        self.lock = StateLock(state_dir)
        self.lock.acquire()
        self.seq = SeqCounter(state_dir / "seq.json")
        # The outbox lives in state_dir whatever else the config says: a config change never
        # reinitialises it.
        self.outbox = Outbox(
            state_dir / "outbox.sqlite",
            max_events=cfg.outbox.max_events,
            dc09_types=cfg.dc09.event_types() if cfg.dc09 is not None else (),
        )
        loc = cfg.location
        location: dict[str, Any] = {
            "name": loc.name,
            "address": loc.address,
            "lat": loc.lat,
            "lon": loc.lon,
        }
        if loc.floor is not None:
            location["floor"] = loc.floor
        if loc.room is not None:
            location["room"] = loc.room
        self.relay = Relay(
            ident=Identity(g.site, g.id, cfg.mqtt.prefix),
            key=self.key,
            seq=self.seq,
            outbox=self.outbox,
            center_keys={k.kid: k for k in center_keys},
            location=location,
            contact={"phone": loc.phone},
            ack_timeout_s=cfg.alarm.ack_timeout_s,
            resend_initial_s=cfg.alarm.resend_initial_s,
            resend_max_s=cfg.alarm.resend_max_s,
            show_dispatch=cfg.feedback.show_dispatch,
        )
        settings = MqttSettings.from_config(cfg.mqtt, client_id=f"alarmgw-{g.site}-{g.id}")
        self.uplink = Uplink(
            settings,
            subscriptions=[topic(cfg.mqtt.prefix, g.site, g.id, "ack")],
            on_message=self.relay.on_message,
            prepare=self.relay.prepare_session,
            on_state=self.relay.on_link,
            who="gateway",
        )
        self.secondary: Uplink | None = None
        if cfg.mqtt_secondary is not None:
            second = cfg.mqtt_secondary
            self.secondary = Uplink(
                MqttSettings.from_config(second, client_id=f"alarmgw-{g.site}-{g.id}"),
                subscriptions=[topic(second.prefix, g.site, g.id, "ack")],
                on_message=self.relay.on_message,
                on_state=functools.partial(self.relay.on_link, path="secondary"),
                who="gateway",
            )
        self.relay.attach(self.uplink, self.secondary, failover_after_s=cfg.outbox.failover_after_s)
        self.dc09: Dc09Transmitter | None = None
        if cfg.dc09 is not None:
            from gateway.delivery.dc09.transmitter import (  # noqa: PLC0415 - only with [dc09]
                Dc09Transmitter,
                settings_from_config,
            )

            inputs = [f"gpio:{b.name}" for b in cfg.button] + [
                f"serial:{x.name}" for x in cfg.serial
            ]
            self.dc09 = Dc09Transmitter(
                settings_from_config(cfg.dc09, inputs), self.outbox, self.relay
            )
        self.buttons: list[Any] = []
        self.boxes: list[Any] = []
        self._stop = asyncio.Event()
        self.supervisor = Supervisor()
        # Snapshots of the parts, for status, metrics and the heartbeat: the readers hold
        # these sources (closures over the parts, never over the gateway).
        relay, uplink = self.relay, self.uplink
        self.snapshots = GatewaySnapshots(
            CoreSnapshots(
                site=g.site,
                gw=g.id,
                kid=self.key.kid,
                config=str(cfg.path),
                state_dir=str(g.state_dir),
                outbox_path=str(self.outbox.path),
                min_free_bytes=cfg.selfcheck.min_free_mb * 2**20,
                relay=self.relay,
                primary=self.uplink,
                secondary=self.secondary,
                buttons=self.buttons,
                boxes=self.boxes,
                supervisor=self.supervisor,
                ticks={
                    "uplink": lambda: uplink.loop_heartbeat,
                    "outbox-pump": lambda: relay.pump_tick,
                },
            )
        )
        self.health: HealthServer | None = None  # built by ``run``, after READY=1
        self.monitors: SiteMonitors | None = None

    def stop(self) -> None:
        self._stop.set()

    def make_health(self) -> HealthServer:
        """The local endpoint (status, metrics, test alarm), listening to the relay's acks
        (and the DC-09 transmitter's)."""
        from gateway.technician.health import HealthServer  # noqa: PLC0415 - after READY=1

        cfg = self.cfg
        health = HealthServer(
            self.snapshots,
            listen=cfg.http.listen,
            host=cfg.http.host,
            port=cfg.http.port,
            state_dir=Path(cfg.gateway.state_dir),
            outbox=self.outbox.path,
            inputs=[f"gpio:{b.name}" for b in cfg.button]
            + [f"serial:{s.name}" for s in cfg.serial],
            raise_test=functools.partial(raise_test_alarm, self.relay),
            pending=self.outbox.get,
            boxes=self.boxes,
            owes_dc09=self.outbox.owes_dc09 if self.dc09 is not None else None,
            dc09=self.dc09.snapshot if self.dc09 is not None else None,
        )
        self.relay.ack_listeners.append(health.acks.record)
        if self.dc09 is not None:
            self.dc09.ack_listeners.append(health.dc09_acked)
        return health

    def make_monitors(self) -> SiteMonitors:
        """The site monitors, reading snapshots and callables (never this gateway); their
        snapshot joins the gateway's. After the inputs exist: it hooks the box links."""
        from gateway.monitors.site import SiteMonitors  # noqa: PLC0415 - after READY=1

        relay = self.relay
        monitors = SiteMonitors(
            self.cfg,
            sink=relay,
            ident=relay.ident,
            key=self.key,
            seq=self.seq,
            uplink=self.uplink,
            session=lambda: relay.session,
            route=lambda: relay.route("heartbeat"),
            boxes=self.boxes,
            core=self.snapshots.core,
            buttons=self.buttons,
        )
        if self.secondary is not None:
            monitors.takeover.watch(self.secondary, "secondary")
        self.snapshots.monitors = monitors.snapshot
        return monitors

    def _make_inputs(self) -> list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]]:
        """(name, loop factory) of every input, for the supervisor."""
        from gateway.inputs.serial_box import BoxLink, RS485Options  # noqa: PLC0415

        jobs: list[tuple[str, Callable[[], Coroutine[Any, Any, None]]]] = []
        if self.cfg.button:
            from gateway.inputs.gpio import GpioButtonInput  # noqa: PLC0415 - gpiozero only if used

            for b in self.cfg.button:
                button = GpioButtonInput(b, self.relay)
                self.buttons.append(button)
                jobs.append((f"gpio:{b.name}", button.run))
        for s in self.cfg.serial:
            box = BoxLink(
                name=s.name,
                port=s.port,
                baud=s.baud,
                sink=self.relay,
                ack_timeout_s=self.cfg.alarm.ack_timeout_s,
                heartbeat_s=s.heartbeat_s,
                rs485=RS485Options() if s.rs485 else None,
                buzz_ms=self.cfg.alarm.buzzer_ms,
            )
            self.boxes.append(box)
            jobs.append((f"serial:{s.name}", box.run))
        sim_socket = os.environ.get("ALARMGW_GPIO_SIM")
        if sim_socket and os.environ.get("GPIOZERO_PIN_FACTORY") == "mock":
            jobs.append(("gpio-sim", functools.partial(self._gpio_sim, sim_socket)))
        return jobs

    def led_modes(self) -> dict[int, str]:
        from gateway.inputs.gpio import led_modes  # noqa: PLC0415 - gpiozero only if used

        return led_modes(self.buttons)

    async def _gpio_sim(self, path: str) -> None:
        from gateway.inputs.gpio_sim import GpioSimServer  # noqa: PLC0415 - simulator only on request

        server = GpioSimServer(path, leds=self.led_modes)
        await server.start()
        log.info("GPIO simulator listening", socket=path)
        try:
            await asyncio.Event().wait()
        finally:
            await server.close()

    async def run(self) -> None:
        sup = self.supervisor
        # Each loop is supervised: one that dies or stalls is restarted and reported, the
        # others go on. The uplink's and the pump's ticks show a stall.
        tasks = [
            asyncio.create_task(
                sup.run("uplink", self.uplink.run, tick=lambda: self.uplink.loop_heartbeat),
                name="uplink",
            ),
            asyncio.create_task(
                sup.run("outbox-pump", self.relay.pump, tick=lambda: self.relay.pump_tick),
                name="outbox-pump",
            ),
        ]
        if self.secondary is not None:
            second = self.secondary
            tasks.append(
                asyncio.create_task(
                    sup.run("uplink-secondary", second.run, tick=lambda: second.loop_heartbeat),
                    name="uplink-secondary",
                )
            )
        if self.dc09 is not None:
            tasks.append(asyncio.create_task(sup.run("dc09", self.dc09.run), name="dc09"))
        if self.outbox.moved_aside is not None:
            saved = self.outbox.salvaged
            counts = f"; {saved.saved} queued events salvaged, {saved.lost} lost" if saved else ""
            self.relay.raise_event(
                "trouble",
                {
                    "code": "330",
                    "device": "gateway",
                    "detail": f"outbox was corrupt; moved aside to "
                    f"{self.outbox.moved_aside.name}{counts}",
                },
            )
        for name, job in self._make_inputs():
            tasks.append(asyncio.create_task(sup.run(name, job), name=name))
        # systemd's watchdog (WATCHDOG_USEC): pinged only while uplink and pump both tick.
        tasks += watchdog.start(
            {
                "uplink": lambda: self.uplink.loop_heartbeat,
                "outbox pump": lambda: self.relay.pump_tick,
            }
        )
        stopper = asyncio.create_task(self._stop.wait(), name="stop")
        notify("READY=1")  # the alarm path is built; its tasks run from the first await
        try:
            # Site supervision (heartbeat, troubles, monitors; after the inputs, whose box
            # links it hooks) and the local endpoint: each a supervised task of its own,
            # off the alarm path. Built before the loop runs any task, so the endpoint's
            # ack log misses no ack.
            self.monitors = self.make_monitors()
            for name, job in self.monitors.jobs():
                tasks.append(asyncio.create_task(sup.run(name, job), name=name))
            self.health = self.make_health()
            tasks.append(asyncio.create_task(sup.run("http", self.health.run), name="http"))
            log.info(
                "gateway started",
                version=__version__,
                site=self.cfg.gateway.site,
                gw=self.cfg.gateway.id,
                kid=self.key.kid,
                pending=self.outbox.count(),
                buttons=len(self.cfg.button),
                boxes=len(self.cfg.serial),
            )
            notify(f"STATUS=running, {self.outbox.count()} queued")
            await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        finally:
            notify("STOPPING=1")
            stopper.cancel()
            uplink_task = tasks[0]
            for task in tasks[1:]:
                task.cancel()
            await asyncio.gather(*tasks[1:], return_exceptions=True)
            with contextlib.suppress(Exception):
                await self.uplink.close(final=self.relay.will)
            uplink_task.cancel()
            await asyncio.gather(uplink_task, return_exceptions=True)
            self.seq.close()
            self.outbox.close()
            self.lock.release()
            log.info("gateway stopped")


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft descriptor limit to the hard one: the local HTTP endpoint takes at most
    a few dozen, the alarm path must never find them used up. The (soft, hard) in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError) as err:
            log.warning("cannot raise the descriptor limit", soft=soft, hard=hard, error=str(err))
    return soft, hard


async def run_daemon(cfg: GatewayConfig) -> None:
    raise_fd_limit()
    gateway = Gateway(cfg)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, gateway.stop)
    await gateway.run()
