"""Image source strings, with the transports skopeo and podman users know.

`docker://REGISTRY/REPO:TAG` or `...@sha256:DIGEST` (a bare `REGISTRY/REPO:TAG` means the
same), `oci:PATH[:TAG]`, `oci-archive:PATH[:TAG]`, `docker-archive:PATH`, `dir:PATH`.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from agent.errors import SourceError


class Transport(enum.Enum):
    DOCKER = "docker"
    OCI = "oci"
    OCI_ARCHIVE = "oci-archive"
    DOCKER_ARCHIVE = "docker-archive"
    DIR = "dir"


# skopeo knows these too, but they need a daemon or a local store this project does not use
_UNSUPPORTED = ("containers-storage", "docker-daemon", "ostree", "sif", "tarball")
# distribution/reference grammar, simplified: [host[:port]/]path[:tag][@sha256:hex]
_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REFERENCE = re.compile(
    rf"(?P<name>(?:(?P<host>[A-Za-z0-9.-]+(?::\d+)?)/)?{_COMPONENT}(?:/{_COMPONENT})*)"
    r"(?::(?P<tag>[\w][\w.-]{0,127}))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Source:
    text: str              # as the user wrote it
    transport: Transport
    path: str = ""         # file or folder for local transports
    name: str = ""         # docker: registry/repo (registry included when given)
    registry: str = ""     # docker: host[:port] ("docker.io" when omitted)
    tag: str = ""
    digest: str = ""       # docker: pinned "sha256:..."

    @property
    def skopeo_ref(self) -> str:
        ref = self.name + (f":{self.tag}" if self.tag else "")
        return "docker://" + ref + (f"@{self.digest}" if self.digest else "")


def parse_docker(text: str, ref: str) -> Source:
    m = _REFERENCE.fullmatch(ref)
    if m is None:
        raise SourceError(f"{text}: not a valid image reference "
                          "(want REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:DIGEST)")
    host = m.group("host")
    name = m.group("name")
    if host is not None and not ("." in host or ":" in host or host == "localhost"):
        host = None     # "library/busybox": the first component is a path, not a host
    tag = m.group("tag") or ("" if m.group("digest") else "latest")
    return Source(text, Transport.DOCKER, name=name, registry=host or "docker.io", tag=tag,
                  digest=m.group("digest") or "")


def parse_source(text: str) -> Source:
    """Parse a source string; raise SourceError naming it when it is not one we read."""
    prefix, sep, rest = text.partition(":")
    if sep and prefix in (t.value for t in Transport):
        transport = Transport(prefix)
        if transport is Transport.DOCKER:
            if not rest.startswith("//"):
                raise SourceError(f"{text}: docker transport needs docker://REGISTRY/REPO:TAG")
            return parse_docker(text, rest[2:])
        if not rest:
            raise SourceError(f"{text}: {prefix}: needs a path")
        if transport in (Transport.OCI, Transport.OCI_ARCHIVE):
            path, _, tag = rest.partition(":")
            return Source(text, transport, path=path, tag=tag)
        return Source(text, transport, path=rest)
    known = ", ".join(t.value for t in Transport)
    if sep and (prefix in _UNSUPPORTED or rest.startswith("//") or "/" not in text):
        raise SourceError(f"{text}: unknown transport {prefix!r} (known: {known}; "
                          "a registry image needs REGISTRY/REPO:TAG)")
    if "/" not in text:
        raise SourceError(f"{text}: not an image source (want TRANSPORT:... with a transport "
                          f"of {known}, or REGISTRY/REPO:TAG)")
    return parse_docker(text, text)


LOCAL_TRANSPORTS = (Transport.DIR, Transport.OCI, Transport.OCI_ARCHIVE, Transport.DOCKER_ARCHIVE)


def anchor_source(text: str, folder: str) -> str:
    """`text` with a relative local path made absolute against `folder` (a config file's
    own folder, so the config means the same from any working directory). Registry sources,
    absolute paths and text that is not a source come back unchanged."""
    import os

    prefix, sep, rest = text.partition(":")
    if not sep or prefix not in {t.value for t in LOCAL_TRANSPORTS} or not rest \
            or rest.startswith("/"):
        return text
    return f"{prefix}:{os.path.join(os.path.abspath(folder), rest)}"
