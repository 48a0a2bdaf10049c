"""``alarmgw center user|token`` on a real config and store, and the console's catalog."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest

from center.config import load_center_config
from center.console.auth import verify_password
from center.console.cli import main
from center.console.i18n import LANGS, LOCALE_DIR, translations
from center.run import open_config_store
from gateway.contract.signing import write_keypair

TEMPLATES = Path(__file__).parents[2] / "center" / "console" / "templates"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    write_keypair(tmp_path / "keys", "center")
    path = tmp_path / "center.toml"
    path.write_text('[center]\nkey_file = "keys/center.key"\nstate_dir = "state"\n')
    return path


def run(monkeypatch: pytest.MonkeyPatch, config: Path, *argv: str, stdin: str = "") -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main([*argv, "--config", str(config)])


def test_user_add_passwd_disable_and_token(
    monkeypatch: pytest.MonkeyPatch, config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        run(
            monkeypatch,
            config,
            "user",
            "add",
            "li",
            "--role",
            "dispatcher",
            stdin="first password\n",
        )
        == 0
    )
    assert (
        run(monkeypatch, config, "user", "add", "li", "--role", "viewer", stdin="other password\n")
        == 1
    )
    assert "exists" in capsys.readouterr().err
    assert run(monkeypatch, config, "user", "add", "x", "--role", "viewer", stdin="short\n") == 1
    assert "at least 8" in capsys.readouterr().err
    assert run(monkeypatch, config, "user", "passwd", "li", stdin="second password\n") == 0
    assert run(monkeypatch, config, "user", "disable", "li") == 0
    assert run(monkeypatch, config, "user", "disable", "nobody") == 1
    assert run(monkeypatch, config, "token", "add", "cad", "--role", "viewer") == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert token.startswith("agw_")
    store = open_config_store(load_center_config(config))
    try:
        user = store.console_user("li")  # type: ignore[attr-defined]
        assert user["disabled"] == 1 and verify_password("second password", user["pw_hash"])
        actions = [e["action"] for e in store.audit_log()]  # type: ignore[attr-defined]
        assert {"user-add", "user-passwd", "user-disable", "token-add"} <= set(actions)
    finally:
        store.close()


def test_every_template_string_is_in_both_catalogs() -> None:
    used = set()
    for page in TEMPLATES.glob("*.html"):
        used |= set(re.findall(r"""_\(["']([^"']+)["']\)""", page.read_text()))
    assert used
    for lang in LANGS:
        po = (LOCALE_DIR / lang / "LC_MESSAGES" / "console.po").read_text()
        missing = [m for m in used if f'msgid "{m}"' not in po]
        assert not missing, (lang, missing)
    zh = translations("zh_Hans")
    untranslated = [m for m in used if zh.gettext(m) == m and m != "English"]
    assert not untranslated
