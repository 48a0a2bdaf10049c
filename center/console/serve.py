"""Start the console beside the running center: it shares the center's store, hears each
decided envelope and liveness change (pushed to the pages as Server-Sent Events) and
serves until cancelled."""

from __future__ import annotations

import asyncio
import ssl
import time
from typing import TYPE_CHECKING

import structlog
from aiohttp import web

from center.check import Verdict
from center.console.app import Console, build_app
from center.liveness import GatewayStatus
from gateway.configtypes import split_host_port

if TYPE_CHECKING:
    from center.config import CenterConfig
    from center.service import Center

log = structlog.get_logger("alarmgw.center")
ALARM_TYPES = ("alarm", "test")
FLEET_TYPES = ("heartbeat", "state", "trouble", "restore")


def console_for(center: Center, cfg: CenterConfig) -> Console:
    from center.run import site_data  # noqa: PLC0415 - run imports this module lazily

    section = cfg.console
    con = Console(
        store=center.state,
        sites=site_data(cfg),
        registry={(g.site, g.id): g.heartbeat_s for g in cfg.gateways},
        live=center.liveness.status,
        secure=bool(section and section.tls_cert),
        idle_s=section.session_idle_s if section else 8 * 3600.0,
    )

    def heard(v: Verdict) -> None:
        if v.env is None or v.result != "accepted":
            return
        if v.env.type in ALARM_TYPES:
            con.hub.notify("alarms")
        elif v.env.type in FLEET_TYPES:
            con.hub.notify("fleet")

    def moved(change: GatewayStatus) -> None:
        con.since[(change.site, change.gw)] = time.time()
        con.hub.notify("fleet")

    center.listeners.append(heard)
    center.status_listeners.append(moved)
    return con


async def serve_console(center: Center, cfg: CenterConfig) -> None:
    """Serve ``[console]`` until cancelled; a port that cannot be bound is one error line
    and the center goes on without its console."""
    section = cfg.console
    if section is None:
        return
    con = console_for(center, cfg)
    con.hub.bind(asyncio.get_running_loop())
    host, port = split_host_port(section.listen)
    tls = None
    if section.tls_cert and section.tls_key:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(section.tls_cert, section.tls_key)
    runner = web.AppRunner(build_app(con), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port, ssl_context=tls).start()
    except OSError as err:
        log.error("console not started", listen=section.listen, error=str(err))
        await runner.cleanup()
        return
    log.info("console listening", listen=section.listen, tls=tls is not None)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
