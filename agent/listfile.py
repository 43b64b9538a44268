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

from agent import lightjson, yamltext
from agent.errors import ListFileError
from agent.escape import clip
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
# Bounds of the reader (a hostile list costs PID 1 little time and memory, never a boot):
MAX_LIST_BYTES = 4 << 20      # the file; JSON through the C scanner reads this in ms
# A Talos-written (YAML) list: the initramfs has pure-Python yaml only, about 8 ms a KiB
# here (bench/bench_hostile.py), and a hostile list may cost a boot at most a second.
# 64 KiB holds some 400 entries in Talos's style.
MAX_YAML_BYTES = 64 << 10
MAX_LIST_LAYERS = 2 * KERNEL_MAX_LOWER   # past MAX_LAYERS each fails; far past: unusable
MAX_TEXT = 16 << 10           # one metadata string (a description)
MAX_NAME = 255                # an image file name, in bytes (NAME_MAX)
MAX_COMPAT_NODES = 256        # metadata.compatibility: a small mapping
MAX_COMPAT_DEPTH = 8
# dm-verity, as the build formats it: sha256 over 4 KiB data and hash blocks, format 1
VERITY_BLOCK = 4096
VERITY_HASH = "sha256"
VERITY_SALT_MAX = 256      # bytes (the kernel's limit)
VERITY_MAX_OFFSET = 1 << 62   # the device-mapper table counts in 64-bit sectors
MAX_STORE_PATH = 4095        # PATH_MAX less its NUL
MAX_UUID = 36                # a GPT-style UUID; ext4's is 36, vfat's 9
_HEX = frozenset("0123456789abcdef")
_UUID_CHARS = frozenset("0123456789abcdefABCDEF-")


def image_name(index: int, name: str) -> str:
    """`NNN-NAME.sqsh`: the zero-padded index keeps layer order independent of name sorting."""
    safe = "".join(c if c in _NAME_CHARS else "-" for c in name).strip(".-") or "extension"
    return f"{index:03d}-{safe}{IMAGE_SUFFIX}"


_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._+-")


def check_image_name(image: object) -> str:
    """Why `image` cannot name a file under IMAGES_DIR, or "" when it can: one plain,
    printable file name (no NUL, newline or undecodable byte), at most NAME_MAX bytes."""
    if not isinstance(image, str) or not image:
        return "needs an image name"
    if "/" in image or image in (".", ".."):
        return f"image {image[:MAX_NAME]!r} is not a plain file name"
    if not image.isprintable():
        return f"image {image[:MAX_NAME]!r} holds a control character or an undecodable byte"
    if len(image.encode()) > MAX_NAME:
        return f"image name is over {MAX_NAME} bytes"
    return ""


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
        text = {key: scalar_text(data.get(key), f"{where}: metadata {key}")
                for key in ("name", "version", "author", "description")}
        budget = [MAX_COMPAT_NODES]
        return cls(text["name"], text["version"], text["author"], text["description"],
                   plain_copy(compat, f"{where}: metadata compatibility", 0, budget))


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
                raise ListFileError(f"{where}: verity {key} {clip(repr(value), 40)} is not a "
                                    f"positive multiple of {VERITY_BLOCK}")
            if value >= VERITY_MAX_OFFSET:
                raise ListFileError(f"{where}: verity {key} is over the limit of "
                                    f"{VERITY_MAX_OFFSET} bytes")
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


def scalar_text(value: object, where: str) -> str:
    """A metadata string: a scalar (a YAML version may read as a number) of bounded size."""
    if value is None:
        return ""
    if not isinstance(value, (str, int, float)):
        raise ListFileError(f"{where} is not a string")
    text = str(value)
    if len(text) > MAX_TEXT:
        raise ListFileError(f"{where} is over {MAX_TEXT} characters")
    return text


def plain_copy(value: object, where: str, depth: int, budget: list[int]) -> dict[str, object]:
    """A copy of a compatibility mapping made of plain JSON values, bounded in size and
    depth: a YAML alias bomb would otherwise expand when the status is written."""
    copied = _copy(value, where, depth, budget)
    assert isinstance(copied, dict)
    return copied


def _copy(value: object, where: str, depth: int, budget: list[int]) -> object:
    budget[0] -= 1
    if budget[0] < 0 or depth > MAX_COMPAT_DEPTH:
        raise ListFileError(f"{where} is larger than {MAX_COMPAT_NODES} values or deeper "
                            f"than {MAX_COMPAT_DEPTH} levels")
    if isinstance(value, dict):
        return {scalar_text(k, where): _copy(v, where, depth + 1, budget)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v, where, depth + 1, budget) for v in value]
    if value is None or isinstance(value, bool):
        return value
    return scalar_text(value, where)


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
    text = json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
    read_list(text, LIST_PATH)   # the build writes nothing the boot would refuse
    return text


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
    """A relative path of printable plain names: it is joined to where the store is
    mounted, and shown in reasons."""
    shown = clip(repr(path), 80)
    if not isinstance(path, str) or not path or path.startswith("/"):
        raise ListFileError(f"{at}: store path {shown} is not a relative path")
    if not path.isprintable():
        raise ListFileError(f"{at}: store path {shown} holds a control character or an "
                            "undecodable byte")
    if len(path.encode()) > MAX_STORE_PATH or \
            any(len(part.encode()) > MAX_NAME for part in path.split("/")):
        raise ListFileError(f"{at}: store path is over {MAX_STORE_PATH} bytes or has a part "
                            f"over {MAX_NAME}")
    if any(part in ("", ".", "..") for part in path.split("/")):
        raise ListFileError(f"{at}: store path {shown} has an empty, . or .. part")
    return path


