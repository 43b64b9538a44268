"""Debian's CPU microcode packages (non-free-firmware), downloaded like the kernels through a
private apt config into .cache/microcode/SUITE and unpacked there; a cached set is used as is."""

from __future__ import annotations

import shutil
from pathlib import Path

from agent.errors import SourceError
from agent.kernels import PrivateApt, derive_mirrors
from agent.output import write_bytes_atomically
from agent.tools import run

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "microcode"
PACKAGES = ("intel-microcode", "amd64-microcode")
COMPONENT = "non-free-firmware"


def fetch_microcode(suite: str, cache: Path = CACHE) -> dict[str, Path]:
    """Package name -> its unpacked tree (`dpkg-deb -x`), downloading only when not cached."""
    base = cache / suite
    trees = {name: base / name for name in PACKAGES}
    if (base / "complete").is_file():
        return trees
    apt = PrivateApt(cache / "apt" / suite, suite, derive_mirrors(), component=COMPONENT)
    apt.update()
    debs = base / "debs"
    shutil.rmtree(debs, ignore_errors=True)
    apt.download(list(PACKAGES), debs)
    for name, tree in trees.items():
        deb = next(iter(sorted(debs.glob(f"{name}_*.deb"))), None)
        if deb is None:
            raise SourceError(f"{debs}: apt-get download left no {name}_*.deb")
        shutil.rmtree(tree, ignore_errors=True)
        run(["dpkg-deb", "-x", deb, tree])
    versions = "".join(f"{d.name}\n" for d in sorted(debs.glob("*.deb")))
    write_bytes_atomically(base / "complete", versions.encode())
    return trees
