"""One TOML file → typed, validated, frozen settings (OPERATOR.md "Gateway config",
"Site monitors").

``load_config`` reads the file with ``tomllib``, validate it with
pydantic and raise one ``ConfigError`` listing *every* problem as ``FILE:LINE: key: what is
wrong``. ``tomllib`` keeps no positions, so ``gateway.tomlpos.Locator`` re-scans the text to
map a key path such as ``("button", 1, "pin")`` back to its line. Unknown keys are errors (a
typo must not silently fall back to a default), relative paths are resolved against the config
file's directory, and referenced key files must exist.
"""

from __future__ import annotations

import ipaddress
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from gateway.configerrors import (
    Problems,
    scalar,
)
from gateway.configtypes import (
    BcmPin,
    DirPath,
    FilePath,
    Identity,
    InputName,
    NonEmpty,
    PollSeconds,
    Seconds,
    Section,
    Url,
    check_baud,
    check_listen,
    check_prefix,
    duplicates,
    entries,
    given,
    load_model,
    raise_if,
    split_host_port,
    to_path,
    validation_context,
)
from gateway.monitors.schedule import Schedule, Window, zone
from gateway.tomlpos import Loc

# --- gateway sections ------------------------------------------------------------------


class GatewaySection(Section):
    """``[gateway]``: who this gateway is and where it keeps its key and state."""

    site: Identity
    id: Identity
    key_file: FilePath
    state_dir: DirPath


class LocationSection(Section):
    """``[location]``: copied into every alarm body (PROTOCOL.md "Bodies")."""

    name: NonEmpty
    address: NonEmpty
    lat: Annotated[float, Field(ge=-90.0, le=90.0)]
    lon: Annotated[float, Field(ge=-180.0, le=180.0)]
    phone: NonEmpty
    floor: NonEmpty | None = None
    room: NonEmpty | None = None


class MqttSection(Section):
    """``[mqtt]``: the broker session (PROTOCOL.md "Transport"). ``center_keys``:
    the center public keys whose acks the gateway trusts."""

    host: NonEmpty = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    prefix: Annotated[str, AfterValidator(check_prefix)] = "schoolalarm/v1"
    keepalive_s: Annotated[int, Field(ge=2, le=65535)] = 10
    protocol: Literal["5", "3.1.1"] = "5"
    tls: bool = False
    ca_file: FilePath | None = None
    cert_file: FilePath | None = None
    key_file: FilePath | None = None
    username: NonEmpty | None = None
    password: str | None = None
    client_id: NonEmpty | None = None
    allow_plaintext: bool = False
    center_keys: list[FilePath] = Field(default_factory=list)

    @model_validator(mode="after")
    def _check_transport(self) -> MqttSection:
        raise_if(transport_problems(given(self)))
        return self


def is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def transport_problems(d: Mapping[str, Any]) -> Problems:
    """``[mqtt]`` rules across keys; ``d`` holds the keys given (raw TOML or validated)."""
    found: Problems = []
    tls, host = d.get("tls", False), d.get("host", "127.0.0.1")
    if tls is True and d.get("ca_file") is None:
        found.append((("ca_file",), "tls = true requires ca_file"))
    if (d.get("cert_file") is None) != (d.get("key_file") is None):
        missing = "key_file" if d.get("key_file") is None else "cert_file"
        found.append(((missing,), "cert_file and key_file go together (mTLS)"))
    plain_ok = d.get("allow_plaintext", False) is not False
    if tls is False and not plain_ok and isinstance(host, str) and not is_loopback(host):
        # PROTOCOL.md "Transport": plain TCP only on loopback or when the
        # operator says so in config.
        where = ("tls",) if "tls" in d else ("host",)
        found.append(
            (
                where,
                f"plain TCP to non-loopback host {host!r}: set tls = true, or "
                "allow_plaintext = true to accept an unencrypted link",
            )
        )
    if d.get("password") is not None and d.get("username") is None:
        found.append((("username",), "password is set but username is missing"))
    return found


class SecondaryMqttSection(MqttSection):
    """``[mqtt_secondary]``: an optional second broker path to the center (same keys as
    ``[mqtt]``; the center keys trusted for acks are those of ``[mqtt]``)."""

    @field_validator("center_keys")
    @classmethod
    def _no_center_keys(cls, value: list[Path]) -> list[Path]:
        if value:
            raise ValueError("set center_keys in [mqtt]; they apply to both broker paths")
        return value


