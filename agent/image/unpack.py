"""Safe unpacking of image layers into a staging folder, in order, with OCI whiteouts.

Nothing is ever written outside the staging folder: member names with `..` or a leading
`/` are refused, parent paths are resolved component by component without leaving the
staging tree (a symlink that would lead out is refused, never followed), files are created
with O_EXCL|O_NOFOLLOW, hard links must point at files inside the tree, device, fifo and
socket members are refused. A layer is decompressed once before anything is written,
counted and hashed: one bigger than the limit (a decompression bomb) or not matching its
diff_id is refused with nothing written; the unpacking pass counts and hashes again (the
blob may change under us). Extended headers (PAX, GNU long names), which tar reads
into memory whole, are bounded. Layers may be plain, gzip or zstd (the
`zstd` tool: Python's standard library has no zstd before 3.14). Whiteouts follow the OCI image spec
(layer.md): `.wh.NAME` deletes NAME from lower layers, `.wh..wh..opq` empties a directory
of what lower layers put there.
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from agent.errors import UnpackError
from agent.escape import clip
from agent.image.decompress import CountingReader, LayerTooBig, ZstdStream, open_decompressed

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
MAX_SYMLINK_HOPS = 40
# Far deeper than any real tree; keeps every walk (ours, rmtree's recursion, mksquashfs)
# short and every path well under PATH_MAX.
MAX_DEPTH = 256
_CHUNK = 1 << 20
# A PAX or GNU long-name header holds a name, a link target and attributes: far below
# this. tarfile reads one whole into memory, so its declared size is checked first.
MAX_EXTENDED_HEADER = 1 << 20
_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE,
             tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class HeaderTooBig(tarfile.HeaderError):
    pass


class BoundedTarInfo(tarfile.TarInfo):
    """A member header whose extended header, if any, is refused past
    MAX_EXTENDED_HEADER bytes before tarfile reads it into memory."""

    def _proc_member(self, tarfile: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type in _EXTENDED and self.size > MAX_EXTENDED_HEADER:
            raise HeaderTooBig(f"an extended header of {self.size} bytes, over the limit of "
                               f"{MAX_EXTENDED_HEADER}")
        return super()._proc_member(tarfile)  # type: ignore[misc, no-any-return]


@dataclass
class LayerState:
    """What one layer run needs to remember: the folder, who it is for, what it created."""

    root: str
    label: str                          # "SOURCE: layer N (sha256:...)", starts each message
    max_size: int
    created: set[str] = field(default_factory=set)
    dir_modes: dict[str, int] = field(default_factory=dict)
    size: int = 0
    # member folder ("a/b") -> its real components under root, for folders this layer has
    # resolved: each member then costs one lookup, not a walk of every component (a deep
    # tree would be cubic in its depth). Any removal clears it.
    dirs: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def refuse(self, member: str, reason: str) -> UnpackError:
        return UnpackError(f"{self.label}: member {clip(member, 200)!r}: {reason}")


def member_parts(state: LayerState, name: str) -> list[str]:
    """Split a member name into components; refuse absolute names and `..`."""
    if name.startswith("/"):
        raise state.refuse(name, "absolute member names are not allowed")
    if "\0" in name:      # a PAX path can carry one; no file system name can
        raise state.refuse(name, "NUL bytes are not allowed in a name")
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise state.refuse(name, "'..' components are not allowed")
    if len(parts) > MAX_DEPTH:
        raise state.refuse(name, f"deeper than {MAX_DEPTH} levels")
    return parts


def resolve_dir(state: LayerState, member: str, parts: list[str], create: bool) -> str | None:
    """The real path of folder `parts` inside the staging root, following only symlinks that
    stay inside it; create missing folders when `create`, else return None for a missing one."""
    stack = resolve_stack(state, member, parts, create)
    return None if stack is None else state.root + "".join(f"/{c}" for c in stack)


def resolve_stack(state: LayerState, member: str, parts: list[str],
                  create: bool) -> tuple[str, ...] | None:
    """resolve_dir's real components, from the longest folder of `parts` already resolved."""
    start, stack = 0, []
    for n in range(len(parts), 0, -1):
        known = state.dirs.get("/".join(parts[:n]))
        if known is not None:
            start, stack = n, list(known)
            break
    # real path of each prefix of `stack` (os.path.join over a deep stack is slow Python)
    reals = [state.root]
    for comp in stack:
        reals.append(f"{reals[-1]}/{comp}")
    key = "/".join(parts[:start])
    todo = parts[start:][::-1]       # reversed: pop() takes the next component
    lexical = len(todo)              # components still taken as written (no symlink yet)
    hops = 0
    while todo:
        comp = todo.pop()
        if len(todo) < lexical:
            lexical = len(todo)
            key = f"{key}/{comp}" if key else comp
        else:
            key = ""
        if comp in ("", "."):
            continue
        if comp == "..":
            if not stack:
                raise state.refuse(member, "path leads outside the staging folder")
            stack.pop()
            reals.pop()
            continue
        here = f"{reals[-1]}/{comp}"
        try:
            st = os.lstat(here)
        except FileNotFoundError:
            if not create:
                return None
            os.mkdir(here, 0o755)
            state.created.add(here)
            stack.append(comp)
            reals.append(here)
            remember(state, key, stack)
            continue
        if stat.S_ISLNK(st.st_mode):
            hops += 1
            target = os.readlink(here)
            if hops > MAX_SYMLINK_HOPS:
                raise state.refuse(member, "too many levels of symlinks")
            if target.startswith("/") or climbs_above_root(len(stack), target):
                shown = "/".join([*stack, comp])
                raise state.refuse(member, f"writes through symlink {shown!r} -> {target!r}, "
                                           "which points outside the staging folder")
            todo.extend(target.split("/")[::-1])
            lexical = -1            # the rest no longer spells a prefix of `parts`
            continue
        if not stat.S_ISDIR(st.st_mode):
            if not create:
                return None
            os.unlink(here)     # a file in a lower layer replaced by a folder in this one
            os.mkdir(here, 0o755)
            state.created.add(here)
        stack.append(comp)
        reals.append(here)
        remember(state, key, stack)
    return tuple(stack)


