"""Config loading: the examples load; every problem names file, line and key."""

from __future__ import annotations

import re
import textwrap
import typing
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from center.config import CenterConfig, load_center_config
from gateway.config import (
    ButtonSection,
    GatewayConfig,
    HttpSection,
    MqttSection,
    load_config,
)
from gateway.errors import ConfigError

EXAMPLES = Path(__file__).resolve().parent.parent / "config"

MINIMAL = """\
[gateway]
site = "sz-futian-xmh-014"
id = "gw-014-a"
key_file = "gw.key"
state_dir = "state"

[location]
name = "South gate guardhouse"
address = "Xiangmihu Road 1"
lat = 22.5431
lon = 114.0287
phone = "+86-755-0000-0000"

[mqtt]
center_keys = ["center.pub"]
"""


def write(tmp_path: Path, text: str, name: str = "gw.toml") -> Path:
    """Write a config and the key files it names (relative to tmp_path)."""
    for key in ("gw.key", "center.pub", "gw2.pub", "ca.pem"):
        (tmp_path / key).write_text("key\n")
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.path == str(path)
    return caught.value.problems


def line_of(path: Path, needle: str, nth: int = 1) -> int:
    """1-based line of the nth line containing needle."""
    hits = [i for i, line in enumerate(path.read_text().splitlines(), 1) if needle in line]
    return hits[nth - 1]


# What a technician fills in for the examples' placeholders (gateway/placeholders.py).
FILLED = {
    "replace-me-site": "sz-futian-xmh-014",
    "replace-me-gw": "gw-014-a",
    "REPLACE-ME guardhouse name": "South gate guardhouse",
    "REPLACE-ME street address": "Xiangmihu Road 1, Futian, Shenzhen",
    "REPLACE-ME phone": "+86-755-0000-0000",
    "lat = 0.0 ": "lat = 22.5431 ",
    "lon = 0.0 ": "lon = 114.0287 ",
}
DOCUMENTATION_ADDRESS = re.compile(r"\b(?:192\.0\.2|198\.51\.100|203\.0\.113)\.\d{1,3}\b")


def example_in(tmp_path: Path, name: str, *, uncomment: bool = False, fill: bool = True) -> Path:
    """Copy an example, pointing its /etc and /var paths into tmp_path and creating the key
    files. ``uncomment`` enables the optional ``#key = value`` settings too; ``fill``
    replaces its placeholders with a real-looking school's values."""
    text = (EXAMPLES / name).read_text()
    if fill:
        for placeholder, value in FILLED.items():
            text = text.replace(placeholder, value)
        text = DOCUMENTATION_ADDRESS.sub("127.0.0.1", text)  # e.g. the broker, 198.51.100.10
    if uncomment:
        text = re.sub(r"(?m)^#(?=\[|[a-z_]+ +=)", "", text)
    text = text.replace("/etc/alarmgw/", f"{tmp_path}/etc/").replace("/var/lib/", f"{tmp_path}/")
    for match in re.finditer(rf'"({re.escape(str(tmp_path))}/etc/[^"]+)"', text):
        key = Path(match[1])
        key.parent.mkdir(parents=True, exist_ok=True)
        key.write_text("key\n")
    path = tmp_path / name
    path.write_text(text)
    return path


# --- the examples -----------------------------------------------------------------------


def test_gateway_example_loads(tmp_path: Path) -> None:
    cfg = load_config(example_in(tmp_path, "gateway.example.toml"))
    assert (cfg.gateway.site, cfg.gateway.id) == ("sz-futian-xmh-014", "gw-014-a")
    assert cfg.gateway.key_file == tmp_path / "etc" / "gateway.key"
    assert cfg.mqtt.center_keys == [tmp_path / "etc" / "center.pub"]
    assert cfg.mqtt.protocol == "5"
    assert [(b.name, b.pin, b.led_pin, b.hold_s) for b in cfg.button] == [
        ("gate-main", 17, 27, 0.0)
    ]
    assert cfg.serial[0].port == "/dev/ttyAMA0"
    assert cfg.heartbeat.interval_s == 30
    assert (cfg.http.host, cfg.http.port) == ("127.0.0.1", 8787)
    assert cfg.alarm.ack_timeout_s == 15.0
    assert cfg.bollard is None and cfg.camera is None
    assert cfg.path == tmp_path / "gateway.example.toml"


