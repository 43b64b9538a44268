"""`overlay-agent build`: bake extensions into an initramfs.

Load (machine config, sources, input initramfs) -> fetch and validate EVERY extension,
collecting every problem -> write nothing if there is one -> squash in parallel, append a
dm-verity hash tree to each image, add the modules layer and firmware, write the list file
-> put the CPU microcode extensions ship into the early archive at the start
(agent.bake.early), append one compressed cpio and write the output atomically. With a
store, the images go to the store folder and only the list into the initramfs. The input
initramfs is read a slice at a time, never whole: memory stays bounded whatever its size.
"""

from __future__ import annotations

import contextlib
import hashlib
import shutil
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from agent import cpio, listfile
from agent.bake.config import find_duplicates, read_machine_config
from agent.bake.depmod import ModulesPlan, build_modules_layer, modules_metadata, plan_modules
from agent.bake.early import (
    EarlyPlan,
    MicrocodeSource,
    early_head,
    load_microcode,
    plan_early,
)
from agent.bake.firmware import firmware_entries, resolve_in_tree
from agent.bake.segments import (
    MAX_UNPACKED,
    Buffer,
    keep_links,
    merged_members,
    slices,
    split_segments,
)
from agent.bake.squash import Compression, SquashJob, SquashOptions, squash_all
from agent.bake.store import Store, locked, put_image
from agent.bake.verity import append_hash_tree
from agent.bake.workdir import work_folder
from agent.errors import AgentError, BuildError, ValidationFailed
from agent.files import FileBuffer, open_buffer
from agent.image.model import FetchOptions, UnpackedExtension
from agent.log import get_logger
from agent.output import write_atomically
from agent.tools import run

log = get_logger("overlay_agent.build")

Progress = Callable[[str], None]


@dataclass(frozen=True)
class BuildRequest:
    initramfs: Path
    output: Path
    config: Path | None = None
    extensions: tuple[str, ...] = ()
    os_version: str | None = None
    base_root: Path | None = None
    compression: Compression = Compression.ZSTD
    max_size: int | None = None
    kernel_release: str | None = None
    fetch: FetchOptions = FetchOptions()  # noqa: RUF009 - frozen: one shared default is safe
    policy: Path | None = None
    epoch: int = 0
    jobs: int = 0
    verity: bool = True           # append a dm-verity hash tree to each image
    store: Store | None = None    # write the images there, only the list into the initramfs


@dataclass(frozen=True)
class BakedLayer:
    layer: listfile.Layer
    path: Path            # the built image


@dataclass(frozen=True)
class BuildResult:
    output: Path
    input_size: int
    archive_size: int
    output_size: int
    layers: tuple[listfile.Layer, ...]


# ---------------------------------------------------------------- load + validate

def gather_sources(request: BuildRequest,
                   allow_empty: bool = False) -> tuple[list[str], list[str]]:
    """Config images then --extension sources, in layer order; every problem with them."""
    sources: list[str] = []
    problems: list[str] = []
    if request.config is not None:
        try:
            config, problems = read_machine_config(request.config)
            sources.extend(config.images)
        except AgentError as exc:
            problems.append(str(exc))
    sources.extend(request.extensions)
    problems += find_duplicates(sources)
    if not sources and not problems and not allow_empty:
        problems.append("no extensions: give --config with machine.install.extensions "
                        "or --extension SOURCE")
    if len(sources) > listfile.MAX_LAYERS:
        problems.append(f"{len(sources)} extensions: an overlay stacks at most "
                        f"{listfile.MAX_LAYERS} above the root")
    return sources, problems


def check_output(path: Path) -> list[str]:
    """OUT's folder must exist (checked first: a build may take minutes)."""
    folder = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        return [f"{path}: is a folder, not a file name for the output"]
    if not folder.is_dir():
        return [f"{path}: folder {folder} does not exist"]
    return []


