"""The Python runtime an image needs to run the agent: the interpreter, its shared libraries,
and only the stdlib / site-packages modules the agent imports, as sourceless .pyc files.

Which modules: a `python -I -S` subprocess imports ENTRY_MODULES (and builds the CLI parser,
which imports every registered subcommand) and reports `sys.modules`. Startup modules
(encodings.*) come along since the subprocess starts the same way /init does.
"""

from __future__ import annotations

import json
import os
import stat
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import agent
from agent import cpio
from agent.errors import BuildError
from agent.initramfs.elfdeps import Closure, is_elf, resolve_closure, walk_links
from agent.tools import run

AGENT_LIB = "/usr/lib/overlay-agent"
PYTHON_LINK = "/usr/bin/python3"

# Everything the agent may import on the boot path or in the booted system. Extend here when a
# module imports something lazily (inside a function): hook mode's list is derived from this
# one (agent.initramfs.tree.HOOK_ENTRY_MODULES), so both runtimes carry it.
ENTRY_MODULES: tuple[str, ...] = (
    "agent.boot.main",
    "agent.boot.activate",
    "agent.boot.verity",  # imported lazily, once a layer goes through dm-verity
    "agent.boot.hookmode",  # hook mode (`overlay-agent boot`) imports it lazily
    "agent.boot.upper",  # imported once overlay_agent.upper= asks for a writable root
    "agent.boot.store",  # imported once a layer lives in the image store
    "agent.cli",
    "json",
    "traceback",
    "yaml",
    "agent.boot.uevent",
    "agent.livecheck",  # `get extensions` imports it lazily (psutil stays out: it copes)
    "agent.shadows",  # `get extensions` imports it lazily too
    "_hashlib",  # OpenSSL's sha256, ~5x the built-in one; activation imports it lazily
    "hashlib",   # the fallback where _sha256 is no built-in module (a shared one is not seen)
    "encodings.utf_8",
    "encodings.ascii",
    "encodings.latin_1",
)
# What hook mode leaves out of ENTRY_MODULES: the baked list is JSON and reading an unusable
# one copes without yaml; initramfs-tools' udev has made the devices (no uevent socket, so no
# pyroute2 and asyncio); `get extensions` runs in the booted system.
PID1_ONLY_MODULES: tuple[str, ...] = ("json", "yaml", "agent.boot.uevent", "agent.livecheck",
                                      "agent.shadows")

# Left out, because their importers cope with their absence: libyaml's accelerator
# (yaml/__init__.py catches the ImportError of yaml.cyaml) and ssl, which asyncio (under
# pyroute2's uevent socket) imports only to offer TLS (asyncio/sslproto.py allows ssl = None);
# ssl alone would bring libssl into the image; and the bz2/lzma codecs, which shutil imports
# only to offer those archive formats (it catches their ImportError).
# asyncio's C accelerator goes too: asyncio/futures.py and tasks.py fall back to Python.
EXCLUDED_MODULES: tuple[str, ...] = ("yaml._yaml", "_yaml", "ssl", "_ssl", "_bz2", "_lzma",
                                     "_asyncio")

_COLLECT = r"""
import importlib, json, sys, sysconfig
paths, entries, excluded = json.loads(sys.argv[1])
sys.path[0:0] = paths

class Excluded:
    # Makes the left-out modules absent, so the importers take their fallback path.
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name in excluded:
            raise ModuleNotFoundError("excluded: " + name, name=name)
        return None

sys.meta_path.insert(0, Excluded)
missing, failed = [], []
for name in entries:
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            missing.append(name)
        else:
            failed.append("%s: %s" % (name, exc))
    except Exception as exc:
        failed.append("%s: %s: %s" % (name, type(exc).__name__, exc))
cli = sys.modules.get("agent.cli")
if cli is not None and hasattr(cli, "build_parser"):
    cli.build_parser()
files = {n: m.__file__ for n, m in list(sys.modules.items())
         if isinstance(getattr(m, "__file__", None), str)}
print(json.dumps({"missing": missing, "failed": failed, "files": files,
                  "stdlib": sysconfig.get_paths()["stdlib"],
                  "version": "%d.%d" % sys.version_info[:2]}))
"""


@dataclass(frozen=True)
class Imported:
    """What the collector subprocess saw: module files and the interpreter's stdlib folder."""

    files: tuple[str, ...]
    stdlib: str
    version: str


@dataclass(frozen=True)
class Runtime:
    entries: tuple[cpio.Entry, ...]
    elf_files: tuple[str, ...]        # image paths of every ELF file shipped
    interpreter: str                  # image path of the real interpreter


def host_python() -> Path:
    """The interpreter behind this process (the venv's base), symlinks resolved."""
    return Path(os.path.realpath(getattr(sys, "_base_executable", sys.executable)))


def search_roots() -> list[str]:
    """sys.path entries that hold the agent and its third-party dependencies."""
    import site

    roots = [str(Path(agent.__file__).resolve().parent.parent)]
    roots += [p for p in site.getsitepackages() if os.path.isdir(p)]
    return roots


