#!/bin/bash
# Install the Debian packages overlay-agent's build, tests and demo need, once.
# Checks by command first so a machine that has them all does not touch apt.
#
# docker-registry is wanted for its program only: the registry tests start it themselves on
# 127.0.0.1. Its packaged service (port 5000 on every address) must never start nor stay
# enabled on the user's machine: it is installed under a policy-rc.d that denies every start
# (Debian's mechanism for that) and disabled right after, since its postinst enables it anyway.
set -euo pipefail

REGISTRY_PKG=docker-registry
REGISTRY_UNIT=docker-registry.service
POLICY=/usr/sbin/policy-rc.d
# how this script's apt-get line appears in apt's history log
OUR_INSTALL="^Commandline: apt-get install -y -q --no-install-recommends (.* )?$REGISTRY_PKG( |$)"

unit_enabled() {
  systemctl is-enabled --quiet "$REGISTRY_UNIT" 2>/dev/null
}

unit_active() {
  [ -d /run/systemd/system ] && systemctl is-active --quiet "$REGISTRY_UNIT" 2>/dev/null
}

# Disable and stop the packaged registry service (root only; systemctl works without a
# running systemd, and also turns off the package's SysV rc links).
quiet_registry_service() {
  command -v systemctl >/dev/null || return 0
  if unit_enabled || unit_active; then
    if [ "$(id -u)" -ne 0 ]; then
      echo "ensure-deps: $REGISTRY_UNIT is enabled or running; as root: systemctl disable --now $REGISTRY_UNIT" >&2
      return 0
    fi
    echo "ensure-deps: disabling $REGISTRY_UNIT (installed for its program only)"
    systemctl disable --quiet "$REGISTRY_UNIT"
    if unit_active; then systemctl stop "$REGISTRY_UNIT"; fi
  fi
}

# Leave a service this script's earlier versions installed (and the package enabled) off;
# one the administrator installed is theirs.
if dpkg-query -W -f '${Status}' "$REGISTRY_PKG" 2>/dev/null | grep -q 'ok installed' &&
   zgrep -qsE "$OUR_INSTALL" /var/log/apt/history.log*; then
  quiet_registry_service
fi

# Run "$@" with every service start refused (policy-rc.d exit 101), restoring an existing
# policy afterwards, even on error.
with_starts_denied() {
  local saved=""
  if [ -e "$POLICY" ] || [ -L "$POLICY" ]; then
    saved=$(mktemp "$POLICY.overlay-agent.XXXXXX")
    mv -f "$POLICY" "$saved"
  fi
  # shellcheck disable=SC2064  # expand now: restore this call's files
  trap "rm -f '$POLICY'; [ -z '$saved' ] || mv -f '$saved' '$POLICY'" EXIT
  printf '#!/bin/sh\n# overlay-agent ensure-deps: no service starts while installing\nexit 101\n' >"$POLICY"
  chmod 755 "$POLICY"
  "$@"
  rm -f "$POLICY"
  [ -z "$saved" ] || mv -f "$saved" "$POLICY"
  trap - EXIT
}

declare -A want=(
  [mksquashfs]=squashfs-tools [unsquashfs]=squashfs-tools
  [qemu-system-x86_64]=qemu-system-x86 [skopeo]=skopeo
  [docker-registry]=docker-registry [busybox]=busybox-static
  [zstd]=zstd [xz]=xz-utils [lz4]=lz4 [cpio]=cpio [depmod]=kmod [modprobe]=kmod
  [mkfs.ext4]=e2fsprogs [sfdisk]=fdisk [unshare]=util-linux [losetup]=mount
  [dpkg-deb]=dpkg [apt-get]=apt [iucode_tool]=iucode-tool
  [veritysetup]=cryptsetup-bin [mkfs.vfat]=dosfstools [mcopy]=mtools [findmnt]=mount
  [dpkg-buildpackage]=dpkg-dev [dh]=debhelper [dh_python3]=dh-python [lintian]=lintian
  [mmdebstrap]=mmdebstrap
)
missing=()
for cmd in "${!want[@]}"; do
  if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1; then
    missing+=("${want[$cmd]}")
  fi
done
# the virtualenv module is split out of Debian's python3
if ! /usr/bin/python3 -c 'import ensurepip, venv' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi
# `make deb`: pybuild's pyproject plugin builds with Debian's python3-build and -installer
if [ ! -e /usr/share/dh-python/dhpython/build/plugin_pyproject.py ] ||
   ! /usr/bin/python3 -c 'import build, installer, setuptools, wheel' >/dev/null 2>&1; then
  missing+=(pybuild-plugin-pyproject python3-setuptools python3-wheel python3-all)
fi
if [ "${#missing[@]}" -eq 0 ]; then
  exit 0
fi
mapfile -t pkgs < <(printf '%s\n' "${missing[@]}" | sort -u)
echo "ensure-deps: installing ${pkgs[*]}"
if [ "$(id -u)" -ne 0 ]; then
  echo "ensure-deps: need root to install ${pkgs[*]}" >&2
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
with_starts_denied apt-get install -y -q --no-install-recommends "${pkgs[@]}"
quiet_registry_service