def read_input(path: Path) -> tuple[FileBuffer, dict[str, cpio.Entry], list[str]]:
    """The input initramfs (open, read by slices; the caller closes it) and its unpacked
    member table, or the problem with it."""
    try:   # a regular file (never a fifo to block on) of a size the kernel could unpack
        blob = open_buffer(str(path), MAX_UNPACKED)
    except OSError as exc:
        return FileBuffer(-1, 0), {}, [f"{path}: cannot read: {exc.strerror}"]
    try:   # names and symlinks are what the checks need: member bytes are only hashed
        segments = split_segments(blob, str(path), keep_links)
    except OSError as exc:
        return blob, {}, [f"{path}: cannot read: {exc.strerror}"]
    except AgentError as exc:
        return blob, {}, [f"{exc} (the input must end on a complete archive)"]
    if not segments:
        return blob, {}, [f"{path}: holds no archive"]
    members = merged_members(segments)
    if listfile.LIST_PATH.strip("/") in members:
        # Baking again on top would keep the old images in RAM, unlisted, at every upgrade.
        return blob, members, [f"{path}: already has extensions baked in "
                               f"({listfile.LIST_PATH}): start from the initramfs without them"]
    return blob, members, []


def fetch_sources(sources: Sequence[str], staging: Path, request: BuildRequest,
                  progress: Progress | None) -> tuple[list[UnpackedExtension], list[str]]:
    """Every source fetched (agent.image.fetch.fetch_all), logged, and shown as progress."""
    from agent.image.fetch import fetch_all

    def fetched(i: int, ext: UnpackedExtension) -> None:
        log.info("fetched", source=ext.source, digest=ext.digest,
                 name=ext.metadata.name if ext.metadata else None)
        if progress is not None:
            progress(f"[{i + 1}/{len(sources)}] fetched {ext.source}")

    exts, problems = fetch_all(sources, staging, request.fetch, fetched)
    return exts, [str(p) for p in problems]


def validate_all(exts: Sequence[UnpackedExtension], request: BuildRequest) -> list[str]:
    from agent.image import ValidateOptions, load_policy, validate_extensions

    options = ValidateOptions(os_version=request.os_version, base_root=request.base_root)
    if request.policy is not None:
        options = ValidateOptions(request.os_version, request.base_root,
                                  load_policy(request.policy))
    return [str(p) for p in validate_extensions(exts, options)]


@dataclass
class EarlyStep:
    """The early microcode archive on `blob`, planned once the extensions are validated (a
    `more_checks` of bake_layers): the plan (None: no extension ships microcode) and which
    extensions ship it."""

    blob: Buffer
    where: str
    plan: EarlyPlan | None = None
    shipped: tuple[str, ...] = ()

    def __call__(self, exts: list[UnpackedExtension]) -> list[str]:
        files, problems = load_microcode([MicrocodeSource(e.metadata.name, e.source,
                                                          e.root / "rootfs")
                                          for e in exts if e.metadata is not None])
        self.shipped = tuple(dict.fromkeys(f.label for f in files))
        self.plan, more = plan_early(self.blob, files, self.where)
        return problems + more


# ---------------------------------------------------------------- build

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def describe_layer(image: Path, metadata: listfile.Metadata, kind: str,
                   verity: listfile.Verity | None = None) -> listfile.Layer:
    """sha256 and size cover the whole file, hash tree included: the check without verity."""
    return listfile.Layer(image=image.name, metadata=metadata, sha256=sha256_file(image),
                          size=image.stat().st_size, kind=kind, verity=verity)


