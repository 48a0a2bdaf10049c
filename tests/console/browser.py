"""Headless Chromium for the console's browser tests: Debian's chromium and chromedriver,
driven by selenium (selenium-manager never runs: the driver's path is given)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM = Path("/usr/bin/chromium")


def chrome(width: int = 1280, height: int = 860) -> Any:
    if not CHROMEDRIVER.exists() or not CHROMIUM.exists():
        pytest.skip(
            "chromium and chromium-driver are not installed (scripts/ensure-system-deps.sh)"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--autoplay-policy=no-user-gesture-required",
        f"--window-size={width},{height}",
        "--lang=zh-CN",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=opts)


def severe(driver: Any) -> list[dict[str, Any]]:
    """The browser console's errors since the last call."""
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def add_user(config: Path, name: str, role: str, password: str) -> None:
    exe = shutil.which("alarmgw", path=str(Path(__file__).resolve().parents[2] / ".venv/bin"))
    argv = [
        exe or "alarmgw",
        "center",
        "user",
        "add",
        name,
        "--role",
        role,
        "--config",
        str(config),
    ]
    done = subprocess.run(argv, input=password + "\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
