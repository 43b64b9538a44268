"""dm-verity and the image store under QEMU (TCG, Debian 12's stock kernel, -smp 1).

Activation: inside one booted guest, the agent's activation (as the hook runs it) of N
images of 1 MiB and of 10 MiB held in RAM (a tmpfs, as in the initramfs), with the three
checks side by side: verity (dm-verity table per layer, no read), sha256 (the whole image
hashed), none (a Talos-written list). Images are built as `build` builds them (squashfs,
then veritysetup's tree); the same images serve the three lists.

After the runs, one activation per check with each step of a layer timed (loop, the three
device-mapper ioctls, the squashfs mount): where verity's added cost goes.

Store: initramfs bytes `build --store` adds per extension, and the guest's memory held after
boot by 10 extensions of 10 MiB baked into the initramfs versus kept in a store on a disk,
with its kernel part; then, in one guest, the kernel memory 10 mounted layers hold per
squashfs compression and block size, beside what each packs a real tree to.
"""

from __future__ import annotations

import json
import os
import random
import re
import secrets
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from agent import listfile  # noqa: E402
from agent.bake.build import BuildRequest, bake_initramfs, describe_layer  # noqa: E402
from agent.bake.squash import SquashJob, SquashOptions, squash_one  # noqa: E402
from agent.bake.store import Store  # noqa: E402
from agent.bake.verity import append_hash_tree  # noqa: E402
from agent.kernels import load_kernel  # noqa: E402
from agent.tools import run as run_tool  # noqa: E402
from devtools.demo import build_demo_root  # noqa: E402
from devtools.images import initramfs  # noqa: E402
from devtools.qemu import TOKEN_KEY, boot  # noqa: E402

SUITE = "bookworm"
SIZES_MIB = (1, 10)
COUNTS = (10, 100)
MODES = ("verity", "sha256", "none")
RUNS = 3
MEMORY_MB = 3072        # 1 GiB of 10 MiB images in a tmpfs, plus the system
TIMEOUT = 1800.0
CACHE = ROOT / ".cache" / "bench-verity"
MEM_EXTS = 10
STORE_UUID = "3c9e6f1a-2b4d-4c8e-9f0a-1b2c3d4e5f60"

