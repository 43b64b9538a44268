"""Extension folders, bakes and in-guest checks for the activation scenarios (free of pytest).

The guest asserts, the host reads verdicts: the demo root's /sbin/init runs the checks of
the scenario named on the kernel command line and prints `PASS <token> <name>` or
`FAIL <token> <name> <detail>` per check. One demo root carries every scenario's checks,
so it is built once per session; bakes are cached under .cache/vm-fixtures by input hash.
"""

from __future__ import annotations

import hashlib
import io
import re
import secrets
import shutil
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from agent import cpio
from agent.bake.store import Store
from agent.kernels import Kernel
from devtools.demo import DONE_MARKER
from devtools.images import BOOT_TIMEOUT, CACHE, inputs_key, prune
from devtools.qemu import TOKEN_KEY, BootResult, boot

SCENARIO_KEY = "oa_test.scenario"   # dotted: the kernel keeps it from init's arguments
RELEASE = "@RELEASE@"               # in a pattern: the guest's kernel release, as an ERE
NODE = "overlay-agent-demo"         # the demo root's host name
KEEP = 8                            # cached bakes of one kind kept per suite


@dataclass(frozen=True)
class ExtensionSpec:
    """One extension folder: `files` relative to its rootfs/."""

    name: str
    files: Mapping[str, bytes]
    version: str = "1.0.0"

    def key(self) -> str:
        parts = [self.name, self.version, *(f"{p}:{hashlib.sha256(d).hexdigest()}"
                                            for p, d in sorted(self.files.items()))]
        return "\0".join(parts)


@dataclass(frozen=True)
class Check:
    """One assertion made inside the guest: `test` is shell, true when the check passes."""

    name: str
    test: str


def write_extension(base: Path, spec: ExtensionSpec) -> Path:
    """A Talos-style extension folder (manifest.yaml + rootfs/) under `base`."""
    root = base / spec.name
    shutil.rmtree(root, ignore_errors=True)
    for rel, data in spec.files.items():
        (root / "rootfs" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "rootfs" / rel).write_bytes(data)
    (root / "manifest.yaml").write_text(
        f"version: v1alpha1\nmetadata:\n  name: {spec.name}\n  version: {spec.version}\n"
        f"  author: overlay-agent tests\n  description: {spec.name} for the VM tier\n")
    return root


def module_files(kernel: Kernel, module: str) -> dict[str, bytes]:
    """`module` and its dependencies from the stock kernel, under usr/lib/modules/RELEASE/extras
    (the demo root and the initramfs carry neither)."""
    pattern = re.compile(rf"^(\S*/{re.escape(module)}\.ko(?:\.[a-z]+)?):(.*)$")
    for line in (kernel.modules_dir / "modules.dep").read_text().splitlines():
        found = pattern.match(line)
        if found:
            rels = [found.group(1), *found.group(2).split()]
            return {f"usr/lib/modules/{kernel.release}/extras/{Path(rel).name}":
                    (kernel.modules_dir / rel).read_bytes() for rel in rels}
    raise LookupError(f"{module}: not in {kernel.modules_dir}/modules.dep")


def append_archive(base: Path, entries: Iterable[cpio.Entry], out: Path) -> Path:
    """`base` plus one zstd cpio of `entries`: the kernel unpacks concatenated archives in
    order, so these members replace earlier ones of the same name."""
    buf = io.BytesIO()
    cpio.write(cpio.with_parents(entries), buf)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(base.read_bytes() + b"\0" * (-base.stat().st_size % 4)
                    + cpio.compress(buf.getvalue(), "zstd", 3))
    tmp.replace(out)
    return out


def flip_bytes(data: bytes, count: int = 16) -> bytes:
    """`data` with `count` bytes inverted in the middle: same size, other sha256."""
    middle = len(data) // 2
    return data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + count]) \
        + data[middle + count:]


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def bake(kernel: Kernel, initrd: Path, base_root: Path, specs: Sequence[ExtensionSpec],
         kind: str, work: Path, *, later_wins: bool = False, verity: bool = False,
         store: Store | None = None) -> Path:
    """`initrd` with `specs` baked in by the real `build` (cached by every input);
    `later_wins`: a policy lets later layers ship a file of earlier ones; `verity`: hash
    trees (the sha256 scenarios go without); `store`: images written there."""
    from agent.bake.build import BuildRequest, bake_initramfs

    key = inputs_key(kernel.release, file_digest(initrd), file_digest(base_root),
                     str(later_wins), str(verity), repr(store), *(s.key() for s in specs))
    out = CACHE / f"bake-{kind}-{kernel.suite}-{key}"
    if store is not None or not out.exists():     # a store's images are not cached
        folders = [write_extension(work / kind, spec) for spec in specs]
        policy = None
        if later_wins:
            policy = work / kind / "policy.yaml"
            policy.write_text("duplicate_files: later-wins\n")
        tmp = out.with_name(f".{out.name}.tmp")
        bake_initramfs(BuildRequest(initrd, tmp, extensions=tuple(f"dir:{f}" for f in folders),
                                     base_root=base_root, os_version="v1.7.0", policy=policy,
                                     verity=verity, store=store))
        tmp.replace(out)
        prune(CACHE, f"bake-{kind}-{kernel.suite}-*", keep=KEEP)
    return out