def check_layer(raw: object, at: str) -> Layer:
    if not isinstance(raw, dict):
        raise ListFileError(f"{at}: needs an image name")
    image = raw.get("image")
    problem = check_image_name(image)
    if problem:
        raise ListFileError(f"{at}: {problem}")
    assert isinstance(image, str)
    kind = raw.get("kind", KIND_EXTENSION)
    if not isinstance(kind, str) or kind not in KINDS:
        raise ListFileError(f"{at}: unknown kind {str(kind)[:40]!r}")
    size = raw.get("size", -1)
    if not isinstance(size, int) or isinstance(size, bool) or not -1 <= size < 1 << 62:
        raise ListFileError(f"{at}: size {str(size)[:40]!r} is not a size in bytes")
    sha256 = raw.get("sha256") or ""
    if not isinstance(sha256, str) or not (sha256 == "" or is_sha256(sha256)):
        raise ListFileError(f"{at}: sha256 {str(sha256)[:72]!r} is not 64 hex digits")
    meta = Metadata.from_dict(raw.get("metadata") or {}, at)
    verity = None if raw.get("verity") is None else Verity.from_dict(raw["verity"], at)
    store, path = raw.get("store") or "", ""
    if store:
        if not isinstance(store, str) or not set(store) <= _UUID_CHARS or \
                len(store) > MAX_UUID or not store.strip("-"):
            raise ListFileError(f"{at}: store {clip(repr(store), 40)} is not a filesystem UUID")
        if verity is None:
            raise ListFileError(f"{at}: a store image needs verity (its root hash is what "
                                "vouches for it)")
        path = check_store_path(raw.get("path"), at)
    if verity is not None and size >= 0 and verity.hash_offset + VERITY_BLOCK > size:
        raise ListFileError(f"{at}: verity hash_offset {verity.hash_offset} is past the "
                            f"image's end ({size} bytes)")
    return Layer(image, meta, sha256.lower(), size, kind, verity, store, path)


def is_sha256(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdefABCDEF" for c in text)


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
    if len(raw_layers) > MAX_LIST_LAYERS:
        raise ListFileError(f"{where}: {len(raw_layers)} layers, over the limit of "
                            f"{MAX_LIST_LAYERS}")
    return tuple(check_layer(raw, f"{where}: layers[{i}]") for i, raw in enumerate(raw_layers))


def decode_list(data: bytes, where: str) -> str:
    """The list file's text: UTF-8 of at most MAX_LIST_BYTES."""
    if len(data) > MAX_LIST_BYTES:
        raise ListFileError(f"{where}: {len(data)} bytes, over the limit of {MAX_LIST_BYTES}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ListFileError(f"{where}: not UTF-8 (byte {exc.start})") from None


def load_document(text: str, where: str) -> object:
    """JSON (what the build writes); YAML block style (as Talos writes it) through yaml."""
    try:
        return lightjson.loads(text)
    except RecursionError:
        raise ListFileError(f"{where}: JSON nested too deeply") from None
    except ValueError:
        pass
    if len(text) > MAX_YAML_BYTES:
        raise ListFileError(f"{where}: not JSON, and over the limit of {MAX_YAML_BYTES} "
                            "bytes for YAML")
    try:
        return yamltext.load(text)
    except ImportError:
        raise ListFileError(f"{where}: not JSON, and no yaml module to read it as YAML") from None
    except yamltext.YamlError as exc:
        raise ListFileError(f"{where}: {exc}") from None


def salvage_layers(doc: object) -> list[Layer]:
    """Best effort for a list we cannot use: its layers by image, to record them as skipped.
    Only plain, bounded strings are taken (the status must not carry what the list refused)."""
    raws = doc.get("layers") if isinstance(doc, dict) else None
    found = []
    for raw in raws[:MAX_LIST_LAYERS] if isinstance(raws, list) else []:
        image = raw.get("image") if isinstance(raw, dict) else None
        if isinstance(raw, dict) and isinstance(image, str) and not check_image_name(image):
            meta = raw.get("metadata")
            meta = meta if isinstance(meta, dict) else {}
            name, version, kind = (_short(meta.get("name")) or image,
                                   _short(meta.get("version")), _short(raw.get("kind")))
            found.append(Layer(image, Metadata(name, version), kind=kind))
    return found


def _short(value: object) -> str:
    """A salvaged string: kept when it is one, printable and short."""
    return value if isinstance(value, str) and len(value) <= 256 and value.isprintable() \
        else ""


def read_list(text: str, where: str = LIST_PATH) -> tuple[Layer, ...]:
    """Parse a list file; ListFileError names `where` when it is unusable."""
    return check_list(load_document(text, where), where)