def test_gateway_example_with_every_optional_key_loads(tmp_path: Path) -> None:
    cfg = load_config(example_in(tmp_path, "gateway.example.toml", uncomment=True))
    assert cfg.bollard is not None and cfg.camera is not None
    assert (cfg.bollard.up_pin, cfg.bollard.down_pin, cfg.bollard.fault_pin) == (5, 6, 13)
    assert cfg.camera.required_days == 30
    assert cfg.mqtt.ca_file == tmp_path / "etc" / "ca.pem"
    assert cfg.mqtt.username == "gw-014-a"


def test_example_documents_every_key() -> None:
    text = (EXAMPLES / "gateway.example.toml").read_text()
    keys = set(re.findall(r"(?m)^#?([a-z0-9_]+) +=", text))
    tables = set(re.findall(r"(?m)^#?\[\[?([a-z0-9_]+)\]", text))
    assert tables == set(GatewayConfig.model_fields) - {"path"}
    for name in tables:
        section = _section_model(name)
        missing = set(section.model_fields) - keys
        assert not missing, f"[{name}] lacks {missing}"
    for line in text.splitlines():
        if re.match(r"^#?[a-z0-9_]+ +=", line):
            assert "#" in line.lstrip("#"), f"no comment: {line}"


def _section_model(name: str) -> type[BaseModel]:
    annotation = GatewayConfig.model_fields[name].annotation
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    raise AssertionError(name)


@pytest.mark.parametrize("name", ["gateway.example.toml", "center.example.toml"])
def test_examples_refuse_their_placeholders(tmp_path: Path, name: str) -> None:
    path = example_in(tmp_path, name, fill=False)
    loader = load_center_config if name.startswith("center") else load_config
    with pytest.raises(ConfigError) as caught:
        loader(path)
    found = caught.value.problems
    gateway = ["gateway.site", "gateway.id", "location.name", "location.address"]
    gateway += ["location.lat", "location.phone", "mqtt.host"]
    center = ["gateways[0].id", "gateways[0].site", "gateways[0].public_keys[0]"]
    expected = gateway if name.startswith("gateway") else center
    assert [p.split(": ")[1] for p in found] == expected
    assert all("replace this" in p for p in found)
    for problem in found:  # each on the line of its key, once
        line = int(problem.split(":")[1])
        key = problem.split(": ")[1].split(".")[-1].split("[")[0]
        assert path.read_text().splitlines()[line - 1].startswith(key)


def test_placeholders_are_found_wherever_they_are(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL.replace('phone = "+86-755-0000-0000"', 'phone = "replace-me"')
        + '\n[bollard]\nstatus_url = "http://[2001:db8::7]:8080/status"\n'
        + '\n[camera]\nurl = "http://203.0.113.5/status"\n',
    )
    assert [p.split(": ", 1)[1] for p in problems(path)] == [
        "location.phone: placeholder 'replace-me': replace this with the real value",
        "bollard.status_url: 2001:db8::7 is a documentation address (a placeholder): replace this",
        "camera.url: 203.0.113.5 is a documentation address (a placeholder): replace this",
    ]


def test_center_example_loads(tmp_path: Path) -> None:
    cfg = load_center_config(example_in(tmp_path, "center.example.toml", uncomment=True))
    assert isinstance(cfg, CenterConfig)
    assert cfg.center.key_file == tmp_path / "etc" / "center.key"
    assert [(g.site, g.id) for g in cfg.gateways] == [("sz-futian-xmh-014", "gw-014-a")]
    assert cfg.gateways[0].public_keys == [tmp_path / "etc" / "keys" / "gw-014-a.pub"]
    assert isinstance(cfg.mqtt, MqttSection)
    assert cfg.mqtt.center_keys == []


# --- each kind of problem names file, line and key --------------------------------------


def test_wrong_type_in_second_button_reports_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL
        + """
[[button]]
name = "gate-main"
pin = 17

[[button]]
name = "gate-side"
pin = "seventeen"
""",
    )
    (problem,) = problems(path)
    line = line_of(path, 'pin = "seventeen"')
    assert problem.startswith(f"{path}:{line}: button[1].pin: ")
    assert "integer" in problem
    assert "'seventeen'" in problem


