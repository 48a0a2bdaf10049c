"""The center's own health: ``/healthz`` (JSON) and ``/metrics`` (Prometheus text) over HTTP,
on loopback by default: envelopes accepted and rejected by reason, the ingest rate, the
database time of the last burst, gateways by liveness and open alarms by age."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog
from aiohttp import web

from center.service import Center
from center.store import StoreError
from gateway.configtypes import split_host_port

log = structlog.get_logger("alarmgw.center")


def health(center: Center) -> dict[str, Any]:
    began = time.perf_counter()
    try:
        summary: dict[str, Any] | None = center.state.summary(now=time.time())
        db_ok = True
    except StoreError:
        summary, db_ok = None, False
    uplink = center.uplink
    up = time.time() - center.started
    accepted = center.counts.get("accepted", 0)
    return {
        "status": "ok" if db_ok and uplink is not None and uplink.connected else "degraded",
        "database": {
            "ok": db_ok,
            "latency_ms": round((time.perf_counter() - began) * 1000, 2),
            "last_burst_ms": round(center.commit_s * 1000, 2),
        },
        "mqtt_connected": bool(uplink is not None and uplink.connected),
        "uptime_s": round(up, 1),
        "counts": dict(center.counts),
        "ingest_per_s": round(accepted / up, 2) if up > 0 else 0.0,
        "gateways": {
            status: sum(1 for key in center.registry.keys if center.liveness.status(*key) == status)
            for status in ("unknown", "online", "stale", "offline")
        },
        "store": summary,
    }


def metrics(report: dict[str, Any]) -> str:
    lines = [
        "# TYPE alarmgw_center_envelopes_total counter",
    ]
    for key, count in sorted(report["counts"].items()):
        result, _, reason = key.partition(":")
        label = f'result="{result}"' + (f',reason="{reason}"' if reason else "")
        lines.append(f"alarmgw_center_envelopes_total{{{label}}} {count}")
    lines += [
        "# TYPE alarmgw_center_ingest_per_second gauge",
        f"alarmgw_center_ingest_per_second {report['ingest_per_s']}",
        "# TYPE alarmgw_center_db_latency_seconds gauge",
        f"alarmgw_center_db_latency_seconds {report['database']['latency_ms'] / 1000}",
        f"alarmgw_center_db_up {int(report['database']['ok'])}",
        "# TYPE alarmgw_center_gateways gauge",
    ]
    for status, count in report["gateways"].items():
        lines.append(f'alarmgw_center_gateways{{status="{status}"}} {count}')
    store = report["store"] or {}
    lines.append("# TYPE alarmgw_center_open_alarms gauge")
    for bucket, count in (store.get("open_alarms_by_age") or {}).items():
        lines.append(f'alarmgw_center_open_alarms{{age="{bucket}"}} {count}')
    return "\n".join(lines) + "\n"


async def serve_health(center: Center, listen: str) -> None:
    """Serve until cancelled."""
    host, port = split_host_port(listen)

    async def healthz(_req: web.Request) -> web.Response:
        report = health(center)
        return web.json_response(report, status=200 if report["status"] == "ok" else 503)

    async def prom(_req: web.Request) -> web.Response:
        return web.Response(text=metrics(health(center)), content_type="text/plain")

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", prom)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except OSError as err:  # the center keeps working without it
        log.error("health endpoint not started", listen=listen, error=str(err))
        await runner.cleanup()
        return
    log.info("health endpoint listening", listen=listen)
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
