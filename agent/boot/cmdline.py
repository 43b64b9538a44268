"""The one parser of the kernel command line: text -> BootParams (pure: no I/O).

PID 1 and hook mode both read it here. Keys follow the kernel's and initramfs-tools'
meaning (Documentation/admin-guide/kernel-parameters.txt); everything after ` -- `
belongs to init. scan_cmdline() never fails: it records each problem with its key, so the
fatal path still knows panic= and hook mode can ignore keys another initramfs owns.
"""

from __future__ import annotations

from agent.boot.layout import DEFAULT_INIT
from agent.errors import BootError
from agent.values import Value

PREFIX = "overlay_agent."
DEFAULT_ROOT_WAIT = 30.0  # seconds to wait for root= without rootdelay=/rootwait
_TRUE = ("", "1", "y", "yes", "true", "on")
_FALSE = ("0", "n", "no", "false", "off")
_OWN_FLAGS = ("disable", "strict", "debug")
_ROOT_SYNTAX = "expected /dev/NAME, UUID=, LABEL=, PARTUUID= or PARTLABEL="
UPPER_KEY = PREFIX + "upper"
UPPER_TMPFS = "tmpfs"
_SIZE_UNITS = "kKmMgG%"
_MAX_DIGITS = 18           # a tmpfs size: past this it is no size any kernel can give
_MAX_ID = 36               # a UUID or PARTUUID (GPT's 36; MBR's and vfat's are shorter)
_MAX_PATH = 4095           # a device path, label or folder: PATH_MAX less its NUL


class RootKind:
    """How root= names the device (string constants, not an enum: boot-path import rule)."""

    PATH = "path"
    UUID = "UUID"
    LABEL = "LABEL"
    PARTUUID = "PARTUUID"
    PARTLABEL = "PARTLABEL"   # a GPT partition's name


class RootSpec(Value):
    __slots__ = ("kind", "value")
    kind: str
    value: str

    def __init__(self, kind: str, value: str) -> None:
        self._set(kind=kind, value=value)

    def __str__(self) -> str:
        return self.value if self.kind == RootKind.PATH else f"{self.kind}={self.value}"


class UpperSpec(Value):
    """overlay_agent.upper=: a tmpfs (`device` None, `size` "" = tmpfs's default) or a
    device in root='s grammar with `dir`, the folder on it holding upper/ and work/."""

    __slots__ = ("device", "dir", "size")
    device: RootSpec | None
    dir: str
    size: str

    def __init__(self, device: RootSpec | None = None, dir: str = "/", size: str = "") -> None:
        self._set(device=device, dir=dir, size=size)

    def __str__(self) -> str:
        if self.device is None:
            return UPPER_TMPFS + (f":{self.size}" if self.size else "")
        return str(self.device) + ("" if self.dir == "/" else f":{self.dir}")


class BootParams(Value):
    """What PID 1 takes from the kernel command line."""

    __slots__ = (
        "debug",
        "disable",
        "init",
        "init_args",
        "notes",
        "panic",
        "problems",
        "quiet",
        "root",
        "rootdelay",
        "rootflags",
        "rootfstype",
        "rootwait",
        "rootwait_limit",
        "skip",
        "strict",
        "upper",
    )
    root: RootSpec | None
    rootfstype: str | None
    rootflags: str | None
    init: str
    init_args: tuple[str, ...]
    rootwait: bool
    rootwait_limit: float | None  # rootwait=N (Linux 6.5+): at most N s; bare rootwait: forever
    rootdelay: float | None
    panic: int                 # >0 reboot after N s, <0 at once, 0 hang
    quiet: bool
    disable: bool
    skip: frozenset[str]
    strict: bool
    debug: bool
    upper: UpperSpec | None    # None: the read-only root
    notes: tuple[str, ...]     # harmless oddities, printed at boot
    problems: tuple[str, ...]  # unusable keys, each message starting with its key

    def __init__(self, root: RootSpec | None = None, rootfstype: str | None = None,
                 rootflags: str | None = None, init: str = DEFAULT_INIT, init_args: tuple[str, ...] = (),
                 rootwait: bool = False, rootwait_limit: float | None = None,
                 rootdelay: float | None = None, panic: int = 0,
                 quiet: bool = False, disable: bool = False, skip: frozenset[str] = frozenset(),
                 strict: bool = False, debug: bool = False,
                 upper: UpperSpec | None = None, notes: tuple[str, ...] = (),
                 problems: tuple[str, ...] = ()) -> None:
        self._set(root=root, rootfstype=rootfstype, rootflags=rootflags, init=init,
                  init_args=init_args, rootwait=rootwait, rootwait_limit=rootwait_limit,
                  rootdelay=rootdelay, panic=panic, quiet=quiet, disable=disable, skip=skip,
                  strict=strict, debug=debug, upper=upper,
                  notes=notes, problems=problems)

    @property
    def own_problems(self) -> tuple[str, ...]:
        """Problems with overlay_agent.* keys: the only ones hook mode acts on."""
        return tuple(p for p in self.problems if p.startswith(PREFIX))

    @property
    def root_timeout(self) -> float | None:
        """Seconds to wait for the root device; None = forever."""
        if self.rootwait:
            return self.rootwait_limit
        return DEFAULT_ROOT_WAIT if self.rootdelay is None else self.rootdelay


