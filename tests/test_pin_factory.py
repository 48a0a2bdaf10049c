"""GPIO on a real Pi after install: lgpio is a dependency on the Pi's machines (and a real
release, not the empty 0.0.0.2 on PyPI), pip resolves a binary wheel for them, and a
missing pin factory is named with its fix."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from gateway.inputs.gpio import pin_factory_problem

REPO = Path(__file__).resolve().parent.parent


def lgpio_requirement() -> Requirement:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    found = [Requirement(d) for d in project["dependencies"] if d.startswith("lgpio")]
    assert len(found) == 1, "pyproject.toml must depend on lgpio for the Pi"
    return found[0]


@pytest.mark.parametrize(
    ("machine", "wanted"),
    [("aarch64", True), ("armv7l", True), ("x86_64", False), ("armv6l", False)],
)
def test_lgpio_is_a_dependency_on_the_pi_only(machine: str, wanted: bool) -> None:
    req = lgpio_requirement()
    assert req.marker is not None
    env = {"platform_machine": machine, "sys_platform": "linux"}
    assert req.marker.evaluate(env) is wanted
    assert not req.marker.evaluate({"platform_machine": machine, "sys_platform": "darwin"})
    # PyPI also has an empty lgpio 0.0.0.2 (py3-none-any) that a resolver may pick.
    assert not req.specifier.contains("0.0.0.2") and req.specifier.contains("0.2.2.0")


@pytest.mark.parametrize(
    ("platform", "tag"),
    [("manylinux_2_34_aarch64", "manylinux_2_34_aarch64"), ("linux_armv7l", "linux_armv7l")],
)
def test_pip_resolves_an_lgpio_wheel_for_the_pi(tmp_path: Path, platform: str, tag: str) -> None:
    req = lgpio_requirement()
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--no-deps",
            "--only-binary=:all:",
            "--python-version",
            "3.11",  # Raspberry Pi OS bookworm
            "--platform",
            platform,
            "--dest",
            str(tmp_path),
            f"{req.name}{req.specifier}",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    if result.returncode != 0 and "No matching distribution" not in result.stderr:
        pytest.skip(f"PyPI not reachable: {result.stderr.strip().splitlines()[-1:]}")
    assert result.returncode == 0, result.stderr
    wheels = [p.name for p in tmp_path.glob("*.whl")]
    assert len(wheels) == 1 and wheels[0].startswith("lgpio-0.2"), wheels
    assert wheels[0].endswith(f"-cp311-cp311-{tag}.whl")


def pi(tmp_path: Path, model: str = "Raspberry Pi 5 Model B Rev 1.0") -> Path:
    (tmp_path / "model").write_bytes(model.encode() + b"\0")
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "gpiochip0").write_text("")
    return tmp_path


def test_a_pi_without_lgpio_is_named_with_the_fix(tmp_path: Path) -> None:
    root = pi(tmp_path)
    problem = pin_factory_problem(
        model_file=root / "model", dev=root / "dev", env={}, has_module=lambda _: False
    )
    assert problem is not None
    what, fix = problem
    assert what.startswith("Raspberry Pi 5 Model B Rev 1.0: ") and "no lgpio module" in what
    assert "no Pi 5 support" in what and "/dev/gpiomem" in what
    assert "scripts/install.sh" in fix and "pip install 'lgpio>=0.2.2'" in fix


def test_a_pi_with_lgpio_and_a_chip_is_fine(tmp_path: Path) -> None:
    root = pi(tmp_path, "Raspberry Pi 4 Model B Rev 1.5")
    ok = pin_factory_problem(
        model_file=root / "model", dev=root / "dev", env={}, has_module=lambda _: True
    )
    assert ok is None
    (root / "dev" / "gpiochip0").unlink()
    problem = pin_factory_problem(
        model_file=root / "model", dev=root / "dev", env={}, has_module=lambda _: True
    )
    assert problem is not None and "gpiochip" in problem[0]


def test_not_a_pi_or_a_chosen_factory_is_not_a_problem(tmp_path: Path) -> None:
    root = pi(tmp_path)

    def check(model: Path, env: dict[str, str]) -> tuple[str, str] | None:
        return pin_factory_problem(
            model_file=model, dev=root / "dev", env=env, has_module=lambda _: False
        )

    assert check(root / "model", {}) is not None
    assert check(root / "model", {"GPIOZERO_PIN_FACTORY": "mock"}) is None
    assert check(root / "model", {"GPIOZERO_PIN_FACTORY": "lgpio"}) is not None
    assert check(root / "absent", {}) is None
    (root / "model").write_text("Some Other Board\0")
    assert check(root / "model", {}) is None
