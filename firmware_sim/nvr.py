"""``alarmgw-sim nvr``: a CCTV recorder's status API. ``--kind json`` (the default) is the
``json`` adapter of ``[camera]``, below; ``--kind onvif`` and ``--kind hikvision`` are the
vendor recorders of ``firmware_sim.nvr_onvif`` and ``firmware_sim.nvr_hik`` (channels, disks,
a user and password).

``NvrSimulator`` serves ``GET /status`` → ``{"recording": true, "retention_days": 34}`` on
loopback (aiohttp) and lets a test or a script change what it says (``recording``,
``retention``) and how (an error status, garbage, slowness, hanging, not listening at all).

Commands (``--script "a; b"`` first, then stdin, one per line): ``recording on|off``,
``retention DAYS``, ``ok``, ``error [STATUS]``, ``garbage``, ``hang``, ``slow S``, ``down``,
``up``, ``wait S``, ``quit``.
"""

from __future__ import annotations

import argparse
import asyncio
import math
from types import TracebackType
from typing import Any

from firmware_sim.httpstatus import StatusServer, http_command
from firmware_sim.script import run_commands, split_script


class NvrSimulator:
    """A recorder's status endpoint on ``host:port`` (0: a free port)."""

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        path: str = "/status",
        recording: bool = True,
        retention_days: float = 34,
    ) -> None:
        self.recording = recording
        self.retention_days = retention_days
        self.http = StatusServer(self.document, host=host, port=port, path=path)

    @property
    def url(self) -> str:
        return self.http.url

    def document(self) -> dict[str, Any]:
        days = self.retention_days
        return {"recording": self.recording, "retention_days": int(days) if days % 1 == 0 else days}

    async def start(self) -> None:
        await self.http.start()

    async def stop(self) -> None:
        await self.http.stop()

    async def __aenter__(self) -> NvrSimulator:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def command(self, words: list[str]) -> str:
        """Perform one command line (split into words); returns what it did."""
        verb, args = words[0], words[1:]
        if verb == "recording" and args in (["on"], ["off"]):
            self.recording = args[0] == "on"
            return f"recording {args[0]}"
        if verb == "retention" and len(args) == 1:
            try:
                days = float(args[0])
            except ValueError:
                days = math.nan
            if not (math.isfinite(days) and days >= 0):
                raise ValueError(f"retention: expected days >= 0, got {args[0]!r}")
            self.retention_days = days
            return f"retention {days:g} days"
        return await http_command(self.http, words)


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``alarmgw-sim nvr``."""
    parser = subparsers.add_parser(
        "nvr",
        help="CCTV recorder over HTTP: json status, ONVIF Profile G or Hikvision ISAPI",
        description="--kind json: serve GET PATH -> {recording, retention_days}; --kind onvif: "
        "an ONVIF recorder (device service /onvif/device_service); --kind hikvision: an ISAPI "
        "NVR (digest auth). Prints 'listening URL' first (the URL [camera] url takes). "
        "Commands (script or stdin): recording on|off [CH], retention DAYS [CH], ok, "
        "error [STATUS], garbage, hang, slow S, down, up, wait S, quit; onvif/hikvision also "
        "disk N ok|failed|full, password NEW, channels N.",
    )
    parser.add_argument(
        "--kind", choices=("json", "onvif", "hikvision"), default="json", help="API (json)"
    )
    parser.add_argument("--host", default="127.0.0.1", help="listen address (default loopback)")
    parser.add_argument("--port", type=int, default=8081, help="port (0: any free; default 8081)")
    parser.add_argument("--path", default="/status", help="status path (default /status)")
    parser.add_argument("--retention", type=float, default=34, help="retention days (34)")
    parser.add_argument("--not-recording", action="store_true", help="start not recording")
    parser.add_argument("--user", default="admin", help="onvif/hikvision user (admin)")
    parser.add_argument(
        "--password", default="admin12345", help="onvif/hikvision password (admin12345)"
    )
    parser.add_argument("--channels", type=int, default=16, help="onvif/hikvision channels (16)")
    parser.add_argument("--script", default="", help='commands, ";"-separated, run first')
    parser.add_argument("--stay", action="store_true", help="keep serving at the end of stdin")
    parser.set_defaults(func=_run_cli)


def _run_cli(args: argparse.Namespace) -> int:
    return asyncio.run(_cli_main(args))


async def _cli_main(args: argparse.Namespace) -> int:
    if args.kind != "json":
        return await _vendor_main(args)
    sim = NvrSimulator(
        host=args.host,
        port=args.port,
        path=args.path,
        recording=not args.not_recording,
        retention_days=args.retention,
    )
    async with sim:
        print(f"listening {sim.url}", flush=True)
        await run_commands(
            sim.command,
            split_script(args.script),
            stay=args.stay,
            say=lambda text: print(text, flush=True),
        )
    return 0


async def _vendor_main(args: argparse.Namespace) -> int:
    from firmware_sim.nvr_base import Recorder  # noqa: PLC0415 - only for these kinds
    from firmware_sim.nvr_hik import HikSimulator  # noqa: PLC0415
    from firmware_sim.nvr_onvif import OnvifSimulator  # noqa: PLC0415

    if not 1 <= args.channels <= 256:
        raise ValueError(f"--channels must be 1..256, got {args.channels}")
    recorder = Recorder.with_channels(
        args.channels, args.retention, user=args.user, password=args.password
    )
    if args.not_recording:
        recorder.command(["recording", "off"])
    sim: OnvifSimulator | HikSimulator
    if args.kind == "onvif":
        sim = OnvifSimulator(recorder, host=args.host, port=args.port)
    else:
        sim = HikSimulator(recorder, host=args.host, port=args.port)
    async with sim:
        print(f"listening {sim.url}", flush=True)
        await run_commands(
            sim.command,
            split_script(args.script),
            stay=args.stay,
            say=lambda text: print(text, flush=True),
        )
    return 0
