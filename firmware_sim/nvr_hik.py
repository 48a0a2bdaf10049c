"""A Hikvision NVR's ISAPI, enough for the ``hikvision`` adapter (``alarmgw-sim nvr --kind
hikvision``).

HTTP digest auth (MD5, qop=auth) on every route; ``GET /ISAPI/System/time`` (local time at
+08:00), ``GET /ISAPI/ContentMgmt/Storage`` (the disks), ``GET
/ISAPI/ContentMgmt/record/tracks`` (track N01 per channel N) and ``POST
/ISAPI/ContentMgmt/search`` (the first segment of a track within a time span). Commands: see
``firmware_sim.nvr_base``.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta, timezone
from types import TracebackType

import defusedxml.ElementTree as SafeET
from aiohttp import web
from defusedxml import DefusedXmlException

from firmware_sim.nvr_base import Handler, Recorder, VendorServer

NS = "http://www.hikvision.com/ver20/XMLSchema"
REALM = "DS-7616NI (simulated)"
LOCAL = timezone(timedelta(hours=8))
SEGMENT_S = 3600.0
GARBAGE: tuple[tuple[bytes, str], ...] = (
    (b"<html><body>502 Bad Gateway</body></html>", "text/html"),
    (b"<?xml version='1.0'?><storage><hddList><hdd>", "application/xml"),
    (b'<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;&a;</x>', "application/xml"),
    (bytes(range(0x80, 0x90)), "application/octet-stream"),
)
_PARAM = re.compile(r'(\w+)=(?:"([^"]*)"|([^,\s]*))')


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()  # noqa: S324 - HTTP digest is MD5


def _xml(root: ET.Element, status: int = 200) -> web.Response:
    body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return web.Response(body=body, status=status, content_type="application/xml")


def _el(parent: ET.Element, tag: str, text: object = None) -> ET.Element:
    node = ET.SubElement(parent, tag)
    if text is not None:
        node.text = str(text)
    return node


def _stamp(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class HikSimulator:
    """An ISAPI recorder on ``http://host:port`` (0: a free port)."""

    def __init__(self, recorder: Recorder, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.recorder = recorder
        self.nonce = secrets.token_hex(16)
        self.refused = 0
        routes: list[tuple[str, str, Handler]] = [
            ("GET", "/ISAPI/System/time", self._time),
            ("GET", "/ISAPI/ContentMgmt/Storage", self._storage),
            ("GET", "/ISAPI/ContentMgmt/record/tracks", self._tracks),
            ("POST", "/ISAPI/ContentMgmt/search", self._search),
        ]
        self.http = VendorServer(
            [(m, p, self._authed(h)) for m, p, h in routes], host=host, port=port, garbage=GARBAGE
        )

    @property
    def url(self) -> str:
        return self.http.base

    async def start(self) -> None:
        await self.http.start()

    async def stop(self) -> None:
        await self.http.stop()

    async def __aenter__(self) -> HikSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def command(self, words: list[str]) -> str:
        done = self.recorder.command(words)
        return done if done is not None else await self.http.command(words)

    # -- digest auth ------------------------------------------------------------------------

    def _authed(self, handler: Handler) -> Handler:
        async def check(request: web.Request) -> web.StreamResponse:
            if self._valid(request):
                return await handler(request)
            if request.headers.get("Authorization"):
                self.refused += 1
            challenge = f'Digest realm="{REALM}", qop="auth", nonce="{self.nonce}", algorithm=MD5'
            return web.Response(status=401, headers={"WWW-Authenticate": challenge})

        return check

    def _valid(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Digest "):
            return False
        p = {m[0]: m[1] or m[2] for m in _PARAM.findall(header[7:])}
        rec = self.recorder
        if p.get("username") != rec.user or p.get("nonce") != self.nonce:
            return False
        ha1 = _md5(f"{rec.user}:{REALM}:{rec.password}")
        ha2 = _md5(f"{request.method}:{p.get('uri', '')}")
        want = _md5(f"{ha1}:{self.nonce}:{p.get('nc')}:{p.get('cnonce')}:{p.get('qop')}:{ha2}")
        return secrets.compare_digest(want, p.get("response", ""))

    # -- routes -----------------------------------------------------------------------------

    async def _time(self, _request: web.Request) -> web.Response:
        root = ET.Element("Time", {"version": "2.0", "xmlns": NS})
        _el(root, "timeMode", "NTP")
        _el(root, "localTime", datetime.now(LOCAL).isoformat(timespec="seconds"))
        _el(root, "timeZone", "CST-8:00:00")
        return _xml(root)

    async def _storage(self, _request: web.Request) -> web.Response:
        root = ET.Element("storage", {"version": "2.0", "xmlns": NS})
        hdds = _el(root, "hddList", None)
        hdds.set("size", str(len(self.recorder.disks)))
        for n, disk in enumerate(self.recorder.disks, 1):
            hdd = _el(hdds, "hdd", None)
            _el(hdd, "id", n)
            _el(hdd, "hddName", f"hdd{n}")
            _el(hdd, "hddType", "SATA")
            _el(hdd, "status", {"failed": "error"}.get(disk.state, disk.state))
            _el(hdd, "capacity", disk.capacity_mb)
            _el(hdd, "freeSpace", 0 if disk.state == "full" else disk.free_mb)
            _el(hdd, "property", "RW")
        _el(root, "workMode", "group")
        return _xml(root)

    async def _tracks(self, _request: web.Request) -> web.Response:
        root = ET.Element("TrackList", {"version": "2.0", "xmlns": NS})
        for name in self.recorder.channels:
            for stream in ("01", "02"):
                track = _el(root, "Track", None)
                _el(track, "id", f"{name}{stream}")
                _el(track, "Channel", name)
                _el(track, "Enable", "true")
        return _xml(root)

    async def _search(self, request: web.Request) -> web.Response:
        try:
            query = SafeET.fromstring(await request.read())
            track = query.findtext("{*}trackList/{*}trackID") or ""
            start = datetime.fromisoformat(
                (query.findtext("{*}timeSpanList/{*}timeSpan/{*}startTime") or "").replace(
                    "Z", "+00:00"
                )
            ).timestamp()
            end = datetime.fromisoformat(
                (query.findtext("{*}timeSpanList/{*}timeSpan/{*}endTime") or "").replace(
                    "Z", "+00:00"
                )
            ).timestamp()
        except (ET.ParseError, DefusedXmlException, ValueError, OSError):
            return web.Response(status=400, text="badXmlFormat")
        root = ET.Element("CMSearchResult", {"version": "2.0", "xmlns": NS})
        _el(root, "searchID", query.findtext("{*}searchID") or "")
        channel = self.recorder.channels.get(track[:-2]) if track.endswith("01") else None
        now = time.time()
        hit = None
        if channel is not None and channel.retention_days > 0:
            first, last = channel.earliest(now), channel.latest(now)
            if start <= last and end >= first:
                hit = (max(first, start), min(last, max(first, start) + SEGMENT_S))
        _el(root, "responseStatus", "true")
        _el(root, "responseStatusStrg", "MORE" if hit else "NO MATCHES")
        _el(root, "numOfMatches", 1 if hit else 0)
        matches = _el(root, "matchList", None)
        if hit:
            item = _el(matches, "searchMatchItem", None)
            _el(item, "sourceID", "{0000-0000}")
            _el(item, "trackID", track)
            span = _el(item, "timeSpan", None)
            _el(span, "startTime", _stamp(hit[0]))
            _el(span, "endTime", _stamp(hit[1]))
        return _xml(root)