def test_unknown_key_is_an_error_with_a_suggestion(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + '\n[[button]]\nname = "a"\npin = 4\nhold = 2.0\n')
    assert problems(path) == [
        f"{path}:{line_of(path, 'hold =')}: button[0].hold: unknown key (did you mean 'hold_s'?)"
    ]


def test_unknown_table_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[heartbeats]\ninterval_s = 5\n")
    assert problems(path) == [
        f"{path}:{line_of(path, '[heartbeats]')}: heartbeats: unknown key "
        "(did you mean 'heartbeat'?)"
    ]


def test_missing_required_key_points_at_its_table(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('phone = "+86-755-0000-0000"\n', ""))
    assert problems(path) == [
        f"{path}:{line_of(path, '[location]')}: location.phone: missing required key"
    ]


def test_missing_required_table_points_at_line_1(tmp_path: Path) -> None:
    text = MINIMAL.split("[location]")[0] + '[mqtt]\ncenter_keys = ["center.pub"]\n'
    path = write(tmp_path, text)
    assert problems(path) == [f"{path}:1: location: missing required table [location]"]


def test_toml_syntax_error_reports_tomllib_line(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL + "\n[http]\nlisten = 127.0.0.1:8787\n")
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:{line_of(path, 'listen =')}: TOML syntax error: ")


def test_every_problem_is_reported_in_line_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL.replace('site = "sz-futian-xmh-014"', 'site = "SZ Futian"')
        .replace("lat = 22.5431", "lat = 91.0")
        .replace("[mqtt]\n", '[mqtt]\nhost = "10.1.2.3"\nprefix = "schoolalarm/#"\n')
        + """
[[button]]
name = "gate-main"
pin = 17
led_pin = 17

[[serial]]
name = "gate-main"
port = "/dev/ttyAMA0"
baud = 9601
""",
    )
    found = problems(path)
    expected = [
        (line_of(path, "site ="), "gateway.site:"),
        (line_of(path, "lat ="), "location.lat:"),
        (line_of(path, "host ="), "mqtt.host: plain TCP to non-loopback host '10.1.2.3'"),
        (line_of(path, "prefix ="), "mqtt.prefix: must be non-empty, without MQTT wildcards"),
        (line_of(path, "led_pin ="), "button[0].led_pin: GPIO pin 17 is already used by"),
        (line_of(path, 'name = "gate-main"', 2), "serial[0].name: name 'gate-main' is already"),
        (line_of(path, "baud ="), "serial[0].baud: 9601 is not a standard rate"),
    ]
    assert len(found) == len(expected), found
    for problem, (line, start) in zip(found, expected, strict=True):
        assert problem.startswith(f"{path}:{line}: {start}"), problem


def test_plaintext_to_a_remote_broker_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("[mqtt]\n", '[mqtt]\nhost = "broker.example"\n'))
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:{line_of(path, 'host =')}: mqtt.host: plain TCP")
    assert "allow_plaintext" in problem
    # With tls written down, the problem points at it.
    path.write_text(path.read_text().replace("[mqtt]\n", "[mqtt]\ntls = false\n"))
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:{line_of(path, 'tls =')}: mqtt.tls: plain TCP")


@pytest.mark.parametrize(
    "extra",
    [
        'host = "broker.example"\nallow_plaintext = true\n',
        'host = "broker.example"\ntls = true\nca_file = "ca.pem"\nport = 8883\n',
        'host = "localhost"\n',
        'host = "127.0.0.53"\n',
        'host = "::1"\n',
    ],
)
def test_plaintext_allowed_on_loopback_or_when_told(tmp_path: Path, extra: str) -> None:
    load_config(write(tmp_path, MINIMAL.replace("[mqtt]\n", "[mqtt]\n" + extra)))


def test_tls_rules(tmp_path: Path) -> None:
    extra = 'tls = true\ncert_file = "ca.pem"\npassword = "x"\n'
    path = write(tmp_path, MINIMAL.replace("[mqtt]\n", "[mqtt]\n" + extra))
    found = problems(path)
    assert [p.split(": ")[1] for p in found] == ["mqtt.ca_file", "mqtt.key_file", "mqtt.username"]


