"""`initramfs-hook` with registry images: pulled once, cached by digest, and a rebuild works
with the registry out of reach; an image neither reachable nor cached fails the hook."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.unit.bake.test_bake_registry import config  # noqa: F401 - fixture
from tests.unit.image.registry import Registry, serve
from tests.unit.initramfs.test_initramfs_tree import KVER, hook_tree

pytestmark = pytest.mark.registry
ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    yield from serve(Path(tmp_path_factory.mktemp("registry")))


def hook(work: Path, name: str, machine: Path, cache: Path,
         *extra: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    tree, mods = hook_tree(work, name)
    proc = subprocess.run([sys.executable, "-m", "agent", "initramfs-hook", "--destdir",
                           str(tree), "--kernel-release", KVER, "--modules-dir", str(mods),
                           "--config", str(machine), "--cache", str(cache), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    return proc, tree


def test_rebuild_uses_the_cache_when_the_registry_is_out_of_reach(
        registry: Registry, config: Path, tmp_path: Path) -> None:  # noqa: F811
    cache = tmp_path / "cache"
    first, tree1 = hook(tmp_path, "a", config, cache, "--insecure-registry", registry.host)
    assert first.returncode == 0, first.stderr
    assert first.stderr.rstrip().endswith("2 extension(s): hello 1.0.0, example-firmware 1.0.0")
    index = json.loads((cache / "sources.json").read_text())
    assert sorted(index) == sorted([registry.ref("extensions/hello:1.0.0"),
                                    registry.ref("extensions/example-firmware:1.0.0")])
    assert all(d.startswith("sha256:") for d in index.values())
    # without --insecure-registry the plain-HTTP registry cannot be reached
    second, tree2 = hook(tmp_path, "b", config, cache)
    assert second.returncode == 0, second.stderr
    images = sorted(p.name for p in (tree1 / "extensions").iterdir())
    assert images == ["000-hello.sqsh", "001-example-firmware.sqsh"]
    for name in images:
        assert (tree1 / "extensions" / name).read_bytes() == \
            (tree2 / "extensions" / name).read_bytes()
    assert (tree1 / "extensions.yaml").read_text() == (tree2 / "extensions.yaml").read_text()


def test_unreachable_and_uncached_fails_naming_each(registry: Registry, config: Path,  # noqa: F811
                                                    tmp_path: Path) -> None:
    proc, tree = hook(tmp_path, "a", config, tmp_path / "empty-cache")
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    assert lines[0] == "overlay-agent: error: 2 problem(s) found:"
    for line, name in zip(lines[1:], ("hello", "example-firmware"), strict=True):
        assert line.startswith(registry.ref(f"extensions/{name}:1.0.0") + ": ")
        assert line.endswith(f"; not in the cache {tmp_path}/empty-cache")
    assert not (tree / "extensions.yaml").exists()
    assert not (tree / "extensions").exists()
