"""ONVIF Profile G recorder adapter (``[camera] adapter = "onvif"``), with onvif-zeep-async.

``url`` is the device service. Per poll, with a WS-Security UsernameToken (password digest):
``GetServices`` (``GetCapabilities`` on older devices) finds the Recording Search service;
``GetSystemDateAndTime`` gives the recorder's clock; the search service's
``GetRecordingSummary`` says whether anything is held, ``FindRecordings`` /
``GetRecordingSearchResults`` list the recordings (one per camera channel) and
``GetRecordingInformation`` gives each one's data range. A channel's retention is the
recorder's now minus the earliest data it still holds; it records while its newest data is
younger than ``recording_gap_s`` (and its status is not Stopped/Removed).

Importing this module imports the ONVIF client, which configures stdlib logging when nothing
did before; its loggers are turned down to warnings (they would log SOAP bodies at debug).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import onvif
import zeep.exceptions
from onvif import ONVIFCamera, ONVIFError, ONVIFService
from onvif.definition import SERVICES
from onvif.util import is_auth_error, stringify_onvif_error

from gateway.config import CameraSection
from gateway.monitors.camera.model import CameraStatus, ChannelStatus, clean_name
from gateway.monitors.camera.secret import Login
from gateway.monitors.http import StatusError

for _name in ("onvif", "zeep"):
    logging.getLogger(_name).setLevel(logging.WARNING)

SEARCH_NS = "http://www.onvif.org/ver10/search/wsdl"
WSDL_DIR = Path(onvif.__file__).parent / "wsdl"  # the client's bundled WSDLs
PARALLEL = 4
MAX_PAGES = 64  # GetRecordingSearchResults rounds before a search counts as never finished
NOT_RECORDING = {"Stopped", "Removing", "Removed"}


def _aware(value: Any) -> datetime | None:
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def device_now(answer: Any) -> datetime | None:
    """``GetSystemDateAndTime`` → the recorder's UTC time, None when it gives none."""
    try:
        utc = answer.UTCDateTime
        d, t = utc.Date, utc.Time
        return datetime(d.Year, d.Month, d.Day, t.Hour, t.Minute, t.Second, tzinfo=UTC)
    except (AttributeError, TypeError, ValueError):
        return None


def channel_status(info: Any, now: datetime, gap: timedelta) -> ChannelStatus:
    """A ``tt:RecordingInformation`` → the channel: name, recording, retention."""
    source = getattr(info, "Source", None)
    name = clean_name(getattr(source, "Name", None) or getattr(info, "RecordingToken", "?"))
    video = [t for t in getattr(info, "Track", None) or [] if t.TrackType == "Video"]
    starts = [s for t in video if (s := _aware(t.DataFrom)) is not None]
    ends = [e for t in video if (e := _aware(t.DataTo)) is not None]
    earliest = _aware(getattr(info, "EarliestRecording", None)) or min(starts, default=None)
    latest = _aware(getattr(info, "LatestRecording", None)) or max(ends, default=None)
    days = None
    if earliest is not None:
        days = max(0.0, (now - earliest).total_seconds() / 86400)
    recent = latest is not None and now - latest <= gap
    state = str(getattr(info, "RecordingStatus", "") or "")
    return ChannelStatus(name, recent and state not in NOT_RECORDING, days)