def test_gateway_needs_a_center_key(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace('center_keys = ["center.pub"]', "center_keys = []"))
    assert problems(path) == [
        f"{path}:{line_of(path, 'center_keys')}: mqtt.center_keys: "
        "at least one center public key is required"
    ]


def test_missing_key_file_names_the_array_item_line(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        'center_keys = ["center.pub"]', 'center_keys = [\n  "center.pub",\n  "old.pub",\n]'
    )
    path = write(tmp_path, text)
    assert problems(path) == [
        f"{path}:{line_of(path, 'old.pub')}: mqtt.center_keys[1]: "
        f"file not found: {tmp_path / 'old.pub'}"
    ]


def test_inline_tables_and_dotted_keys_are_located(tmp_path: Path) -> None:
    text = MINIMAL.replace("[location]", "[location]\nextra.deep = 1") + (
        '\nbollard = { up_pin = 5, down_pin = "six" }\n'
    )
    # A top-level key after a table belongs to that table in TOML; put it first instead.
    text = 'bollard = { up_pin = 5, down_pin = "six" }\n' + text.split("\nbollard =")[0]
    path = write(tmp_path, text)
    found = problems(path)
    assert f"{path}:1: bollard.down_pin: Input should be a valid integer (got 'six')" in found
    assert any(
        p.startswith(f"{path}:{line_of(path, 'extra.deep')}: location.extra:") for p in found
    )


def test_relative_paths_resolve_against_the_config_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    path = write(conf, MINIMAL)
    monkeypatch.chdir(tmp_path)  # not the config's directory
    cfg = load_config(Path("conf") / "gw.toml")
    assert cfg.gateway.key_file == conf / "gw.key"
    assert cfg.gateway.state_dir == conf / "state"
    assert cfg.mqtt.center_keys == [conf / "center.pub"]
    assert cfg.path == path


def test_check_files_can_be_skipped(tmp_path: Path) -> None:
    path = tmp_path / "gw.toml"
    path.write_text(MINIMAL)
    assert len(problems(path)) == 2  # gw.key and center.pub do not exist
    assert load_config(path, check_files=False).gateway.key_file == tmp_path / "gw.key"


def test_state_dir_must_not_be_a_file(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL)
    (tmp_path / "state").write_text("")
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:{line_of(path, 'state_dir')}: gateway.state_dir: not a")


def test_path_is_not_a_setting(tmp_path: Path) -> None:
    path = write(tmp_path, 'path = "elsewhere.toml"\n' + MINIMAL)
    assert problems(path) == [f"{path}:1: path: unknown key"]


