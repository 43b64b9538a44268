"""The data contract shared by build, boot and runtime: the extension list file.

The build writes `/extensions.yaml` into the initramfs, the boot side reads it and
binds it to `/etc/extensions.yaml`, and the runtime reports from it. Its shape is
Talos's (`layers: [{image, metadata}]`) plus `version`, and per layer `sha256` and
`size`. We write it as JSON, which is also valid YAML (JSON is a subset of YAML 1.2),
so that PID 1 parses it with the json module and never pays for importing yaml; a
list in YAML block style (as Talos writes it) is still read, through yaml.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from agent.errors import ListFileError

SCHEMA_VERSION = 1
LIST_PATH = "/extensions.yaml"          # in the initramfs
IMAGES_DIR = "/extensions"              # squashfs images, in the initramfs
BOUND_LIST_PATH = "/etc/extensions.yaml"  # the list, bound read-only into the new root
STATUS_PATH = "/run/overlay-agent/status.json"  # in the booted system
MODULES_LAYER_NAME = "modules.dep"


class LayerKind(enum.Enum):
    EXTENSION = "extension"
    MODULES = "modules"   # the synthetic depmod layer, always last (topmost)


@dataclass(frozen=True)
class ExtensionMetadata:
    """`metadata` of a Talos manifest.yaml (compatibility kept as the raw mapping)."""

    name: str
    version: str
    author: str = ""
    description: str = ""
    compatibility: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "version": self.version,
                               "author": self.author, "description": self.description}
        if self.compatibility:
            out["compatibility"] = _plain(self.compatibility)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], where: str) -> ExtensionMetadata:
        if not isinstance(data, Mapping):
            raise ListFileError(f"{where}: metadata is not a mapping")
        try:
            return cls(name=str(data["name"]), version=str(data["version"]),
                       author=str(data.get("author") or ""),
                       description=str(data.get("description") or ""),
                       compatibility=dict(data.get("compatibility") or {}))
        except KeyError as exc:
            raise ListFileError(f"{where}: metadata has no {exc.args[0]}") from None


@dataclass(frozen=True)
class Layer:
    """One squashfs image, in list order (later layers sit above earlier ones)."""

    image: str            # file name under IMAGES_DIR, e.g. "000-gvisor.sqsh"
    metadata: ExtensionMetadata
    sha256: str = ""      # empty in a Talos-written list: the check is then skipped
    size: int = -1        # -1 in a Talos-written list
    kind: LayerKind = LayerKind.EXTENSION

    @property
    def id(self) -> str:
        """The resource ID Talos shows: the image name without `.sqsh`."""
        return self.image[:-5] if self.image.endswith(".sqsh") else self.image


@dataclass(frozen=True)
class ExtensionList:
    layers: tuple[Layer, ...] = ()
    version: int = SCHEMA_VERSION


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dump_list(lst: ExtensionList) -> str:
    """Serialise deterministically (sorted keys, fixed indent): same list, same bytes."""
    doc = {
        "version": lst.version,
        "layers": [
            {"image": layer.image, "kind": layer.kind.value, "sha256": layer.sha256,
             "size": layer.size, "metadata": layer.metadata.to_dict()}
            for layer in lst.layers
        ],
    }
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def parse_list(text: str, where: str = LIST_PATH) -> ExtensionList:
    """Parse a list file; raise ListFileError naming `where` when it is unusable."""
    try:
        doc = json.loads(text)
    except ValueError:
        import yaml  # only for lists written in YAML block style (e.g. by Talos)

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise ListFileError(f"{where}: not valid YAML{at}") from None
    if doc is None:
        return ExtensionList()
    if not isinstance(doc, Mapping):
        raise ListFileError(f"{where}: top level is not a mapping")
    # Talos's own list has no version field: it is schema 1's ancestor and reads the same.
    version = doc.get("version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        raise ListFileError(f"{where}: unknown schema version {version!r} "
                            f"(this agent reads version {SCHEMA_VERSION})")
    raw_layers = doc.get("layers")
    if raw_layers is None:
        raw_layers = []
    if not isinstance(raw_layers, list):
        raise ListFileError(f"{where}: layers is not a list")
    layers = []
    for i, raw in enumerate(raw_layers):
        at = f"{where}: layers[{i}]"
        if not isinstance(raw, Mapping) or not isinstance(raw.get("image"), str):
            raise ListFileError(f"{at}: needs an image name")
        image = raw["image"]
        if "/" in image or image in (".", ".."):
            raise ListFileError(f"{at}: image {image!r} is not a plain file name")
        try:
            kind = LayerKind(raw.get("kind", LayerKind.EXTENSION.value))
        except ValueError:
            raise ListFileError(f"{at}: unknown kind {raw.get('kind')!r}") from None
        size = raw.get("size", -1)
        if not isinstance(size, int):
            raise ListFileError(f"{at}: size {size!r} is not an integer")
        layers.append(Layer(image=image, metadata=ExtensionMetadata.from_dict(
            raw.get("metadata") or {}, at), sha256=str(raw.get("sha256") or ""),
            size=size, kind=kind))
    return ExtensionList(layers=tuple(layers), version=SCHEMA_VERSION)