def demo_root_key(extra_init: str) -> str:
    """Inputs of the demo root: agent sources, the checks, busybox and the host's Python."""
    busybox = Path(shutil.which("busybox") or "/bin/busybox").resolve()
    return inputs_key(extra_init, sys.version, file_digest(busybox))


def checks_root(kind: str, scenarios: Mapping[str, Sequence[Check]]) -> Path:
    """The demo root whose /sbin/init runs `scenarios`' checks (cached, kernel-independent)."""
    from devtools.demo import build_demo_root

    extra_init = render_checks(scenarios)
    out = CACHE / f"{kind}-root-{demo_root_key(extra_init)}.sqsh"
    if not out.exists():
        build_demo_root(out, extra_init=extra_init)
        prune(CACHE, f"{kind}-root-*.sqsh", keep=2)
    return out


def suite_kernel(suite: str) -> Kernel:
    """The cached stock kernel of `suite` (SourceError says what is missing)."""
    from agent.kernels import load_kernel

    return load_kernel(CACHE.parent / "kernels", suite)


# ---------------------------------------------------------------- guest side

# Reads `get extensions -o json` lines; prints the fields the checks compare, one line each.
FIELDS_PY = """import json, sys
for line in sys.stdin:
    if not line.startswith("{"):
        continue    # a boot note (stderr shares the file)
    d = json.loads(line)
    m, s = d["metadata"], d["spec"]
    if m["type"] != "ExtensionStatuses.runtime.talos.dev":
        continue    # the writable root's resource
    row = [m["id"], m["phase"], m["namespace"], m["type"], m["version"], m["owner"],
           d["node"], s["image"], s["metadata"]["name"], s["metadata"]["version"], "|",
           s.get("reason", "")]
    print(" ".join(str(x) for x in row).rstrip())
"""

GUEST_PRELUDE = f"""check() {{
  name=$1; shift
  if out=$(eval "$*" 2>&1); then echo "PASS $token $name"
  else echo "FAIL $token $name $(echo $out | cut -c1-300)"; fi
}}
cat > /tmp/fields.py <<'EOF'
{FIELDS_PY}EOF
overlay-agent get extensions > /tmp/table 2>&1
overlay-agent get extensions -o json > /tmp/json 2>&1
python3 -IS /tmp/fields.py < /tmp/json > /tmp/fields 2>&1
sed 's/^/FIELDS /' /tmp/fields
release=$(uname -r | sed 's/[.+]/\\\\&/g')
scenario=$(sed -n 's/.*{SCENARIO_KEY}=\\([^ ]*\\).*/\\1/p' /proc/cmdline)
echo "CHECKS $token $scenario"
"""


def render_checks(scenarios: Mapping[str, Sequence[Check]]) -> str:
    """Shell for the demo root's /sbin/init: the prelude, then one case per scenario."""
    cases = "".join(f"{name})\n" + "".join(f"  check {c.name} {shell_quote(c.test)}\n"
                                           for c in checks) + "  ;;\n"
                    for name, checks in scenarios.items())
    return f'{GUEST_PRELUDE}case "$scenario" in\n{cases}*) echo "FAIL $token scenario ' \
           f'unknown: $scenario" ;;\nesac\n'


def shell_quote(text: str) -> str:
    return "'" + text.replace("'", "'\\''") + "'"


def ere(text: str) -> str:
    """`text` as a literal in a POSIX extended regular expression."""
    return re.sub(r"([.+*?()\[\]{}|^$\\])", r"\\\1", text)


def table_row(ext_id: str, name: str, version: str, tail: str = "", check: str = "") -> str:
    """An ERE for one `get extensions` table row (`check`: the CHECK column, when shown;
    `tail`: the PHASE/REASON columns)."""
    cells = (NODE, "runtime", "ExtensionStatus", ext_id, "1", name, version)
    row = " +".join(ere(cell) for cell in cells + ((check,) if check else ()))
    return row + (f" +{tail}" if tail else "")


