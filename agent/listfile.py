"""Reading the extension list file, light enough for PID 1.

agent.contract is the contract (frozen dataclasses, the writer); this module holds its
paths and its reader's checks, and imports no json, re, enum or dataclasses (together
about 20 ms on this project's machines), so the boot path can read the list with it
and contract.parse_list shares the very same checks.
"""

from __future__ import annotations

from agent import lightjson
from agent.errors import ListFileError

SCHEMA_VERSION = 1
LIST_PATH = "/extensions.yaml"          # in the initramfs
IMAGES_DIR = "/extensions"              # squashfs images, in the initramfs
BOUND_LIST_PATH = "/etc/extensions.yaml"  # the list, shown read-only in the new root
STATUS_PATH = "/run/overlay-agent/status.json"  # in the booted system
MODULES_LAYER_NAME = "modules.dep"
KINDS = ("extension", "modules")       # contract.LayerKind values


class ListEntry:
    """One layer as read from the list, already checked (read-only by convention)."""

    __slots__ = ("author", "compatibility", "description", "image", "kind", "name", "sha256",
                 "size", "version")

    def __init__(self, image: str, kind: str, sha256: str, size: int, name: str, version: str,
                 author: str, description: str, compatibility: dict[str, object]) -> None:
        self.image, self.kind, self.sha256, self.size = image, kind, sha256, size
        self.name, self.version, self.author = name, version, author
        self.description, self.compatibility = description, compatibility

    @property
    def id(self) -> str:
        """The resource ID Talos shows: the image name without `.sqsh`."""
        return self.image[:-5] if self.image.endswith(".sqsh") else self.image


def check_metadata(data: object, where: str) -> tuple[str, str, str, str, dict[str, object]]:
    """(name, version, author, description, compatibility) of a layer's metadata."""
    if not isinstance(data, dict):
        raise ListFileError(f"{where}: metadata is not a mapping")
    for key in ("name", "version"):
        if key not in data:
            raise ListFileError(f"{where}: metadata has no {key}")
    compat = data.get("compatibility") or {}
    if not isinstance(compat, dict):
        raise ListFileError(f"{where}: metadata compatibility is not a mapping")
    return (str(data["name"]), str(data["version"]), str(data.get("author") or ""),
            str(data.get("description") or ""), dict(compat))


def check_entry(raw: object, at: str) -> ListEntry:
    if not isinstance(raw, dict) or not isinstance(raw.get("image"), str):
        raise ListFileError(f"{at}: needs an image name")
    image = raw["image"]
    if "/" in image or image in (".", ".."):
        raise ListFileError(f"{at}: image {image!r} is not a plain file name")
    kind = raw.get("kind", KINDS[0])
    if kind not in KINDS:
        raise ListFileError(f"{at}: unknown kind {kind!r}")
    size = raw.get("size", -1)
    if not isinstance(size, int):
        raise ListFileError(f"{at}: size {size!r} is not an integer")
    meta = check_metadata(raw.get("metadata") or {}, at)
    return ListEntry(image, kind, str(raw.get("sha256") or ""), size, *meta)


def check_list(doc: object, where: str) -> tuple[ListEntry, ...]:
    """Check a parsed list document; ListFileError names `where` and the problem."""
    if doc is None:
        return ()
    if not isinstance(doc, dict):
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
    return tuple(check_entry(raw, f"{where}: layers[{i}]") for i, raw in enumerate(raw_layers))


def load_document(text: str, where: str) -> object:
    """JSON (what the build writes); YAML block style (as Talos writes it) through yaml."""
    try:
        return lightjson.loads(text)
    except ValueError:
        pass
    try:
        import yaml
    except ImportError:
        raise ListFileError(f"{where}: not JSON, and no yaml module to read it as YAML") from None

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise ListFileError(f"{where}: not valid YAML{at}") from None


def read_list(text: str, where: str = LIST_PATH) -> tuple[ListEntry, ...]:
    return check_list(load_document(text, where), where)