GUEST_PY = r"""
import json, os, sys, time
sys.path.insert(0, "/usr/lib/overlay-agent")
from agent import syscalls
from agent.boot.activate import ActivationSettings, activate_extensions
from agent.statusfile import read_status
disk, token, runs = sys.argv[1], sys.argv[2], int(sys.argv[3])
plan = json.load(open(disk + "/plan.json"))
W = "/run/bench"
for d in ("base", "root", "images"):
    os.makedirs(W + "/" + d, exist_ok=True)
syscalls.mount("base", W + "/base", "tmpfs", syscalls.MS_RDONLY, "mode=0755")
settings = ActivationSettings(list_path=W + "/extensions.yaml", images_dir=W + "/images",
                              status_path=W + "/status.json", staging_dir=W + "/s")

def copy(src, dst):
    with open(src, "rb") as f, open(dst, "wb") as g:
        while True:
            b = f.read(1 << 20)
            if not b:
                break
            g.write(b)

def clean(n):
    syscalls.umount2(W + "/root")
    for i in range(n):
        for _ in range(50):
            try:
                syscalls.dm_remove("oa-layer-%03d" % i)
                break
            except OSError as exc:
                if exc.errno == 2 or exc.errno == 6:
                    break
                time.sleep(0.01)

def profile(group):
    # one activation per mode, one mount thread, each step of a layer timed: where
    # verity's added cost goes
    from agent.boot import activate, loop, verity
    steps = {}
    saved = []
    def timed(mod, name, key, only=None):
        f = getattr(mod, name)
        saved.append((mod, name, f))
        def g(*a, **k):
            t = time.monotonic()
            try:
                return f(*a, **k)
            finally:
                if only is None or only in a:
                    steps[key] = steps.get(key, 0.0) + time.monotonic() - t
        setattr(mod, name, g)
    timed(loop, "attach_readonly", "loop")
    for name in ("dm_create", "dm_load_table", "dm_resume"):
        timed(syscalls, name, name)
    timed(verity, "open_verity", "verity")
    timed(syscalls, "mount", "squashfs", "squashfs")
    timed(activate, "mount_layer", "layer")
    threads, activate.MOUNT_THREADS = activate.MOUNT_THREADS, 1
    n = max(c["n"] for c in group["configs"])
    for cfg in group["configs"]:
        if cfg["n"] != n or cfg["mode"] == "sha256":
            continue
        copy(disk + "/" + cfg["list"], W + "/extensions.yaml")
        steps.clear()
        got = activate_extensions(W + "/base", W + "/root", settings)
        for key, secs in sorted(steps.items()):
            print("STEP %s %s %s %d %.1f" % (token, cfg["mode"], key, n, secs * 1000), flush=True)
        if got == W + "/root":
            clean(n)
    activate.MOUNT_THREADS = threads
    for mod, name, f in saved:
        setattr(mod, name, f)

for group in plan:
    syscalls.mount("img", W + "/images", "tmpfs", 0, "mode=0755,size=1400m")
    for name in group["images"]:
        copy(disk + "/" + group["dir"] + "/" + name, W + "/images/" + name)
    # runs interleaved (run r of every configuration, then run r+1): a shared machine's
    # load then weighs on every configuration alike
    for r in range(runs):
        for cfg in group["configs"]:
            copy(disk + "/" + cfg["list"], W + "/extensions.yaml")
            t = time.monotonic()
            got = activate_extensions(W + "/base", W + "/root", settings)
            wall = (time.monotonic() - t) * 1000
            st = read_status(W + "/status.json")
            ok = got == W + "/root" and all(e.phase == "active" for e in st.extensions)
            checks = ",".join(sorted({e.check for e in st.extensions}))
            print("BENCH %s %d %d %s %d %.1f %.1f %s %s" % (token, group["size"], cfg["n"],
                  cfg["mode"], r, wall, st.duration_ms, "ok" if ok else "FAILED", checks),
                  flush=True)
            if got == W + "/root":
                clean(cfg["n"])
    if group["size"] == min(g["size"] for g in plan):
        profile(group)
    syscalls.umount2(W + "/images")
"""

LAYERS_PY = r"""
import json, os, sys, time
sys.path.insert(0, "/usr/lib/overlay-agent")
from agent import syscalls
from agent.boot.activate import ActivationSettings, activate_extensions
from agent.statusfile import read_status
disk, token = sys.argv[1], sys.argv[2]
W = "/run/bench"
for d in ("base", "root"):
    os.makedirs(W + "/" + d, exist_ok=True)
syscalls.mount("base", W + "/base", "tmpfs", syscalls.MS_RDONLY, "mode=0755")
KEYS = ("SUnreclaim", "VmallocUsed", "KernelStack", "PageTables", "Percpu")

def kernel_kb():
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")
    time.sleep(1)
    m = {}
    for line in open("/proc/meminfo"):
        k, v = line.split(":")
        m[k] = int(v.split()[0])
    return sum(m[k] for k in KEYS)

for s in json.load(open(disk + "/layers.json")):
    settings = ActivationSettings(list_path=disk + "/" + s["list"],
                                  images_dir=disk + "/" + s["dir"],
                                  status_path=W + "/status.json", staging_dir=W + "/s")
    before = kernel_kb()
    got = activate_extensions(W + "/base", W + "/root", settings)
    st = read_status(W + "/status.json")
    ok = got == W + "/root" and all(e.phase == "active" and e.check == "verity"
                                    for e in st.extensions)
    for name in os.listdir(W + "/root/usr/local/share"):   # every byte read once
        with open(W + "/root/usr/local/share/" + name, "rb") as f:
            while f.read(1 << 20):
                pass
    after = kernel_kb()
    print("LAYERS %s %s %d %s" % (token, s["name"], after - before, "ok" if ok else "FAILED"),
          flush=True)
    if got == W + "/root":
        syscalls.umount2(W + "/root")
        for i in range(len(st.extensions)):
            for _ in range(50):
                try:
                    syscalls.dm_remove("oa-layer-%03d" % i)
                    break
                except OSError as exc:
                    if exc.errno in (2, 6):
                        break
                    time.sleep(0.01)
    time.sleep(1)
"""