class OnvifAdapter:
    """Reads an ONVIF Profile G recorder at ``cfg.url`` (its device service)."""

    def __init__(self, cfg: CameraSection, *, clock: Any = time.monotonic) -> None:
        parts = urlsplit(cfg.url)
        self.url = cfg.url
        self.host = f"{parts.scheme}://{parts.hostname}"
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.gap = timedelta(seconds=cfg.recording_gap_s)
        self.login = Login(cfg.username, cfg.password_file)
        self._clock = clock
        self._wsdl_loaded = False

    async def load_wsdl(self) -> None:
        """Parse the WSDLs the poll uses, once: local work that should not count against a
        recorder's time (the client keeps parsed documents for the process's life)."""
        if self._wsdl_loaded:
            return
        for name in ("devicemgmt", "search"):
            spec = SERVICES[name]
            service = ONVIFService(
                self.url,
                None,
                None,
                str(WSDL_DIR / spec["wsdl"]),
                no_cache=True,
                binding_name=f"{{{spec['ns']}}}{spec['binding']}",
            )
            try:
                await service.setup()
            finally:
                await service.close()
        self._wsdl_loaded = True

    async def fetch(self, session: aiohttp.ClientSession, *, timeout_s: float) -> CameraStatus:
        password = self.login.password(self._clock())
        await self.load_wsdl()
        camera = ONVIFCamera(self.host, self.port, self.login.username, password, no_cache=True)
        try:
            async with asyncio.timeout(timeout_s):
                return await self.read(camera)
        except TimeoutError:
            raise StatusError(
                "timeout", f"no answer from {self.url} within {timeout_s:g} s"
            ) from None
        except StatusError:
            raise
        except zeep.exceptions.Fault as err:
            if is_auth_error(err):
                raise self.login.refused(password, self._clock()) from None
            raise StatusError(
                "bad-response", f"SOAP fault: {stringify_onvif_error(err)}"[:160]
            ) from None
        except zeep.exceptions.TransportError as err:
            if err.status_code == 401:
                raise self.login.refused(password, self._clock()) from None
            raise StatusError("http-status", f"HTTP {err.status_code} from {self.url}") from None
        except (aiohttp.ClientError, OSError) as err:
            raise StatusError("unreachable", f"{self.url}: {err}"[:160]) from None
        except ONVIFError as err:
            cause = err.__cause__
            if isinstance(cause, aiohttp.ClientError | OSError):
                raise StatusError("unreachable", f"{self.url}: {cause}"[:160]) from None
            raise StatusError("bad-response", f"{self.url}: {err}"[:160]) from None
        # zeep reports some malformed answers as whatever its parser tripped on.
        except (
            zeep.exceptions.Error,
            SyntaxError,  # lxml's XMLSyntaxError
            AttributeError,
            LookupError,
            TypeError,
            ValueError,
        ) as err:
            raise StatusError(
                "bad-response", f"{self.url}: {type(err).__name__}: {err}"[:160]
            ) from None
        finally:
            await camera.close()

    async def read(self, camera: ONVIFCamera) -> CameraStatus:
        """One reading through ``camera`` (the caller bounds it in time)."""
        await camera.update_xaddrs()
        if SEARCH_NS not in camera.xaddrs:
            raise StatusError(
                "unsupported", "the recorder offers no ONVIF Recording Search (Profile G)"
            )
        device = await camera.create_devicemgmt_service()
        now = device_now(await device.GetSystemDateAndTime()) or datetime.now(UTC)
        search = await camera.create_search_service()
        summary = await search.GetRecordingSummary()
        if not getattr(summary, "NumberRecordings", 0):
            raise StatusError("no-recordings", "the recorder holds no recordings")
        tokens = await self._tokens(search)
        if not tokens:
            raise StatusError("no-recordings", "the recording search found no recordings")
        gate = asyncio.Semaphore(PARALLEL)

        async def one(token: str) -> ChannelStatus:
            async with gate:
                answer = await search.GetRecordingInformation({"RecordingToken": token})
            return channel_status(answer, now, self.gap)

        return CameraStatus.of(await asyncio.gather(*(one(t) for t in tokens)))

    async def _tokens(self, search: Any) -> list[str]:
        """Every recording's token, through a recording search."""
        found = await search.FindRecordings({"Scope": {}, "KeepAliveTime": timedelta(seconds=30)})
        token = found.SearchToken if hasattr(found, "SearchToken") else found
        tokens: list[str] = []
        try:
            for _ in range(MAX_PAGES):
                page = await search.GetRecordingSearchResults(
                    {"SearchToken": token, "MaxResults": 64, "WaitTime": timedelta(seconds=2)}
                )
                for info in page.RecordingInformation or []:
                    if info.RecordingToken not in tokens:
                        tokens.append(str(info.RecordingToken))
                if page.SearchState == "Completed":
                    break
        finally:
            # Were this lost, the recorder ends the search itself after KeepAliveTime.
            with contextlib.suppress(
                zeep.exceptions.Error, ONVIFError, aiohttp.ClientError, OSError
            ):
                await search.EndSearch({"SearchToken": token})
        return tokens
