"""The demo's bake step: pack the examples, build from the machine config naming them."""

from __future__ import annotations

from pathlib import Path

import yaml
from bake_support import ROOT, debian_style_initrd

from agent.bake.segments import merged_members, split_segments
from devtools.examples import bake_examples


def test_examples_are_packed_and_baked(tmp_path: Path) -> None:
    initrd = debian_style_initrd(tmp_path / "initrd.img")
    out = tmp_path / "out.img"
    result = bake_examples(ROOT / "examples", initrd, out, tmp_path / "work",
                           os_version="v1.7.0", epoch=1700000000)
    assert [x.image for x in result.layers] == ["000-hello.sqsh", "001-example-firmware.sqsh"]
    config = yaml.safe_load((tmp_path / "work" / "machine.yaml").read_text())
    assert [e["image"] for e in config["machine"]["install"]["extensions"]] == [
        f"oci-archive:{tmp_path / 'work' / '000-hello.oci.tar'}",
        f"oci-archive:{tmp_path / 'work' / '001-example-firmware.oci.tar'}"]
    assert config["cluster"] == {"clusterName": "demo"}      # other keys kept
    tree = merged_members(split_segments(out.read_bytes(), "out"))
    fw = ROOT / "examples/example-firmware/rootfs/usr/lib/firmware/overlay-agent/example.bin"
    assert tree["usr/lib/firmware/overlay-agent/example.bin"].data == fw.read_bytes()