GUEST_INIT = f"""
scenario=$(sed -n 's/.*oa_bench=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
case "$scenario" in
activate)
  mkdir -p /run/d && mount -o ro /dev/vda /run/d
  cat > /tmp/bench.py <<'EOF'
{GUEST_PY}
EOF
  python3 -IS /tmp/bench.py /run/d "$token" {RUNS} 2>&1 | tail -n 400
  ;;
mem)
  sync; echo 3 > /proc/sys/vm/drop_caches
  grep -E '^(MemTotal|MemFree|MemAvailable|Shmem|Cached|SUnreclaim|VmallocUsed|KernelStack):' \\
    /proc/meminfo | sed "s/^/MEM $token /"
  awk '{{s += $2}} END {{print "MEM '"$token"' Modules: " int(s / 1024) " kB"}}' /proc/modules
  ;;
layers)
  mkdir -p /run/d && mount -o ro /dev/vda /run/d
  cat > /tmp/layers.py <<'EOF'
{LAYERS_PY}
EOF
  python3 -IS /tmp/layers.py /run/d "$token" 2>&1 | tail -n 100
  ;;
esac
"""


# ---------------------------------------------------------------- host side: images

def make_image(folder: Path, size_mib: int, i: int) -> Path:
    image = folder / f"{i:03d}-b{i}.sqsh"
    if image.exists():
        return image
    src = folder / f"src{i}"
    shutil.rmtree(src, ignore_errors=True)
    (src / "usr/local/share").mkdir(parents=True)
    (src / "usr/local/share" / f"layer-{i}").write_text(str(i))
    (src / "usr/local/share" / f"blob-{i}").write_bytes(
        random.Random(f"{size_mib}-{i}").randbytes((size_mib << 20) - 8192))
    tmp = image.with_suffix(".tmp")
    squash_one(SquashJob(src, tmp, src.name), SquashOptions(epoch=1700000000), 1)
    shutil.rmtree(src)
    tmp.replace(image)
    return image


def verity_image(folder: Path, size_mib: int, i: int) -> listfile.Layer:
    """As `build` makes and describes it; the tree is appended once (cached)."""
    image = make_image(folder, size_mib, i)
    facts = image.with_suffix(".verity.json")
    if not facts.exists():
        facts.write_text(json.dumps(append_hash_tree(image).to_dict()))
    tree = listfile.Verity.from_dict(json.loads(facts.read_text()), str(facts))
    return describe_layer(image, listfile.Metadata(f"b{i}", "1.0"), listfile.KIND_EXTENSION,
                          tree)


def list_for(layers: list[listfile.Layer], mode: str) -> str:
    if mode == "sha256":
        layers = [layer.replace(verity=None) for layer in layers]
    elif mode == "none":
        layers = [listfile.Layer(layer.image, layer.metadata) for layer in layers]
    return listfile.dump_list(layers)


def activation_disk(work: Path) -> Path:
    tree = work / "disk"
    plan = []
    for size in SIZES_MIB:
        folder = CACHE / f"{size}mib"
        folder.mkdir(parents=True, exist_ok=True)
        layers = [verity_image(folder, size, i) for i in range(max(COUNTS))]
        (tree / f"img{size}").mkdir(parents=True)
        for layer in layers:
            os.link(folder / layer.image, tree / f"img{size}" / layer.image)
        configs = []
        for n in COUNTS:
            for mode in MODES:
                name = f"lists/{size}-{n}-{mode}.json"
                (tree / "lists").mkdir(exist_ok=True)
                (tree / name).write_text(list_for(layers[:n], mode))
                configs.append({"n": n, "mode": mode, "list": name})
        plan.append({"size": size, "dir": f"img{size}", "images": [x.image for x in layers],
                     "configs": configs})
    (tree / "plan.json").write_text(json.dumps(plan))
    disk = work / "bench.ext4"
    total = sum(f.stat().st_size for f in tree.rglob("*") if f.is_file())
    run_tool(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-d", tree, disk,
         f"{total // (1 << 20) + 256}M"], capture=True)
    return disk


