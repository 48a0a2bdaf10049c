"""``alarmgw diag``: every check a technician needs, with the daemon stopped or running.

Each check gives PASS, WARN or FAIL, what it found, and for a WARN or FAIL what to do. A check
that crashes is itself a FAIL (diag never dies with a traceback half way). With the daemon
running, what only the daemon can see (its health, the GPIO pins and serial ports it holds,
the bollard's and the recorder's state over time) is asked of it over the local endpoint;
everything else is probed directly. The gateway's own conditions (clock, certificates, key
modes, disk, serial links, bollard, recorder) are judged by gateway/checks.py, as the
self-checks and ``/status`` judge them: ok is PASS, warning WARN, failing FAIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import stat
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from gateway import checks
from gateway.config import GatewayConfig, load_config
from gateway.errors import AlarmgwError, ConfigError
from gateway.technician.client import DaemonClient, DaemonNotRunning, DaemonUnavailable
from gateway.technician.status import integrity_check, queue_summary, readonly_outbox
from gateway.technician.tools import ago, escape, wrap

Status = Literal["PASS", "WARN", "FAIL"]
SEVERITY: dict[str, int] = {"PASS": 0, "WARN": 1, "FAIL": 2}
STATUS: dict[checks.Level, Status] = {"ok": "PASS", "warning": "WARN", "failing": "FAIL"}
PROBE_TIMEOUT_S = 5.0
SERIAL_TIMEOUT_S = 3.0
NAME_WIDTH = 11


@dataclass(frozen=True, slots=True)
class Check:
    """One result line: ``status``, the check's ``name``, what was ``found``, and for a WARN
    or FAIL the ``action`` to take."""

    name: str
    status: Status
    found: str
    action: str = ""


def PASS(name: str, found: str) -> Check:
    return Check(name, "PASS", found)


def WARN(name: str, found: str, action: str) -> Check:
    return Check(name, "WARN", found, action)


def FAIL(name: str, found: str, action: str) -> Check:
    return Check(name, "FAIL", found, action)


def judged(v: checks.Verdict, name: str | None = None, found: str | None = None) -> Check:
    """The line for a verdict of gateway/checks.py (``found`` replaces its words)."""
    return Check(name or v.check, STATUS[v.level], found or v.found, v.fix)


def judged_json(name: str, verdict: Any, suffix: str = "") -> Check | None:
    """The line for a verdict the daemon reported in ``/status`` (None if it has none)."""
    if not isinstance(verdict, dict) or verdict.get("level") not in STATUS:
        return None
    found = f"{verdict.get('found', '')}{suffix}"
    return Check(name, STATUS[verdict["level"]], found, str(verdict.get("fix") or ""))


@dataclass
class Context:
    """What the checks share: the config, and the daemon's answers when it is running."""

    cfg: GatewayConfig
    client: DaemonClient | None = None
    status: dict[str, Any] | None = None
    peer_not_after: datetime | None = None  # the broker's certificate, seen by the broker check


def run_checks(config: str) -> list[Check]:
    """All checks for the gateway config at ``config``, in a technician's order."""
    try:
        cfg = load_config(config, check_files=False)
    except ConfigError as err:
        return [
            FAIL(
                "config",
                f"{len(err.problems)} problem(s); first: {err.problems[0]}",
                f"alarmgw config check {config}",
            )
        ]
    ctx = Context(cfg)
    n_in = f"{len(cfg.button)} button(s), {len(cfg.serial)} box(es)"
    checks = [PASS("config", f"{cfg.path}: valid, {n_in}")]
    steps: list[tuple[str, Callable[[Context], Iterable[Check]]]] = [
        ("daemon", _daemon),
        ("key", _key),
        ("center-keys", _center_keys),
        ("gpio", _gpio),
        ("serial", _serial),
        ("broker", _broker),
        ("certs", _certs),
        ("dc09", _dc09),
        ("clock", _clock),
        ("disk", _disk),
        ("urls", _urls),
        ("outbox", _outbox),
    ]
    for name, step in steps:
        try:
            checks.extend(step(ctx))
        except Exception as err:
            checks.append(FAIL(name, f"the check itself failed: {err!r}", "report this as a bug"))
    return checks


