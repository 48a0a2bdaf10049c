"""The console in a real browser (headless Chromium) against a real center, gateway daemon,
Mosquitto and a simulated button box on a pty: sign in, a press appears on the board without
a reload and sounds the alert, acknowledge (the center publishes the signed dispatch),
resolve, history and audit, the fleet board going stale and back, the language switch,
CSRF, and a browser console without errors. Screenshots go to docs/img/."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from firmware_sim.box import BoxSimulator
from firmware_sim.broker import free_port
from tests.console.browser import add_user, chrome, severe
from tests.harness import GW, SITE, Site, is_event

pytestmark = pytest.mark.slow

# Screenshots: into docs/img/ with CONSOLE_SCREENSHOTS=1 (needs a CJK font such as Debian's
# fonts-wqy-zenhei), else into the test's temp dir.
DOCS_IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
PASSWORD = "correct horse battery"
CJK = re.compile(r"[\u4e00-\u9fff]")


async def until(fn: Callable[[], Any], timeout: float = 20.0, what: str = "") -> Any:
    """Poll ``fn`` (selenium calls, run in a thread so the box keeps talking) until truthy."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await asyncio.to_thread(fn)
        except Exception as err:  # a page mid-swap: not yet
            last = err
        else:
            if last:
                return last
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what or fn} (last: {last!r})")


def console_config(site: Site, port: int) -> None:
    text = site.center_toml.read_text()
    text = text.replace(
        "heartbeat_s =",
        'school = "Futian No. 1 School"\naddress = "Xiangmihu Road 1, Futian, Shenzhen"\n'
        'lat = 22.5431\nlon = 114.0287\nphone = "+86-755-0000-0000"\ncontact = "Ms Zhou"\n'
        "heartbeat_s =",
    )
    site.center_toml.write_text(text + f'\n[console]\nlisten = "127.0.0.1:{port}"\n')


