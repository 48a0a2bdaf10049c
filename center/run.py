"""``alarmgw center --config FILE``: the command-center service. Loads the config, opens the
store, listens on the broker(s), prints what it decides, and publishes the ``dispatch``
envelopes people cause with ``alarmgw center ack|resolve`` (written to the store's outbox by
the CLI; this service polls it, signs, publishes and marks each one sent)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import structlog

from center.config import CenterConfig, load_center_config
from center.present import SiteData, console
from center.service import Center, Registry
from center.store import Store, StoreError, open_store
from gateway.contract.signing import key_mode_problem, load_signing_key, load_verify_key
from gateway.contract.topics import topic
from gateway.delivery.seq import SeqCounter
from gateway.delivery.uplink import MqttSettings, Uplink
from gateway.private_files import private_dir

log = structlog.get_logger("alarmgw.center")

OUTBOX_POLL_S = 0.5  # how soon a dispatch written by the CLI is published
PUBLISH_TIMEOUT_S = 10.0


def site_data(cfg: CenterConfig) -> dict[tuple[str, str], SiteData]:
    return {
        (g.site, g.id): SiteData(g.school, g.address, g.lat, g.lon, g.phone, g.contact)
        for g in cfg.gateways
    }


def open_config_store(cfg: CenterConfig) -> Store:
    state_dir = Path(cfg.center.state_dir)
    private_dir(state_dir, "state_dir")
    return open_store(cfg.store, state_dir=state_dir, dsn=cfg.dsn)


def _open_center(config_path: str) -> tuple[Center, SeqCounter, CenterConfig]:
    """Load the config, keys and store (blocking I/O, before the loop matters)."""
    cfg = load_center_config(config_path)
    key = load_signing_key(cfg.center.key_file)
    problem = key_mode_problem(Path(cfg.center.key_file))
    if problem:
        log.warning("key file permissions", problem=problem)
    registry = Registry()
    for entry in cfg.gateways:
        for pub in entry.public_keys:
            registry.add(entry.site, entry.id, load_verify_key(pub), entry.heartbeat_s)
    store = open_config_store(cfg)
    seq = SeqCounter(Path(cfg.center.state_dir) / "seq.json")
    center = Center(
        prefix=cfg.mqtt.prefix,
        key=key,
        seq=seq,
        state=store,
        registry=registry,
        workers="process",
        share_group=cfg.mqtt.share_group,
    )
    return center, seq, cfg


async def publish_outbox(center: Center, *, owner: str, poll_s: float = OUTBOX_POLL_S) -> None:
    """For ever: sign and publish the unsent dispatches, each marked sent after the broker
    took it (PUBACK). Another instance takes over what this one claimed and did not send."""
    while True:
        await asyncio.sleep(poll_s)
        uplink = center.uplink
        if uplink is None or not uplink.connected:
            continue
        try:
            items = center.state.claim_outbox(owner, now=time.time())
        except StoreError as err:
            log.error("cannot read the dispatch outbox", error=str(err))
            continue
        for item in items:
            out = center.sign(item.site, item.gw, item.type, item.body)
            try:
                fut = uplink.publish(topic(center.prefix, item.site, item.gw, "ack"), out.payload)
                await asyncio.wait_for(fut, PUBLISH_TIMEOUT_S)
            except Exception as err:
                log.warning("dispatch not delivered to the broker; retrying", error=str(err))
                break  # the claim lapses; this or another instance sends it again
            try:
                center.state.mark_sent(item.n, out.id, now=time.time())
            except StoreError as err:
                log.error("dispatch sent but not marked; it may be sent again", error=str(err))
                break
            log.info("dispatch sent", site=item.site, gw=item.gw, id=out.id, body=item.body)


async def run_center(config_path: str, *, as_json: bool, out: TextIO = sys.stdout) -> None:
    """``alarmgw center --config FILE``: run until cancelled."""
    center, seq, cfg = _open_center(config_path)
    console(center, out, as_json=as_json, site_data=site_data(cfg))
    # With a share group several instances may sign with the same key: each needs its own
    # MQTT client id.
    suffix = f"-{socket.gethostname()}-{os.getpid()}" if cfg.mqtt.share_group else ""
    settings = MqttSettings.from_config(cfg.mqtt, client_id=f"alarmgw-center-{center.kid}{suffix}")
    uplink = Uplink(settings, subscriptions=center.subscriptions(), on_message=center.on_message)
    center.attach(uplink)
    center.start_checker()
    jobs = [uplink.run()]
    if cfg.mqtt_secondary is not None:  # listen (and ack) on the second path too
        second = Uplink(
            MqttSettings.from_config(cfg.mqtt_secondary, client_id=settings.client_id),
            subscriptions=center.subscriptions(),
            on_message=lambda name, payload: center.on_message(name, payload, via=second),
        )
        jobs.append(second.run())
    log.info("center starting", kid=center.kid, gateways=len(cfg.gateways), store=cfg.store)
    tasks: list[asyncio.Task[Any]] = [
        asyncio.create_task(center.watch(), name="liveness"),
        asyncio.create_task(publish_outbox(center, owner=settings.client_id), name="outbox"),
    ]
    if cfg.health.enabled:
        from center.health import serve_health  # noqa: PLC0415

        tasks.append(asyncio.create_task(serve_health(center, cfg.health.listen), name="health"))
    if cfg.console is not None:
        from center.console.serve import serve_console  # noqa: PLC0415

        tasks.append(asyncio.create_task(serve_console(center, cfg), name="console"))
    try:
        await asyncio.gather(*jobs)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        center.close()
        seq.close()
        center.state.close()