def split_cmdline(text: str) -> tuple[list[str], list[str]]:
    """Split into (kernel words, init words); double quotes group, as the kernel's next_arg."""
    words: list[str] = []
    current: list[str] = []
    quoted = False
    started = False
    for ch in text.strip():
        if ch == '"':
            quoted = not quoted
            started = True
        elif ch.isspace() and not quoted:
            if started:
                words.append("".join(current))
            current, started = [], False
        else:
            current.append(ch)
            started = True
    if started:
        words.append("".join(current))
    if "--" in words:
        cut = words.index("--")
        return words[:cut], words[cut + 1:]
    return words, []


def parse_root(value: str, key: str = "root") -> RootSpec:
    """`root=` value -> RootSpec; unknown syntax raises BootError naming `key`."""
    if not value.isprintable() or len(value.encode(errors="replace")) > _MAX_PATH:
        raise BootError(f"{key}={value[:80]}: holds a control character or is over "
                        f"{_MAX_PATH} bytes")
    aliases = {"/dev/disk/by-uuid/": RootKind.UUID, "/dev/disk/by-label/": RootKind.LABEL,
               "/dev/disk/by-partuuid/": RootKind.PARTUUID,
               "/dev/disk/by-partlabel/": RootKind.PARTLABEL}
    for prefix, kind in aliases.items():
        if value.startswith(prefix) and len(value) > len(prefix):
            return _tagged(kind, value[len(prefix):], value, key)
    for kind in (RootKind.UUID, RootKind.LABEL, RootKind.PARTUUID, RootKind.PARTLABEL):
        tag = f"{kind}="
        if value.upper().startswith(tag) and value[:len(tag)] == tag:
            return _tagged(kind, value[len(tag):], value, key)
    if value.startswith("/dev/") and len(value) > 5 and "/../" not in value + "/":
        return RootSpec(RootKind.PATH, value)
    raise BootError(f"{key}={value}: unknown syntax ({_ROOT_SYNTAX})")


def _tagged(kind: str, rest: str, original: str, key: str) -> RootSpec:
    if not rest:
        raise BootError(f"{key}={original}: empty {kind}")
    named = kind in (RootKind.LABEL, RootKind.PARTLABEL)     # names keep their case
    if not named and (not all(c in "0123456789abcdefABCDEF-" for c in rest)
                      or not rest.strip("-")):
        raise BootError(f"{key}={original}: {kind} must be hexadecimal digits and dashes")
    if not named and len(rest) > _MAX_ID:
        raise BootError(f"{key}={original[:80]}: {kind} is longer than {_MAX_ID} characters")
    return RootSpec(kind, rest if named else rest.lower())