def exit_code(checks: Iterable[Check]) -> int:
    """0 all PASS, 1 any WARN, 2 any FAIL (OPERATOR.md)."""
    return max((SEVERITY[c.status] for c in checks), default=0)


def format_check(c: Check) -> list[str]:
    """``STATUS name  found`` and, for a WARN/FAIL, an indented ``-> action`` line."""
    indent = NAME_WIDTH + 7
    lines = wrap(escape(f"{c.status}  {c.name:<{NAME_WIDTH}} {c.found}"), indent)
    if c.action and c.status != "PASS":
        lines += wrap(escape(f"{'':<{indent - 3}}-> {c.action}"), indent)
    return lines


def as_json(checks: list[Check]) -> dict[str, Any]:
    counts = {s: sum(1 for c in checks if c.status == s) for s in SEVERITY}
    return {"checks": [asdict(c) for c in checks], "summary": counts, "exit": exit_code(checks)}


# --- the daemon ---------------------------------------------------------------------------


def _daemon(ctx: Context) -> list[Check]:
    try:
        client = DaemonClient.for_config(ctx.cfg, timeout_s=PROBE_TIMEOUT_S)
        code, st = client.json("GET", "/status")
    except DaemonNotRunning:
        return [WARN("daemon", "not running: checked without it", "systemctl start alarmgw")]
    except DaemonUnavailable as err:
        return [FAIL("daemon", str(err), "journalctl -u alarmgw -e; systemctl restart alarmgw")]
    ctx.client = client
    if code != 200:
        problems = "; ".join(st.get("problems", [])) or f"HTTP {code}"
        return [FAIL("daemon", f"running but failing: {problems}", "journalctl -u alarmgw -e")]
    ctx.status = st
    gw = st["gateway"]
    found = f"running, pid {gw['pid']}, up {ago(gw['uptime_s'])}, at {client.address}"
    if not st["health"]["ok"]:
        problems = "; ".join(st["health"]["problems"])
        return [FAIL("daemon", f"{found}; alarm path DOWN: {problems}", "see the checks below")]
    return [PASS("daemon", f"{found}; alarm path alive")]


# --- keys ---------------------------------------------------------------------------------


def _key(ctx: Context) -> list[Check]:
    from gateway.contract.signing import load_signing_key  # noqa: PLC0415 - cryptography only here

    path = Path(ctx.cfg.gateway.key_file)
    if not path.exists():
        return [
            FAIL(
                "key",
                f"{path}: missing",
                f"alarmgw keygen --out {path.parent} --name {path.stem}",
            )
        ]
    mode = stat.S_IMODE(path.stat().st_mode)
    modes = [checks.key_mode(path)]
    if ctx.cfg.mqtt.key_file is not None:
        modes.append(checks.key_mode(Path(ctx.cfg.mqtt.key_file)))
    bad = [judged(v) for v in modes if not v.ok]
    if bad:
        return bad
    try:
        key = load_signing_key(path)
    except AlarmgwError as err:
        if isinstance(err.__cause__, PermissionError):
            return [WARN("key", f"{path}: cannot read as this user", "run diag as root")]
        return [FAIL("key", str(err), "restore the key, or make a new one and register it")]
    return [PASS("key", f"{path}: Ed25519, kid {key.kid}, mode {mode:04o}")]


def _center_keys(ctx: Context) -> list[Check]:
    from gateway.contract.signing import load_verify_key  # noqa: PLC0415

    kids, checks = [], []
    for p in ctx.cfg.mqtt.center_keys:
        try:
            kids.append(load_verify_key(p).kid)
        except AlarmgwError as err:
            checks.append(
                FAIL("center-key", str(err), "install the center's public key (center.pub)")
            )
    if kids:
        checks.insert(0, PASS("center-key", f"{len(kids)} trusted: kid {', '.join(kids)}"))
    # The running daemon knows whether the center's acks verify with these keys.
    acks = ctx.status.get("acks") if ctx.status is not None else None
    seen = judged_json("center-key", acks.get("verdict")) if isinstance(acks, dict) else None
    if seen is not None and seen.status != "PASS":
        checks.append(seen)
    return checks


