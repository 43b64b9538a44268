"""The data contract shared by build, boot and runtime: the extension list file.

The build writes `/extensions.yaml` into the initramfs, the boot side reads it and
binds it to `/etc/extensions.yaml`, and the runtime reports from it. Its shape is
Talos's (`layers: [{image, metadata}]`) plus `version`, and per layer `sha256` and
`size`. We write it as JSON, which is also valid YAML (JSON is a subset of YAML 1.2),
so that PID 1 parses it with json's C scanner (agent.listfile) and never pays for
importing yaml; a list in YAML block style (as Talos writes it) is still read, through yaml.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# The paths and the reader's checks live in agent.listfile, light enough for PID 1.
from agent.listfile import BOUND_LIST_PATH as BOUND_LIST_PATH
from agent.listfile import IMAGES_DIR as IMAGES_DIR
from agent.listfile import LIST_PATH as LIST_PATH
from agent.listfile import MODULES_LAYER_NAME as MODULES_LAYER_NAME
from agent.listfile import SCHEMA_VERSION as SCHEMA_VERSION
from agent.listfile import STATUS_PATH as STATUS_PATH
from agent.listfile import check_metadata, read_list


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
        name, version, author, description, compat = check_metadata(
            dict(data) if isinstance(data, Mapping) else data, where)
        return cls(name, version, author, description, compat)


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
    return ExtensionList(layers=tuple(
        Layer(image=e.image, metadata=ExtensionMetadata(e.name, e.version, e.author,
                                                        e.description, e.compatibility),
              sha256=e.sha256, size=e.size, kind=LayerKind(e.kind))
        for e in read_list(text, where)), version=SCHEMA_VERSION)