def parse_upper(value: str) -> UpperSpec:
    """`overlay_agent.upper=` value: `tmpfs[:SIZE]` or `DEVICE[:/DIR]`, DEVICE as root=.

    The folder is split off at the last `:/`, so a label holding a colon still works.
    """
    key = UPPER_KEY
    if value == UPPER_TMPFS or value.startswith(UPPER_TMPFS + ":"):
        size = value[len(UPPER_TMPFS) + 1:]
        number = size[:-1] if size[-1:] in tuple(_SIZE_UNITS) else size
        if len(value) > len(UPPER_TMPFS) and not (number.isascii() and number.isdigit()
                                                  and len(number) <= _MAX_DIGITS):
            raise BootError(f"{key}={value}: size must be a number with an optional "
                            "k, m, g or % (as tmpfs's size=)")
        return UpperSpec(size=size)
    cut = value.rfind(":/")
    device, folder = (value[:cut], value[cut + 1:]) if cut > 0 else (value, "/")
    parts = folder.split("/")
    if any(c in folder for c in ",:\\") or ".." in parts or "." in parts \
            or not folder.isprintable() or len(folder.encode(errors="replace")) > _MAX_PATH:
        raise BootError(f"{key}={value[:80]}: the folder must be a printable absolute path "
                        f"of at most {_MAX_PATH} bytes without '.', '..', ',', ':' or '\\'")
    return UpperSpec(parse_root(device, key), "/" + "/".join(p for p in parts if p))


def parse_cmdline(text: str) -> BootParams:
    """Whole command line -> BootParams; every problem is reported in one BootError."""
    params = scan_cmdline(text)
    if params.problems:
        raise BootError("kernel command line: " + "; ".join(params.problems))
    return params


def scan_cmdline(text: str) -> BootParams:
    """Whole command line -> BootParams, the unusable keys left at their defaults and
    listed in `problems`."""
    words, init_args = split_cmdline(text)
    problems: list[str] = []
    notes: list[str] = []
    values: dict[str, object] = {"init_args": tuple(init_args)}
    skip: set[str] = set()
    for word in words:
        key, has_value, value = word.partition("=")
        try:
            _apply(key, has_value == "=", value, values, skip, notes)
        except BootError as exc:
            problems.append(str(exc))
    return BootParams(skip=frozenset(skip), notes=tuple(notes), problems=tuple(problems),
                      **values)  # type: ignore[arg-type]


def _apply(key: str, has_value: bool, value: str, values: dict[str, object], skip: set[str],
           notes: list[str]) -> None:
    if key == "root" and has_value:
        values["root"] = parse_root(value)
    elif key in ("rootfstype", "rootflags") and has_value:
        values[key] = value or None
    elif key == "init" and has_value:
        if not value.startswith("/"):
            raise BootError(f"init={value}: not an absolute path")
        values["init"] = value
    elif key == "rootdelay" and has_value:
        values["rootdelay"] = _number(key, value)
    elif key == "panic" and has_value:
        try:
            values["panic"] = int(value)
        except ValueError:
            raise BootError(f"panic={value}: not an integer") from None
    elif key in ("rootwait", "quiet") and not has_value:
        values[key] = True
    elif key == "rootwait" and has_value:
        values["rootwait"], values["rootwait_limit"] = True, _number(key, value)
    elif key == "rw" and not has_value:
        notes.append("rw ignored: the root is always mounted read-only")
    elif key.startswith(PREFIX):
        _apply_own(key[len(PREFIX):], has_value, value, values, skip, notes)


def _apply_own(name: str, has_value: bool, value: str, values: dict[str, object],
               skip: set[str], notes: list[str]) -> None:
    if name in _OWN_FLAGS:
        values[name] = _flag(PREFIX + name, value)
    elif name == "skip" and has_value:
        skip.update(part for part in value.split(",") if part)
    elif name == "upper":
        if not has_value:
            raise BootError(f"{UPPER_KEY}: needs a value (tmpfs[:SIZE] or DEVICE[:/DIR])")
        values["upper"] = parse_upper(value)
    else:
        notes.append(f"{PREFIX}{name}: unknown key, ignored")


def _flag(key: str, value: str) -> bool:
    if value.lower() in _TRUE:
        return True
    if value.lower() in _FALSE:
        return False
    raise BootError(f"{key}={value}: not a yes/no value")


def _number(key: str, value: str) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise BootError(f"{key}={value}: not a number of seconds") from None
    if not seconds >= 0 or seconds == float("inf"):
        raise BootError(f"{key}={value}: not a number of seconds")
    return seconds
