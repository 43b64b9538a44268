"""Image sources (registry, OCI layout, archives) -> verified layers -> unpacked folder.

Registry pulls go through skopeo (auth files, mirrors, proxies, signature policy) into a
local OCI layout, then the same reader as `oci:`.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

from agent.errors import SourceError, ToolError, UnpackError
from agent.image.manifest import load_manifest
from agent.image.model import FetchOptions, UnpackedExtension
from agent.image.oci import (
    INDEX_TYPES,
    DirStore,
    Image,
    Store,
    manifests_of,
    open_tar,
    parse_json,
    pick_platform,
    read_docker_archive,
    read_layout,
)
from agent.image.source import Source, Transport
from agent.image.unpack import apply_dir_modes, unpack_layer
from agent.tools import run

POLICY_PATHS = ("/etc/containers/policy.json", "~/.config/containers/policy.json")
PERMISSIVE_POLICY = {"default": [{"type": "insecureAcceptAnything"}]}
SKOPEO_TIMEOUT = 1800.0


def skopeo(src: Source, work: Path, *args: str) -> bytes:
    """Run skopeo; its last error line becomes a one-line SourceError naming the source."""
    argv = ["skopeo"]
    if not any(Path(p).expanduser().exists() for p in POLICY_PATHS):
        # skopeo refuses to run without a signature policy; an absent one means "no policy"
        policy = work / "policy.json"
        policy.write_text(json.dumps(PERMISSIVE_POLICY))
        argv += ["--policy", str(policy)]
    proc = run([*argv, *args], check=False, capture=True, timeout=SKOPEO_TIMEOUT)
    if proc.returncode != 0:
        raise SourceError(f"{src.text}: cannot fetch from {src.registry}: "
                          f"{skopeo_reason(proc.stderr, proc.returncode)}")
    return proc.stdout


def skopeo_reason(stderr: bytes, status: int) -> str:
    """The useful part of skopeo's last log line (`time=... level=fatal msg="..."`)."""
    lines = stderr.decode(errors="replace").strip().splitlines()
    if not lines:
        return f"skopeo exit status {status}"
    m = re.search(r'msg="((?:[^"\\]|\\.)*)"', lines[-1])
    text = m.group(1).replace('\\"', '"') if m else lines[-1]
    return re.sub(r'^Error parsing image name "[^"]*": ', "", text)


def tls_flag(src: Source, options: FetchOptions, side: str) -> list[str]:
    host = src.registry
    bare = host.split(":", 1)[0]
    if host in options.insecure_registries or bare in options.insecure_registries:
        return [f"--{side}tls-verify=false"]
    return []


def resolve_digest(src: Source, work: Path, options: FetchOptions) -> str:
    """The digest of the platform manifest to copy; a pinned digest must match exactly."""
    raw = skopeo(src, work, "inspect", "--raw", *tls_flag(src, options, ""), src.skopeo_ref)
    digest = "sha256:" + hashlib.sha256(raw).hexdigest()
    if src.digest and digest != src.digest:
        raise SourceError(f"{src.text}: registry returned {digest[:19]}..., not the pinned "
                          f"digest {src.digest}")
    doc = parse_json(src.text, raw, "manifest")
    media_type = doc.get("mediaType", "") if isinstance(doc, dict) else ""
    if media_type in INDEX_TYPES or (isinstance(doc, dict) and "manifests" in doc):
        descs = manifests_of(src.text, doc)
        return pick_platform(src.text, descs, options.arch).digest
    return digest


def pull(src: Source, work: Path, options: FetchOptions) -> tuple[DirStore, str]:
    digest = resolve_digest(src, work, options)
    layout = work / "layout"
    by_digest = f"docker://{src.name}@{digest}"
    skopeo(src, work, "copy", "--quiet", *tls_flag(src, options, "src-"),
           "--override-os", "linux", "--override-arch", options.arch,
           by_digest, f"oci:{layout}:pulled")
    return DirStore(src.text, layout), digest


CACHE_LAYOUT = "oci"               # one OCI layout: blobs shared, one tag per digest
CACHE_INDEX = "sources.json"       # source text -> digest it last resolved to


def digest_tag(digest: str) -> str:
    return digest.replace(":", "-")      # an OCI ref name cannot hold ":"