class ButtonSection(Section):
    """``[[button]]``: a GPIO alarm button wired to ground (internal pull-up)."""

    name: InputName
    pin: BcmPin
    hold_s: Annotated[float, Field(ge=0.0, le=30.0)] = 0.0
    led_pin: BcmPin | None = None
    debounce_s: Annotated[float, Field(ge=0.0, le=1.0)] = 0.05
    code: Literal["120", "121", "122", "123"] = "120"
    kind: Annotated[str, Field(min_length=1, max_length=64)] = "panic"


class SerialSection(Section):
    """``[[serial]]``: a button box (SERIAL.md)."""

    name: InputName
    port: NonEmpty
    baud: Annotated[int, AfterValidator(check_baud)] = 9600
    heartbeat_s: Seconds = 2.0
    rs485: bool = False


class HeartbeatSection(Section):
    """``[heartbeat]``: how often the gateway sends its snapshot."""

    interval_s: Annotated[float, Field(ge=1.0)] = 30.0


class HttpSection(Section):
    """``[http]``: the local status endpoint, ``host:port`` (``[::1]:port`` for IPv6)."""

    listen: Annotated[str, AfterValidator(check_listen)] = "127.0.0.1:8787"

    @property
    def host(self) -> str:
        return split_host_port(self.listen)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.listen)[1]


class AlarmSection(Section):
    """``[alarm]``: presser feedback and re-sending. ``ack_timeout_s``: after this long
    without the center's signed ack the presser's LED turns ``fast``. ``resend_initial_s`` /
    ``resend_max_s``: the exponential backoff for re-sending an un-acked event.
    ``buzzer_ms``: length of the local confirmation beep when an alarm is registered
    (0: no beep)."""

    ack_timeout_s: Seconds = 15.0
    resend_initial_s: Seconds = 2.0
    resend_max_s: Seconds = 60.0
    buzzer_ms: Annotated[int, Field(ge=0, le=10_000)] = 0

    @model_validator(mode="after")
    def _check_backoff(self) -> AlarmSection:
        raise_if(_backoff_problems(given(self)))
        return self


class OutboxSection(Section):
    """``[outbox]``: limits of the durable queue. ``max_events``: queued non-alarm events
    (trouble/restore) kept on disk; past it the oldest go first, counted and logged. Alarms
    and tests are never evicted. ``failover_after_s``: with ``[mqtt_secondary]``, how long the
    primary broker may be unreachable before non-alarm events also go out on the secondary
    (alarms use the secondary at once)."""

    max_events: Annotated[int, Field(ge=10, le=10_000_000)] = 10_000
    failover_after_s: Seconds = 30.0


def _backoff_problems(d: Mapping[str, Any]) -> Problems:
    low, high = d.get("resend_initial_s", 2.0), d.get("resend_max_s", 60.0)
    if scalar(low, float | int) and scalar(high, float | int) and high < low:
        return [(("resend_max_s",), "must be >= resend_initial_s")]
    return []


def _timezone(value: str) -> str:
    if value:
        zone(value)  # ValueError names the zone
    return value


def _window(value: str) -> str:
    Window.parse(value)  # ValueError says what is wrong with it
    return value


class BollardSection(Section):
    """``[bollard]``: limit switches on GPIO (active low by default) and/or an HTTP controller
    whose GET returns ``{"state": "up"|"down"|"moving"|"fault"}``."""

    up_pin: BcmPin | None = None
    down_pin: BcmPin | None = None
    fault_pin: BcmPin | None = None
    active_low: bool = True
    status_url: Url = ""
    poll_s: PollSeconds = 5.0
    moving_timeout_s: Seconds = 20.0
    # The hours the bollard must be up, in the site's time zone: down inside one of them is
    # a trouble, down outside them is normal (gateway.monitors.schedule for the syntax).
    timezone: Annotated[str, AfterValidator(_timezone)] = ""
    protect: list[Annotated[str, AfterValidator(_window)]] = Field(default_factory=list)
    # Keys beyond OPERATOR.md: how long an HTTP status request may take, and how long the
    # bollard may stay down, at any hour, before that is a trouble (unset: never).
    timeout_s: Seconds = 2.0
    down_alert_s: Annotated[float, Field(ge=0.0)] | None = None

    @model_validator(mode="after")
    def _check_source(self) -> BollardSection:
        raise_if(_bollard_problems(given(self)))
        return self

    @property
    def schedule(self) -> Schedule | None:
        """The protection hours, or None when ``protect`` is empty."""
        return Schedule.parse(self.protect, self.timezone) if self.protect else None


def _bollard_problems(d: Mapping[str, Any]) -> Problems:
    found: Problems = []
    up, down = d.get("up_pin"), d.get("down_pin")
    if (up is None) != (down is None):
        found.append(
            (("down_pin" if down is None else "up_pin",), "up_pin and down_pin go together")
        )
    elif up is None and not d.get("status_url"):
        found.append(((), "set up_pin and down_pin, or status_url (or both)"))
    if d.get("protect") and not d.get("timezone"):
        found.append((("protect",), 'protect needs timezone, e.g. timezone = "Asia/Shanghai"'))
    return found


