"""``alarmgw center ...`` is wired into the gateway's CLI without the daemon importing the
center: its modules load only when a center command runs."""

from __future__ import annotations

import subprocess
import sys


def test_the_daemon_and_the_cli_parser_import_no_center_module() -> None:
    code = (
        "import sys\n"
        "from gateway import cli\n"
        "cli.build_parser()\n"
        "import gateway.daemon\n"
        "print([m for m in sys.modules if m.split('.')[0] in ('center', 'firmware_sim')])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_center_actions_parse_with_config_before_or_after() -> None:
    from gateway.cli import build_parser

    parser = build_parser()
    before = parser.parse_args(["center", "--config", "c.toml", "ack", "ID", "--by", "x"])
    after = parser.parse_args(["center", "ack", "ID", "--by", "x", "--config", "c.toml"])
    run = parser.parse_args(["center", "--config", "c.toml", "--json"])
    assert (before.config, before.action) == ("c.toml", ["ack", "ID", "--by", "x"])
    assert after.action == ["ack", "ID", "--by", "x", "--config", "c.toml"]
    assert (run.config, run.json, run.action) == ("c.toml", True, [])
