#!/bin/bash
# Build dist/overlay-agent_VERSION_all.deb with Debian's tools (debhelper, dh-python/pybuild)
# from the tracked files, in build/deb (dpkg-buildpackage writes next to the source folder).
# Prints the path of the .deb.
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(dpkg-parsechangelog -S Version)
work=build/deb
src="$work/overlay-agent-$version"
rm -rf "$work"
mkdir -p "$src" dist
# tracked and new (not ignored) files: what a clean clone plus this change holds
git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$src" 2>/dev/null || \
  git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && cp --parents -P "$f" "$src"; done
# Debian's python3 (pybuild runs "python3.X -m build"), not one earlier on PATH (pyenv, a venv)
(cd "$src" && PATH=/usr/sbin:/usr/bin:/sbin:/bin dpkg-buildpackage -b -us -uc -tc >../build.log 2>&1) || {
  tail -30 "$work/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed (log: $work/build.log)" >&2
  exit 1
}
deb="dist/overlay-agent_${version}_all.deb"
mv "$work/overlay-agent_${version}_all.deb" "$deb"
rm -rf "$work"
echo "$deb"
