"""What `initramfs-hook` writes is enough to run hook mode: the runtime (HOOK_ENTRY_MODULES'
import and ELF closure), the launcher and the baked examples go into an empty tree, which is
entered with chroot (no host file visible) with its `/` shared, as systemd leaves it; the
launcher then stacks the examples on a root mounted at /sysroot."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from agent import syscalls
from agent.bake.build import BuildRequest
from agent.bake.intree import bake_into_tree
from agent.initramfs.pyruntime import build_runtime
from agent.initramfs.tree import HOOK_ENTRY_MODULES, install_entries, launcher_entry

ROOT = Path(__file__).resolve().parents[2]
MS_SHARED = 1 << 20


def mounts_under(prefix: str) -> list[str]:
    points = [line.split()[4] for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    return [p for p in points if p == prefix or p.startswith(prefix + "/")]


def test_hook_runtime_stacks_the_examples_in_a_chroot(private_mounts: None,
                                                      tmp_path: Path) -> None:
    tree = tmp_path / "initrd"
    tree.mkdir()
    install_entries([*build_runtime(HOOK_ENTRY_MODULES).entries, launcher_entry()], tree)
    baked = bake_into_tree(BuildRequest(tree, tree, config=ROOT / "examples/machine.yaml"),
                           tree)
    assert [la.metadata.name for la in baked.layers] == ["hello", "example-firmware"]
    assert (baked.microcode, baked.early) == ((), False)
    for d in ("proc", "dev", "run", "sysroot", "base"):
        (tree / d).mkdir()
    (tree / "base/etc").mkdir(parents=True)
    (tree / "cmdline").write_text("root=/dev/vda ro quiet\n")
    try:
        syscalls.mount(str(tree), str(tree), None, syscalls.MS_BIND)
        syscalls.mount(None, str(tree), None, MS_SHARED)
        syscalls.mount("proc", str(tree / "proc"), "proc")
        syscalls.mount("/dev", str(tree / "dev"), None, syscalls.MS_BIND | syscalls.MS_REC)
        syscalls.mount("run", str(tree / "run"), "tmpfs", 0, "mode=0755")
        syscalls.mount("base", str(tree / "sysroot"), "tmpfs", 0, "mode=0755")
        (tree / "sysroot/etc").mkdir()
        syscalls.mount(None, str(tree / "sysroot"), None,
                       syscalls.MS_REMOUNT | syscalls.MS_RDONLY)

        def enter() -> None:
            os.chroot(tree)
            os.chdir("/")

        proc = subprocess.run(["/usr/bin/overlay-agent", "boot", "--root", "/sysroot",
                               "--cmdline", "/cmdline"], preexec_fn=enter, capture_output=True,
                              text=True, env={}, timeout=120)
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
        status = json.loads((tree / "run/overlay-agent/status.json").read_text())
        assert [(e["name"], e["phase"]) for e in status["extensions"]] == [
            ("hello", "active"), ("example-firmware", "active")]
        hello = tree / "sysroot/usr/local/bin/hello-extension"
        assert hello.read_text().startswith("#!/bin/sh")
        assert (tree / "sysroot/usr/lib/firmware/overlay-agent/example.bin").is_file()
        assert (tree / "sysroot/etc/extensions.yaml").is_file()
    finally:
        for point in reversed(mounts_under(str(tree))):
            syscalls.umount2(point, syscalls.MNT_DETACH)