# ---------------------------------------------------------------- host side: boots

def guest_boot(kernel_path: Path, initrd: Path, scenario: str, logs: Path,
               disk: Path | None, memory_mb: int) -> tuple[str, str]:
    token = secrets.token_hex(8)
    result = boot(kernel_path, initrd, f"panic=-1 loglevel=3 {TOKEN_KEY}={token} "
                  f"oa_bench={scenario}", disk=disk, timeout=TIMEOUT,
                  serial_log=logs / f"{scenario}.log", memory_mb=memory_mb)
    if result.timed_out:
        raise RuntimeError(f"bench boot {scenario} timed out: {result.output[-2000:]}")
    return result.output, token


def activation_rows(output: str, token: str) -> list[str]:
    found: dict[tuple[int, int, str], list[float]] = {}
    checks: dict[tuple[int, int, str], str] = {}
    for size, n, mode, _, _, busy, ok, chk in re.findall(
            rf"^BENCH {token} (\d+) (\d+) (\S+) (\d+) ([\d.]+) ([\d.]+) (\S+) (\S+)$",
            output, re.M):
        if ok != "ok":
            raise RuntimeError(f"bench activation {size} MiB x {n} {mode} failed")
        key = (int(size), int(n), mode)
        found.setdefault(key, []).append(float(busy))
        checks[key] = chk
    rows = []
    for size in SIZES_MIB:
        for n in COUNTS:
            # best of the runs: on a shared machine the load only ever adds time
            best = {m: min(found[(size, n, m)]) for m in MODES}
            med = {m: statistics.median(found[(size, n, m)]) for m in MODES}
            per = {m: best[m] / n for m in MODES}
            added = per["verity"] - per["none"]
            rows.append(f"| {size} MiB | {n} | {best['verity']:.0f} ({med['verity']:.0f}) | "
                        f"{best['sha256']:.0f} ({med['sha256']:.0f}) | "
                        f"{best['none']:.0f} ({med['none']:.0f}) | {per['none']:.1f} | "
                        f"{added:.1f} ({added / per['none']:.2f}x) | "
                        f"{best['verity'] / best['sha256']:.2f}x | "
                        f"{checks[(size, n, 'verity')]} |")
    return rows


STEPS = (("loop", "loop device (LOOP_CONFIGURE)"), ("dm_create", "DM_DEV_CREATE"),
         ("dm_load_table", "DM_TABLE_LOAD (the verity table)"),
         ("dm_resume", "DM_DEV_SUSPEND (resume)"),
         ("verity", "dm-verity step in all (the three ioctls, /dev/dm-N)"),
         ("squashfs", "squashfs mount (its first reads)"), ("layer", "one layer in all"))


def step_rows(output: str, token: str) -> list[str]:
    """Per-layer time of each step, one mount thread, N = 100 of the smaller images."""
    found = {(mode, key): float(ms) / int(n) for mode, key, n, ms in re.findall(
        rf"^STEP {token} (\S+) (\S+) (\d+) ([\d.]+)$", output, re.M)}
    if not found:
        raise RuntimeError("bench activation: no step times")
    return [f"| {label} | {found.get(('none', key), 0):.2f} | {found.get(('verity', key), 0):.2f} |"
            for key, label in STEPS]


