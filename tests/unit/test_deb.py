"""The Debian package: built with debhelper + dh-python, its contents, and lintian."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from agent.bake.config import read_machine_config
from agent.bake.store import read_setting

REQUIRED_DEPENDS = ("python3", "python3-yaml", "python3-pyroute2", "python3-psutil",
                    "python3-structlog", "squashfs-tools", "zstd", "initramfs-tools | dracut")
FILES = ("./usr/bin/overlay-agent",
         "./usr/share/initramfs-tools/hooks/overlay-agent",
         "./usr/share/initramfs-tools/scripts/local-bottom/overlay-agent",
         "./usr/lib/dracut/modules.d/90overlay-agent/module-setup.sh",
         "./usr/lib/dracut/modules.d/90overlay-agent/overlay-agent.service",
         "./usr/lib/dracut/modules.d/90overlay-agent/overlay-agent-pre-pivot.sh",
         "./lib/systemd/system/overlay-agent-status.service",
         "./etc/overlay-agent/machine.yaml",
         "./etc/overlay-agent/store.conf",
         "./usr/lib/python3/dist-packages/agent/boot/activate.py")
EXECUTABLE = FILES[:4] + FILES[5:6]


def dpkg_deb(*args: str) -> str:
    return subprocess.run(["dpkg-deb", *args], check=True, capture_output=True,
                          text=True).stdout


def test_name_and_control_fields(deb_package: Path) -> None:
    version = subprocess.run(["dpkg-parsechangelog", "-S", "Version"], check=True, text=True,
                             capture_output=True, cwd=deb_package.parents[1]).stdout.strip()
    assert deb_package.name == f"overlay-agent_{version}_all.deb"
    depends = [d.strip() for d in dpkg_deb("-f", str(deb_package), "Depends").split(",")]
    for want in REQUIRED_DEPENDS:
        assert want in depends
    recommends = dpkg_deb("-f", str(deb_package), "Recommends").strip()
    assert recommends == "skopeo, cryptsetup-bin, iucode-tool"
    assert dpkg_deb("-f", str(deb_package), "Architecture").strip() == "all"


def test_contents_modes_and_conffile(deb_package: Path, tmp_path: Path) -> None:
    listing = {line.split()[-1]: line.split()[0] for line in
               dpkg_deb("-c", str(deb_package)).splitlines() if "->" not in line}
    for path in FILES:
        assert path in listing, path
    for path in EXECUTABLE:
        assert listing[path] == "-rwxr-xr-x", path
    subprocess.run(["dpkg-deb", "-e", str(deb_package), str(tmp_path / "control")], check=True)
    assert (tmp_path / "control/conffiles").read_text().split() == [
        "/etc/overlay-agent/machine.yaml", "/etc/overlay-agent/store.conf"]
    subprocess.run(["dpkg-deb", "-x", str(deb_package), str(tmp_path / "tree")], check=True)
    config, problems = read_machine_config(tmp_path / "tree/etc/overlay-agent/machine.yaml")
    assert (config.images, problems) == ((), [])
    # shipped without a store: images stay in the initramfs until the admin sets one
    assert read_setting(tmp_path / "tree/etc/overlay-agent/store.conf") == {}
    unit = (tmp_path / "tree/lib/systemd/system/overlay-agent-status.service").read_text()
    assert "ExecStart=/usr/bin/overlay-agent get extensions\n" in unit
    # wanted by multi-user.target but ordered after it: the report never delays the boot
    assert "After=local-fs.target multi-user.target\n" in unit
    assert "WantedBy=multi-user.target\n" in unit
    launcher = (tmp_path / "tree/usr/bin/overlay-agent").read_text()
    assert launcher.startswith("#! /usr/bin/python3") or launcher.startswith("#!/usr/bin/python3")


def test_lintian_reports_no_error(deb_package: Path, tmp_path: Path) -> None:
    if subprocess.run(["sh", "-c", "command -v lintian"], capture_output=True).returncode:
        pytest.fail("lintian missing: run `make deps`")
    # lintian leaves its mldbm-* scratch files behind: keep them out of the system's /tmp
    proc = subprocess.run(["lintian", "--fail-on", "error", "--tag-display-limit", "0",
                           str(deb_package)], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TMPDIR": str(tmp_path)})
    errors = [line for line in proc.stdout.splitlines() if line.startswith("E:")]
    assert proc.returncode == 0 and errors == [], proc.stdout + proc.stderr
