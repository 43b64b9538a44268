"""A build killed with SIGKILL at random moments never leaves a partial OUT, and the next
build removes the work folder the killed one left."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

from bake_support import ROOT, debian_style_initrd, make_extension, overlay_agent

from agent.bake.workdir import PREFIX

TRIALS = 24


def test_sigkill_never_leaves_a_partial_output(tmp_path: Path) -> None:
    initrd = debian_style_initrd(tmp_path / "initrd.img", main="gzip")
    rng = random.Random(4)
    blob = rng.randbytes(3 << 20)          # incompressible: the write phase takes a while
    ext = make_extension(tmp_path / "exts", "big", {"usr/local/share/big/blob": blob})
    other = make_extension(tmp_path / "exts", "other", {"usr/local/bin/o": b"#!/bin/sh\n"})
    outdir = tmp_path / "out"
    outdir.mkdir()
    out = outdir / "initrd.img"
    args = ["build", "--initramfs", str(initrd), "--os-version", "v1.7.0"]
    overlay_agent(*args, "--extension", f"dir:{other}", "-o", out)
    old = out.read_bytes()
    reference = tmp_path / "reference.img"
    started = time.monotonic()
    overlay_agent(*args, "--extension", f"dir:{ext}", "--extension", f"dir:{other}",
                  "-o", reference)
    duration = time.monotonic() - started
    new = reference.read_bytes()
    temp = tmp_path / "temp"            # the killed builds' work folders land here, not in /tmp
    temp.mkdir()
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000", TMPDIR=str(temp))
    left = 0
    outcomes = {"old": 0, "new": 0}
    for trial in range(TRIALS):
        if trial >= TRIALS // 2:
            out.unlink(missing_ok=True)    # second half: no previous OUT at all
            old = b""
        proc = subprocess.Popen([sys.executable, "-m", "agent", *args, "--extension",
                                 f"dir:{ext}", "--extension", f"dir:{other}", "-o", str(out)],
                                cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, duration * 1.1))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        got = out.read_bytes() if out.exists() else b""
        assert got in (old, new), f"trial {trial}: OUT has {len(got)} bytes, neither old nor new"
        outcomes["new" if got == new else "old"] += 1
        for leftover in outdir.iterdir():
            if leftover != out:
                # with O_TMPFILE only a complete file is ever named; without it (older
                # overlayfs) a partial hidden .OUT.tmp-* file may stay, never under OUT's name
                assert leftover.name.startswith(f".{out.name}.tmp-"), leftover
                if leftover.name.count("-") == 1:      # the O_TMPFILE file, once named
                    assert leftover.read_bytes() == new
                leftover.unlink()
        if got == new and old:
            out.write_bytes(old)           # the next trial starts from the old OUT again
        work = list(temp.glob(f"{PREFIX}*"))
        assert len(work) <= 1, work        # each build removed the previous killed one's
        left += len(work)
    assert outcomes["old"] > 0, outcomes   # some kills did land before the rename
    assert left > 0                        # some kills did leave a work folder behind
    subprocess.run([sys.executable, "-m", "agent", *args, "--extension", f"dir:{other}",
                    "-o", str(out)], cwd=ROOT, env=env, check=True, capture_output=True)
    assert list(temp.iterdir()) == []