def squash_layers(roots: Sequence[tuple[Path, listfile.Metadata]],
                  modules: tuple[ModulesPlan, Path] | None, work: Path,
                  options: SquashOptions, progress: Progress | None,
                  verity: bool = True) -> list[BakedLayer]:
    """One image per extension rootfs (and the modules layer last), built in parallel."""
    jobs = [SquashJob(root / "rootfs", work / "images" / listfile.image_name(i, meta.name),
                      meta.name) for i, (root, meta) in enumerate(roots)]
    metas = [(meta, listfile.KIND_EXTENSION) for _, meta in roots]
    if modules is not None:
        plan, layer_root = modules
        jobs.append(SquashJob(layer_root, work / "images" / listfile.image_name(
            len(roots), listfile.MODULES_LAYER_NAME), listfile.MODULES_LAYER_NAME))
        metas.append((modules_metadata(plan), listfile.KIND_MODULES))
    images = squash_all(jobs, options, progress)
    trees = [append_hash_tree(path) if verity else None for path in images]
    return [BakedLayer(describe_layer(path, meta, kind, tree), path)
            for path, (meta, kind), tree in zip(images, metas, trees, strict=True)]


def check_store(request: BuildRequest) -> list[str]:
    if request.store is not None and not request.verity:
        return [f"--store {request.store.folder}: store images need verity (the root hash in "
                "the initramfs is what vouches for them)"]
    return []


@contextlib.contextmanager
def stored(request: BuildRequest, layers: list[BakedLayer]) -> Iterator[list[BakedLayer]]:
    """With a store: under its lock, every image put into it and the layers naming it there;
    the caller writes the initramfs inside, so gc never sees the images unreferenced."""
    if request.store is None:
        yield layers
        return
    with locked(request.store.folder):
        yield [BakedLayer(put_image(request.store, b.path, b.layer), b.path) for b in layers]


def archive_entries(layers: Sequence[BakedLayer], firmware: Sequence[cpio.Entry],
                    epoch: int) -> list[cpio.Entry]:
    """List file, images and firmware; sorted, parents added, owner 0:0, fixed times."""
    listing = listfile.dump_list([b.layer for b in layers])
    images_dir = listfile.IMAGES_DIR.strip("/")
    entries = [cpio.regular(listfile.LIST_PATH.strip("/"), listing.encode(), 0o644, epoch)]
    entries += [cpio.regular(f"{images_dir}/{b.layer.image}", b.path, 0o644, epoch)
                for b in layers if not b.layer.store]
    entries += [cpio.Entry(e.name, e.mode, e.data, mtime=epoch) for e in firmware]
    return cpio.with_parents(entries, mtime=epoch)


def compress_file(path: Path, compression: Compression) -> Path:
    """Compress single-threaded (reproducible). The images inside are compressed already,
    so a fast level costs little size; the kernel's xz decoder wants crc32."""
    if compression is Compression.ZSTD:
        out = path.with_name(path.name + ".zst")
        run(["zstd", "-q", "-T1", "-3", "--no-progress", "-f", path, "-o", out])
    else:
        out = path.with_name(path.name + ".xz")
        run(["xz", "-q", "-k", "-f", "-T1", "--check=crc32", "-1", path])
    return out


def write_archive(entries: Sequence[cpio.Entry], work: Path, compression: Compression) -> Path:
    plain = work / "extensions.cpio"
    with plain.open("wb") as f:
        cpio.write(entries, f)
    packed = compress_file(plain, compression)
    plain.unlink()
    return packed


def pad4(size: int) -> int:
    """Zero bytes that put the appended archive on a 4-byte boundary (the kernel skips zeros)."""
    return -size % 4


def write_output(output: Path, head: bytes, blob: Buffer, start: int, archive: Path,
                 where: str) -> None:
    """`head` (the early archive, or nothing), the input `blob` from `start` on copied a
    slice at a time, zeros to a 4-byte boundary, then `archive`."""
    def write(out: BinaryIO) -> None:
        out.write(head)
        copied = 0
        for chunk in slices(blob, start):
            out.write(chunk)
            copied += len(chunk)
        if copied != len(blob) - start:
            raise BuildError(f"{where}: changed while being read; nothing written")
        out.write(b"\0" * pad4(len(head) + copied))
        with archive.open("rb") as f:
            shutil.copyfileobj(f, out, 1 << 20)

    write_atomically(output, write)


