"""Hikvision ISAPI recorder adapter (``[camera] adapter = "hikvision"``).

HTTP digest auth (aiohttp's ``DigestAuthMiddleware``). Per poll:

- ``GET /ISAPI/System/time``: the recorder's clock, so retention and "recent" are measured
  against the clock that stamped the recordings (the gateway's when it gives none);
- ``GET /ISAPI/ContentMgmt/Storage``: the disks; a status other than ``ok``/``idle`` (e.g.
  ``error``, ``smartFailed``, ``offline``, ``full``) is a failed disk. Free space 0 alone is
  not: a recorder that overwrites keeps its disks full, and retention says whether that hurts;
- ``GET /ISAPI/ContentMgmt/record/tracks``: the main-stream tracks (``N01`` = channel N);
- per track two ``POST /ISAPI/ContentMgmt/search``: the oldest match (retention = recorder
  now minus its start) and any match in the last ``recording_gap_s`` (recording).

XML is parsed with defusedxml (no entity expansion) and matched namespace-agnostically.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import xml.etree.ElementTree as ET
from datetime import UTC, datetime, timedelta
from typing import Any

import aiohttp
import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

from gateway.config import CameraSection
from gateway.monitors.camera.model import CameraStatus, ChannelStatus, DiskStatus, clean_name
from gateway.monitors.camera.secret import Login
from gateway.monitors.http import MAX_BODY, StatusError

MAX_XML = 16 * MAX_BODY  # a 64-disk storage list is a few tens of kB
DISK_OK = {"ok", "idle"}
PARALLEL = 4  # searches in flight at once: recorders answer them one by one anyway
EPOCH = datetime(2000, 1, 1, tzinfo=UTC)


def parse_time(text: str | None) -> datetime | None:
    """An ISAPI time (ISO 8601, ``Z`` or an offset; none: UTC) → aware datetime, or None."""
    if not text:
        return None
    try:
        value = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def iso(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _text(node: Any, path: str) -> str | None:
    found = node.find(path)
    return None if found is None or found.text is None else found.text.strip()


def _number(text: str | None) -> float | None:
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def parse_storage(root: Any) -> tuple[DiskStatus, ...]:
    """``<storage><hddList><hdd>`` → disks (NAS entries count as disks too)."""
    disks = []
    for hdd in [*root.iterfind(".//{*}hdd"), *root.iterfind(".//{*}nas")]:
        ident = clean_name(_text(hdd, "{*}id") or "?")
        state = clean_name(_text(hdd, "{*}status") or "unknown")
        capacity = _number(_text(hdd, "{*}capacity"))
        free = _number(_text(hdd, "{*}freeSpace"))
        ok = state.lower() in DISK_OK
        disks.append(DiskStatus(ident, ok, state if not ok else "ok", free, capacity))
    return tuple(disks)


def parse_tracks(root: Any) -> list[tuple[str, str]]:
    """``<TrackList><Track><id>101</id>`` → [(track id, channel)] of the main streams."""
    tracks = []
    for track in root.iterfind(".//{*}Track"):
        ident = _text(track, "{*}id") or ""
        if ident.isdigit() and len(ident) >= 3 and ident.endswith("01"):
            tracks.append((ident, str(int(ident[:-2]))))
    return sorted(tracks, key=lambda t: int(t[0]))


def search_body(track: str, start: datetime, end: datetime) -> bytes:
    """A ``CMSearchDescription`` for the first match of ``track`` in [start, end]."""
    root = ET.Element("CMSearchDescription")
    ET.SubElement(root, "searchID").text = str(uuid.uuid4()).upper()
    ET.SubElement(ET.SubElement(root, "trackList"), "trackID").text = track
    span = ET.SubElement(ET.SubElement(root, "timeSpanList"), "timeSpan")
    ET.SubElement(span, "startTime").text = iso(start)
    ET.SubElement(span, "endTime").text = iso(end)
    ET.SubElement(root, "maxResults").text = "1"
    ET.SubElement(root, "searchResultPostion").text = "0"  # sic: ISAPI's spelling
    meta = ET.SubElement(ET.SubElement(root, "metadataList"), "metadataDescriptor")
    meta.text = "//recordType.meta.std-cgi.com"
    return bytes(ET.tostring(root, encoding="utf-8", xml_declaration=True))


def first_match_start(root: Any) -> datetime | None:
    """The start of the first ``searchMatchItem`` of a ``CMSearchResult``, None for none."""
    for item in root.iterfind(".//{*}searchMatchItem"):
        return parse_time(_text(item, "{*}timeSpan/{*}startTime"))
    return None


class HikvisionAdapter:
    """Reads a Hikvision NVR/DVR over ISAPI (base ``cfg.url``)."""

    def __init__(self, cfg: CameraSection, *, clock: Any = time.monotonic) -> None:
        self.base = cfg.url.rstrip("/")
        self.gap = timedelta(seconds=cfg.recording_gap_s)
        self.login = Login(cfg.username, cfg.password_file)
        self._clock = clock

    async def fetch(self, session: aiohttp.ClientSession, *, timeout_s: float) -> CameraStatus:
        password = self.login.password(self._clock())
        digest = aiohttp.DigestAuthMiddleware(self.login.username, password)
        async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=PARALLEL, force_close=True),
            middlewares=(digest,),
            timeout=aiohttp.ClientTimeout(total=timeout_s),
        ) as own:
            try:
                async with asyncio.timeout(timeout_s):
                    return await self._read(own)
            except StatusError as err:
                if err.reason == "auth":
                    raise self.login.refused(password, self._clock()) from None
                raise
            except TimeoutError:
                raise StatusError(
                    "timeout", f"no answer from {self.base} within {timeout_s:g} s"
                ) from None

    async def _read(self, session: aiohttp.ClientSession) -> CameraStatus:
        clock = await self._xml(session, "GET", "/ISAPI/System/time", optional=True)
        now = parse_time(_text(clock, "{*}localTime")) if clock is not None else None
        now = now or datetime.now(UTC)
        disks = parse_storage(await self._xml(session, "GET", "/ISAPI/ContentMgmt/Storage"))
        tracks = parse_tracks(await self._xml(session, "GET", "/ISAPI/ContentMgmt/record/tracks"))
        if not tracks:
            raise StatusError("bad-response", "the recorder lists no recording tracks")
        gate = asyncio.Semaphore(PARALLEL)

        async def channel(track: str, name: str) -> ChannelStatus:
            async with gate:
                oldest = await self._search(session, track, EPOCH, now + self.gap)
                recent = await self._search(session, track, now - self.gap, now + self.gap)
            days = None if oldest is None else max(0.0, (now - oldest).total_seconds() / 86400)
            return ChannelStatus(name, recent is not None, days)

        chans = await asyncio.gather(*(channel(t, n) for t, n in tracks))
        return CameraStatus.of(chans, disks)

    async def _search(
        self, session: aiohttp.ClientSession, track: str, start: datetime, end: datetime
    ) -> datetime | None:
        body = search_body(track, start, end)
        root = await self._xml(session, "POST", "/ISAPI/ContentMgmt/search", body=body)
        if root is None or not root.tag.endswith("CMSearchResult"):
            raise StatusError("bad-response", f"track {track}: not a CMSearchResult")
        return first_match_start(root)

    async def _xml(
        self,
        session: aiohttp.ClientSession,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        optional: bool = False,
    ) -> Any:
        url = self.base + path
        headers = {"Content-Type": "application/xml"} if body is not None else {}
        try:
            async with session.request(
                method, url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                if resp.status == 401:
                    raise StatusError("auth", "refused")
                if optional and resp.status in (403, 404):
                    return None
                if resp.status != 200:
                    raise StatusError("http-status", f"HTTP {resp.status} from {path}")
                data = await resp.content.read(MAX_XML + 1)
        except TimeoutError:  # aiohttp's own timeouts are ClientErrors too
            raise StatusError("timeout", f"no answer from {url} in time") from None
        except aiohttp.ClientError as err:
            text = str(err) or type(err).__name__
            raise StatusError("unreachable", f"{url}: {text}"[:160]) from None
        except OSError as err:
            raise StatusError("unreachable", f"{url}: {err.strerror or err}"[:160]) from None
        if len(data) > MAX_XML:
            raise StatusError("bad-response", f"{path}: more than {MAX_XML} bytes")
        try:
            return SafeET.fromstring(data)
        except (ET.ParseError, DefusedXmlException, ValueError) as err:
            raise StatusError("bad-response", f"{path}: not XML ({err})"[:160]) from None
