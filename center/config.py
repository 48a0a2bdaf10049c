"""The command center's config file (OPERATOR.md "Command-center config"): its
signing key and state, the brokers it listens on, and the registry of gateways it accepts.

Loaded the same way as the gateway's config (``gateway.config.load_model``): every problem is
reported at once as ``FILE:LINE: key: what is wrong``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from gateway.config import MqttSection, transport_problems
from gateway.configerrors import Problems, scalar
from gateway.configtypes import (
    DirPath,
    FilePath,
    Identity,
    NonEmpty,
    Section,
    duplicates,
    entries,
    load_model,
    raise_if,
    split_host_port,
)


class CenterMqttSection(MqttSection):
    """``[mqtt]`` of the command center: the gateway's keys minus ``center_keys``."""

    # Several center instances with the same group share the work (MQTT 5 shared
    # subscription ``$share/<group>/...``).
    share_group: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    # OPERATOR.md's example lists ``store``/``dsn`` after ``[mqtt]``'s keys; accepted here too.
    store: Literal["sqlite", "postgresql"] | None = None
    dsn: NonEmpty | None = None

    @field_validator("center_keys")
    @classmethod
    def _no_center_keys(cls, value: list[Path]) -> list[Path]:
        raise ValueError("a gateway setting; the center signs acks with [center] key_file")


class CenterSection(Section):
    """``[center]``: the center's signing key, its own state (seq counter, the SQLite store)
    and where it keeps alarms: ``store = "sqlite"`` (in ``state_dir``) or ``"postgresql"``
    with ``dsn`` (several instances may share one)."""

    key_file: FilePath
    state_dir: DirPath
    store: Literal["sqlite", "postgresql"] | None = None
    dsn: NonEmpty | None = None


class RegistryEntry(Section):
    """``[[gateways]]``: which public keys may sign for which gateway."""

    id: Identity
    site: Identity
    public_keys: Annotated[list[FilePath], Field(min_length=1)]
    heartbeat_s: Annotated[float, Field(ge=1.0)] = 30.0
    # The center's own site data, shown beside each alarm's (OPERATOR.md).
    school: NonEmpty | None = None
    address: NonEmpty | None = None
    lat: Annotated[float, Field(ge=-90.0, le=90.0)] | None = None
    lon: Annotated[float, Field(ge=-180.0, le=180.0)] | None = None
    phone: NonEmpty | None = None
    contact: NonEmpty | None = None


def _listen(value: str) -> str:
    split_host_port(value)
    return value


class HealthSection(Section):
    """``[health]``: the center's own /healthz and /metrics (loopback by default)."""

    listen: Annotated[str, AfterValidator(_listen)] = "127.0.0.1:8789"
    enabled: bool = True


class ConsoleSection(Section):
    """``[console]``: the dispatchers' web console and its JSON API (loopback by default;
    ``tls_cert``/``tls_key`` serve HTTPS and mark the session cookie Secure)."""

    listen: Annotated[str, AfterValidator(_listen)] = "127.0.0.1:8788"
    tls_cert: FilePath | None = None
    tls_key: FilePath | None = None
    session_idle_s: Annotated[float, Field(ge=60.0)] = 8 * 3600.0


class CenterConfig(Section):
    """The whole command-center config file."""

    center: CenterSection
    mqtt: CenterMqttSection = Field(default_factory=CenterMqttSection)
    mqtt_secondary: CenterMqttSection | None = None  # also listen (and ack) on a 2nd broker
    gateways: list[RegistryEntry] = Field(default_factory=list)
    health: HealthSection = Field(default_factory=HealthSection)
    console: ConsoleSection | None = None  # present: the running service serves it
    path: Path

    @property
    def store(self) -> str:
        return self.center.store or self.mqtt.store or "sqlite"

    @property
    def dsn(self) -> str | None:
        return self.center.dsn or self.mqtt.dsn

    @model_validator(mode="after")
    def _unique_gateways(self) -> CenterConfig:
        raise_if(_registry_problems([dict(g) for g in self.gateways]))
        if self.store == "postgresql" and not self.dsn:
            raise ValueError('store = "postgresql" needs dsn = "postgresql://..." in [center]')
        return self


def _registry_problems(gateways: object) -> Problems:
    pairs = [
        (("gateways", i, "id"), (e.get("site"), e.get("id")))
        for i, e in entries(gateways)
        if scalar(e.get("site"), str) and scalar(e.get("id"), str)
    ]
    return duplicates(pairs, "gateway (site, id)")


def _raw_problems(data: Mapping[str, Any]) -> Problems:
    found = _registry_problems(data.get("gateways"))
    mqtt = data.get("mqtt")
    if isinstance(mqtt, Mapping):
        found += [(("mqtt", *loc), msg) for loc, msg in transport_problems(mqtt)]
    return found


def load_center_config(path: str | Path, *, check_files: bool = True) -> CenterConfig:
    """Read and validate a command-center config."""
    return load_model(Path(path), CenterConfig, check_files=check_files, raw=_raw_problems)