def remember(state: LayerState, key: str, stack: list[str]) -> None:
    if key:
        state.dirs[key] = tuple(stack)


def climbs_above_root(depth: int, target: str) -> bool:
    """Does relative symlink `target`, seen from a folder `depth` levels below the root,
    climb above the root?"""
    for part in target.split("/"):
        if part == "..":
            depth -= 1
            if depth < 0:
                return True
        elif part not in ("", "."):
            depth += 1
    return False


def remove_entry(path: str) -> None:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)   # rmtree never follows symlinks inside the tree
    else:
        os.unlink(path)


def apply_whiteout(state: LayerState, member: str, parts: list[str]) -> None:
    folder = resolve_dir(state, member, parts[:-1], create=parts[-1] == OPAQUE)
    state.dirs.clear()
    if folder is None:
        return
    if parts[-1] == OPAQUE:
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if path not in state.created:
                remove_entry(path)
        return
    name = parts[-1][len(WHITEOUT):]
    if name in ("", ".", ".."):
        raise state.refuse(member, "bad whiteout name")
    path = os.path.join(folder, name)
    if os.path.lexists(path):
        remove_entry(path)


def clear_final(state: LayerState, path: str, keep_dir: bool) -> None:
    """Make room for a new entry; a folder stays when the new entry is a folder too."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if keep_dir and stat.S_ISDIR(st.st_mode):
        return
    state.dirs.clear()
    remove_entry(path)


def write_file(state: LayerState, member: tarfile.TarInfo, data: IO[bytes] | None,
               path: str) -> None:
    state.size += member.size
    if state.size > state.max_size:
        raise LayerTooBig
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    with os.fdopen(fd, "wb") as out:
        if data is not None:
            shutil.copyfileobj(data, out, _CHUNK)
        os.fchmod(out.fileno(), member.mode & 0o7777)
    os.utime(path, (member.mtime, member.mtime), follow_symlinks=False)


def link_hard(state: LayerState, member: tarfile.TarInfo, path: str) -> None:
    name = member.name
    if member.linkname.startswith("/"):
        raise state.refuse(name, f"hard link target {member.linkname!r} is outside the "
                                 "staging folder")
    parts = [p for p in member.linkname.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise state.refuse(name, f"hard link target {member.linkname!r} is outside the "
                                 "staging folder")
    folder = resolve_dir(state, name, parts[:-1], create=False)
    target = os.path.join(folder, parts[-1]) if folder is not None else ""
    if not target or not os.path.lexists(target):
        raise state.refuse(name, f"hard link target {member.linkname!r} does not exist")
    if stat.S_ISDIR(os.lstat(target).st_mode):
        raise state.refuse(name, f"hard link target {member.linkname!r} is a directory")
    os.link(target, path, follow_symlinks=False)


def unpack_member(state: LayerState, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
    parts = member_parts(state, member.name)
    if not parts:
        return      # "./": the root itself
    if member.ischr() or member.isblk():
        raise state.refuse(member.name, "device files are not allowed")
    if member.isfifo():
        raise state.refuse(member.name, "fifos are not allowed")
    if not (member.isdir() or member.isreg() or member.issym() or member.islnk()):
        raise state.refuse(member.name, f"unsupported member type {member.type!r}")
    if "\0" in member.linkname:
        raise state.refuse(member.name, "NUL bytes are not allowed in a link target")
    if parts[-1].startswith(WHITEOUT):
        apply_whiteout(state, member.name, parts)
        return
    folder = resolve_dir(state, member.name, parts[:-1], create=True)
    assert folder is not None
    path = os.path.join(folder, parts[-1])
    clear_final(state, path, keep_dir=member.isdir())
    if member.isdir():
        if not os.path.lexists(path):
            os.mkdir(path, 0o755)
        state.dir_modes[path] = member.mode & 0o7777
        known = state.dirs.get("/".join(parts[:-1]))
        if known is not None:
            state.dirs["/".join(parts)] = (*known, parts[-1])
    elif member.isreg():
        write_file(state, member, tf.extractfile(member), path)
    elif member.issym():
        os.symlink(member.linkname, path)
    else:
        link_hard(state, member, path)
    state.created.add(path)


def too_big(label: str, max_size: int) -> UnpackError:
    return UnpackError(f"{label}: unpacks to more than the limit of {max_size} bytes "
                       "(see --max-layer-size)")


def check_digest(reader: CountingReader, label: str, diff_id: str | None) -> None:
    if diff_id is not None and f"sha256:{reader.sha256.hexdigest()}" != diff_id:
        raise UnpackError(f"{label}: uncompressed content does not match its diff_id "
                          f"{diff_id}")


def check_layer_stream(raw: IO[bytes], label: str, max_size: int,
                       diff_id: str | None) -> None:
    """Decompress the layer once, writing nothing: refuse it past `max_size` bytes or when
    it does not match `diff_id`. Time is one more decompression; memory a chunk."""
    stream = open_decompressed(raw, label)
    reader = CountingReader(stream, max_size)
    try:
        reader.drain()
    except LayerTooBig:
        raise too_big(label, max_size) from None
    except (EOFError, gzip.BadGzipFile, OSError) as exc:
        raise UnpackError(f"{label}: not a valid tar layer: {exc}") from None
    finally:
        if isinstance(stream, ZstdStream):
            stream.close()
    check_digest(reader, label, diff_id)


def unpack_layer(raw: IO[bytes], root: Path, label: str, max_size: int,
                 diff_id: str | None = None) -> dict[str, int]:
    """Unpack one layer stream over `root`; return folder modes to apply when all are done.
    Nothing is written before the whole layer has passed check_layer_stream."""
    check_layer_stream(raw, label, max_size, diff_id)
    raw.seek(0)
    state = LayerState(str(root), label, max_size)
    stream = open_decompressed(raw, label)
    reader = CountingReader(stream, max_size)
    try:
        with tarfile.open(fileobj=reader, mode="r|",  # type: ignore[call-overload]
                          tarinfo=BoundedTarInfo) as tf:
            for member in tf:
                unpack_member(state, tf, member)
        reader.drain()
    except LayerTooBig:
        raise too_big(label, max_size) from None
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, OSError) as exc:
        if isinstance(exc, OSError) and exc.filename:
            raise UnpackError(f"{label}: cannot write {exc.filename}: {exc.strerror}") from None
        raise UnpackError(f"{label}: not a valid tar layer: {exc}") from None
    finally:
        if isinstance(stream, ZstdStream):
            stream.close()
    check_digest(reader, label, diff_id)
    return state.dir_modes


def apply_dir_modes(modes: dict[str, int]) -> None:
    """Set folder modes deepest first, after all layers (a 0555 folder must stay writable
    while it is filled)."""
    for path in sorted(modes, key=lambda p: p.count("/"), reverse=True):
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                os.chmod(path, modes[path])
        except (FileNotFoundError, NotADirectoryError):
            pass    # removed by a later whiteout, or a parent replaced by a file
