"""CCTV recorder (NVR) recording and retention (OPERATOR.md ``[camera]``).

The recorder is read through an ``NvrAdapter`` returning a ``CameraStatus``:

- ``json`` (``jsonapi``): ``GET url`` returns ``{"recording": true, "retention_days": 34}``;
- ``onvif`` (``profile_g``): ONVIF Profile G recording search, WS-Security UsernameToken;
- ``hikvision`` (``isapi``): Hikvision ISAPI storage and track search, HTTP digest auth.

``CameraMonitor`` (``monitor``) polls it and reports condition (camera, 393); ``model`` holds
the status types and what counts as a problem; ``diag`` reads a recorder once for
``alarmgw diag``; ``secret`` reads the password file.
"""

from gateway.monitors.camera.jsonapi import JsonAdapter, parse_json_status
from gateway.monitors.camera.model import (
    CODE,
    DEVICE,
    CameraStatus,
    ChannelStatus,
    DiskStatus,
    NvrAdapter,
    problems,
)
from gateway.monitors.camera.monitor import CameraMonitor, make_adapter

__all__ = [
    "CODE",
    "DEVICE",
    "CameraMonitor",
    "CameraStatus",
    "ChannelStatus",
    "DiskStatus",
    "JsonAdapter",
    "NvrAdapter",
    "make_adapter",
    "parse_json_status",
    "problems",
]