def test_unreadable_file_is_one_clear_line(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(missing)
    assert caught.value.problems == [f"{missing}: cannot read config: No such file or directory"]
    assert str(caught.value) == caught.value.problems[0]


@pytest.mark.parametrize(
    ("snippet", "key", "message"),
    [
        ('\n[[button]]\nname = "Gate Main"\npin = 4\n', "button[0].name", "pattern"),
        ('\n[[button]]\nname = "a"\npin = 54\n', "button[0].pin", "less than or equal to 53"),
        ('\n[[button]]\nname = "a"\npin = 4\nhold_s = 31\n', "button[0].hold_s", "30"),
        ('\n[[button]]\nname = "a"\npin = 4\ncode = 120\n', "button[0].code", "'120'"),
        ('\n[[button]]\nname = "a"\npin = true\n', "button[0].pin", "integer"),
        ("\n[heartbeat]\ninterval_s = 0.5\n", "heartbeat.interval_s", ">= 1|greater than"),
        ('\n[http]\nlisten = "8787"\n', "http.listen", "host:port"),
        ('\n[http]\nlisten = "::1:8787"\n', "http.listen", "brackets"),
        ("\n[alarm]\nresend_initial_s = 9.0\nresend_max_s = 3.0\n", "alarm.resend_max_s", ">="),
        ("\n[bollard]\nup_pin = 5\n", "bollard.down_pin", "go together"),
        ("\n[bollard]\npoll_s = 5\n", "bollard", "status_url"),
        ('\n[bollard]\nstatus_url = "ftp://x"\n', "bollard.status_url", "http"),
        ("\n[camera]\nrequired_days = 30\n", "camera.url", "missing required key"),
        ('\n[camera]\nurl = "http://nvr/status"\nadapter = "xyz"\n', "camera.adapter", "'json'"),
        (
            '\n[camera]\nurl = "http://nvr/onvif/device_service"\nadapter = "onvif"\n'
            'username = "admin"\n',
            "camera.password_file",
            "onvif adapter needs a password_file",
        ),
        (
            '\n[camera]\nurl = "http://nvr"\nadapter = "hikvision"\npassword_file = "nvr.pw"\n',
            "camera.password_file",
            "file not found",
        ),
        ('\n[[serial]]\nname = "box"\nport = ""\n', "serial[0].port", "at least 1"),
    ],
)
def test_value_rules(tmp_path: Path, snippet: str, key: str, message: str) -> None:
    path = write(tmp_path, MINIMAL + snippet)
    found = problems(path)
    assert len(found) == 1, found
    assert found[0].split(": ")[1] == key
    assert re.search(message, found[0]), found[0]


def test_lat_lon_must_be_finite(tmp_path: Path) -> None:
    path = write(tmp_path, MINIMAL.replace("lon = 114.0287", "lon = nan"))
    (problem,) = problems(path)
    assert problem.startswith(f"{path}:{line_of(path, 'lon =')}: location.lon: ")
    assert "finite" in problem


def test_pins_unique_across_buttons_leds_and_bollard(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        MINIMAL + '\n[[button]]\nname = "a"\npin = 5\nled_pin = 6\n\n[bollard]\nup_pin = 6\n'
        "down_pin = 7\n",
    )
    assert problems(path) == [
        f"{path}:{line_of(path, 'up_pin')}: bollard.up_pin: GPIO pin 6 is already used by "
        "button[0].led_pin"
    ]


# --- the center config ------------------------------------------------------------------

CENTER = """\
[center]
key_file = "gw.key"
state_dir = "center-state"

[mqtt]
host = "127.0.0.1"

[[gateways]]
id = "gw-014-a"
site = "sz-futian-xmh-014"
public_keys = ["gw2.pub"]
"""


def center_problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        load_center_config(path)
    return caught.value.problems


def test_center_config_loads(tmp_path: Path) -> None:
    cfg = load_center_config(write(tmp_path, CENTER))
    assert cfg.gateways[0].heartbeat_s == 30
    assert cfg.gateways[0].public_keys == [tmp_path / "gw2.pub"]


def test_center_rejects_center_keys(tmp_path: Path) -> None:
    path = write(tmp_path, CENTER.replace("[mqtt]\n", '[mqtt]\ncenter_keys = ["gw2.pub"]\n'))
    (problem,) = center_problems(path)
    assert problem.startswith(f"{path}:{line_of(path, 'center_keys')}: mqtt.center_keys: ")
    assert "gateway setting" in problem


def test_center_registry_rules(tmp_path: Path) -> None:
    second = CENTER.split("[[gateways]]")[1]
    path = write(
        tmp_path,
        CENTER + "\n[[gateways]]" + second + '\n[[gateways]]\nid = "gw-2"\nsite = "s"\n'
        "public_keys = []\n",
    )
    found = center_problems(path)
    assert found == [
        f"{path}:{line_of(path, 'id =', 2)}: gateways[1].id: gateway (site, id) "
        "('sz-futian-xmh-014', 'gw-014-a') is already used by gateways[0].id",
        f"{path}:{line_of(path, 'public_keys = []')}: gateways[2].public_keys: "
        "List should have at least 1 item after validation, not 0",
    ]


# --- the models themselves --------------------------------------------------------------


def test_models_are_frozen_and_strict() -> None:
    button = ButtonSection(name="a", pin=4)
    with pytest.raises(ValidationError):
        button.pin = 5
    with pytest.raises(ValidationError):
        ButtonSection.model_validate({"name": "a", "pin": "4"})
    assert HttpSection(listen="[::1]:9000").host == "::1"
    assert HttpSection().port == 8787
    assert HttpSection(listen="127.0.0.1:0").port == 0  # any free port (tests)
