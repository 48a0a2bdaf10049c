"""Shared fixtures: a real Mosquitto on a free loopback port, and a throwaway site."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from firmware_sim.broker import Mosquitto
from tests.harness import Site

os.environ.setdefault("GPIOZERO_PIN_FACTORY", "mock")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    with Mosquitto(tmp_path / "broker") as b:
        yield b


@pytest.fixture
def site(tmp_path: Path, broker: Mosquitto) -> Iterator[Site]:
    s = Site(root=tmp_path, broker=broker)
    try:
        yield s
    finally:
        s.close()
