"""The demo's bake step: pack the example extension folders into images, then `build`
from a machine config that names those images (the seed's install flow, end to end).

`scripts/demo.py` calls `bake_examples` with the agent's own initramfs; a kernel-tier test
bakes them onto a Debian-style one.
"""

from __future__ import annotations

from pathlib import Path

from agent.bake.build import BuildRequest, BuildResult, Progress, bake_initramfs
from agent.bake.config import load_documents, validate_documents
from agent.bake.squash import Compression
from agent.errors import ValidationFailed

# Run by the demo root's /sbin/init once booted: the examples' files through the overlay.
EXAMPLES_INIT = """/usr/local/bin/hello-extension || echo "hello-extension: exit status $?"
echo "example firmware: $(cat /usr/lib/firmware/overlay-agent/example.bin)"
overlay-agent get extensions -o yaml
"""


def pack_sources(config: Path, work: Path, epoch: int) -> Path:
    """Pack every `dir:` image of CONFIG (relative to its folder) into an oci-archive under WORK;
    write and return a copy of CONFIG that names the archives instead."""
    import yaml

    from agent.image.pack import PackOptions, pack_extension

    docs = load_documents(config)
    parsed, problems = validate_documents(str(config), docs, str(config.parent))
    if problems:
        raise ValidationFailed(problems)
    work.mkdir(parents=True, exist_ok=True)
    images = []
    for i, image in enumerate(parsed.images):
        if image.startswith("dir:"):
            folder = Path(image[len("dir:"):])
            archive = work / f"{i:03d}-{folder.name}.oci.tar"
            pack_extension(folder, archive, PackOptions(mtime=epoch))
            image = f"oci-archive:{archive}"
        images.append({"image": image})
    for doc in docs:
        if isinstance(doc, dict) and isinstance(doc.get("machine"), dict):
            doc["machine"].setdefault("install", {})["extensions"] = images
            break
    packed = work / "machine.yaml"
    packed.write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return packed


def bake_examples(examples: Path, initramfs: Path, output: Path, work: Path, *,
                  os_version: str | None = None, base_root: Path | None = None,
                  epoch: int = 0, progress: Progress | None = None) -> BuildResult:
    """Pack examples/*, then bake them with `examples/machine.yaml` into OUTPUT."""
    config = pack_sources(examples / "machine.yaml", work, epoch)
    return bake_initramfs(BuildRequest(
        initramfs=initramfs, output=output, config=config, os_version=os_version,
        base_root=base_root, compression=Compression.ZSTD, epoch=epoch), progress)
