"""Read OCI image layouts (a folder or an oci-archive tar) and docker-archive tars.

Every blob read is checked against its descriptor's sha256 and size before it is used.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from agent.errors import SourceError
from agent.files import open_regular

INDEX_TYPES = ("application/vnd.oci.image.index.v1+json",
               "application/vnd.docker.distribution.manifest.list.v2+json")
MANIFEST_TYPES = ("application/vnd.oci.image.manifest.v1+json",
                  "application/vnd.docker.distribution.manifest.v2+json")
REF_NAME = "org.opencontainers.image.ref.name"
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
MAX_JSON_BLOB = 4 * 2**20      # manifests, indexes and configs are small
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Descriptor:
    media_type: str
    digest: str
    size: int
    platform: Mapping[str, Any]
    annotations: Mapping[str, str]

    @property
    def short(self) -> str:
        return self.digest[:19]


@dataclass(frozen=True)
class LayerBlob:
    """A layer to unpack: where to open it, and what its content must hash to."""

    descriptor: Descriptor | None    # None for docker-archive layers named by path
    member: str                      # blob path inside the store
    diff_id: str | None              # sha256 of the uncompressed tar, from the config


@dataclass(frozen=True)
class Image:
    digest: str                      # manifest digest (config digest for docker-archive)
    layers: tuple[LayerBlob, ...]


class Store(Protocol):
    @property
    def where(self) -> str: ...

    def open(self, member: str) -> IO[bytes]: ...


@dataclass(frozen=True)
class DirStore:
    """An OCI image layout folder."""

    where: str
    path: Path

    def open(self, member: str) -> IO[bytes]:
        try:
            # a regular file only: a blob that is a fifo or a link to /dev/zero never ends
            fd, _ = open_regular(str(self.path / member), follow=True)
        except OSError as exc:
            raise SourceError(f"{self.where}: cannot read {member}: {exc.strerror}") from None
        return os.fdopen(fd, "rb")


@dataclass(frozen=True)
class TarStore:
    """An oci-archive or docker-archive: members read in place, never extracted."""

    where: str
    tar: tarfile.TarFile

    def open(self, member: str) -> IO[bytes]:
        try:
            info = self.tar.getmember(member)
        except KeyError:
            info = None
        if info is None or not info.isreg():
            raise SourceError(f"{self.where}: archive has no file {member}")
        data = self.tar.extractfile(info)
        assert data is not None
        return data


def open_tar(where: str, path: Path) -> TarStore:
    try:
        return TarStore(where, tarfile.open(path, "r:*"))
    except FileNotFoundError:
        raise SourceError(f"{where}: {path} does not exist") from None
    except (OSError, tarfile.TarError) as exc:
        raise SourceError(f"{where}: {path} is not a readable tar archive: {exc}") from None


def blob_member(where: str, digest: str) -> str:
    if not DIGEST_RE.fullmatch(digest):
        raise SourceError(f"{where}: unsupported or malformed digest {digest!r}")
    return "blobs/sha256/" + digest.split(":", 1)[1]


def sha256_of(stream: IO[bytes], limit: int = -1) -> tuple[str, int]:
    """Digest and size; reading stops one chunk past `limit` bytes (when >= 0)."""
    h, size = hashlib.sha256(), 0
    while chunk := stream.read(_CHUNK):
        h.update(chunk)
        size += len(chunk)
        if 0 <= limit < size:
            break
    return "sha256:" + h.hexdigest(), size


def verify_blob(store: Store, desc: Descriptor) -> None:
    with store.open(blob_member(store.where, desc.digest)) as f:
        digest, size = sha256_of(f, desc.size)
    if digest != desc.digest or (desc.size >= 0 and size != desc.size):
        raise SourceError(f"{store.where}: blob {desc.short} does not match its digest "
                          f"(got {digest[:19]}, {size} bytes)")


def read_json(store: Store, member: str, what: str) -> Any:
    with store.open(member) as f:
        data = f.read(MAX_JSON_BLOB + 1)
    if len(data) > MAX_JSON_BLOB:
        raise SourceError(f"{store.where}: {what} is too large")
    return parse_json(store.where, data, what)


def parse_json(where: str, data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        raise SourceError(f"{where}: {what} is not valid JSON") from None


def read_blob_json(store: Store, desc: Descriptor, what: str) -> Any:
    verify_blob(store, desc)
    return read_json(store, blob_member(store.where, desc.digest), what)


def descriptor(where: str, raw: Any, what: str) -> Descriptor:
    if not isinstance(raw, Mapping) or not isinstance(raw.get("digest"), str):
        raise SourceError(f"{where}: {what} is not a valid descriptor")
    size = raw.get("size", -1)
    return Descriptor(str(raw.get("mediaType", "")), raw["digest"],
                      size if isinstance(size, int) else -1,
                      raw.get("platform") or {}, raw.get("annotations") or {})


def pick_platform(where: str, descs: list[Descriptor], arch: str) -> Descriptor:
    for desc in descs:
        if desc.platform.get("architecture") == arch and desc.platform.get("os") == "linux":
            return desc
    have = ", ".join(f"{d.platform.get('os')}/{d.platform.get('architecture')}" for d in descs)
    raise SourceError(f"{where}: no image for linux/{arch} (has: {have or 'none'})")


def pick_tagged(where: str, descs: list[Descriptor], tag: str) -> Descriptor:
    if tag:
        for desc in descs:
            if desc.annotations.get(REF_NAME) == tag:
                return desc
        raise SourceError(f"{where}: no image tagged {tag!r}")
    if len(descs) == 1:
        return descs[0]
    tags = sorted(d.annotations.get(REF_NAME, "?") for d in descs)
    raise SourceError(f"{where}: holds {len(descs)} images; name one with :TAG "
                      f"(tags: {', '.join(tags)})")


def manifests_of(where: str, doc: Any) -> list[Descriptor]:
    if not isinstance(doc, Mapping) or not isinstance(doc.get("manifests"), list):
        raise SourceError(f"{where}: index has no manifests list")
    return [descriptor(where, m, "index entry") for m in doc["manifests"]]


def read_layout(store: Store, tag: str, arch: str) -> Image:
    """Resolve index.json (and nested indexes) to one platform's manifest and its layers."""
    top = pick_tagged(store.where, manifests_of(store.where, read_json(store, "index.json",
                                                                      "index.json")), tag)
    desc = top
    for _ in range(4):  # index -> index -> manifest, at most a few levels
        if desc.media_type not in INDEX_TYPES:
            break
        nested = manifests_of(store.where, read_blob_json(store, desc, "image index"))
        desc = pick_platform(store.where, nested, arch)
    if desc.media_type and desc.media_type not in MANIFEST_TYPES:
        raise SourceError(f"{store.where}: unsupported manifest type {desc.media_type}")
    manifest = read_blob_json(store, desc, "image manifest")
    if not isinstance(manifest, Mapping) or not isinstance(manifest.get("layers"), list):
        raise SourceError(f"{store.where}: image manifest has no layers list")
    config = read_blob_json(store, descriptor(store.where, manifest.get("config"), "config"),
                            "image config")
    diff_ids = diff_ids_of(store.where, config)
    layers = []
    for i, raw in enumerate(manifest["layers"]):
        ld = descriptor(store.where, raw, f"layer {i}")
        verify_blob(store, ld)
        layers.append(LayerBlob(ld, blob_member(store.where, ld.digest),
                            diff_ids[i] if i < len(diff_ids) else None))
    if diff_ids and len(diff_ids) != len(layers):
        raise SourceError(f"{store.where}: config lists {len(diff_ids)} layers, "
                          f"manifest {len(layers)}")
    return Image(desc.digest, tuple(layers))


