"""scripts/install-test-packages, run against a fake system: it installs only what is missing, as
root or through password-less sudo, and otherwise says in one place what to run."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e  # runs bash

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "install-test-packages"
EVERYTHING = "chromium postgresql redis-server pgbouncer openssl wrk python3-venv"


def tool(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/bash\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


def fake_system(tmp_path: Path, *, uid: int, sudo: bool, apt: bool = True) -> tuple[dict[str, str], Path]:
    """A PATH holding only fakes, so every package looks missing; apt-get writes down its calls."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "apt-calls"
    bin_dir.mkdir()
    tool(bin_dir, "id", f"echo {uid}")
    if apt:
        tool(bin_dir, "apt-get", f'echo "$SUDO_USED $*" >> {calls}')
    tool(bin_dir, "sudo", 'shift; SUDO_USED=sudo "$@"' if sudo else "exit 1")
    tool(bin_dir, "python-without-venv", "exit 1")
    env = {
        "PATH": str(bin_dir),
        "FAREGATE_SYSROOT": str(tmp_path / "empty-root"),
        "PYTHON": str(bin_dir / "python-without-venv"),
        "HOME": str(tmp_path),
    }
    return env, calls


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["/bin/bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


def test_as_root_every_missing_package_is_installed(tmp_path: Path) -> None:
    env, calls = fake_system(tmp_path, uid=0, sudo=False)
    result = run(env)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == [" update -qq", f" install -y -qq {EVERYTHING}"]
    assert f"installing the missing Debian packages: {EVERYTHING}" in result.stderr


def test_without_root_it_uses_password_less_sudo(tmp_path: Path) -> None:
    env, calls = fake_system(tmp_path, uid=1000, sudo=True)
    result = run(env)
    assert result.returncode == 0, result.stderr
    assert calls.read_text().splitlines() == ["sudo update -qq", f"sudo install -y -qq {EVERYTHING}"]


def test_without_root_or_sudo_it_says_what_to_run_and_fails(tmp_path: Path) -> None:
    env, calls = fake_system(tmp_path, uid=1000, sudo=False)
    result = run(env)
    assert result.returncode == 1
    assert not calls.exists()
    assert f"apt-get update && apt-get install -y {EVERYTHING}" in result.stderr
    assert "needs root" in result.stderr


def test_without_apt_it_names_the_packages_and_fails(tmp_path: Path) -> None:
    env, _ = fake_system(tmp_path, uid=0, sudo=False, apt=False)
    result = run(env)
    assert result.returncode == 1 and "no apt-get here. Install these (Debian package names)" in result.stderr


def test_on_this_machine_nothing_is_missing_and_nothing_runs(tmp_path: Path) -> None:
    """make test ran the script before the suite: everything is in place now."""
    calls = tmp_path / "apt-calls"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    tool(bin_dir, "apt-get", f'echo "$*" >> {calls}')
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    env.pop("FAREGATE_SYSROOT", None)
    result = run(env)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")
    assert not calls.exists()
