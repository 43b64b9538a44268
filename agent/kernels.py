"""Debian's stock kernels, fetched into a cache (never installed) with a private apt config.

Layout per suite under the cache (the rest of the project relies on it):
`<suite>/vmlinuz`, `<suite>/kernel-release`, `<suite>/tree/` (the extracted package) and
`<suite>/modules` (symlink to the modules folder of that release). The mirror URIs come from the
host's own apt sources, so no host name is written here.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from agent.errors import SourceError, ToolError
from agent.output import write_bytes_atomically
from agent.tools import run

METAPACKAGE = "linux-image-amd64"
KEYRING = Path("/usr/share/keyrings/debian-archive-keyring.gpg")
SUITES = ("bookworm", "trixie")


@dataclass(frozen=True)
class Kernel:
    suite: str
    release: str
    vmlinuz: Path
    modules_dir: Path


@dataclass(frozen=True)
class Mirrors:
    """Archive and security URIs taken from the host's apt sources."""

    archive: str
    security: str | None


@dataclass(frozen=True)
class FetchResult:
    kernel: Kernel
    package: str
    version: str
    downloaded: bool


# ---------------------------------------------------------------- load (pure)

def parse_deb822_uris(text: str) -> list[tuple[str, list[str]]]:
    """Return (uri, suites) for every `Types: deb` stanza of a deb822 .sources file."""
    found: list[tuple[str, list[str]]] = []
    for stanza in re.split(r"\n\s*\n", text):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.strip()
        if "deb" not in fields.get("types", "").split() or fields.get("enabled") == "no":
            continue
        for uri in fields.get("uris", "").split():
            found.append((uri, fields.get("suites", "").split()))
    return found


def parse_one_line_uris(text: str) -> list[tuple[str, list[str]]]:
    """Return (uri, [suite]) for every `deb` line of a one-line-style sources.list."""
    found: list[tuple[str, list[str]]] = []
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 3 and words[0] == "deb":
            found.append((words[1], [words[2]]))
    return found