def diff_ids_of(where: str, config: Any) -> list[str]:
    rootfs = config.get("rootfs") if isinstance(config, Mapping) else None
    ids = rootfs.get("diff_ids") if isinstance(rootfs, Mapping) else None
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise SourceError(f"{where}: image config has no rootfs.diff_ids")
    return list(ids)


def read_docker_archive(store: TarStore) -> Image:
    """`docker save` output: manifest.json names the config and the layer tars."""
    doc = read_json(store, "manifest.json", "manifest.json")
    if not isinstance(doc, list) or not doc or not isinstance(doc[0], Mapping):
        raise SourceError(f"{store.where}: manifest.json lists no image")
    if len(doc) > 1:
        raise SourceError(f"{store.where}: holds {len(doc)} images; save one per archive")
    entry = doc[0]
    config_name, layer_names = entry.get("Config"), entry.get("Layers")
    if not isinstance(config_name, str) or not isinstance(layer_names, list):
        raise SourceError(f"{store.where}: manifest.json entry needs Config and Layers")
    with store.open(config_name) as f:
        config_digest, _ = sha256_of(f)
    # the config file is named by its own digest ("<hex>.json" or "blobs/sha256/<hex>")
    stem = config_name.rsplit("/", 1)[-1].removesuffix(".json")
    if re.fullmatch(r"[0-9a-f]{64}", stem) and config_digest != f"sha256:{stem}":
        raise SourceError(f"{store.where}: {config_name} does not match its digest")
    diff_ids = diff_ids_of(store.where, read_json(store, config_name, config_name))
    if len(diff_ids) != len(layer_names):
        raise SourceError(f"{store.where}: config lists {len(diff_ids)} layers, "
                          f"manifest.json {len(layer_names)}")
    layers = tuple(LayerBlob(None, str(name), diff_id)
                   for name, diff_id in zip(layer_names, diff_ids, strict=True))
    return Image(config_digest, layers)
