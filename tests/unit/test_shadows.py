"""The shadow walk on plain directory trees, and where the upper is found after boot."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.shadows import find_shadows, upper_folder


def make_tree(root: Path, spec: dict[str, str | None]) -> Path:
    """path -> file content, or None for a directory."""
    root.mkdir(parents=True, exist_ok=True)
    for rel, content in spec.items():
        path = root / rel
        if content is None:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(content)
    return root


Spec = dict[str, "str | None"]
CASES: dict[str, tuple[Spec, list[Spec], tuple[int, list[str]]]] = {
    "nothing in the upper": ({}, [{"usr/bin/a": "1"}], (0, [])),
    "a file over a layer's file": (
        {"usr/bin/a": "mine"}, [{"usr/bin/a": "1"}], (1, ["/usr/bin/a"])),
    "a file no layer ships": ({"etc/hostname": "h"}, [{"usr/bin/a": "1"}], (0, [])),
    "a directory over a layer's file": (
        {"usr/bin/a/x": "mine"}, [{"usr/bin/a": "1"}], (1, ["/usr/bin/a"])),
    "a file over a layer's directory": (
        {"usr/share": "mine"}, [{"usr/share/x": "1"}], (1, ["/usr/share"])),
    "found in a lower layer through merged directories": (
        {"usr/lib/b": "mine", "usr/lib/c": "mine"},
        [{"usr/lib/a": "top"}, {"usr/lib/b": "low"}], (1, ["/usr/lib/b"])),
    "a directory in a higher layer hides a lower layer's file": (
        {"opt/x/y": "mine"}, [{"opt/x": None}, {"opt/x": "low file"}], (0, [])),
    "the first five, sorted, and the count of all": (
        {f"bin/{n}": "mine" for n in "gfedcba"},
        [{f"bin/{n}": "1" for n in "abcdefg"}],
        (7, ["/bin/a", "/bin/b", "/bin/c", "/bin/d", "/bin/e"])),
}


@pytest.mark.parametrize("name", CASES)
def test_find_shadows(tmp_path: Path, name: str) -> None:
    upper, layers, expected = CASES[name]
    up = make_tree(tmp_path / "upper", upper)
    lowers = [str(make_tree(tmp_path / f"layer{i}", spec)) for i, spec in enumerate(layers)]
    count, shown = find_shadows(str(up), lowers)
    assert (count, shown) == expected


def test_upper_folder_reads_mountinfo(tmp_path: Path) -> None:
    point = tmp_path / "up per"
    (point / "overlay/upper").mkdir(parents=True)
    escaped = str(point).replace(" ", "\\040")
    info = tmp_path / "mountinfo"
    info.write_text(
        "21 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        f"40 21 8:32 /sub {tmp_path}/bind rw - ext4 /dev/vdc rw\n"
        f"41 21 8:32 / {escaped} rw,relatime - ext4 /dev/vdc rw\n")
    assert upper_folder("/dev/vdc", "/overlay", str(info)) == str(point / "overlay/upper")
    with pytest.raises(OSError, match=r"^/dev/vdd: the upper's filesystem is not mounted"):
        upper_folder("/dev/vdd", "/", str(info))