def check_size(request: BuildRequest, input_size: int, archive_size: int) -> int:
    total = input_size + pad4(input_size) + archive_size
    if request.max_size is not None and total > request.max_size:
        raise BuildError(f"{request.output}: would be {total} bytes, over --max-size "
                         f"{request.max_size} (input {input_size} + extensions {archive_size}); "
                         f"nothing written")
    return total


def bake_layers(sources: Sequence[str], problems: list[str], request: BuildRequest, work: Path,
                progress: Progress | None,
                more_checks: Callable[[list[UnpackedExtension]], list[str]] | None = None,
                ) -> tuple[list[BakedLayer], list[UnpackedExtension]]:
    """Fetch and validate every source (and run `more_checks` on them), then squash: the
    layers and the extensions. Raises ValidationFailed with `problems` and every new one,
    before anything is squashed."""
    unique = list(dict.fromkeys(sources))   # a duplicate is reported once, fetched once
    exts, found = fetch_sources(unique, work / "staging", request, progress) \
        if len(unique) <= listfile.MAX_LAYERS else ([], [])
    problems = problems + found
    if exts:
        problems += validate_all(exts, request)
    exts = [e for e in exts if e.metadata is not None]
    roots = [(e.root, e.metadata) for e in exts if e.metadata is not None]
    plan, found = plan_modules({e.source: e.root / "rootfs" for e in exts},
                               request.base_root, request.kernel_release, work)
    problems += found
    if len(roots) + (plan is not None) > listfile.MAX_LAYERS:
        problems.append(f"{len(roots) + 1} layers with the modules layer: an overlay "
                        f"stacks at most {listfile.MAX_LAYERS} above the root")
    if more_checks is not None:
        problems += more_checks(exts)
    if problems:
        raise ValidationFailed(problems)
    modules = None
    if plan is not None:
        modules = (plan, build_modules_layer(plan, [r / "rootfs" for r, _ in roots], work))
    options = SquashOptions(request.compression, request.epoch, request.jobs)
    layers = squash_layers(roots, modules, work, options, progress, request.verity)
    for b in layers:
        log.info("squashed", image=b.layer.image, size=b.layer.size, sha256=b.layer.sha256)
    return layers, exts


def bake_initramfs(request: BuildRequest, progress: Progress | None = None) -> BuildResult:
    """Validate everything first; write OUT only when every extension is good."""
    sources, problems = gather_sources(request)
    blob, members, found = read_input(request.initramfs)
    problems += found + check_output(request.output)
    problems += check_store(request)
    if request.max_size is not None and len(blob) > request.max_size:
        problems.append(f"{request.initramfs}: already {len(blob)} bytes, over --max-size "
                        f"{request.max_size} before any extension")
    with blob, work_folder() as work:
        early = EarlyStep(blob, str(request.initramfs))
        layers, exts = bake_layers(sources, problems, request, work, progress, early)
        rootfs = [e.root / "rootfs" for e in exts]
        dest = resolve_in_tree(members, "lib/firmware")
        with stored(request, layers) as layers:
            archive = write_archive(archive_entries(
                layers, firmware_entries(rootfs, dest), request.epoch), work,
                request.compression)
            archive_size = archive.stat().st_size
            head = b"" if early.plan is None else early_head(early.plan, request.epoch)
            start = 0 if early.plan is None else early.plan.rest
            total = check_size(request, len(head) + len(blob) - start, archive_size)
            write_output(request.output, head, blob, start, archive, str(request.initramfs))
        log.info("written", output=str(request.output), input_size=len(blob),
                 archive_size=archive_size, total=total)
    return BuildResult(request.output, len(blob), archive_size, total,
                       tuple(b.layer for b in layers))