class CameraSection(Section):
    """``[camera]``: NVR recording/retention check. ``adapter``: ``json`` GETs ``url``, which
    returns ``{"recording": true, "retention_days": 34}``; ``onvif``: ``url`` is the device
    service (``http://HOST[:PORT]/onvif/device_service``), read through Profile G recording
    search; ``hikvision``: ``url`` is the NVR's base URL, read through ISAPI. Both vendor
    adapters log in as ``username`` with the password in ``password_file`` (mode 0600, owned
    by the daemon's user)."""

    adapter: Literal["json", "onvif", "hikvision"] = "json"
    url: Annotated[Url, Field(min_length=1)]
    username: str = ""
    password_file: FilePath | None = None
    required_days: Annotated[int, Field(ge=1)] = 30
    poll_s: PollSeconds = 60.0
    timeout_s: Seconds = 10.0  # per poll; a slower recorder is a "timeout" trouble
    # Keys beyond OPERATOR.md: a channel whose newest recorded data is older than this is
    # not recording (ONVIF, Hikvision).
    recording_gap_s: Seconds = 600.0

    @model_validator(mode="after")
    def _check_login(self) -> CameraSection:
        raise_if(_camera_problems(given(self)))
        return self


def _camera_problems(d: Mapping[str, Any]) -> Problems:
    if d.get("adapter", "json") == "json":
        return []
    found: Problems = []
    if not d.get("username"):
        found.append((("username",), f"the {d['adapter']} adapter needs a username"))
    if d.get("password_file") is None:
        found.append(
            (("password_file",), f"the {d['adapter']} adapter needs a password_file (mode 0600)")
        )
    return found


class SelfCheckSection(Section):
    """``[selfcheck]``: the gateway's own health. Every ``interval_s``: free space
    under ``state_dir`` below ``min_free_mb`` → 330; clock not synchronised (``clock``) → 626;
    a TLS certificate expiring within ``cert_warn_days``, or a private key file readable by
    others → 393."""

    interval_s: PollSeconds = 60.0
    min_free_mb: Annotated[int, Field(ge=0)] = 100
    clock: bool = True
    cert_warn_days: Annotated[int, Field(ge=0)] = 30


class TroubleSection(Section):
    """``[trouble]``: while a device flaps (more than 20 changes in 10 minutes,
    PROTOCOL.md "Delivery semantics") its changes go out as one summary with a
    count every ``flap_summary_s``."""

    flap_summary_s: PollSeconds = 60.0


def _dc09_key_file(value: str, info: ValidationInfo) -> str:
    if not value:
        return value
    path = to_path(value, info)
    if validation_context(info).get("check_files"):
        try:
            text = path.read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(
                f"cannot read {path}: {getattr(err, 'strerror', None) or err}"
            ) from err
        digits = text.strip()
        if len(digits) not in (32, 48, 64) or any(
            c not in "0123456789abcdefABCDEF" for c in digits
        ):
            raise ValueError(f"{path}: expected 32, 48 or 64 hex digits (an AES-128/192/256 key)")
    return str(path)


class Dc09Section(Section):
    """``[dc09]``: a second path to a SIA DC-09 alarm receiver (Contact ID over ``ADM-CID``).
    ``key_file``: the AES key as 32/48/64 hex digits, empty for plain frames; with a key every
    frame is encrypted. ``events``: ``"alarms"`` (alarms and tests) or ``"all"`` (troubles and
    restores too). ``secondary_host``/``secondary_port``: a fallback receiver. ``zones``: input
    (``gpio:<name>``, ``serial:<name>``) → Contact ID zone; inputs not listed are numbered in
    config order. No ACK for ``trouble_after_s`` raises trouble 350 (device ``gateway``,
    detail "DC-09 ...")."""

    host: NonEmpty
    port: Annotated[int, Field(ge=1, le=65535)] = 12300
    transport: Literal["tcp", "udp"] = "tcp"
    account: Annotated[str, Field(pattern=r"^[0-9A-F]{3,16}$")]
    receiver: Annotated[str, Field(pattern=r"^R[0-9A-F]{1,6}$")] = "R1"
    line: Annotated[str, Field(pattern=r"^L[0-9A-F]{1,6}$")] = "L1"
    key_file: Annotated[str, AfterValidator(_dc09_key_file)] = ""
    supervision_s: Annotated[float, Field(ge=1.0)] = 60.0
    events: Literal["alarms", "all"] = "alarms"
    partition: Annotated[int, Field(ge=0, le=99)] = 1
    zones: dict[str, Annotated[int, Field(ge=1, le=999)]] = Field(default_factory=dict)
    secondary_host: NonEmpty | None = None
    secondary_port: Annotated[int, Field(ge=1, le=65535)] = 12300
    answer_timeout_s: Seconds = 10.0
    trouble_after_s: Annotated[float, Field(ge=0.0)] = 30.0

    def event_types(self) -> frozenset[str]:
        """The outbox event types this path carries."""
        base = {"alarm", "test"}
        return frozenset(base | {"trouble", "restore"} if self.events == "all" else base)


