from __future__ import annotations

from pathlib import Path

import pytest

from agent.bake.depmod import plan_modules


def tree(root: Path, files: list[str], links: dict[str, str] | None = None) -> Path:
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    for rel, target in (links or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).symlink_to(target)
    return root


SPLIT = ["lib/modules/6.1.0/kernel/a.ko", "lib/modules/6.1.0/modules.order"]
TWO = [*SPLIT, "lib/modules/6.2.0/kernel/a.ko"]
MERGED = ["usr/lib/modules/6.12.0/kernel/a.ko.xz"]

CASES = [
    # (id, extension files, base files, base links, release, (release, layer dir) or None, problems)
    ("no modules", ["usr/local/bin/x"], SPLIT, {}, None, None, []),
    ("empty modules folder", ["lib/modules/6.1.0/extras/README"], SPLIT, {}, None, None, []),
    ("split base", ["lib/modules/6.1.0/extras/m.ko"], SPLIT, {}, None,
     ("6.1.0", "lib/modules"), []),
    ("merged base", ["usr/lib/modules/6.12.0/extras/m.ko.xz"], MERGED, {"lib": "usr/lib"},
     None, ("6.12.0", "usr/lib/modules"), []),
    ("release from the extension", ["lib/modules/6.2.0/extras/m.ko"], TWO, {}, None,
     ("6.2.0", "lib/modules"), []),
    ("release given", ["lib/modules/6.2.0/extras/m.ko"], TWO, {}, "6.2.0",
     ("6.2.0", "lib/modules"), []),
    ("release not in the base", ["lib/modules/6.9.0/extras/m.ko"], SPLIT, {}, "6.9.0", None,
     ["BASE: no modules folder for kernel release 6.9.0"]),
    ("cannot tell", ["lib/modules/6.9.0/extras/m.ko"], TWO, {}, None, None,
     ["BASE: cannot tell the kernel release (base has 6.1.0, 6.2.0): give --kernel-release"]),
    ("base without modules", ["usr/lib/modules/6.1.0/extras/m.ko"], ["etc/os-release"],
     {"lib": "usr/lib"}, None, ("6.1.0", "usr/lib/modules"), []),
    ("base without modules, split", ["lib/modules/6.1.0/extras/m.ko"], ["etc/os-release"],
     {}, None, ("6.1.0", "lib/modules"), []),
    ("base without modules, two releases", ["lib/modules/6.1.0/extras/m.ko",
                                            "lib/modules/6.2.0/extras/m.ko"], ["etc/os-release"],
     {}, None, None,
     ["BASE: cannot tell the kernel release (base has none): give --kernel-release"]),
    ("other release", ["lib/modules/6.1.0/extras/m.ko", "lib/modules/6.2.0/extras/m.ko"],
     TWO, {}, "6.1.0", None,
     ["ext: ships modules for kernel release 6.2.0, the base runs 6.1.0"]),
]


@pytest.mark.parametrize("ext_files,base_files,links,release,plan,problems",
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_plan_modules(tmp_path: Path, ext_files: list[str], base_files: list[str],
                      links: dict[str, str], release: str | None,
                      plan: tuple[str, str] | None, problems: list[str]) -> None:
    ext = tree(tmp_path / "ext", ext_files)
    base = tree(tmp_path / "base", base_files, links)
    got, found = plan_modules({"ext": ext}, base, release, tmp_path)
    assert [p.replace(str(base), "BASE") for p in found] == problems
    assert (None if got is None else (got.release, got.layer_dir)) == plan


def test_modules_need_a_base_root(tmp_path: Path) -> None:
    ext = tree(tmp_path / "ext", ["lib/modules/6.1.0/extras/m.ko"])
    assert plan_modules({"ext": ext}, None, None, tmp_path) == (None, [
        "ext: ships kernel modules (6.1.0): give --base-root so depmod sees the base's "
        "modules too"])