# --- GPIO ---------------------------------------------------------------------------------


def _pins(cfg: GatewayConfig) -> list[tuple[str, str, int]]:
    """(owner, role, BCM pin) of every configured pin."""
    pins = []
    for b in cfg.button:
        pins.append((f"gpio:{b.name}", "button", b.pin))
        if b.led_pin is not None:
            pins.append((f"gpio:{b.name}", "led", b.led_pin))
    if cfg.bollard is not None:
        for role in ("up_pin", "down_pin", "fault_pin"):
            pin = getattr(cfg.bollard, role)
            if pin is not None:
                pins.append(("bollard", role, pin))
    return pins


def _gpio(ctx: Context) -> list[Check]:
    pins = _pins(ctx.cfg)
    if not pins:
        return [PASS("gpio", "no GPIO pins configured")]
    if ctx.status is not None:
        # The daemon holds them: claiming them here would fail or steal them.
        started = {i["ref"]: i["started"] for i in ctx.status["inputs"] if i["kind"] == "gpio"}
        checks = []
        for b in ctx.cfg.button:
            ref = f"gpio:{b.name}"
            if started.get(ref):
                checks.append(PASS("gpio", f"{ref}: GPIO{b.pin} claimed by the running daemon"))
            else:
                checks.append(
                    FAIL("gpio", f"{ref}: the daemon could not claim GPIO{b.pin}", "see journal")
                )
        if ctx.cfg.bollard is not None:
            checks.append(WARN("gpio", "bollard pins: in use by the daemon, not probed", "-"))
        return checks
    return [_claim_pin(owner, role, pin) for owner, role, pin in pins]


def _claim_pin(owner: str, role: str, pin: int) -> Check:
    with warnings.catch_warnings():
        # gpiozero warns once per pin factory it falls back from; the result says enough.
        warnings.simplefilter("ignore")
        from gpiozero import LED, Button  # noqa: PLC0415 - gpiozero only when pins exist

        try:
            device = LED(pin) if role == "led" else Button(pin, pull_up=True)
        except Exception as err:
            detail = str(err).splitlines()[0] if str(err) else type(err).__name__
            action = "another process holds it, or the pin in the config is wrong"
            if "pin factory" in detail:
                action = "no GPIO driver here: is this the Pi? (python3-lgpio installed?)"
            return FAIL("gpio", f"{owner} {role}: cannot claim GPIO{pin}: {detail}", action)
        device.close()
    return PASS("gpio", f"{owner} {role}: GPIO{pin} claimable")


# --- serial boxes -------------------------------------------------------------------------


def _serial(ctx: Context) -> list[Check]:
    checks = []
    for s in ctx.cfg.serial:
        name = "serial"
        if ctx.client is not None and ctx.status is not None:
            # The running daemon owns the port (opened exclusively): its verdict on the link,
            # and a PING through it.
            ref = f"serial:{s.name}"
            row: dict[str, Any] = next((i for i in ctx.status["inputs"] if i["ref"] == ref), {})
            link = judged_json(name, row.get("verdict"), " (the daemon's verdict)")
            if link is not None and link.status != "PASS":
                checks.append(link)
                continue
            _, r = ctx.client.json("POST", f"/boxes/{s.name}/ping", {}, timeout_s=10.0)
            if r.get("ok"):
                box = f"box {r.get('box_id') or '?'} fw {r.get('fw') or '?'}"
                found = f"{box} answered PING in {r['rtt_ms']:.0f} ms (via the daemon)"
                checks.append(PASS(name, f"{s.name} on {s.port}: {found}"))
            else:
                # The link is not silent for long enough to be judged failing yet.
                checks.append(
                    WARN(
                        name,
                        f"{s.name} on {s.port}: {r.get('error')} (via the daemon)",
                        "check the box's power and cable",
                    )
                )
            continue
        checks.append(_probe_box(name, s.name, s.port, s.baud))
    return checks