class FeedbackSection(Section):
    """``[feedback]``: what the presser is shown after the center's ack. ``show_dispatch``:
    the LED pulses once a person at the center has taken the alarm and goes off once it is
    resolved (PROTOCOL.md ``dispatch``); false for covert installations (the LED stays
    ``solid``)."""

    show_dispatch: bool = True


class GatewayConfig(Section):
    """The whole gateway config file. ``path``: the file it came from (not a TOML key)."""

    gateway: GatewaySection
    location: LocationSection
    mqtt: MqttSection
    button: list[ButtonSection] = Field(default_factory=list)
    serial: list[SerialSection] = Field(default_factory=list)
    heartbeat: HeartbeatSection = Field(default_factory=HeartbeatSection)
    http: HttpSection = Field(default_factory=HttpSection)
    alarm: AlarmSection = Field(default_factory=AlarmSection)
    outbox: OutboxSection = Field(default_factory=OutboxSection)
    mqtt_secondary: SecondaryMqttSection | None = None
    bollard: BollardSection | None = None
    camera: CameraSection | None = None
    selfcheck: SelfCheckSection = Field(default_factory=SelfCheckSection)
    trouble: TroubleSection = Field(default_factory=TroubleSection)
    dc09: Dc09Section | None = None
    feedback: FeedbackSection = Field(default_factory=FeedbackSection)
    path: Path

    @field_validator("mqtt")
    @classmethod
    def _needs_center_keys(cls, value: MqttSection) -> MqttSection:
        raise_if(_center_keys_problems(given(value)))
        return value

    @model_validator(mode="after")
    def _check_unique(self) -> GatewayConfig:
        raise_if(_unique_problems(self.model_dump(include={"button", "serial", "bollard"})))
        return self


def _center_keys_problems(d: Mapping[str, Any]) -> Problems:
    # PROTOCOL.md "ack": the gateway ignores acks it cannot verify, so without a
    # trusted center key no alarm could ever be acknowledged.
    if d.get("center_keys") in (None, []):
        return [(("center_keys",), "at least one center public key is required")]
    return []


def _unique_problems(data: Mapping[str, Any]) -> Problems:
    """Input names and GPIO pins are unique across sections (raw TOML or a model dump)."""
    names: list[tuple[Loc, object]] = [
        ((section, i, "name"), e["name"])
        for section in ("button", "serial")
        for i, e in entries(data.get(section))
        if scalar(e.get("name"), str)
    ]
    pins: list[tuple[Loc, object]] = [
        (("button", i, key), e[key])
        for i, e in entries(data.get("button"))
        for key in ("pin", "led_pin")
        if scalar(e.get(key), int)
    ]
    bollard = data.get("bollard")
    if isinstance(bollard, Mapping):
        keys = ("up_pin", "down_pin", "fault_pin")
        pins += [(("bollard", k), bollard[k]) for k in keys if scalar(bollard.get(k), int)]
    return duplicates(names, "name") + duplicates(pins, "GPIO pin")


# --- loading and error reporting -------------------------------------------------------


def load_config(path: str | Path, *, check_files: bool = True) -> GatewayConfig:
    """Read and validate a gateway config. ``check_files``: referenced key files must exist
    (off for tools that only look at the settings)."""
    return load_model(Path(path), GatewayConfig, check_files=check_files, raw=_raw_problems)


def _raw_problems(data: Mapping[str, Any]) -> Problems:
    """The cross-key checks again, on the raw TOML: pydantic skips a model's own checks when
    one of its fields failed, but a technician should see every problem in one run."""
    checks: dict[str, typing.Callable[[Mapping[str, Any]], Problems]] = {
        "mqtt": lambda d: transport_problems(d) + _center_keys_problems(d),
        "alarm": _backoff_problems,
        "bollard": _bollard_problems,
    }
    found: Problems = _unique_problems(data)
    for key, check in checks.items():
        section = data.get(key)
        if isinstance(section, Mapping):
            found += [((key, *loc), msg) for loc, msg in check(section)]
    return found
