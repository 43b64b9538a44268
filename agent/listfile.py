"""The extension list file, `/extensions.yaml`: the contract of build, boot and runtime.

The build writes it into the initramfs, the boot side reads it and shows it at
`/etc/extensions.yaml`, `inspect` and the status report from it. Its shape is Talos's
(`layers: [{image, metadata}]`) plus `version` and, per layer, `kind`, `sha256` and `size`,
and optionally `verity` (the dm-verity hash tree appended to the image) and `store` + `path`
(an image kept on a disk filesystem, named by its UUID, instead of in the initramfs).
It is written as JSON, which is also YAML (JSON is a subset of YAML 1.2), so PID 1 reads it
with json's C scanner (agent.lightjson); a list in YAML block style, as Talos writes it,
is still read, through yaml. Every rule of the format lives here: paths, the image name and
ID rule, the layer limit, the reader's checks.
"""

from __future__ import annotations

from agent import lightjson
from agent.errors import ListFileError
from agent.values import Value

SCHEMA_VERSION = 1
LIST_PATH = "/extensions.yaml"            # in the initramfs
IMAGES_DIR = "/extensions"                # squashfs images, in the initramfs
BOUND_LIST_PATH = "/etc/extensions.yaml"  # the list, shown read-only in the new root
IMAGE_SUFFIX = ".sqsh"
MODULES_LAYER_NAME = "modules.dep"
KIND_EXTENSION = "extension"
KIND_MODULES = "modules"                  # the synthetic depmod layer, always last (topmost)
KINDS = (KIND_EXTENSION, KIND_MODULES)
# overlayfs stacks at most 500 lower layers (OVL_MAX_STACK) and the base root takes one:
# build refuses a list longer than boot can stack.
KERNEL_MAX_LOWER = 500
MAX_LAYERS = KERNEL_MAX_LOWER - 1
# dm-verity, as the build formats it: sha256 over 4 KiB data and hash blocks, format 1
VERITY_BLOCK = 4096
VERITY_HASH = "sha256"
VERITY_SALT_MAX = 256      # bytes (the kernel's limit)
_HEX = frozenset("0123456789abcdef")
_UUID_CHARS = frozenset("0123456789abcdefABCDEF-")


def image_name(index: int, name: str) -> str:
    """`NNN-NAME.sqsh`: the zero-padded index keeps layer order independent of name sorting."""
    safe = "".join(c if c in _NAME_CHARS else "-" for c in name).strip(".-") or "extension"
    return f"{index:03d}-{safe}{IMAGE_SUFFIX}"


_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-")


def layer_id(image: str) -> str:
    """The resource ID Talos shows: the image name without `.sqsh`."""
    return image[:-len(IMAGE_SUFFIX)] if image.endswith(IMAGE_SUFFIX) else image


class Metadata(Value):
    """`metadata` of a Talos manifest.yaml (compatibility kept as the raw mapping)."""

    __slots__ = ("author", "compatibility", "description", "name", "version")
    name: str
    version: str
    author: str
    description: str
    compatibility: dict[str, object]

    def __init__(self, name: str, version: str, author: str = "", description: str = "",
                 compatibility: dict[str, object] | None = None) -> None:
        self._set(name=name, version=version, author=author, description=description,
                  compatibility=dict(compatibility or {}))

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {"name": self.name, "version": self.version,
                                  "author": self.author, "description": self.description}
        if self.compatibility:
            out["compatibility"] = _plain(self.compatibility)
        return out

    @classmethod
    def from_dict(cls, data: object, where: str) -> Metadata:
        """Check a metadata mapping; ListFileError names `where` and the problem."""
        if not isinstance(data, dict):
            raise ListFileError(f"{where}: metadata is not a mapping")
        for key in ("name", "version"):
            if key not in data:
                raise ListFileError(f"{where}: metadata has no {key}")
        compat = data.get("compatibility") or {}
        if not isinstance(compat, dict):
            raise ListFileError(f"{where}: metadata compatibility is not a mapping")
        return cls(str(data["name"]), str(data["version"]), str(data.get("author") or ""),
                   str(data.get("description") or ""), compat)


