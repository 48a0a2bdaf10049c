"""An ONVIF Profile G recorder, enough for the ``onvif`` adapter (``alarmgw-sim nvr --kind
onvif``).

SOAP 1.2 on ``/onvif/device_service`` (``GetServices``, ``GetCapabilities``,
``GetSystemDateAndTime``) and ``/onvif/search_service`` (``GetRecordingSummary``,
``FindRecordings``, ``GetRecordingSearchResults``, ``EndSearch``, ``GetRecordingInformation``).
One recording per channel (token ``rec-N``, source ``Camera N``) with a video track whose data
runs from ``retention`` days ago to now (or to an hour before ``recording off``). The search
service wants a WS-Security UsernameToken (password digest); the device service's discovery
calls answer without one, as the ONVIF core specification allows. A wrong password is the
``ter:NotAuthorized`` fault. Answers follow the ONVIF WSDL schema (tests parse them with
zeep). Commands: see ``firmware_sim.nvr_base``.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import secrets
import time
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from types import TracebackType
from typing import Any
from xml.sax.saxutils import escape

import defusedxml.ElementTree as SafeET
from aiohttp import web
from defusedxml import DefusedXmlException

from firmware_sim.nvr_base import Channel, Handler, Recorder, VendorServer

ENV = "http://www.w3.org/2003/05/soap-envelope"
WSSE = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd"
WSU = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd"
TDS = "http://www.onvif.org/ver10/device/wsdl"
TSE = "http://www.onvif.org/ver10/search/wsdl"
TT = "http://www.onvif.org/ver10/schema"
TER = "http://www.onvif.org/ver10/error"
DEVICE_PATH, SEARCH_PATH = "/onvif/device_service", "/onvif/search_service"
# What may be asked without credentials (ONVIF core "PRE_AUTH").
PRE_AUTH = {"GetServices", "GetCapabilities", "GetSystemDateAndTime"}
GARBAGE: tuple[tuple[bytes, str], ...] = (
    (b"<html><body>502 Bad Gateway</body></html>", "text/html"),
    (
        b"<?xml version='1.0'?><env:Envelope xmlns:env='" + ENV.encode() + b"'><env:Body>",
        "application/soap+xml",
    ),
    (b'<!DOCTYPE x [<!ENTITY a "aaaa">]><x>&a;&a;</x>', "application/soap+xml"),
    (bytes(range(0x80, 0x90)), "application/octet-stream"),
)


def stamp(ts: float) -> str:
    """An xs:dateTime in UTC."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def envelope(body: str) -> str:
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>'
        f'<env:Envelope xmlns:env="{ENV}" xmlns:tds="{TDS}" xmlns:tse="{TSE}" '
        f'xmlns:tt="{TT}" xmlns:ter="{TER}"><env:Body>{body}</env:Body></env:Envelope>'
    )


def fault(subcode: str, reason: str) -> str:
    return envelope(
        "<env:Fault><env:Code><env:Value>env:Sender</env:Value><env:Subcode>"
        f"<env:Value>{subcode}</env:Value></env:Subcode></env:Code><env:Reason>"
        f'<env:Text xml:lang="en">{escape(reason)}</env:Text></env:Reason></env:Fault>'
    )


def recording_information(name: str, ch: Channel, now: float) -> str:
    """A tt:RecordingInformation for channel ``name`` (the children of the element)."""
    latest = ch.latest(now)
    earliest = ch.earliest(now) if ch.retention_days > 0 else latest
    times = (
        f"<tt:EarliestRecording>{stamp(earliest)}</tt:EarliestRecording>"
        f"<tt:LatestRecording>{stamp(latest)}</tt:LatestRecording>"
        if ch.retention_days > 0
        else ""
    )
    status = "Recording" if ch.stopped_at is None else "Stopped"
    return (
        f"<tt:RecordingToken>rec-{name}</tt:RecordingToken>"
        f"<tt:Source><tt:SourceId>http://127.0.0.1/source/{name}</tt:SourceId>"
        f"<tt:Name>Camera {name}</tt:Name><tt:Location>gate</tt:Location>"
        f"<tt:Description>channel {name}</tt:Description>"
        f"<tt:Address>http://127.0.0.1/source/{name}</tt:Address></tt:Source>"
        f"{times}<tt:Content>continuous</tt:Content>"
        f"<tt:Track><tt:TrackToken>video</tt:TrackToken><tt:TrackType>Video</tt:TrackType>"
        f"<tt:Description>main stream</tt:Description><tt:DataFrom>{stamp(earliest)}"
        f"</tt:DataFrom><tt:DataTo>{stamp(latest)}</tt:DataTo></tt:Track>"
        f"<tt:RecordingStatus>{status}</tt:RecordingStatus>"
    )


