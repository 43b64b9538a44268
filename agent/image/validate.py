"""Pure checks over unpacked extensions; every problem is returned, none raised.

Talos-compatible (anchors section 1), without Talos's known defects: allowed paths match
on path boundaries, world-writable files are really refused.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from agent.errors import UsageError
from agent.image.baseroot import BaseRoot, Kind, kind_of, load_base_root
from agent.image.manifest import MANIFEST, RANGE_KEY, Manifest, load_manifest
from agent.image.model import Problem, UnpackedExtension
from agent.image.policy import DEFAULT_POLICY, DuplicateFiles, Policy
from agent.image.unpack import climbs_above_root
from agent.image.versions import Version, VersionRangeError, parse_version

ROOTFS = "rootfs"
FORBIDDEN_FILES = {"/usr/lib/os-release": "would replace the base system's os-release",
                   "/etc/os-release": "would replace the base system's os-release"}
_SPECIAL_NAMES = {stat.S_IFCHR: "character device", stat.S_IFBLK: "block device",
                  stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket"}


@dataclass(frozen=True)
class ValidateOptions:
    os_version: str | None = None
    base_root: Path | None = None      # folder or squashfs of the base root
    policy: Policy = DEFAULT_POLICY


@dataclass(frozen=True)
class RootfsEntry:
    path: str          # "/usr/local/bin/x", relative to rootfs/ but written absolute
    mode: int
    target: str = ""   # symlink target

    @property
    def kind(self) -> Kind:
        return kind_of(self.mode)

    @property
    def shown(self) -> str:
        return ROOTFS + self.path


@dataclass(frozen=True)
class Target:
    """What the extensions are checked against: the OS version and the base root, if known."""

    os_version: Version | None = None
    os_version_text: str = ""
    base: BaseRoot | None = None
    policy: Policy = field(default=DEFAULT_POLICY)


def scan_rootfs(rootfs: Path) -> list[RootfsEntry]:
    """Every entry under rootfs/ in sorted order, never following symlinks."""
    out: list[RootfsEntry] = []

    def walk(folder: Path, rel: str) -> None:
        for name in sorted(os.listdir(folder)):
            full = folder / name
            st = full.lstat()
            path = f"{rel}/{name}"
            target = os.readlink(full) if stat.S_ISLNK(st.st_mode) else ""
            out.append(RootfsEntry(path, st.st_mode, target))
            if stat.S_ISDIR(st.st_mode):
                walk(full, path)

    walk(rootfs, "")
    return out


def check_root(root: Path) -> Iterator[tuple[str, str]]:
    """The image root holds exactly manifest.yaml (a file) and rootfs/ (a folder)."""
    try:
        names = sorted(os.listdir(root))
    except OSError as exc:
        yield "", f"cannot read the image root: {exc.strerror}"
        return
    for name in names:
        if name not in (MANIFEST, ROOTFS):
            yield name, "unexpected file at the image root (only manifest.yaml and rootfs/)"
    if ROOTFS not in names:
        yield ROOTFS, "missing"
    elif not stat.S_ISDIR((root / ROOTFS).lstat().st_mode):
        yield ROOTFS, "not a directory"


def check_compatibility(manifest: Manifest, target: Target) -> Iterator[str]:
    rng = manifest.talos_range
    if rng is not None and target.os_version is not None and not rng.allows(target.os_version):
        yield (f"{RANGE_KEY} {rng.text!r} does not allow the target OS version "
               f"{target.os_version_text}")


def leaves_rootfs(entry: RootfsEntry) -> bool:
    """A relative symlink target that climbs above rootfs/ (absolute ones resolve in the root)."""
    if entry.target.startswith("/"):
        return False
    return climbs_above_root(entry.path.count("/") - 1, entry.target)


def check_entry(entry: RootfsEntry, policy: Policy) -> Iterator[str]:
    kind = entry.kind
    if kind is Kind.SPECIAL:
        yield (f"special files are not allowed "
               f"({_SPECIAL_NAMES.get(stat.S_IFMT(entry.mode), 'unknown type')})")
        return
    # folders merge with the base's in the overlay: only what they hold is judged
    if kind is not Kind.DIR and not policy.allows(entry.path):
        yield "not under an allowed path"
    if entry.path in FORBIDDEN_FILES:
        yield FORBIDDEN_FILES[entry.path]
    if kind is Kind.SYMLINK:
        if leaves_rootfs(entry):
            yield f"symlink target {entry.target!r} leaves the extension"
        return
    if entry.mode & stat.S_IWOTH:
        yield "world-writable"
    if kind is Kind.FILE and entry.mode & (stat.S_ISUID | stat.S_ISGID) and not policy.allow_setuid:
        yield "setuid/setgid files are not allowed by the policy"


def check_against_base(entry: RootfsEntry, base: BaseRoot) -> Iterator[str]:
    found = base.lookup(entry.path)
    if found is None:
        return
    if entry.kind is Kind.DIR and found.kind is Kind.SYMLINK:
        yield (f"directory would hide the base root's symlink {entry.path} -> {found.target}")
    elif entry.kind is not Kind.DIR and found.kind is Kind.DIR:
        yield f"{entry.kind.value} would replace the base root's directory {entry.path}"


def check_extension(ext: UnpackedExtension, target: Target) -> tuple[list[Problem],
                                                                    list[RootfsEntry]]:
    """Every problem of one extension, and its rootfs entries (for the cross checks)."""
    problems = [Problem(ext.source, p, r) for p, r in check_root(ext.root)]
    if os.path.lexists(ext.root / MANIFEST):
        manifest = load_manifest(ext.root)
        problems += [Problem(ext.source, MANIFEST, r) for r in manifest.problems]
        problems += [Problem(ext.source, MANIFEST, r) for r in check_compatibility(manifest,
                                                                                   target)]
    elif not any(p.path == MANIFEST for p in problems):
        problems.append(Problem(ext.source, MANIFEST, "missing"))
    rootfs = ext.root / ROOTFS
    entries = scan_rootfs(rootfs) if rootfs.is_dir() and not rootfs.is_symlink() else []
    for entry in entries:
        problems += [Problem(ext.source, entry.shown, r) for r in check_entry(entry,
                                                                              target.policy)]
        if target.base is not None:
            problems += [Problem(ext.source, entry.shown, r)
                         for r in check_against_base(entry, target.base)]
    return problems, entries


def check_across(exts: Sequence[UnpackedExtension], entries: Sequence[list[RootfsEntry]],
                 policy: Policy) -> list[Problem]:
    """Same metadata.name twice; same file path in two extensions (unless later wins)."""
    problems = []
    names: dict[str, int] = {}
    owners: dict[str, int] = {}
    for i, (ext, ext_entries) in enumerate(zip(exts, entries, strict=True)):
        if ext.metadata is not None:
            first = names.setdefault(ext.metadata.name, i)
            if first != i:
                problems.append(Problem(ext.source, MANIFEST, f"metadata.name "
                                        f"{ext.metadata.name!r} is also used by "
                                        f"{exts[first].source}"))
        for entry in ext_entries:
            if entry.kind is Kind.DIR:
                continue
            first = owners.setdefault(entry.path, i)
            if first != i and policy.duplicate_files is DuplicateFiles.ERROR:
                problems.append(Problem(ext.source, entry.shown,
                                        f"also shipped by {exts[first].source}"))
    return problems


def resolve_target(options: ValidateOptions) -> Target:
    """Load the base root and work out the OS version; raise UsageError for bad options."""
    base = load_base_root(options.base_root) if options.base_root is not None else None
    text = options.os_version
    where = "--os-version"
    if text is None and base is not None:
        text = base.os_version()
        where = f"{options.base_root}: os-release VERSION_ID"
    version = None
    if text is not None:
        try:
            version = parse_version(text)
        except VersionRangeError as exc:
            raise UsageError(f"{where}: {exc}") from None
    return Target(version, text or "", base, options.policy)


def validate_extensions(exts: Sequence[UnpackedExtension],
                        options: ValidateOptions) -> list[Problem]:
    """Per-extension checks, then the cross-extension ones; every problem, in source order."""
    target = resolve_target(options)
    problems: list[Problem] = []
    all_entries = []
    for ext in exts:
        found, entries = check_extension(ext, target)
        problems += found
        all_entries.append(entries)
    return problems + check_across(exts, all_entries, options.policy)
