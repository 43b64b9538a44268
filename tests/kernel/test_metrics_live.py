"""`metrics` on a real activation: layer_mounted follows the root overlay's lower layers
(agent.livecheck), and an output folder on a read-only mount is one line."""

# ruff: noqa: F811 - the fixtures env and image_cache come from test_activate
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import syscalls
from agent.cli import main
from tests.kernel.test_activate import Env, env, image_cache  # noqa: F401 - fixtures


def mounted_lines(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines()
            if line.startswith("overlay_agent_layer_mounted{")]


def run_metrics(env: Env, out: Path, root: Path, staging: str) -> int:
    return main(["metrics", "--status", env.settings.status_path, "-o", str(out),
                 "--root", str(root), "--staging", staging])


def test_layer_mounted_follows_the_root_overlay(env: Env,
                                                image_cache: Callable[[int], Path]) -> None:
    env.add(image_cache, [0, 1])
    env.activate()
    out = env.work / "m.prom"
    staging = env.settings.staging_dir
    live = ['overlay_agent_layer_mounted{id="000-ext0",name="ext0"} 1',
            'overlay_agent_layer_mounted{id="001-ext1",name="ext1"} 1']
    assert run_metrics(env, out, env.target, staging) == 0
    assert mounted_lines(out) == live
    # the same layers, asked about a root that is no overlay, or another staging folder
    assert run_metrics(env, out, env.base, staging) == 0
    assert mounted_lines(out) == [line[:-1] + "0" for line in live]
    assert 'phase="gone"' in out.read_text()
    assert run_metrics(env, out, env.target, "/run/oa-elsewhere") == 0
    assert mounted_lines(out) == [line[:-1] + "0" for line in live]


def test_output_on_a_read_only_mount_is_one_line(env: Env, image_cache: Callable[[int], Path],
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    env.add(image_cache, [0])
    env.activate()
    folder = env.work / "ro"
    folder.mkdir()
    syscalls.mount("oa-ro", str(folder), "tmpfs", syscalls.MS_RDONLY, "size=16k")
    capsys.readouterr()
    assert run_metrics(env, folder / "m.prom", env.target, env.settings.staging_dir) == 1
    assert capsys.readouterr().err == (f"overlay-agent: error: {folder}/m.prom: cannot create "
                                       f"a file in {folder}: Read-only file system\n")
    assert os.listdir(folder) == []