def _probe_box(name: str, box_name: str, port: str, baud: int) -> Check:
    import serial  # noqa: PLC0415 - pyserial only when boxes exist

    from gateway.inputs.codec import BOX_TYPES, Decoder, Frame, encode  # noqa: PLC0415

    kwargs: dict[str, Any] = {"baudrate": baud, "timeout": 0.1, "write_timeout": 0.5}
    if "://" not in port:
        kwargs["exclusive"] = True
    try:
        link = serial.serial_for_url(port, **kwargs)
    except (serial.SerialException, OSError, ValueError) as err:
        unplugged = checks.serial_link(
            box_name, connected=False, stale=False, last_frame_age_s=None, limit_s=0
        )
        found = f"{box_name}: cannot open {port}: {_why(err)}"
        return judged(unplugged, name, found)
    decoder = Decoder(accept=BOX_TYPES)
    hello: dict[str, str | None] = {}
    pressed = False
    try:
        started = time.monotonic()
        link.write(encode(Frame.of(0, "PING")))
        while time.monotonic() - started < SERIAL_TIMEOUT_S:
            for event in decoder.receive(link.read(256)):
                if not isinstance(event, Frame):
                    continue
                if event.type == "HELLO":
                    hello = {"id": event.get("id"), "fw": event.get("fw")}
                elif event.type == "PRESS":
                    pressed = True  # never ACKed here: the box keeps it for the daemon
                elif event.type == "HB":
                    ms = (time.monotonic() - started) * 1000
                    box = f"box {hello['id']} fw {hello['fw']}, " if hello else ""
                    if pressed:
                        return WARN(
                            name,
                            f"{box_name} on {port}: {box}answered, but sent a PRESS "
                            "that nobody registered",
                            "start the daemon NOW: alarms are not being relayed",
                        )
                    return PASS(name, f"{box_name} on {port}: {box}answered PING in {ms:.0f} ms")
    except (serial.SerialException, OSError) as err:
        return FAIL(name, f"{box_name} on {port}: I/O error: {err}", "check the cable")
    finally:
        link.close()
    silent = checks.serial_link(
        box_name, connected=True, stale=True, last_frame_age_s=None, limit_s=SERIAL_TIMEOUT_S
    )
    found = f"{box_name}: {port} opens, but no answer to PING in {SERIAL_TIMEOUT_S:.0f} s"
    return judged(silent, name, found)


def _why(err: BaseException) -> str:
    """The OS's words for an OSError (pyserial and sockets wrap them in longer text)."""
    code = getattr(err, "errno", None)
    return os.strerror(code) if isinstance(code, int) and code > 0 else str(err)


# --- broker and certificates --------------------------------------------------------------


