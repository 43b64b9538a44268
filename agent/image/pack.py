"""Pack an extension folder (manifest.yaml + rootfs/) into a one-layer image, reproducibly.

Same folder, same bytes: members sorted, owner 0:0 with no names, every mtime set to
SOURCE_DATE_EPOCH (or 0), gzip header without name or time. Output is an oci-archive
(OCI image layout in a tar) or a docker-archive (`docker save` format), written to a
temporary file beside the target, fsynced and renamed.
"""

from __future__ import annotations

import datetime
import enum
import gzip
import hashlib
import io
import json
import os
import re
import stat
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, BinaryIO

from agent.errors import BuildError, UsageError, ValidationFailed
from agent.image.fetch import open_dir
from agent.image.oci import REF_NAME, sha256_of
from agent.image.source import Source, Transport
from agent.image.validate import ValidateOptions, validate_extensions
from agent.output import write_atomically

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
_TAG_RE = re.compile(r"[a-z0-9]+(?:[._-][a-z0-9]+)*(?:/[a-z0-9]+(?:[._-][a-z0-9]+)*)*"
                     r":[\w][\w.-]{0,127}")
_CHUNK = 1 << 20


class PackFormat(enum.Enum):
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"


@dataclass(frozen=True)
class PackOptions:
    format: PackFormat = PackFormat.OCI_ARCHIVE
    tag: str | None = None          # default NAME:VERSION from the manifest
    arch: str = "amd64"
    mtime: int = 0                  # SOURCE_DATE_EPOCH
    validate: ValidateOptions = field(default_factory=ValidateOptions)


@dataclass(frozen=True)
class Blob:
    digest: str
    size: int
    path: Path | None = None
    data: bytes = b""

    @classmethod
    def of(cls, data: bytes) -> Blob:
        return cls("sha256:" + hashlib.sha256(data).hexdigest(), len(data), data=data)

    @property
    def hex(self) -> str:
        return self.digest.split(":", 1)[1]


def canonical_json(doc: Any) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def walk_sorted(folder: Path, rel: str = "") -> Iterator[tuple[str, Path]]:
    for name in sorted(os.listdir(folder)):
        full = folder / name
        path = f"{rel}{name}"
        yield path, full
        if full.is_dir() and not full.is_symlink():
            yield from walk_sorted(full, path + "/")


def tar_info(name: str, st: os.stat_result, mtime: int, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.mode = stat.S_IMODE(st.st_mode)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = mtime
    if stat.S_ISDIR(st.st_mode):
        info.type = tarfile.DIRTYPE
    elif stat.S_ISLNK(st.st_mode):
        info.type, info.linkname = tarfile.SYMTYPE, link
    else:
        info.type, info.size = tarfile.REGTYPE, st.st_size
    return info


def write_layer_tar(folder: Path, out: IO[bytes], mtime: int) -> None:
    """manifest.yaml and rootfs/ only, sorted; hard links are stored as separate files."""
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tf:
        for name, full in walk_sorted(folder):
            if not (name == "manifest.yaml" or name == "rootfs" or name.startswith("rootfs/")):
                continue
            st = full.lstat()
            link = os.readlink(full) if stat.S_ISLNK(st.st_mode) else ""
            info = tar_info(name, st, mtime, link)
            if info.isreg():
                with open(full, "rb") as f:
                    tf.addfile(info, f)
            else:
                tf.addfile(info)


def build_layer(folder: Path, work: Path, mtime: int) -> tuple[Blob, Blob]:
    """The layer as an uncompressed tar (diff_id, docker-archive) and gzipped (OCI)."""
    plain, packed = work / "layer.tar", work / "layer.tar.gz"
    with open(plain, "wb") as f:
        write_layer_tar(folder, f, mtime)
    with (open(plain, "rb") as src, open(packed, "wb") as raw,
          gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0,
                        compresslevel=6) as gz):
        while chunk := src.read(_CHUNK):
            gz.write(chunk)
    blobs = []
    for path in (plain, packed):
        with open(path, "rb") as f:
            digest, size = sha256_of(f)
        blobs.append(Blob(digest, size, path))
    return blobs[0], blobs[1]


