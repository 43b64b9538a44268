#!/bin/bash
# Install the Debian packages overlay-agent's build, tests and demo need, once.
# Checks by command first so a machine that has them all does not touch apt.
set -euo pipefail

declare -A want=(
  [mksquashfs]=squashfs-tools [unsquashfs]=squashfs-tools
  [qemu-system-x86_64]=qemu-system-x86 [skopeo]=skopeo
  [docker-registry]=docker-registry [busybox]=busybox-static
  [zstd]=zstd [xz]=xz-utils [lz4]=lz4 [cpio]=cpio [depmod]=kmod [modprobe]=kmod
  [mkfs.ext4]=e2fsprogs [sfdisk]=fdisk [unshare]=util-linux [losetup]=mount
  [dpkg-deb]=dpkg [apt-get]=apt
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
apt-get install -y -q --no-install-recommends "${pkgs[@]}"