def field_line(ext_id: str, phase: str, name: str, version: str, reason: str = "") -> str:
    """An ERE for one line of /tmp/fields (from the JSON output)."""
    return " ".join([ere(ext_id), phase, "runtime", ere("ExtensionStatuses.runtime.talos.dev"),
                     "1", ere("runtime.ExtensionStatusController"), ere(NODE),
                     ere(ext_id + ".sqsh"), ere(name), ere(version), r"\|"]) + \
        (f" {reason}" if reason else "")


def all_lines(path: str, patterns: Sequence[str]) -> str:
    """Shell: the file has exactly len(patterns) (+ header) lines, each matching in order."""
    header = 1 if path.startswith("/tmp/table") else 0   # a get extensions table
    tests = [f'[ "$(wc -l < {path})" -eq {len(patterns) + header} ]']
    tests += [f"sed -n {i + 1 + header}p {path} | grep -Eqx "
              + shell_quote(p).replace(RELEASE, "'\"$release\"'") for i, p in enumerate(patterns)]
    return " && ".join(tests)


def listing_checks(layers: Sequence[tuple[str, str, str]],
                   states: Sequence[tuple[str, str]] = (),
                   checks: Sequence[str] = ()) -> list[Check]:
    """`table` and `json` checks: `get extensions` shows `layers` (id, name, version) in
    order, each in its state (phase, reason ERE); no states: all active, no PHASE column.
    `checks`: each layer's check (default sha256, none when skipped); no CHECK column when
    every layer's is none."""
    if not checks:
        checks = ["none" if states and states[k][0] == "skipped" else "sha256"
                  for k in range(len(layers))]
    shown = any(c != "none" for c in checks)
    table, fields = [], []
    for k, (ext_id, name, version) in enumerate(layers):
        phase, reason = states[k] if states else ("active", "")
        tail = "" if not states else f"{phase} +{reason}" if reason else phase
        table.append(table_row(ext_id, name, version, tail, checks[k] if shown else ""))
        fields.append(field_line(ext_id, "running" if phase == "active" else phase, name,
                                 version, reason))
    return [Check("table", all_lines("/tmp/table", table)),
            Check("json", all_lines("/tmp/fields", fields))]


# ---------------------------------------------------------------- host side

@dataclass(frozen=True)
class Verdicts:
    passed: tuple[str, ...]
    failed: Mapping[str, str]      # name -> detail
    scenario: str                  # what the guest read from its command line


def read_verdicts(output: str, token: str) -> Verdicts:
    """The guest's PASS/FAIL lines for this boot's token (others are not this boot's)."""
    passed = tuple(re.findall(rf"^PASS {token} (\S+)$", output, re.M))
    failed = dict(re.findall(rf"^FAIL {token} (\S+) ?(.*)$", output, re.M))
    scenario = re.search(rf"^CHECKS {token} (\S*)$", output, re.M)
    return Verdicts(passed, failed, scenario.group(1) if scenario else "")


def boot_scenario(kernel: Kernel, initrd: Path, scenario: str, logs: Path, extra: str = "", *,
                  log: str = "", disk: Path | None = None) -> tuple[BootResult, Verdicts]:
    """One boot of a checks root's `scenario` with a fresh token (and `disk` as a second
    drive); serial log LOGS/LOG.log (default: the scenario's name)."""
    token = secrets.token_hex(8)
    append = f"panic=-1 loglevel=3 {TOKEN_KEY}={token} {SCENARIO_KEY}={scenario} {extra}"
    result = boot(kernel.vmlinuz, initrd, append.strip(), disk=disk, timeout=BOOT_TIMEOUT,
                  serial_log=logs / f"{log or scenario}.log")
    assert not result.timed_out, result.output[-3000:]
    return result, read_verdicts(result.output, token)


def assert_all_passed(result: BootResult, verdicts: Verdicts,
                      scenarios: Mapping[str, Sequence[Check]], scenario: str) -> None:
    """The guest ran `scenario`, and every one of its checks (from `scenarios`) passed."""
    tail = result.output[-4000:]
    assert verdicts.scenario == scenario, tail
    assert dict(verdicts.failed) == {}, tail
    assert sorted(verdicts.passed) == sorted(c.name for c in scenarios[scenario]), tail
    assert DONE_MARKER in result.output, tail
    assert "Traceback" not in result.output, tail