def store_bytes(work: Path, kernel_initrd: Path) -> list[str]:
    """Initramfs bytes added by `build --store`, per extension, for 1 and 10 MiB images."""
    rows = []
    for size in SIZES_MIB:
        added = {}
        for count in (1, MEM_EXTS):
            exts = []
            for i in range(count):
                root = work / f"st{size}-{count}" / f"e{i}"
                (root / "rootfs/usr/local/share").mkdir(parents=True)
                (root / "rootfs/usr/local/share" / f"blob-{i}").write_bytes(
                    random.Random(f"st{size}-{i}").randbytes(size << 20))
                (root / "manifest.yaml").write_text(
                    f"version: v1alpha1\nmetadata:\n  name: e{i}\n  version: 1.0.0\n"
                    "  author: bench\n  description: bench\n")
                exts.append(f"dir:{root}")
            store = work / f"store{size}-{count}"
            store.mkdir()
            out = work / f"st{size}-{count}.img"
            bake_initramfs(BuildRequest(kernel_initrd, out, extensions=tuple(exts),
                                         os_version="v1.7.0",
                                         store=Store(store, STORE_UUID, "oa")))
            added[count] = out.stat().st_size - kernel_initrd.stat().st_size
        per = (added[MEM_EXTS] - added[1]) / (MEM_EXTS - 1)
        rows.append(f"| {size} MiB | {added[1]} | {added[MEM_EXTS]} | {per:.0f} | "
                    f"{'met' if per <= 1024 else 'MISSED'} |")
    return rows


def memory_rows(work: Path, logs: Path, kernel_path: Path, agent_initrd: Path,
                root: Path) -> list[str]:
    """MemTotal - MemAvailable after boot: 10 x 10 MiB in the initramfs vs in a store."""
    exts = []
    for i in range(MEM_EXTS):
        ext = work / "mem" / f"m{i}"
        (ext / "rootfs/usr/local/share").mkdir(parents=True)
        (ext / "rootfs/usr/local/share" / f"m{i}").write_bytes(
            random.Random(f"mem-{i}").randbytes(10 << 20))
        (ext / "manifest.yaml").write_text(
            f"version: v1alpha1\nmetadata:\n  name: m{i}\n  version: 1.0.0\n"
            "  author: bench\n  description: bench\n")
        exts.append(f"dir:{ext}")
    baked = work / "mem-initramfs.img"
    bake_initramfs(BuildRequest(agent_initrd, baked, extensions=tuple(exts),
                                 os_version="v1.7.0", base_root=root))
    storefs = work / "memstore"
    (storefs / "oa").mkdir(parents=True)
    listed = work / "mem-store.img"
    bake_initramfs(BuildRequest(agent_initrd, listed, extensions=tuple(exts),
                                 os_version="v1.7.0", base_root=root,
                                 store=Store(storefs / "oa", STORE_UUID, "oa")))
    disk = work / "memstore.ext4"
    run_tool(["mkfs.ext4", "-q", "-F", "-U", STORE_UUID, "-O", "^has_journal", "-d", storefs,
         disk, "256M"], capture=True)
    bare_out, bare_token = guest_boot(kernel_path, agent_initrd, "mem", logs / "none", disk,
                                      512)
    used, kernel, mods = {}, {}, {}
    for name, initrd, with_disk in (("none", agent_initrd, None),
                                    ("initramfs", baked, None), ("store", listed, disk)):
        out, token = (bare_out, bare_token) if name == "none" else guest_boot(
            kernel_path, initrd, "mem", logs / name, with_disk, 512)
        mem = {k: int(v) for k, v in re.findall(rf"^MEM {token} (\w+):\s+(\d+) kB$", out,
                                                re.M)}
        if "MemAvailable" not in mem:
            raise RuntimeError(f"bench memory boot {name}: no figures: {out[-2000:]}")
        used[name] = (mem["MemTotal"] - mem["MemAvailable"]) / 1024
        kernel[name] = (mem["SUnreclaim"] + mem["VmallocUsed"] + mem["KernelStack"]) / 1024
        mods[name] = mem["Modules"] / 1024
    rows = []
    for name in ("initramfs", "store"):
        extra = used[name] - used["none"]
        goal = "about 100 MiB (expected)" if name == "initramfs" else \
            ("<= 1 MiB: met" if extra <= 1 else "<= 1 MiB: MISSED")
        rows.append(f"| {name} | {used[name]:.1f} | {extra:.1f} | "
                    f"{kernel[name] - kernel['none']:.1f} | {mods[name] - mods['none']:.1f} | "
                    f"{goal} |")
    rows.append(f"| no extensions | {used['none']:.1f} | - | - | - | baseline |")
    return rows


