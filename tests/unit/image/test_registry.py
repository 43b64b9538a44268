"""Against a real registry on 127.0.0.1: pack -> skopeo copy -> pull by tag and by digest."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from agent.cli import main
from agent.errors import SourceError
from agent.image import FetchOptions, ValidateOptions, fetch_extension, validate_extensions
from agent.image.pack import PackOptions, pack_extension
from tests.unit.image.images import VALID, make_multi_platform, unpacked_layout
from tests.unit.image.registry import Registry, free_port

pytestmark = pytest.mark.registry


def push(src: str, dest: str, *extra: str) -> None:
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false", *extra, src,
                    f"docker://{dest}"], check=True, capture_output=True)


@pytest.fixture(scope="module")
def pushed(registry: Registry, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    """The valid fixture packed and pushed; (reference with tag, manifest digest)."""
    out = tmp_path_factory.mktemp("pack") / "ext.tar"
    digest = pack_extension(VALID, out, PackOptions())
    ref = registry.ref("ext/talos-valid:1.0.0")
    push(f"oci-archive:{out}", ref)
    return ref, digest


def insecure(registry: Registry) -> FetchOptions:
    return FetchOptions(insecure_registries=(registry.host,))


def test_pull_by_tag_and_by_digest(registry: Registry, pushed: tuple[str, str],
                                   tmp_path: Path) -> None:
    ref, digest = pushed
    by_tag = fetch_extension(ref, tmp_path / "a", insecure(registry))
    repo = ref.rsplit(":", 1)[0]
    by_digest = fetch_extension(f"docker://{repo}@{digest}", tmp_path / "b", insecure(registry))
    assert by_tag.digest == by_digest.digest == digest
    assert (by_tag.root / "rootfs/usr/local/lib/a.so").read_bytes() == \
        (VALID / "rootfs/usr/local/lib/a.so").read_bytes()
    assert not (by_tag.root.parent / "layout").exists()      # the pulled layout is cleaned up
    assert validate_extensions([by_tag], ValidateOptions()) == []


def test_validate_command_on_a_registry_image(registry: Registry, pushed: tuple[str, str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    ref, _ = pushed
    assert main(["validate", ref, "--insecure-registry", registry.host]) == 0
    assert capsys.readouterr().out == "1 extension(s) valid\n"


def test_wrong_digest_is_refused(registry: Registry, pushed: tuple[str, str],
                                 tmp_path: Path) -> None:
    ref, digest = pushed
    wrong = digest[:-4] + ("0000" if not digest.endswith("0000") else "1111")
    source = f"docker://{ref.rsplit(':', 1)[0]}@{wrong}"
    with pytest.raises(SourceError) as exc:
        fetch_extension(source, tmp_path, insecure(registry))
    # skopeo's own words differ between releases (Debian 12: 1.9, Debian 13: 1.18)
    message = str(exc.value)
    assert message.startswith(f"{source}: cannot fetch from {registry.host}: ")
    assert "manifest unknown" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []


def test_multi_platform_index_pinned_by_index_digest(registry: Registry,
                                                     tmp_path: Path) -> None:
    layout = unpacked_layout(tmp_path)
    other = tmp_path / "other.tar"      # a different manifest for the arm64 entry
    arm64 = pack_extension(VALID, other, PackOptions(mtime=1))
    subprocess.run(["skopeo", "copy", "--quiet", f"oci-archive:{other}", f"oci:{layout}:other"],
                   check=True)
    index_digest, amd64 = make_multi_platform(layout, arm64)
    assert amd64 != arm64
    repo = registry.ref("ext/multi")
    push(f"oci:{layout}:ext:v1", f"{repo}:v1", "--all")
    ext = fetch_extension(f"docker://{repo}@{index_digest}", tmp_path / "s", insecure(registry))
    assert ext.digest == amd64
    with pytest.raises(SourceError) as exc:
        fetch_extension(f"{repo}:v1", tmp_path / "s",
                        FetchOptions((registry.host,), arch="s390x"))
    assert str(exc.value) == (f"{repo}:v1: no image for linux/s390x "
                              "(has: linux/arm64, linux/amd64)")


def test_plain_http_needs_insecure_registry(registry: Registry, pushed: tuple[str, str],
                                            tmp_path: Path) -> None:
    ref, _ = pushed
    with pytest.raises(SourceError) as exc:
        fetch_extension(ref, tmp_path, FetchOptions())
    message = str(exc.value)
    assert message.startswith(f"{ref}: cannot fetch from {registry.host}: ")
    assert "HTTP response to HTTPS client" in message and "\n" not in message


def test_unreachable_registry_is_one_line(tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    host = f"127.0.0.1:{free_port()}"
    source = f"docker://{host}/ext/x:1"
    assert main(["validate", source, "--insecure-registry", host]) == 1
    out = capsys.readouterr().out
    assert out.startswith(f"{source}: cannot fetch from {host}: ")
    assert "connection refused" in out and out.count("\n") == 1