async def test_console_in_chromium(site: Site, tmp_path: Path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    site.heartbeat_s = 2.0  # stale after 5 s without one
    async with BoxSimulator(box_id="box-gate-main") as box:
        site.boxes = [{"name": "box-gate-main", "port": box.path, "heartbeat_s": 2.0}]
        site.write_configs()
        console_config(site, port)
        await asyncio.to_thread(add_user, site.center_toml, "li", "dispatcher", PASSWORD)
        center = site.start_center()
        center.wait_for(lambda e: e.get("event") == "console listening", stderr=True)
        gateway = site.start_gateway()
        await box.wait_linked(30)
        driver = await asyncio.to_thread(chrome)
        try:
            img = DOCS_IMG if os.environ.get("CONSOLE_SCREENSHOTS") == "1" else tmp_path
            await run_scenario(driver, base, box, center, gateway, img)
        finally:
            await asyncio.to_thread(driver.quit)


async def run_scenario(
    driver: Any, base: str, box: BoxSimulator, center: Any, gateway: Any, img: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    def find(css: str) -> Any:
        return driver.find_element(By.CSS_SELECTOR, css)

    # sign in
    await asyncio.to_thread(driver.get, base + "/")
    assert driver.current_url.endswith("/login")
    find("#name").send_keys("li")
    find("#password").send_keys(PASSWORD)
    await asyncio.to_thread(find("#signin").click)
    await until(lambda: driver.find_elements(By.ID, "board-body"), what="the board")
    assert "警情看板" in driver.title or "报警处置台" in driver.title
    driver.execute_script("window.__sameDocument = true;")

    # a press appears without a reload, and the alert sounds
    seq = box.press()
    await box.wait_ack(seq, 30)
    accepted = await asyncio.to_thread(center.wait_for, lambda e: is_event("accepted")(e), 30.0)
    event_id = accepted["id"]
    heard = time.monotonic()
    await until(
        lambda: driver.find_elements(By.CSS_SELECTOR, f'tr.alarm[data-id="{event_id}"]'),
        what="the alarm on the board",
    )
    shown_s = time.monotonic() - heard
    assert driver.execute_script("return window.__sameDocument === true;"), "the page reloaded"
    await until(
        lambda: driver.execute_script("return window.alarmgwConsole.played;") >= 1,
        what="the alert sound played",
    )
    print(f"press visible on the board {shown_s:.2f} s after the center accepted it")
    img.mkdir(parents=True, exist_ok=True)
    driver.save_screenshot(str(img / "console-board.png"))

    # CSRF: a POST without the token is refused
    status = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch('/alarms/{event_id}/ack', {{method: 'POST', credentials: 'same-origin'}})"
        ".then(r => done(r.status));"
    )
    assert status == 403
    refused = severe(driver)  # the browser logs that refusal; nothing else so far
    assert all("403" in e["message"] for e in refused), refused

    # detail, acknowledge: the center publishes the signed dispatch
    await asyncio.to_thread(driver.get, f"{base}/alarms/{event_id}")
    assert find("#tel").get_attribute("href").startswith("tel:")
    assert "openstreetmap" in find("#map").get_attribute("href")
    driver.save_screenshot(str(img / "console-alarm.png"))
    await asyncio.to_thread(find("#ack").click)
    await until(lambda: "li" in find("#audit").text, what="the acknowledgement in the audit")
    sent = await asyncio.to_thread(
        lambda: center.wait_for(
            lambda e: e.get("event") == "dispatch sent" and event_id in str(e.get("body")),
            30.0,
            stderr=True,
        )
    )
    assert "acknowledged" in str(sent["body"])

    # resolve with an outcome: off the board, in the history and the audit log
    Select(find("#outcome")).select_by_value("false")
    find("#note").send_keys("pressed by a pupil")
    await asyncio.to_thread(find("#resolve").click)
    await until(lambda: "pressed by a pupil" in find("#audit").text, what="the resolution")
    await asyncio.to_thread(driver.get, base + "/")
    assert not driver.find_elements(By.CSS_SELECTOR, f'tr.alarm[data-id="{event_id}"]')
    await asyncio.to_thread(driver.get, base + "/history?outcome=false")
    assert driver.find_elements(By.CSS_SELECTOR, f'tr[data-id="{event_id}"]')
    await asyncio.to_thread(driver.get, base + "/audit")
    assert "pressed by a pupil" in find("main").text

    # the fleet board: stale when the gateway stops heartbeating, and back
    await asyncio.to_thread(driver.get, base + "/fleet")
    row = f'tr.gw[data-gw="{SITE}/{GW}"]'
    await until(lambda: "status-online" in find(row).get_attribute("class"), what="online")
    driver.execute_script("window.__sameDocument = true;")
    driver.save_screenshot(str(img / "console-fleet.png"))
    os.kill(gateway.proc.pid, signal.SIGSTOP)
    try:
        await until(
            lambda: "status-online" not in find(row).get_attribute("class"), 40, what="stale"
        )
        assert re.search(r"status-(stale|offline)", find(row).get_attribute("class"))
    finally:
        os.kill(gateway.proc.pid, signal.SIGCONT)
    await until(lambda: "status-online" in find(row).get_attribute("class"), 60, what="back")
    assert driver.execute_script("return window.__sameDocument === true;")

    # the language switch changes every visible string
    await asyncio.to_thread(driver.get, base + "/fleet")
    zh = find("body").text
    assert CJK.search(zh)
    await asyncio.to_thread(find("#lang-switch").click)
    await until(lambda: "Fleet" in find("body").text, what="English")
    for path in ("/", "/fleet", "/history", "/audit", f"/alarms/{event_id}"):
        await asyncio.to_thread(driver.get, base + path)
        english = find("body").text.replace("中文", "")
        assert not CJK.search(english), (path, CJK.findall(english)[:10])

    errors = severe(driver)
    assert not errors, errors

    # Acknowledging sent the signed dispatch: the box's LED pulsed (and went off on resolve).
    await box.wait_led("pulse", 30)
    await box.wait_led("off", 30)