class Verity(Value):
    """The dm-verity hash tree appended to an image: the data (the squashfs) is the first
    `data_size` bytes, the tree's 4 KiB superblock starts at `hash_offset`."""

    __slots__ = ("data_size", "hash_offset", "root_hash", "salt")
    root_hash: str        # hex, 64 digits
    salt: str             # hex
    data_size: int        # bytes, a multiple of VERITY_BLOCK
    hash_offset: int      # bytes, a multiple of VERITY_BLOCK, >= data_size

    def __init__(self, root_hash: str, salt: str, data_size: int, hash_offset: int) -> None:
        self._set(root_hash=root_hash, salt=salt, data_size=data_size, hash_offset=hash_offset)

    @property
    def data_blocks(self) -> int:
        return self.data_size // VERITY_BLOCK

    @property
    def hash_start_block(self) -> int:
        """The tree's first block, past its superblock (the table counts in hash blocks)."""
        return self.hash_offset // VERITY_BLOCK + 1

    def to_dict(self) -> dict[str, object]:
        return {"root_hash": self.root_hash, "salt": self.salt, "data_size": self.data_size,
                "hash_offset": self.hash_offset}

    @classmethod
    def from_dict(cls, data: object, where: str) -> Verity:
        if not isinstance(data, dict):
            raise ListFileError(f"{where}: verity is not a mapping")
        root, salt = data.get("root_hash"), data.get("salt")
        if not isinstance(root, str) or len(root) != 64 or not set(root) <= _HEX:
            raise ListFileError(f"{where}: verity root_hash is not 64 lowercase hex digits")
        if not isinstance(salt, str) or len(salt) % 2 or len(salt) > 2 * VERITY_SALT_MAX \
                or not set(salt) <= _HEX:
            raise ListFileError(f"{where}: verity salt is not lowercase hex of at most "
                                f"{VERITY_SALT_MAX} bytes")
        sizes = []
        for key in ("data_size", "hash_offset"):
            value = data.get(key)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0 \
                    or value % VERITY_BLOCK:
                raise ListFileError(f"{where}: verity {key} {value!r} is not a positive "
                                    f"multiple of {VERITY_BLOCK}")
            sizes.append(value)
        if sizes[1] < sizes[0]:
            raise ListFileError(f"{where}: verity hash_offset {sizes[1]} is inside the data "
                                f"({sizes[0]} bytes)")
        return cls(root, salt, sizes[0], sizes[1])


class Layer(Value):
    """One squashfs image, in list order (later layers sit above earlier ones)."""

    __slots__ = ("image", "kind", "metadata", "path", "sha256", "size", "store", "verity")
    image: str            # file name under IMAGES_DIR, e.g. "000-gvisor.sqsh"
    metadata: Metadata
    sha256: str           # empty in a Talos-written list: the check is then skipped
    size: int             # -1 in a Talos-written list
    kind: str             # one of KINDS
    verity: Verity | None
    store: str            # filesystem UUID of the store holding the image; "": initramfs
    path: str             # the image's path inside the store filesystem (no leading /)

    def __init__(self, image: str, metadata: Metadata, sha256: str = "", size: int = -1,
                 kind: str = KIND_EXTENSION, verity: Verity | None = None, store: str = "",
                 path: str = "") -> None:
        self._set(image=image, metadata=metadata, sha256=sha256, size=size, kind=kind,
                  verity=verity, store=store, path=path)

    @property
    def id(self) -> str:
        return layer_id(self.image)

    @property
    def name(self) -> str:
        return self.metadata.name


def _plain(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def dump_list(layers: tuple[Layer, ...] | list[Layer]) -> str:
    """Serialise deterministically (sorted keys, fixed indent): same list, same bytes."""
    import json  # build side only: PID 1 never writes the list

    doc = {"version": SCHEMA_VERSION, "layers": [layer_dict(layer) for layer in layers]}
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def layer_dict(layer: Layer) -> dict[str, object]:
    """One layer; the optional keys only when set, so a list without them reads as before."""
    out: dict[str, object] = {"image": layer.image, "kind": layer.kind, "sha256": layer.sha256,
                              "size": layer.size, "metadata": layer.metadata.to_dict()}
    if layer.verity is not None:
        out["verity"] = layer.verity.to_dict()
    if layer.store:
        out["store"], out["path"] = layer.store, layer.path
    return out


def check_store_path(path: object, at: str) -> str:
    """A relative path of plain names: it is joined to where the store is mounted."""
    if not isinstance(path, str) or not path or path.startswith("/") or "\0" in path:
        raise ListFileError(f"{at}: store path {path!r} is not a relative path")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ListFileError(f"{at}: store path {path!r} has an empty, . or .. part")
    return path


def check_layer(raw: object, at: str) -> Layer:
    if not isinstance(raw, dict) or not isinstance(raw.get("image"), str):
        raise ListFileError(f"{at}: needs an image name")
    image = raw["image"]
    if "/" in image or image in (".", ".."):
        raise ListFileError(f"{at}: image {image!r} is not a plain file name")
    kind = raw.get("kind", KIND_EXTENSION)
    if kind not in KINDS:
        raise ListFileError(f"{at}: unknown kind {kind!r}")
    size = raw.get("size", -1)
    if not isinstance(size, int) or isinstance(size, bool):
        raise ListFileError(f"{at}: size {size!r} is not an integer")
    meta = Metadata.from_dict(raw.get("metadata") or {}, at)
    verity = None if raw.get("verity") is None else Verity.from_dict(raw["verity"], at)
    store, path = raw.get("store") or "", ""
    if store:
        if not isinstance(store, str) or not set(store) <= _UUID_CHARS or len(store) > 36:
            raise ListFileError(f"{at}: store {store!r} is not a filesystem UUID")
        if verity is None:
            raise ListFileError(f"{at}: a store image needs verity (its root hash is what "
                                "vouches for it)")
        path = check_store_path(raw.get("path"), at)
    return Layer(image, meta, str(raw.get("sha256") or ""), size, kind, verity, store, path)


def check_list(doc: object, where: str) -> tuple[Layer, ...]:
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
    return tuple(check_layer(raw, f"{where}: layers[{i}]") for i, raw in enumerate(raw_layers))


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


def read_list(text: str, where: str = LIST_PATH) -> tuple[Layer, ...]:
    """Parse a list file; ListFileError names `where` when it is unusable."""
    return check_list(load_document(text, where), where)
