"""``alarmgw keygen`` never writes through a symbolic link: a link planted where NAME.key or
NAME.pub will go (dangling, or to a file of the victim's) is refused, with or without
``--force``, and nothing is written where it points."""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest

from gateway.contract.signing import load_signing_key, write_keypair
from gateway.errors import KeyFileError
from tests.harness import alarmgw_cmd


def keygen(out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        alarmgw_cmd("keygen", "--out", str(out), "--name", "gw", *extra),
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("which", ["gw.key", "gw.pub"])
@pytest.mark.parametrize("force", [False, True])
def test_a_dangling_link_is_refused_and_not_followed(
    tmp_path: Path, which: str, force: bool
) -> None:
    out, elsewhere = tmp_path / "keys", tmp_path / "attacker" / "planted"
    out.mkdir()
    elsewhere.parent.mkdir()
    (out / which).symlink_to(elsewhere)
    done = keygen(out, *(["--force"] if force else []))
    assert done.returncode == 2, done
    assert "symbolic link" in done.stderr and "Traceback" not in done.stderr
    assert not elsewhere.exists()
    assert sorted(p.name for p in out.iterdir()) == [which]  # nothing else written


@pytest.mark.parametrize("which", ["gw.key", "gw.pub"])
def test_force_never_overwrites_a_links_target(tmp_path: Path, which: str) -> None:
    out = tmp_path / "keys"
    write_keypair(out, "gw")
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (out / which).unlink()
    (out / which).symlink_to(victim)
    done = keygen(out, "--force")
    assert done.returncode == 2, done
    assert "symbolic link" in done.stderr
    assert victim.read_text() == "precious"


def test_force_replaces_real_files_atomically_and_leaves_no_temp_file(tmp_path: Path) -> None:
    first, key_path, _pub_path = write_keypair(tmp_path, "gw")
    key_path.chmod(0o644)  # a loosened key is replaced by a 0600 one, not reused
    second, _, _ = write_keypair(tmp_path, "gw", force=True)
    assert second.kid != first.kid
    assert load_signing_key(key_path).kid == second.kid
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gw.key", "gw.pub"]


def test_without_force_an_existing_file_is_kept(tmp_path: Path) -> None:
    first, key_path, pub_path = write_keypair(tmp_path, "gw")
    pub_path.unlink()
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_keypair(tmp_path, "gw")
    assert load_signing_key(key_path).kid == first.kid
    assert not pub_path.exists()