LAYER_VARIANTS = (("zstd", 128), ("zstd", 32), ("xz", 128), ("xz", 32))


def variant_image(folder: Path, comp: str, block_k: int, i: int) -> listfile.Layer:
    """A 10 MiB image of random bytes squashed with `comp` and `block_k` KiB blocks, with
    its hash tree (cached)."""
    image = folder / f"{i:03d}-v{i}.sqsh"
    facts = image.with_suffix(".verity.json")
    if not facts.exists():
        src = folder / f"src{i}"
        shutil.rmtree(src, ignore_errors=True)
        (src / "usr/local/share").mkdir(parents=True)
        (src / "usr/local/share" / f"v-{i}").write_bytes(
            random.Random(f"mem-{i}").randbytes(10 << 20))
        run_tool(["mksquashfs", src, image, "-noappend", "-all-root", "-no-xattrs", "-comp", comp,
                  "-b", f"{block_k}K", "-mkfs-time", "1700000000", "-all-time", "1700000000",
                  "-quiet", "-no-progress"], capture=True)
        shutil.rmtree(src)
        facts.write_text(json.dumps(append_hash_tree(image).to_dict()))
    tree = listfile.Verity.from_dict(json.loads(facts.read_text()), str(facts))
    return describe_layer(image, listfile.Metadata(f"v{i}", "1.0"), listfile.KIND_EXTENSION,
                          tree)


def packed_size(tree: Path, comp: str, block_k: int, work: Path) -> int:
    out = work / "packed.sqsh"
    run_tool(["mksquashfs", tree, out, "-noappend", "-all-root", "-no-xattrs", "-comp", comp,
              "-b", f"{block_k}K", "-quiet", "-no-progress"], capture=True)
    size = out.stat().st_size
    out.unlink()
    return size


def layer_rows(work: Path, logs: Path, kernel_path: Path, agent_initrd: Path) -> list[str]:
    """Kernel memory (SUnreclaim + VmallocUsed + KernelStack + PageTables + Percpu) held by
    10 mounted verity layers of 10 MiB, per compression and squashfs block size, measured in
    one guest (the first set twice: the first run warms the caches); and what each packs
    this machine's Python standard library to (the compression trade-off)."""
    tree = work / "layers"
    sets = []
    for comp, block in (LAYER_VARIANTS[0], *LAYER_VARIANTS):
        name = f"{comp}-{block}"
        folder = CACHE / f"layers-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        layers = [variant_image(folder, comp, block, i) for i in range(MEM_EXTS)]
        if not (tree / name).exists():
            (tree / name).mkdir(parents=True)
            for layer in layers:
                os.link(folder / layer.image, tree / name / layer.image)
            (tree / f"{name}.json").write_text(list_for(layers, "verity"))
        sets.append({"name": name, "dir": name, "list": f"{name}.json"})
    (tree / "layers.json").write_text(json.dumps(sets))
    disk = work / "layers.ext4"
    run_tool(["mkfs.ext4", "-q", "-F", "-O", "^has_journal", "-d", tree, disk, "600M"],
             capture=True)
    out, token = guest_boot(kernel_path, agent_initrd, "layers", logs, disk, 512)
    found = re.findall(rf"^LAYERS {token} (\S+) (-?\d+) (\S+)$", out, re.M)
    if len(found) != len(sets) or any(ok != "ok" for _, _, ok in found):
        raise RuntimeError(f"bench layers boot: {found}: {out[-2000:]}")
    held = {name: int(kb) for name, kb, _ in found[1:]}
    stdlib = Path(os.__file__).parent
    sizes = {f"{c}-{b}": packed_size(stdlib, c, b, work) for c, b in LAYER_VARIANTS}
    base = sizes["zstd-128"]
    return [f"| {c} | {b} KiB | {held[f'{c}-{b}'] / 1024:.1f} | "
            f"{held[f'{c}-{b}'] / MEM_EXTS:.0f} | {sizes[f'{c}-{b}'] / 2**20:.1f} "
            f"({sizes[f'{c}-{b}'] / base - 1:+.0%}) |" for c, b in LAYER_VARIANTS]