def collect_imports(python: Path, entry_modules: Sequence[str], roots: Sequence[str]) -> Imported:
    """Run the collector; a missing or failing entry module is one error naming all."""
    arg = json.dumps([list(roots), list(entry_modules), list(EXCLUDED_MODULES)])
    proc = run([python, "-I", "-S", "-c", _COLLECT, arg], capture=True, env={}, timeout=120)
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise BuildError(f"{python}: module collector printed no report")
    problems = [f"entry module {m}: not found" for m in report["missing"]]
    problems += [f"entry module {f}" for f in report["failed"]]
    if problems:
        raise BuildError("; ".join(problems))
    return Imported(tuple(sorted(set(report["files"].values()))), report["stdlib"],
                    report["version"])


def image_path(host: str, roots: Sequence[str]) -> str:
    """Where a module file goes: agent and site-packages under AGENT_LIB, the rest unchanged."""
    best = max((r for r in roots if host.startswith(r.rstrip("/") + "/")), key=len, default=None)
    if best is None:
        return host
    return f"{AGENT_LIB}/{os.path.relpath(host, best)}"


_COMPILE = r"""
import json, py_compile, sys
jobs, outdir = json.loads(sys.stdin.read())
for i, (src, dest) in enumerate(jobs):
    try:
        py_compile.compile(src, cfile="%s/%d.pyc" % (outdir, i), dfile=dest, doraise=True,
                           invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
                           optimize=2)
    except py_compile.PyCompileError as exc:
        print("%s: does not compile (%s)" % (src, exc.msg.strip().splitlines()[-1]))
        sys.exit(1)
"""


def compile_pycs(python: Path, jobs: Sequence[tuple[str, str]]) -> list[bytes]:
    """Hash-based unchecked .pyc files (PEP 552) of (source, image path) pairs.

    Compiled in one fresh process with a fixed hash seed: marshal marks objects by their
    reference counts, so compiling in a long-lived process can give other bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        proc = run([python, "-S", "-c", _COMPILE], input=json.dumps([list(jobs), tmp]).encode(),
                   env={"PYTHONHASHSEED": "0"}, capture=True, check=False, timeout=600)
        if proc.returncode != 0:
            raise BuildError(proc.stdout.decode(errors="replace").strip() or
                             f"{python}: byte-compiling failed")
        return [Path(tmp, f"{i}.pyc").read_bytes() for i in range(len(jobs))]


def python_module_entries(python: Path, imported: Imported, roots: Sequence[str], mtime: int,
                   ) -> tuple[list[cpio.Entry], list[str]]:
    """Entries for the imported module files; returns them and the host paths of ELF ones."""
    entries: list[cpio.Entry] = []
    elves: list[str] = []
    jobs: list[tuple[str, str]] = []
    landmark = os.path.join(imported.stdlib, "os.py")
    for host in sorted(set(imported.files) | {landmark}):
        dest = image_path(host, roots)
        if host.endswith(".py"):
            jobs.append((host, dest))
        elif host.endswith(".so") or is_elf(Path(host)):
            elves.append(host)
        elif host.endswith(".pyc"):
            entries.append(cpio.regular(dest[1:], Path(host), 0o644, mtime))
    for (_src, dest), pyc in zip(jobs, compile_pycs(python, jobs), strict=True):
        entries.append(cpio.regular(dest[1:] + "c", pyc, 0o644, mtime))
    # getpath's exec_prefix landmark (Modules/getpath.py): the lib-dynload folder.
    entries.append(cpio.directory(os.path.join(imported.stdlib, "lib-dynload")[1:], mtime=mtime))
    return entries, elves


def closure_entries(closure: Closure, roots: Sequence[str], mtime: int) -> list[cpio.Entry]:
    entries: list[cpio.Entry] = []
    for host in closure.files:
        perm = stat.S_IMODE(os.stat(host).st_mode) & 0o755
        entries.append(cpio.regular(image_path(host, roots)[1:], Path(host), perm, mtime))
    for link, target in closure.links:
        entries.append(cpio.symlink(link[1:], target, mtime))
    return entries


def interpreter_link_entries(python: Path, mtime: int) -> list[cpio.Entry]:
    """/usr/bin/python3 leading to the real interpreter (the #! line of /init names it)."""
    if os.path.lexists(PYTHON_LINK):
        real, links = walk_links(PYTHON_LINK)
        if real == str(python):
            return [cpio.symlink(name[1:], target, mtime) for name, target in links]
    target = python.name if str(python.parent) == "/usr/bin" else str(python)
    return [cpio.symlink(PYTHON_LINK[1:], target, mtime)]


def build_runtime(entry_modules: Sequence[str] = ENTRY_MODULES, *, mtime: int = 0,
                  python: Path | None = None) -> Runtime:
    """The Python runtime + agent as cpio entries, for the initramfs and the demo root alike."""
    py = python or host_python()
    version = "{}.{}".format(*sys.version_info[:2])
    roots = search_roots()
    imported = collect_imports(py, entry_modules, roots)
    if imported.version != version:
        raise BuildError(f"{py}: Python {imported.version}, but the builder runs {version} "
                         "(byte-code would not match)")
    entries, elves = python_module_entries(py, imported, roots, mtime)
    closure = resolve_closure([py, *map(Path, elves)])
    entries += closure_entries(closure, roots, mtime)
    entries += interpreter_link_entries(py, mtime)
    elf_images = tuple(image_path(f, roots) for f in closure.files)
    return Runtime(tuple(entries), elf_images, str(py))
