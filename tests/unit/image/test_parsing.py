"""Version ranges, source strings and policy files: tables with exact results and messages."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import SourceError, UsageError, ValidationFailed
from agent.image.policy import TALOS_ALLOWED_PATHS, DuplicateFiles, Policy, load_policy
from agent.image.source import Source, Transport, parse_source
from agent.image.versions import VersionRangeError, parse_range, parse_version

D = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("rng", "version", "allowed"), [
    (">= v1.0.0", "v1.0.0", True),
    (">= v1.0.0", "1.7.2", True),
    (">= v1.0.0", "0.14", False),
    (">= v1.0.0", "12", True),              # Debian's VERSION_ID
    (">= 1.2, < 2", "1.9.9", True),
    (">= 1.2, < 2", "2.0.0", False),
    (">= 1.2, < 2", "1.1", False),
    ("~> 1.3", "1.3.0", True),
    ("~> 1.3", "1.99", True),
    ("~> 1.3", "2.0", False),
    ("~> 1.3", "1.2.9", False),
    ("~> 1.3.2", "1.3.9", True),
    ("~> 1.3.2", "1.4.0", False),
    ("= 1.5", "v1.5.0", True),
    ("1.5", "1.5.1", False),
    ("!= 1.5", "1.5.1", True),
    ("> 1.5", "1.5.0", False),
    ("<= 1.5", "1.5.0", True),
    (">= v1.10.0", "v1.10.0-alpha.1", False),   # a pre-release sorts before its release
    ("< v1.10.0", "v1.10.0-alpha.1", True),
])
def test_version_ranges(rng: str, version: str, allowed: bool) -> None:
    assert parse_range(rng).allows(parse_version(version)) is allowed


@pytest.mark.parametrize(("rng", "message"), [
    ("", "empty version range"),
    (">= banana", "cannot parse constraint '>= banana'"),
    (">= 1.x", "'1.x' is not a version"),
    (">=", "cannot parse constraint '>='"),
    ("~> 1", "'~>' needs at least major.minor in '~> 1'"),
    (">= 1.0,, < 2", "cannot parse constraint ''"),
    ("=> 1.0", "cannot parse constraint '=> 1.0'"),
])
def test_bad_version_ranges(rng: str, message: str) -> None:
    with pytest.raises(VersionRangeError) as exc:
        parse_range(rng)
    assert str(exc.value) == message


@pytest.mark.parametrize(("text", "expected"), [
    ("docker://ghcr.io/siderolabs/gvisor:20220117.0-v1.0.0",
     Source("", Transport.DOCKER, name="ghcr.io/siderolabs/gvisor", registry="ghcr.io",
            tag="20220117.0-v1.0.0")),
    ("ghcr.io/siderolabs/gvisor:1", Source("", Transport.DOCKER, name="ghcr.io/siderolabs/gvisor",
                                           registry="ghcr.io", tag="1")),
    (f"127.0.0.1:5000/ext/a@{D}", Source("", Transport.DOCKER, name="127.0.0.1:5000/ext/a",
                                         registry="127.0.0.1:5000", digest=D)),
    (f"docker://localhost/a:v1@{D}", Source("", Transport.DOCKER, name="localhost/a",
                                            registry="localhost", tag="v1", digest=D)),
    ("docker://library/busybox", Source("", Transport.DOCKER, name="library/busybox",
                                        registry="docker.io", tag="latest")),
    ("oci:/srv/layout:v2", Source("", Transport.OCI, path="/srv/layout", tag="v2")),
    ("oci:layout", Source("", Transport.OCI, path="layout")),
    ("oci-archive:/tmp/a.tar:gvisor:1.0", Source("", Transport.OCI_ARCHIVE, path="/tmp/a.tar",
                                                 tag="gvisor:1.0")),
    ("docker-archive:/tmp/d.tar", Source("", Transport.DOCKER_ARCHIVE, path="/tmp/d.tar")),
    ("dir:./ext", Source("", Transport.DIR, path="./ext")),
])
def test_parse_source(text: str, expected: Source) -> None:
    got = parse_source(text)
    assert got.text == text
    assert got == Source(text, expected.transport, expected.path, expected.name,
                         expected.registry, expected.tag, expected.digest)


@pytest.mark.parametrize(("text", "message"), [
    ("foo:bar", "foo:bar: unknown transport 'foo' (known: docker, oci, oci-archive, "
                "docker-archive, dir; a registry image needs REGISTRY/REPO:TAG)"),
    ("https://x.io/a:1", "https://x.io/a:1: unknown transport 'https' (known: docker, oci, "
                         "oci-archive, docker-archive, dir; a registry image needs "
                         "REGISTRY/REPO:TAG)"),
    ("containers-storage:a/b", "containers-storage:a/b: unknown transport 'containers-storage' "
                               "(known: docker, oci, oci-archive, docker-archive, dir; a "
                               "registry image needs REGISTRY/REPO:TAG)"),
    ("gvisor", "gvisor: not an image source (want TRANSPORT:... with a transport of docker, oci, "
               "oci-archive, docker-archive, dir, or REGISTRY/REPO:TAG)"),
    ("docker:x/y", "docker:x/y: docker transport needs docker://REGISTRY/REPO:TAG"),
    ("docker://Ghcr.io/A/B:1", "docker://Ghcr.io/A/B:1: not a valid image reference (want "
                               "REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:DIGEST)"),
    ("ghcr.io/a/b@sha256:abc", "ghcr.io/a/b@sha256:abc: not a valid image reference (want "
                               "REGISTRY/REPO:TAG or REGISTRY/REPO@sha256:DIGEST)"),
    ("dir:", "dir:: dir: needs a path"),
])
def test_bad_sources(text: str, message: str) -> None:
    with pytest.raises(SourceError) as exc:
        parse_source(text)
    assert str(exc.value) == message


@pytest.mark.parametrize(("path", "allowed"), [
    ("/usr/local", True), ("/usr/local/bin/x", True), ("/usr/localevil", False),
    ("/usr/localevil/x", False), ("/usr/lib/firmware/amd/cpu", True),
    ("/usr/lib/ld-linux-x86-64.so.2", True), ("/usr/lib/ld-linux-x86-64.so.2.bak", False),
    ("/boot/vmlinuz", False), ("/usr/lib64/a.so", False), ("/lib/firmware/x", True),
    ("/etc/ld.so.conf", True), ("/etc/ld.so.conf.d/x", False), ("/", False),
])
def test_default_allowed_paths_match_on_boundaries(path: str, allowed: bool) -> None:
    assert Policy().allows(path) is allowed


def test_default_list_is_talos_union() -> None:
    assert len(TALOS_ALLOWED_PATHS) == 24   # 11 old + 19 current, 6 in both
    assert {"/lib/firmware", "/usr/lib/firmware", "/usr/local", "/etc/cri/conf.d"} <= \
        set(TALOS_ALLOWED_PATHS)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text)
    return path


def test_load_policy(tmp_path: Path) -> None:
    policy = load_policy(write(tmp_path, "allowed_paths: [/opt/x/, /usr/local]\n"
                                         "allow_setuid: true\nduplicate_files: later-wins\n"))
    assert policy == Policy(("/opt/x", "/usr/local"), True, DuplicateFiles.LATER_WINS)
    assert load_policy(write(tmp_path, "")) == Policy()


@pytest.mark.parametrize(("text", "problems"), [
    ("[1, 2]\n", ["P: top level is not a mapping"]),
    ("allowed_paths: /usr\nallow_setuid: yes please\nduplicate_files: first\nextra: 1\n", [
        "P: unknown key 'extra' (known: allowed_paths, allow_setuid, duplicate_files)",
        "P: allowed_paths is not a list",
        "P: allow_setuid must be true or false",
        "P: duplicate_files must be 'error' or 'later-wins', not 'first'"]),
    ("allowed_paths: [usr/local, /, /usr/../etc, 3]\n", [
        "P: allowed_paths: 'usr/local' is not an absolute path below /",
        "P: allowed_paths: '/' is not an absolute path below /",
        "P: allowed_paths: '/usr/../etc' is not a normalised path",
        "P: allowed_paths: 3 is not an absolute path below /"]),
])
def test_bad_policies_report_every_problem(tmp_path: Path, text: str,
                                           problems: list[str]) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ValidationFailed) as exc:
        load_policy(path)
    assert exc.value.problems == [p.replace("P:", f"{path}:") for p in problems]


def test_unreadable_policy_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(UsageError) as exc:
        load_policy(tmp_path / "missing.yaml")
    assert str(exc.value) == f"{tmp_path}/missing.yaml: cannot read policy file: " \
                             "No such file or directory"
    with pytest.raises(UsageError) as exc:
        load_policy(write(tmp_path, "a: [\n"))
    assert str(exc.value) == f"{tmp_path}/policy.yaml: policy file: not valid YAML at line 2"