def run_bench(out: Path, kernels: Path) -> None:
    kernel = load_kernel(kernels, SUITE)
    CACHE.mkdir(parents=True, exist_ok=True)
    # beside the cached images: the disk tree hard-links them
    with tempfile.TemporaryDirectory(prefix="work.", dir=CACHE) as tmp:
        work = Path(tmp)
        root = build_demo_root(work / "root.sqsh", extra_init=GUEST_INIT)
        agent_initrd = initramfs(kernel, root)
        disk = activation_disk(work)
        logs = CACHE / "logs"       # kept: the guest's own lines behind every figure
        output, token = guest_boot(kernel.vmlinuz, agent_initrd, "activate", logs, disk,
                                   MEMORY_MB)
        act = activation_rows(output, token)
        steps = step_rows(output, token)
        plain = initramfs(kernel, None)
        stored = store_bytes(work, plain)
        mem = memory_rows(work, logs, kernel.vmlinuz, agent_initrd, root)
        held = layer_rows(work, logs, kernel.vmlinuz, agent_initrd)
    out.write_text(render(kernel.release, act, steps, stored, mem, held))


def render(release: str, act: list[str], steps: list[str], stored: list[str],
           mem: list[str], held: list[str]) -> str:
    return f"""## dm-verity and the image store (bench/bench_verity.py)

QEMU TCG, -smp 1, Debian 12's stock kernel ({release}); one boot runs every activation
below in the guest, {RUNS} runs each, interleaved; best run (median in brackets). Times are
the activation alone (the status file's duration), images in a tmpfs as in the initramfs.
verity: a dm-verity table per layer and no read of the image; sha256: the whole image
hashed; none: a Talos-written list. Goals: verity's added cost per layer <= 0.5x a layer
without check; verity alike for 1 and 10 MiB images (within 10%); at 10 MiB, verity <= 0.3x
sha256.

| image | N | verity ms | sha256 ms | none ms | none per layer ms | verity added per layer ms (x none) | verity / sha256 | check seen |
| --- | --- | --- | --- | --- | --- | --- | --- | --- |
{chr(10).join(act)}

Where a layer's time goes (same boot, after the runs above: one activation of N = 100
images of {min(SIZES_MIB)} MiB per check, one mount thread, each step timed around its call):

| step | none ms per layer | verity ms per layer |
| --- | --- | --- |
{chr(10).join(steps)}

Initramfs bytes `build --store` adds (the list only; images in the store), this machine:

| image | 1 extension | {MEM_EXTS} extensions | bytes per extension | goal <= 1 KiB |
| --- | --- | --- | --- | --- |
{chr(10).join(stored)}

Guest memory held after boot (MemTotal - MemAvailable after dropping caches, 512 MiB guest),
{MEM_EXTS} extensions of 10 MiB (random bytes), baked into the initramfs vs kept in a store
on a second disk; kernel = SUnreclaim + VmallocUsed + KernelStack; every boot loads the same
modules (the initramfs's list), the module column says so:

| where | used MiB | over no extensions MiB | kernel over no extensions MiB | modules over no extensions MiB | goal |
| --- | --- | --- | --- | --- | --- |
{chr(10).join(mem)}

Kernel memory held by {MEM_EXTS} mounted verity layers of 10 MiB (SUnreclaim + VmallocUsed +
KernelStack + PageTables + Percpu after activation minus before, caches dropped, one guest)
by squashfs compression and block size, and the size this machine's Python standard library
packs to with each (the compression trade-off):

| compression | block | MiB for {MEM_EXTS} layers | KiB per layer | stdlib packed MiB (vs zstd 128 KiB) |
| --- | --- | --- | --- | --- |
{chr(10).join(held)}
"""


def run(out: Path, kernels: Path) -> None:
    """The bench module entry point (scripts/bench.py)."""
    run_bench(out, kernels)