def password_digest(nonce: bytes, created: str, password: str) -> str:
    """WS-Security UsernameToken: Base64(SHA-1(nonce + created + password))."""
    digest = hashlib.sha1(nonce + created.encode() + password.encode()).digest()  # noqa: S324
    return base64.b64encode(digest).decode()


class OnvifSimulator:
    """An ONVIF recorder on ``http://host:port`` (0: a free port); ``url`` is its device
    service."""

    def __init__(self, recorder: Recorder, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.recorder = recorder
        self.refused = 0
        self.answers: list[tuple[str, bytes]] = []  # (operation, body): the last few, for tests
        self._searches = itertools.count(1)
        routes: list[tuple[str, str, Handler]] = [
            ("POST", DEVICE_PATH, self._device),
            ("POST", SEARCH_PATH, self._search),
        ]
        self.http = VendorServer(routes, host=host, port=port, garbage=GARBAGE)

    @property
    def url(self) -> str:
        return self.http.base + DEVICE_PATH

    async def start(self) -> None:
        await self.http.start()

    async def stop(self) -> None:
        await self.http.stop()

    async def __aenter__(self) -> OnvifSimulator:
        await self.start()
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    async def command(self, words: list[str]) -> str:
        done = self.recorder.command(words)
        return done if done is not None else await self.http.command(words)

    # -- SOAP -------------------------------------------------------------------------------

    async def _parse(self, request: web.Request) -> tuple[str, Any, Any]:
        """(operation, its element, the Security header or None); ValueError if not SOAP."""
        try:
            root = SafeET.fromstring(await request.read())
        except (ET.ParseError, DefusedXmlException, OSError) as err:
            raise ValueError(f"not XML: {err}") from None
        body = root.find(f"{{{ENV}}}Body")
        if body is None or len(body) != 1:
            raise ValueError("no SOAP 1.2 Body with one operation")
        op = body[0]
        return op.tag.rpartition("}")[2], op, root.find(f"{{{ENV}}}Header/{{{WSSE}}}Security")

    def _authorised(self, security: Any) -> bool:
        token = None if security is None else security.find(f"{{{WSSE}}}UsernameToken")
        if token is None:
            return False
        user = token.findtext(f"{{{WSSE}}}Username")
        given = token.findtext(f"{{{WSSE}}}Password") or ""
        nonce = token.findtext(f"{{{WSSE}}}Nonce") or ""
        created = token.findtext(f"{{{WSU}}}Created") or ""
        if user != self.recorder.user:
            return False
        try:
            want = password_digest(base64.b64decode(nonce), created, self.recorder.password)
        except ValueError:
            return False
        return secrets.compare_digest(want, given)

    def _reply(self, op: str, body: str, status: int = 200) -> web.Response:
        data = envelope(body).encode() if not body.startswith("<?xml") else body.encode()
        self.answers = [*self.answers[-63:], (op, data)]
        return web.Response(body=data, status=status, content_type="application/soap+xml")

    async def _handle(self, request: web.Request, answer: Any) -> web.Response:
        try:
            op, elem, security = await self._parse(request)
        except ValueError as err:
            return self._reply("?", fault("ter:InvalidArgs", str(err)), 400)
        if op not in PRE_AUTH and not self._authorised(security):
            self.refused += 1
            return self._reply(op, fault("ter:NotAuthorized", "Sender not Authorized"), 400)
        body = answer(op, elem)
        if body is None:
            return self._reply(op, fault("ter:ActionNotSupported", f"{op} not supported"), 400)
        return self._reply(op, body, 400 if body.startswith("<?xml") else 200)

    async def _device(self, request: web.Request) -> web.Response:
        return await self._handle(request, self._device_op)

    async def _search(self, request: web.Request) -> web.Response:
        return await self._handle(request, self._search_op)

    def _device_op(self, op: str, _elem: Any) -> str | None:
        base = self.http.base
        if op == "GetServices":
            services = "".join(
                f"<tds:Service><tds:Namespace>{ns}</tds:Namespace><tds:XAddr>{base}{path}"
                f"</tds:XAddr><tds:Version><tt:Major>2</tt:Major><tt:Minor>42</tt:Minor>"
                f"</tds:Version></tds:Service>"
                for ns, path in ((TDS, DEVICE_PATH), (TSE, SEARCH_PATH))
            )
            return f"<tds:GetServicesResponse>{services}</tds:GetServicesResponse>"
        if op == "GetSystemDateAndTime":
            now = datetime.now(UTC)
            return (
                "<tds:GetSystemDateAndTimeResponse><tds:SystemDateAndTime>"
                "<tt:DateTimeType>NTP</tt:DateTimeType><tt:DaylightSavings>false"
                "</tt:DaylightSavings><tt:TimeZone><tt:TZ>UTC0</tt:TZ></tt:TimeZone>"
                f"<tt:UTCDateTime><tt:Time><tt:Hour>{now.hour}</tt:Hour><tt:Minute>"
                f"{now.minute}</tt:Minute><tt:Second>{now.second}</tt:Second></tt:Time>"
                f"<tt:Date><tt:Year>{now.year}</tt:Year><tt:Month>{now.month}</tt:Month>"
                f"<tt:Day>{now.day}</tt:Day></tt:Date></tt:UTCDateTime>"
                "</tds:SystemDateAndTime></tds:GetSystemDateAndTimeResponse>"
            )
        return None

    def _search_op(self, op: str, elem: Any) -> str | None:
        now = time.time()
        chans = self.recorder.channels
        if op == "GetRecordingSummary":
            held = [c for c in chans.values() if c.retention_days > 0]
            first = min((c.earliest(now) for c in held), default=now)
            last = max((c.latest(now) for c in held), default=now)
            return (
                f"<tse:GetRecordingSummaryResponse><tse:Summary><tt:DataFrom>{stamp(first)}"
                f"</tt:DataFrom><tt:DataUntil>{stamp(last)}</tt:DataUntil><tt:NumberRecordings>"
                f"{len(held)}</tt:NumberRecordings></tse:Summary>"
                "</tse:GetRecordingSummaryResponse>"
            )
        if op == "FindRecordings":
            token = f"search-{next(self._searches)}"
            return (
                f"<tse:FindRecordingsResponse><tse:SearchToken>{token}</tse:SearchToken>"
                "</tse:FindRecordingsResponse>"
            )
        if op == "GetRecordingSearchResults":
            found = "".join(
                f"<tt:RecordingInformation>{recording_information(n, c, now)}"
                "</tt:RecordingInformation>"
                for n, c in chans.items()
            )
            return (
                "<tse:GetRecordingSearchResultsResponse><tse:ResultList><tt:SearchState>"
                f"Completed</tt:SearchState>{found}</tse:ResultList>"
                "</tse:GetRecordingSearchResultsResponse>"
            )
        if op == "EndSearch":
            return (
                f"<tse:EndSearchResponse><tse:Endpoint>{stamp(now)}</tse:Endpoint>"
                "</tse:EndSearchResponse>"
            )
        if op == "GetRecordingInformation":
            token = elem.findtext(f"{{{TSE}}}RecordingToken") or ""
            name = token.removeprefix("rec-")
            if name not in chans:
                return fault("ter:InvalidArgVal", f"no recording {token}")
            return (
                "<tse:GetRecordingInformationResponse><tse:RecordingInformation>"
                f"{recording_information(name, chans[name], now)}</tse:RecordingInformation>"
                "</tse:GetRecordingInformationResponse>"
            )
        return None