def _broker(ctx: Context) -> list[Check]:
    import paho.mqtt.client as mqtt  # noqa: PLC0415 - paho only for this check
    from paho.mqtt.enums import CallbackAPIVersion  # noqa: PLC0415

    from gateway.delivery.uplink import MqttSettings, tls_context  # noqa: PLC0415

    s = MqttSettings.from_config(ctx.cfg.mqtt, client_id=f"alarmgw-diag-{os.getpid()}")
    where = f"{s.host}:{s.port}"
    uplink = (ctx.status or {}).get("uplink") or {}
    if uplink.get("connected"):
        # A broker that makes the certificate CN the client id (the production config) would
        # hand our connection the daemon's session and knock the daemon off: ask it instead.
        return [PASS("broker", f"{where}: the running daemon is connected (not probed again)")]
    # Never the daemon's client id: two clients with one id knock each other off.
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"alarmgw-diag-{os.getpid()}",
        protocol=mqtt.MQTTv5 if s.protocol == "5" else mqtt.MQTTv311,
    )
    client.connect_timeout = PROBE_TIMEOUT_S
    if s.username:
        client.username_pw_set(s.username, s.password)
    try:
        if s.tls:
            client.tls_set_context(tls_context(s))
    except (OSError, ssl.SSLError) as err:
        return [FAIL("broker", f"TLS files unusable: {err}", "check [mqtt] ca_file/cert_file")]
    result: list[Any] = []
    client.on_connect = lambda _c, _u, _f, reason, _p: result.append(reason)
    started = time.monotonic()
    try:
        client.connect(s.host, s.port, keepalive=10)
        while not result and time.monotonic() - started < PROBE_TIMEOUT_S:
            rc = client.loop(timeout=0.1)
            if rc != mqtt.MQTT_ERR_SUCCESS:
                # With TLS 1.3 a refused client certificate shows only now, as a closed link.
                return [
                    FAIL(
                        "broker",
                        f"{where}: the broker closed the link before CONNACK",
                        "the broker refused this client: check cert_file/key_file and the "
                        "broker's log",
                    )
                ]
    except ssl.SSLError as err:
        return [FAIL("broker", f"{where}: TLS handshake failed: {err}", "check CA and certs")]
    except (OSError, TimeoutError) as err:
        return [
            FAIL(
                "broker",
                f"{where}: unreachable: {_why(err)}",
                "is the broker up? are [mqtt] host and port right? firewall?",
            )
        ]
    try:
        if not result:
            return [FAIL("broker", f"{where}: no CONNACK within 5 s", "is it an MQTT broker?")]
        if result[0].is_failure:
            return [
                FAIL(
                    "broker",
                    f"{where}: refused: {result[0]}",
                    "check [mqtt] username/password or the client certificate",
                )
            ]
        ms = (time.monotonic() - started) * 1000
        sock = client.socket()
        tls = "plain TCP"
        if isinstance(sock, ssl.SSLSocket):
            tls = str(sock.version())
            ctx.peer_not_after = _peer_not_after(sock)
        who = f", as {s.username}" if s.username else ""
        found = f"{where}: connected in {ms:.0f} ms ({tls}, MQTT {s.protocol}{who})"
        return [PASS("broker", found)]
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()


def _peer_not_after(sock: ssl.SSLSocket) -> datetime | None:
    cert = sock.getpeercert()
    not_after = cert.get("notAfter") if cert else None
    if not isinstance(not_after, str):
        return None
    return datetime.fromtimestamp(ssl.cert_time_to_seconds(not_after), UTC)


def _certs(ctx: Context) -> list[Check]:
    m = ctx.cfg.mqtt
    if not m.tls:
        from gateway.config import is_loopback  # noqa: PLC0415

        if is_loopback(m.host):
            return [PASS("certs", "TLS off: broker on loopback, no certificates to check")]
        return [WARN("certs", f"TLS off to {m.host}: traffic is readable", "set tls = true")]
    out = []
    now = datetime.now(UTC)
    warn_days = ctx.cfg.selfcheck.cert_warn_days
    for label, path in (("CA", m.ca_file), ("client cert", m.cert_file)):
        if path is not None:
            v = checks.certificate_file(label, Path(path), now=now, warn_days=warn_days)
            out.append(judged(v))
    if ctx.peer_not_after is not None:
        v = checks.certificate("broker's cert", ctx.peer_not_after, now=now, warn_days=warn_days)
        out.append(judged(v))
    return out


def _dc09(ctx: Context) -> list[Check]:
    from gateway.technician.dc09_probe import dc09_checks  # noqa: PLC0415 - only with [dc09]

    return dc09_checks(ctx.cfg, ctx.status)


# --- the machine --------------------------------------------------------------------------


def _clock(ctx: Context) -> list[Check]:
    # The same sources the self-checks read: timesyncd's flag, chrony, the kernel.
    return [judged(checks.clock(checks.clock_synced(), enabled=ctx.cfg.selfcheck.clock))]


def _disk(ctx: Context) -> list[Check]:
    where = Path(ctx.cfg.gateway.state_dir)
    free = checks.disk_free_bytes(where)
    min_free = ctx.cfg.selfcheck.min_free_mb * 2**20
    return [judged(checks.disk(free, where, min_free_bytes=min_free))]