def derive_mirrors(etc_apt: Path = Path("/etc/apt")) -> Mirrors:
    """Pick the Debian archive URI and the security URI from the host's apt sources."""
    entries: list[tuple[str, list[str]]] = []
    for path in sorted((etc_apt / "sources.list.d").glob("*.sources")):
        entries += parse_deb822_uris(path.read_text(errors="replace"))
    for path in [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            entries += parse_one_line_uris(path.read_text(errors="replace"))
    return choose_mirrors(entries, etc_apt)


DEBIAN_SUITES = ("buster", "bullseye", "bookworm", "trixie", "forky", "sid",
                 "oldstable", "stable", "testing", "unstable")


def choose_mirrors(entries: Iterable[tuple[str, list[str]]], where: Path) -> Mirrors:
    """The first URI serving a Debian suite (any mirror or snapshot path) and the first
    serving a -security suite; third-party repositories are passed over."""
    archive: str | None = None
    security: str | None = None
    for uri, suites in entries:
        if not uri.startswith(("http://", "https://", "file:/")):
            continue
        bases = {s.split("/")[0].split("-")[0] for s in suites}
        if not bases & set(DEBIAN_SUITES):
            continue
        if any(s.endswith("-security") or s.endswith("/updates") for s in suites):
            security = security or uri.rstrip("/")
        else:
            archive = archive or uri.rstrip("/")
    if archive is None:
        raise SourceError(f"{where}: no Debian archive URI in the apt sources")
    return Mirrors(archive, security)


def render_sources(suite: str, mirrors: Mirrors, keyring: Path = KEYRING,
                   component: str = "main") -> str:
    """sources.list lines for `suite`, its -updates and (when known) its -security suite."""
    opt = f"[arch=amd64 signed-by={keyring}]"
    lines = [f"deb {opt} {mirrors.archive} {suite} {component}",
             f"deb {opt} {mirrors.archive} {suite}-updates {component}"]
    if mirrors.security:
        lines.append(f"deb {opt} {mirrors.security} {suite}-security {component}")
    return "\n".join(lines) + "\n"


def parse_kernel_depends(control: str) -> str:
    """From `apt-cache show` of the metapackage, the versioned linux-image package it needs."""
    for line in control.splitlines():
        if line.startswith("Depends:"):
            for alt in line.split(":", 1)[1].split(","):
                name = alt.split("|")[0].split("(")[0].strip()
                if re.fullmatch(r"linux-image-\d[\w.+~-]*-amd64(-unsigned)?", name):
                    return name
    raise SourceError(f"{METAPACKAGE}: no linux-image-<version>-amd64 in its Depends")


def parse_field(control: str, field: str) -> str:
    for line in control.splitlines():
        if line.startswith(f"{field}:"):
            return line.split(":", 1)[1].strip()
    raise SourceError(f"apt-cache show: no {field} field")


def find_modules_root(tree: Path, release: str) -> Path:
    """The modules folder of `release` in an extracted package (split or merged /usr)."""
    for rel in ("lib/modules", "usr/lib/modules"):
        cand = tree / rel / release
        if cand.is_dir() and not cand.is_symlink():
            return cand
    raise SourceError(f"{tree}: no lib/modules/{release} or usr/lib/modules/{release}")


def find_release(tree: Path) -> str:
    names = sorted(p.name[len("vmlinuz-"):] for p in (tree / "boot").glob("vmlinuz-*"))
    if len(names) != 1:
        raise SourceError(f"{tree / 'boot'}: expected one vmlinuz-*, found {len(names)}")
    return names[0]


def load_kernel(cache: Path, suite: str) -> Kernel:
    """The fetched kernel of `suite` (run `make kernels` first)."""
    base = cache / suite
    try:
        release = (base / "kernel-release").read_text().strip()
    except OSError:
        raise SourceError(f"{base}: no fetched kernel (run `make kernels`)")
    vmlinuz = base / "vmlinuz"
    if not vmlinuz.is_file():
        raise SourceError(f"{vmlinuz}: missing (run `make kernels`)")
    return Kernel(suite, release, vmlinuz, find_modules_root(base / "tree", release))


# ---------------------------------------------------------------- build (apt, dpkg)

class PrivateApt:
    """apt-get/apt-cache with their own sources, state and cache folders under `root`, on one
    component of the archive (`non-free-firmware` for the CPU microcode packages)."""

    def __init__(self, root: Path, suite: str, mirrors: Mirrors, component: str = "main") -> None:
        self.root = root
        for sub in ("etc/preferences.d", "state/lists/partial", "cache/archives/partial"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        write_bytes_atomically(root / "etc/sources.list",
                               render_sources(suite, mirrors, component=component).encode())
        status = root / "state/status"
        if not status.exists():
            status.write_bytes(b"")

    def options(self) -> list[str]:
        r = self.root
        opts = {
            "Dir::Etc::sourcelist": r / "etc/sources.list",
            "Dir::Etc::sourceparts": "-",
            "Dir::Etc::preferences": r / "etc/preferences",
            "Dir::Etc::preferencesparts": r / "etc/preferences.d",
            "Dir::State": r / "state",
            "Dir::State::status": r / "state/status",
            "Dir::Cache": r / "cache",
            "APT::Architecture": "amd64",
            "APT::Architectures": "amd64",
            "Debug::NoLocking": "1",
            "APT::Sandbox::User": "root",
        }
        return [a for k, v in opts.items() for a in ("-o", f"{k}={v}")]

    def update(self) -> None:
        run(["apt-get", "-q", *self.options(), "update"], capture=True, timeout=900)

    def show(self, package: str) -> str:
        proc = run(["apt-cache", *self.options(), "show", "--no-all-versions", package],
                   capture=True)
        return proc.stdout.decode(errors="replace")

    def download(self, packages: list[str], into: Path) -> None:
        into.mkdir(parents=True, exist_ok=True)
        run(["apt-get", "-q", *self.options(), "download", *packages], cwd=into, capture=True,
            timeout=1800)


def fetch_kernel(cache: Path, suite: str, mirrors: Mirrors) -> FetchResult:
    """Resolve the metapackage, download and unpack the versioned kernel unless cached."""
    base = cache / suite
    apt = PrivateApt(cache / "apt" / suite, suite, mirrors)
    try:
        apt.update()
    except ToolError as exc:
        cached = read_cached(cache, suite)
        if cached is None:
            raise
        from agent.log import get_logger  # structlog: not for the CLI parser's imports

        get_logger("overlay_agent.kernels").warning(
            "apt-get update failed; using the cached kernel", suite=suite,
            error=str(exc))
        return cached
    meta = apt.show(METAPACKAGE)
    meta_version = parse_field(meta, "Version")
    package = parse_kernel_depends(meta)
    stamp = f"{METAPACKAGE} {meta_version} {package}"
    cached = read_cached(cache, suite)
    if cached is not None and (base / "metapackage").read_text().split()[:3] == stamp.split():
        return cached
    debs = base / "debs"
    if debs.exists():
        shutil.rmtree(debs)
    apt.download([METAPACKAGE, package], debs)
    deb = next(iter(sorted(debs.glob(f"{package}_*.deb"))), None)
    if deb is None:
        raise SourceError(f"{debs}: apt-get download left no {package}_*.deb")
    kernel = unpack_kernel(deb, base)
    version = parse_field(apt.show(package), "Version")
    write_bytes_atomically(base / "metapackage", f"{stamp} {version}\n".encode())
    return FetchResult(kernel, package, version, True)


def read_cached(cache: Path, suite: str) -> FetchResult | None:
    base = cache / suite
    try:
        kernel = load_kernel(cache, suite)
        stamp = (base / "metapackage").read_text().split()
    except (SourceError, OSError):
        return None
    if len(stamp) != 4:
        return None
    return FetchResult(kernel, stamp[2], stamp[3], False)


def unpack_kernel(deb: Path, base: Path) -> Kernel:
    """dpkg-deb -x into a fresh tree, copy vmlinuz, run depmod where no modules.dep shipped."""
    tree = base / "tree"
    fresh = base / "tree.new"
    for old in (fresh, tree):
        if old.exists():
            shutil.rmtree(old)
    fresh.mkdir(parents=True)
    run(["dpkg-deb", "-x", deb, fresh])
    release = find_release(fresh)
    modules = find_modules_root(fresh, release)
    if not (modules / "modules.dep").is_file():
        run_depmod(fresh, modules, release)
    fresh.rename(tree)
    write_bytes_atomically(base / "vmlinuz", (tree / "boot" / f"vmlinuz-{release}").read_bytes())
    link = base / "modules"
    tmp_link = base / ".modules.tmp"
    if tmp_link.is_symlink():
        tmp_link.unlink()
    tmp_link.symlink_to(find_modules_root(tree, release).relative_to(base))
    tmp_link.replace(link)
    write_bytes_atomically(base / "kernel-release", f"{release}\n".encode())
    return load_kernel(base.parent, base.name)


def run_depmod(tree: Path, modules: Path, release: str) -> None:
    """depmod -b TREE: make both lib/modules and usr/lib/modules lead to the shipped folder,
    since older kmod only looks under lib/modules and newer builds under usr/lib/modules."""
    made: list[Path] = []
    for rel in ("lib/modules", "usr/lib/modules"):
        side = tree / rel
        if not side.exists():
            side.parent.mkdir(parents=True, exist_ok=True)
            side.symlink_to(os.path.relpath(modules.parent, side.parent))
            made.append(side)
    try:
        run(["depmod", "-b", tree, release])
    finally:
        for side in made:
            side.unlink()
    if not (modules / "modules.dep").is_file():
        raise ToolError(f"depmod -b {tree} {release}: wrote no modules.dep")