def iso_time(mtime: int) -> str:
    return datetime.datetime.fromtimestamp(mtime, datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def image_config(diff_id: str, options: PackOptions) -> Blob:
    created = iso_time(options.mtime)
    return Blob.of(canonical_json({
        "architecture": options.arch, "os": "linux", "created": created, "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created": created, "created_by": "overlay-agent pack"}],
    }))


def add_member(tf: tarfile.TarFile, name: str, blob: Blob | None, mtime: int) -> None:
    info = tarfile.TarInfo(name)
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = mtime
    if blob is None:
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tf.addfile(info)
        return
    info.mode, info.size = 0o644, blob.size
    if blob.path is not None:
        with open(blob.path, "rb") as f:
            tf.addfile(info, f)
    else:
        tf.addfile(info, io.BytesIO(blob.data))


def oci_members(layer: Blob, config: Blob, tag: str) -> tuple[str, dict[str, Blob | None]]:
    manifest = Blob.of(canonical_json({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config.digest, "size": config.size},
        "layers": [{"mediaType": OCI_LAYER_GZIP, "digest": layer.digest, "size": layer.size}],
    }))
    index = Blob.of(canonical_json({
        "schemaVersion": 2, "mediaType": OCI_INDEX,
        "manifests": [{"mediaType": OCI_MANIFEST, "digest": manifest.digest,
                       "size": manifest.size, "annotations": {REF_NAME: tag}}],
    }))
    members: dict[str, Blob | None] = {"blobs": None, "blobs/sha256": None}
    for blob in (layer, config, manifest):
        members[f"blobs/sha256/{blob.hex}"] = blob
    members["index.json"] = index
    members["oci-layout"] = Blob.of(canonical_json({"imageLayoutVersion": "1.0.0"}))
    return manifest.digest, members


def docker_members(plain: Blob, config: Blob, tag: str) -> tuple[str, dict[str, Blob | None]]:
    layer_name = f"{plain.hex}/layer.tar"
    manifest = Blob.of(canonical_json([{"Config": f"{config.hex}.json", "RepoTags": [tag],
                                        "Layers": [layer_name]}]))
    return config.digest, {f"{config.hex}.json": config, plain.hex: None,
                           layer_name: plain, "manifest.json": manifest}


def write_archive(out: Path, members: dict[str, Blob | None], mtime: int) -> None:
    """Write the outer tar atomically: never half-written."""
    def write(f: BinaryIO) -> None:
        with tarfile.open(fileobj=f, mode="w|", format=tarfile.PAX_FORMAT) as tf:
            for name in sorted(members):
                add_member(tf, name, members[name], mtime)

    write_atomically(out, write)


def pack_extension(folder: Path, out: Path, options: PackOptions) -> str:
    """Validate FOLDER, then write the image to OUT; return its digest (manifest digest for
    oci-archive, config digest (the image ID) for docker-archive)."""
    src = Source(f"dir:{folder}", Transport.DIR, path=str(folder))
    ext = open_dir(src)
    problems = validate_extensions([ext], options.validate)
    if problems:
        raise ValidationFailed([str(p) for p in problems])
    assert ext.metadata is not None
    tag = options.tag or f"{ext.metadata.name}:{ext.metadata.version}"
    if not _TAG_RE.fullmatch(tag):
        raise UsageError(f"{tag}: not a valid NAME:TAG image tag (give one with --tag)")
    if not out.parent.is_dir():
        raise UsageError(f"{out}: folder {out.parent} does not exist")
    with tempfile.TemporaryDirectory(prefix=".pack-", dir=out.parent) as tmp:
        try:
            plain, packed = build_layer(folder, Path(tmp), options.mtime)
        except OSError as exc:
            raise BuildError(f"{folder}: cannot read {exc.filename}: {exc.strerror}") from None
        config = image_config(plain.digest, options)
        if options.format is PackFormat.OCI_ARCHIVE:
            digest, members = oci_members(packed, config, tag)
        else:
            digest, members = docker_members(plain, config, tag)
        write_archive(out, members, options.mtime)
    return digest
