"""Helpers that make OCI layouts from the packed valid fixture, plain or multi-platform."""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Any

from agent.image.pack import PackOptions, pack_extension

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "extensions"
VALID = FIXTURES / "talos-valid" / "image"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"


def unpacked_layout(tmp_path: Path, tag: str = "ext:v1") -> Path:
    out = tmp_path / "packed.tar"
    pack_extension(VALID, out, PackOptions(tag=tag))
    layout = tmp_path / "layout"
    with tarfile.open(out) as tf:
        if hasattr(tarfile, "data_filter"):     # Python >= 3.11.4 / 3.12
            tf.extractall(layout, filter="data")
        else:
            tf.extractall(layout)               # our own archive, made just above
    return layout


def write_blob(layout: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def read_index(layout: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((layout / "index.json").read_text())
    return doc


def make_multi_platform(layout: Path, other_digest: str) -> tuple[str, str]:
    """Put the image behind a nested index with an arm64 entry pointing at `other_digest`;
    return (index digest, amd64 manifest digest)."""
    index = read_index(layout)
    entry = index["manifests"][0]
    plain = {k: v for k, v in entry.items() if k != "annotations"}
    nested = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [
        {**plain, "digest": other_digest, "platform": {"architecture": "arm64", "os": "linux"}},
        {**plain, "platform": {"architecture": "amd64", "os": "linux"}}]}
    desc = write_blob(layout, json.dumps(nested).encode())
    index["manifests"] = [{"mediaType": OCI_INDEX, **desc, "annotations": entry["annotations"]}]
    (layout / "index.json").write_text(json.dumps(index))
    return desc["digest"], entry["digest"]
