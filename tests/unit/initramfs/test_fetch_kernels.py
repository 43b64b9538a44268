"""Stock-kernel fetching: mirror derivation, metapackage resolution, the cache layout."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.errors import SourceError
from agent.kernels import (
    Mirrors,
    choose_mirrors,
    derive_mirrors,
    load_kernel,
    parse_deb822_uris,
    parse_kernel_depends,
    parse_one_line_uris,
    render_sources,
)

ROOT = Path(__file__).resolve().parents[3]
CACHE = ROOT / ".cache" / "kernels"

DEB822 = """Types: deb
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb-src
URIs: http://src.example/debian
Suites: bookworm

Types: deb
URIs: http://sec.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_deb822_stanzas_give_binary_uris_only() -> None:
    assert parse_deb822_uris(DEB822) == [
        ("http://mirror.example/debian", ["bookworm", "bookworm-updates"]),
        ("http://sec.example/debian-security", ["bookworm-security"]),
    ]


def test_one_line_sources_skip_options_and_comments() -> None:
    text = ("# deb http://x.example/debian sid main\n"
            "deb [arch=amd64 signed-by=/k.gpg] http://m.example/debian bookworm main\n"
            "deb-src http://m.example/debian bookworm main\n")
    assert parse_one_line_uris(text) == [("http://m.example/debian", ["bookworm"])]


def test_mirrors_split_archive_and_security() -> None:
    entries = parse_deb822_uris(DEB822)
    assert choose_mirrors(entries, Path("/etc/apt")) == Mirrors(
        "http://mirror.example/debian", "http://sec.example/debian-security")


def test_no_archive_uri_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "sources.list.d").mkdir()
    with pytest.raises(SourceError) as exc:
        derive_mirrors(tmp_path)
    assert str(exc.value) == f"{tmp_path}: no Debian archive URI in the apt sources"


def test_third_party_and_snapshot_sources() -> None:
    entries = [("http://nodesource.example/node_20.x", ["nodistro"]),
               ("http://snapshot.example/archive/debian/20250520T000000Z", ["bookworm"]),
               ("http://snapshot.example/archive/debian-security/20250520T000000Z",
                ["bookworm-security"])]
    assert choose_mirrors(entries, Path("/etc/apt")) == Mirrors(
        "http://snapshot.example/archive/debian/20250520T000000Z",
        "http://snapshot.example/archive/debian-security/20250520T000000Z")


def test_sources_cover_updates_and_security() -> None:
    text = render_sources("trixie", Mirrors("http://m/debian", "http://s/debian-security"),
                          Path("/k.gpg"))
    assert text.splitlines() == [
        "deb [arch=amd64 signed-by=/k.gpg] http://m/debian trixie main",
        "deb [arch=amd64 signed-by=/k.gpg] http://m/debian trixie-updates main",
        "deb [arch=amd64 signed-by=/k.gpg] http://s/debian-security trixie-security main",
    ]
    text = render_sources("bookworm", Mirrors("http://m/debian", None), Path("/k.gpg"),
                          component="non-free-firmware")
    assert text.splitlines() == [
        "deb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm non-free-firmware",
        "deb [arch=amd64 signed-by=/k.gpg] http://m/debian bookworm-updates non-free-firmware",
    ]


@pytest.mark.parametrize("depends, expected", [
    ("Depends: linux-image-6.1.0-37-amd64 (= 6.1.140-1)", "linux-image-6.1.0-37-amd64"),
    ("Depends: linux-image-6.12.38+deb13-amd64 (= 6.12.38-1)",
     "linux-image-6.12.38+deb13-amd64"),
    ("Depends: linux-image-6.1.0-9-amd64-unsigned (= 6.1.27-1)",
     "linux-image-6.1.0-9-amd64-unsigned"),
])
def test_metapackage_depends_name_the_versioned_kernel(depends: str, expected: str) -> None:
    assert parse_kernel_depends(f"Package: linux-image-amd64\n{depends}\n") == expected


def test_metapackage_without_kernel_depends_is_an_error() -> None:
    with pytest.raises(SourceError) as exc:
        parse_kernel_depends("Package: linux-image-amd64\nDepends: foo\n")
    assert str(exc.value) == "linux-image-amd64: no linux-image-<version>-amd64 in its Depends"


def test_unfetched_suite_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SourceError) as exc:
        load_kernel(tmp_path, "bookworm")
    assert str(exc.value) == f"{tmp_path / 'bookworm'}: no fetched kernel (run `make kernels`)"


@pytest.mark.parametrize("suite, major, merged", [("bookworm", "6.1.", False),
                                                  ("trixie", "6.12.", True)])
def test_fetched_kernels_have_the_documented_layout(suite: str, major: str,
                                                    merged: bool) -> None:
    if not (CACHE / suite / "kernel-release").exists():
        pytest.skip("run `make kernels` first")
    k = load_kernel(CACHE, suite)
    assert k.release.startswith(major)
    assert k.vmlinuz.read_bytes()[0x202:0x206] == b"HdrS"   # bzImage setup header magic
    assert k.modules_dir.name == k.release
    assert ("usr/lib/modules" in str(k.modules_dir)) == merged
    assert (k.modules_dir / "modules.dep").stat().st_size > 0
    assert (CACHE / suite / "modules").resolve() == k.modules_dir.resolve()


def test_second_fetch_downloads_nothing() -> None:
    from agent.kernels import fetch_kernel

    if not (CACHE / "bookworm" / "metapackage").exists():
        pytest.skip("run `make kernels` first")
    before = (CACHE / "bookworm" / "vmlinuz").stat().st_mtime_ns
    result = fetch_kernel(CACHE, "bookworm", derive_mirrors())
    assert not result.downloaded
    assert result.kernel == load_kernel(CACHE, "bookworm")
    assert (CACHE / "bookworm" / "vmlinuz").stat().st_mtime_ns == before
