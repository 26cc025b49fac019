#!/usr/bin/env bash
# Builds the pifleet-agent .deb: packaging/build-deb.sh OUTDIR [ARCH]
# The package is Architecture: all (pure Python, Debian's python3), so ARCH (amd64, arm64 or
# armhf) is only checked: the same .deb serves all three. Reproducible: SOURCE_DATE_EPOCH is the
# last commit's time, the staging tree holds only the shipped sources, and dpkg-deb sorts members
# and clamps mtimes. WHEELHOUSE (default build/wheelhouse) caches the hash-locked wheels.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
out=$(realpath -m "${1:?usage: build-deb.sh OUTDIR [ARCH]}")
arch=${2:-amd64}
case "$arch" in
  amd64 | arm64 | armhf) ;;
  *) echo "build-deb: ARCH must be amd64, arm64 or armhf, not '$arch'" >&2; exit 2 ;;
esac
wheelhouse=${WHEELHOUSE:-$repo/build/wheelhouse}
requirements=$repo/packaging/vendor-requirements.txt

# name==version --hash=sha256:HEX  ->  "HEX name version"
locked=$(sed -n 's/^\([A-Za-z0-9_.-]*\)==\([^ ]*\) *--hash=sha256:\([0-9a-f]*\).*/\3 \1 \2/p' "$requirements")
mkdir -p "$wheelhouse"
wheel_for() { # the cached wheel of project $1 version $2, if any
  find "$wheelhouse" -maxdepth 1 -iname "$(echo "$1" | tr - _)-$2-*.whl" | head -n1
}
wheels=()
while read -r sha name version; do
  wheel=$(wheel_for "$name" "$version")
  if [ -z "$wheel" ]; then
    "${PIP_PYTHON:-$repo/.venv/bin/python}" -m pip download -q --disable-pip-version-check \
      --no-deps --only-binary=:all: --require-hashes -d "$wheelhouse" -r "$requirements"
    wheel=$(wheel_for "$name" "$version")
  fi
  echo "$sha  $wheel" | sha256sum --check --strict --quiet \
    || { echo "build-deb: $wheel does not match its hash in $requirements" >&2; exit 1; }
  wheels+=("$wheel")
done <<<"$locked"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
src=$work/pifleet-agent
mkdir -p "$src/wheelhouse"
(cd "$repo" && find agent appspec sensors -name __pycache__ -prune -o -type f \
  \( -name '*.py' -o -name '*.json' \) -exec cp --parents -t "$src" {} +)
cp -r "$repo/packaging/debian" "$src/debian"
# PIFLEET_DEB_VERSION (tests: "upgrade from the previous build") replaces the top entry's version.
if [ -n "${PIFLEET_DEB_VERSION:-}" ]; then
  sed -i "1s/([^)]*)/($PIFLEET_DEB_VERSION)/" "$src/debian/changelog"
fi
cp "$repo/packaging/pifleet-agent" "$repo/packaging/agent.toml" "$repo/packaging/pifleet-agent.1" "$src/"
cp "${wheels[@]}" "$src/wheelhouse/"

epoch=$(git -C "$repo" log -1 --format=%ct 2>/dev/null || echo 1700000000)
if ! (cd "$src" && env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME="$work" LC_ALL=C.UTF-8 \
      SOURCE_DATE_EPOCH="$epoch" dpkg-buildpackage -us -uc -b >"$work/build.log" 2>&1); then
  cat "$work/build.log" >&2
  echo "build-deb: dpkg-buildpackage failed" >&2
  exit 1
fi
mkdir -p "$out"
for deb in "$work"/*.deb; do
  cp "$deb" "$out/"
  echo "$out/$(basename "$deb")"
done
