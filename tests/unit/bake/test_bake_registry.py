"""`build` from a Talos machine config naming registry images (a real registry on 127.0.0.1)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import cpio, listfile
from agent.bake.segments import merged_members, split_segments
from agent.image.pack import PackOptions, pack_extension
from tests.unit.image.registry import Registry, serve

pytestmark = pytest.mark.registry
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from serve(Path(tmp_path_factory.mktemp("registry")))


@pytest.fixture(scope="module")
def config(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The examples pushed to the registry and a machine config naming them, Talos-style."""
    work = tmp_path_factory.mktemp("pushed")
    images = []
    for name in ("hello", "example-firmware"):
        archive = work / f"{name}.tar"
        pack_extension(ROOT / "examples" / name, archive, PackOptions())
        ref = registry.ref(f"extensions/{name}:1.0.0")
        subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                        f"oci-archive:{archive}", f"docker://{ref}"], check=True,
                       capture_output=True)
        images.append(ref)
    path = work / "machine.yaml"
    path.write_text("version: v1alpha1\nmachine:\n  install:\n    disk: /dev/sda\n"
                    "    extensions:\n" + "".join(f"      - image: {i}\n" for i in images))
    return path


def build(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    initrd = out.with_name("in.img")
    with initrd.open("wb") as f:
        cpio.write([cpio.regular("init", b"#!/bin/sh\n", 0o755)], f)
    return subprocess.run([sys.executable, "-m", "agent", "build", "--config", str(config),
                           "--initramfs", str(initrd), "-o", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, SOURCE_DATE_EPOCH="0"))


def test_registry_images_are_pulled_and_baked(registry: Registry, config: Path,
                                              tmp_path: Path) -> None:
    out = tmp_path / "out.img"
    proc = build(config, out, "--insecure-registry", registry.host)
    assert proc.returncode == 0, proc.stderr
    tree = merged_members(split_segments(out.read_bytes(), "out"))
    layers = listfile.read_list(tree["extensions.yaml"].content().decode())
    assert [x.image for x in layers] == ["000-hello.sqsh", "001-example-firmware.sqsh"]


def test_every_unreachable_image_is_reported(registry: Registry, config: Path,
                                             tmp_path: Path) -> None:
    out = tmp_path / "out.img"
    proc = build(config, out)                   # plain HTTP without --insecure-registry
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == "overlay-agent: error: 2 problem(s) found:"
    assert [line.split(": ")[0] for line in lines[1:]] == [
        registry.ref("extensions/hello:1.0.0"), registry.ref("extensions/example-firmware:1.0.0")]
    assert not out.exists()