def _urls(ctx: Context) -> list[Check]:
    """The bollard and the recorder: the daemon's verdicts (it watches them over time), else
    one look at each."""
    cfg, out = ctx.cfg, []
    if cfg.bollard is not None and cfg.bollard.status_url:
        daemon = judged_json("bollard", _section_verdict(ctx, "bollard"), " (the daemon's)")
        out.append(daemon or _bollard_once(cfg.bollard))
    if cfg.camera is not None:
        daemon = judged_json("nvr", _section_verdict(ctx, "camera"), " (the daemon's)")
        out.append(daemon or _camera_once(cfg.camera))
        if cfg.camera.adapter != "json":
            # ONVIF and ISAPI recorders: each channel and disk on a line of its own.
            from gateway.monitors.camera.diag import recorder_report  # noqa: PLC0415

            out += [Check("nvr", st, found, fix) for st, found, fix in recorder_report(cfg.camera)]
    return out


def _section_verdict(ctx: Context, name: str) -> Any:
    section = ctx.status.get(name) if ctx.status is not None else None
    return section.get("verdict") if isinstance(section, dict) else None


def _bollard_once(cfg: Any) -> Check:
    from gateway.monitors.bollard import BollardTracker, parse_status  # noqa: PLC0415
    from gateway.monitors.http import StatusError, get_json, new_session  # noqa: PLC0415

    async def fetch() -> Any:
        async with new_session() as session:
            return await get_json(session, cfg.status_url, timeout_s=PROBE_TIMEOUT_S)

    tracker = BollardTracker(cfg.moving_timeout_s, cfg.down_alert_s, cfg.schedule)
    try:
        state = parse_status(asyncio.run(fetch()))
    except (StatusError, ValueError) as err:
        detail = f"controller {err}" if isinstance(err, ValueError) else str(err)
        reasons, found = ["unreachable"], f"{cfg.status_url}: {detail}"
        return judged(checks.bollard("unknown", reasons, found))
    tracker.update(state, 0.0, time.time(), "controller reports fault" if state == "fault" else "")
    problems = tracker.problems(0.0, time.time())
    v = checks.bollard(state, [r for r, _ in problems], "; ".join(d for _, d in problems))
    # One look cannot see "stuck" or "down too long": those need the daemon's watch.
    return judged(v, found=f"{v.found} ({cfg.status_url}, one look)")


def _camera_once(cfg: Any) -> Check:
    """One poll through the daemon's own monitor code: the same adapter, the same trouble,
    the same verdict (gateway/monitors/site.py ``camera_snapshot``)."""
    from gateway.monitors.camera import CameraMonitor  # noqa: PLC0415 - aiohttp only if used
    from gateway.monitors.http import StatusError, new_session  # noqa: PLC0415
    from gateway.monitors.reporter import TroubleReporter  # noqa: PLC0415
    from gateway.monitors.site import camera_snapshot  # noqa: PLC0415

    reporter = TroubleReporter(_Discard())
    monitor = CameraMonitor(cfg, reporter)

    async def poll() -> None:
        async with new_session() as session:
            try:
                monitor.evaluate(await monitor.adapter.fetch(session, timeout_s=PROBE_TIMEOUT_S))
            except StatusError as err:
                monitor.evaluate(err)

    asyncio.run(poll())
    v = camera_snapshot(monitor, reporter).verdict
    return judged(v, "nvr", f"{v.found} ({cfg.url}, one look)")


class _Discard:
    """A trouble sink for one look: diag reports, it sends nothing to the center."""

    def raise_event(self, kind: str, body: Any, ts: str | None = None) -> str:
        return ""


def _outbox(ctx: Context) -> list[Check]:
    path = Path(ctx.cfg.gateway.state_dir) / "outbox.sqlite"
    if not path.exists():
        return [WARN("outbox", f"{path}: none yet", "the daemon creates it when it first starts")]
    try:
        with readonly_outbox(path) as conn:
            result = integrity_check(conn)
            q = queue_summary(conn) if result == ["ok"] else None
    except AlarmgwError as err:
        return [FAIL("outbox", str(err), "check the file's owner and mode")]
    if q is None:
        return [
            FAIL(
                "outbox",
                f"{path}: corrupt: {result[0]}",
                "restart the daemon: it moves a corrupt outbox aside and starts afresh",
            )
        ]
    pending = f"{q['pending']} pending" if q["pending"] else "empty"
    if q["pending"]:
        pending += f", oldest {ago(q['oldest_age_s'])}"
    return [PASS("outbox", f"integrity ok, {pending}")]
