"""Table-driven validation over tests/fixtures/extensions/<case>/.

Each case holds one or more extension folders (`image`, `image1`, `image2`, ... in order),
`expected.txt` with the exact problems (`SOURCE: path: reason`, SOURCE being the folder
name) and optionally `options.json` ({"os_version", "base_root", "policy"}, paths relative
to the fixtures folder or the case).
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from agent.image import (
    Problem,
    UnpackedExtension,
    ValidateOptions,
    load_policy,
    validate_extensions,
)
from agent.image.manifest import load_manifest

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "extensions"
CASES = sorted(p.name for p in FIXTURES.iterdir() if p.is_dir() and not p.name.startswith("_"))


def extension(root: Path, source: str | None = None) -> UnpackedExtension:
    return UnpackedExtension(source or root.name, root, None, load_manifest(root).metadata)


def case_options(case: Path) -> ValidateOptions:
    opts_file = case / "options.json"
    raw = json.loads(opts_file.read_text()) if opts_file.exists() else {}
    policy = load_policy(case / raw["policy"]) if "policy" in raw else ValidateOptions().policy
    base = FIXTURES / raw["base_root"] if "base_root" in raw else None
    return ValidateOptions(raw.get("os_version"), base, policy)


def run_case(case: Path, options: ValidateOptions | None = None) -> list[str]:
    exts = [extension(p) for p in sorted(case.iterdir()) if p.name.startswith("image")]
    return [str(p) for p in validate_extensions(exts, options or case_options(case))]


@pytest.mark.parametrize("name", CASES)
def test_fixture_case(name: str) -> None:
    case = FIXTURES / name
    expected = (case / "expected.txt").read_text().splitlines()
    assert run_case(case) == expected


def test_every_case_has_expectations() -> None:
    assert {"talos-valid", "talos-invalid", "boundary", "cross", "base-root"} <= set(CASES)
    for name in CASES:
        assert (FIXTURES / name / "expected.txt").is_file(), name


def test_valid_fixture_metadata_is_the_contract_type() -> None:
    ext = extension(FIXTURES / "talos-valid" / "image")
    assert ext.metadata is not None
    assert ext.metadata.name == "talos-valid"
    assert ext.metadata.compatibility == {"talos": {"version": ">= v1.0.0"}}


def test_base_root_as_squashfs(tmp_path: Path) -> None:
    """The same base checks and os-release lookup, read from a squashfs without mounting."""
    sqsh = tmp_path / "base.sqsh"
    subprocess.run(["mksquashfs", str(FIXTURES / "_base" / "root"), str(sqsh), "-quiet",
                    "-noappend", "-all-root"], check=True, stdout=subprocess.DEVNULL)
    case = FIXTURES / "base-root"
    assert run_case(case, ValidateOptions(base_root=sqsh)) == \
        (case / "expected.txt").read_text().splitlines()


def test_os_version_option_wins_over_base_root() -> None:
    problems = run_case(FIXTURES / "base-root",
                        ValidateOptions(os_version="1.7", base_root=FIXTURES / "_base" / "root"))
    assert not any("target OS version" in p for p in problems)
    assert len(problems) == 3


def copy_valid(tmp_path: Path) -> Path:
    root = tmp_path / "image"
    shutil.copytree(FIXTURES / "talos-valid" / "image", root, symlinks=True)
    return root


def test_modes_and_special_files_made_at_runtime(tmp_path: Path) -> None:
    """World-writable, setuid and fifo entries cannot live in git: make them here."""
    root = copy_valid(tmp_path)
    lib = root / "rootfs" / "usr" / "local" / "lib"
    (lib / "a.so").chmod(0o666)
    (lib / "suid").write_text("x")
    (lib / "suid").chmod(0o4755)
    (lib / "sgid").write_text("x")
    (lib / "sgid").chmod(0o2755)
    os.mkfifo(lib / "fifo")
    (lib / "open").mkdir()
    (lib / "open").chmod(0o777)
    got = [str(p) for p in validate_extensions([extension(root)], ValidateOptions())]
    assert got == [
        "image: rootfs/usr/local/lib/a.so: world-writable",
        "image: rootfs/usr/local/lib/fifo: special files are not allowed (fifo)",
        "image: rootfs/usr/local/lib/open: world-writable",
        "image: rootfs/usr/local/lib/sgid: setuid/setgid files are not allowed by the policy",
        "image: rootfs/usr/local/lib/suid: setuid/setgid files are not allowed by the policy",
    ]


def test_setuid_allowed_by_policy(tmp_path: Path) -> None:
    root = copy_valid(tmp_path)
    target = root / "rootfs" / "usr" / "local" / "lib" / "a.so"
    target.chmod(0o4755)
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text("allow_setuid: true\n")
    opts = ValidateOptions(policy=load_policy(policy_file))
    assert validate_extensions([extension(root)], opts) == []
    assert validate_extensions([extension(root)], ValidateOptions()) == [
        Problem("image", "rootfs/usr/local/lib/a.so",
                "setuid/setgid files are not allowed by the policy")]


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node needs root")
def test_device_node_is_special(tmp_path: Path) -> None:
    root = copy_valid(tmp_path)
    os.mknod(root / "rootfs" / "usr" / "local" / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    assert [str(p) for p in validate_extensions([extension(root)], ValidateOptions())] == [
        "image: rootfs/usr/local/null: special files are not allowed (character device)"]


@pytest.mark.parametrize("kind", ["symlink", "fifo", "directory"])
def test_manifest_that_is_not_a_file_is_never_read(tmp_path: Path, kind: str) -> None:
    root = copy_valid(tmp_path)
    manifest = root / "manifest.yaml"
    manifest.unlink()
    if kind == "symlink":
        manifest.symlink_to("/etc/passwd")
    elif kind == "fifo":
        os.mkfifo(manifest)
    else:
        manifest.mkdir()
    ext = extension(root)
    assert ext.metadata is None
    got = [str(p) for p in validate_extensions([ext], ValidateOptions())]
    assert got == ["image: manifest.yaml: not a regular file"]