def read_cache_index(cache: Path) -> dict[str, str]:
    try:
        doc = json.loads((cache / CACHE_INDEX).read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in doc.items() if isinstance(v, str)} if isinstance(doc, dict) else {}


def write_cache_index(cache: Path, index: dict[str, str]) -> None:
    from agent.output import write_bytes_atomically

    write_bytes_atomically(cache / CACHE_INDEX, json.dumps(index, indent=1, sort_keys=True)
                           .encode() + b"\n")


def layout_has_tag(layout: Path, tag: str) -> bool:
    try:
        doc = json.loads((layout / "index.json").read_text())
    except (OSError, ValueError):
        return False
    manifests = doc.get("manifests") if isinstance(doc, dict) else None
    return any(isinstance(m, dict) and isinstance(m.get("annotations"), dict)
               and m["annotations"].get("org.opencontainers.image.ref.name") == tag
               for m in manifests or [])


def pull_cached(src: Source, work: Path, options: FetchOptions,
                cache: Path) -> tuple[DirStore, str, str]:
    """Pull into the cache's layout by digest (nothing copied when it is there already) and
    remember the digest; with the registry unreachable, the digest the source last resolved
    to is used from the cache. Returns the store, the digest and its tag."""
    layout = cache / CACHE_LAYOUT
    index = read_cache_index(cache)
    try:
        digest = resolve_digest(src, work, options)
    except (SourceError, ToolError) as exc:   # unreachable, or no skopeo (only recommended)
        reason = str(exc) if isinstance(exc, SourceError) else f"{src.text}: {exc}"
        digest = index.get(src.text, "")
        if not digest:
            raise SourceError(f"{reason}; not in the cache {cache}") from None
        return DirStore(src.text, layout), digest, digest_tag(digest)
    tag = digest_tag(digest)
    if not layout_has_tag(layout, tag):
        cache.mkdir(parents=True, exist_ok=True)
        skopeo(src, work, "copy", "--quiet", *tls_flag(src, options, "src-"),
               "--override-os", "linux", "--override-arch", options.arch,
               f"docker://{src.name}@{digest}", f"oci:{layout}:{tag}")
    if index.get(src.text) != digest:
        write_cache_index(cache, {**index, src.text: digest})
    return DirStore(src.text, layout), digest, tag


def unpack_image(store: Store, image: Image, root: Path, src: Source,
                 options: FetchOptions) -> None:
    root.mkdir()
    modes: dict[str, int] = {}
    for i, layer in enumerate(image.layers):
        name = layer.descriptor.short if layer.descriptor else layer.member
        label = f"{src.text}: layer {i} ({name})"
        with store.open(layer.member) as raw:
            modes.update(unpack_layer(raw, root, label, options.max_layer_size, layer.diff_id))
    apply_dir_modes(modes)


def fetch_image(src: Source, work: Path, options: FetchOptions) -> UnpackedExtension:
    """Fetch, verify and unpack an image source into WORK/root."""
    root = work / "root"
    try:
        if src.transport is Transport.DOCKER and options.cache is not None:
            store, digest, tag = pull_cached(src, work, options, options.cache)
            image = read_layout(store, tag, options.arch)
            unpack_image(store, image, root, src, options)
            return UnpackedExtension(src.text, root, digest, load_manifest(root).metadata)
        if src.transport is Transport.DOCKER:
            store, digest = pull(src, work, options)
            image = read_layout(store, "pulled", options.arch)
            unpack_image(store, image, root, src, options)
            shutil.rmtree(store.path)
            return UnpackedExtension(src.text, root, digest, load_manifest(root).metadata)
        if src.transport is Transport.OCI:
            if not os.path.isdir(src.path):
                raise SourceError(f"{src.text}: {src.path} is not an OCI layout folder")
            dir_store = DirStore(src.text, Path(src.path))
            image = read_layout(dir_store, src.tag, options.arch)
            unpack_image(dir_store, image, root, src, options)
        else:
            tar_store = open_tar(src.text, Path(src.path))
            with tar_store.tar:
                image = (read_layout(tar_store, src.tag, options.arch)
                         if src.transport is Transport.OCI_ARCHIVE
                         else read_docker_archive(tar_store))
                unpack_image(tar_store, image, root, src, options)
    except (SourceError, UnpackError):
        shutil.rmtree(work, ignore_errors=True)
        raise
    return UnpackedExtension(src.text, root, image.digest, load_manifest(root).metadata)

