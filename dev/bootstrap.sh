#!/usr/bin/env bash
# Makes a machine ready for `make test` / `make demo`: the Debian packages the suite needs and
# the project's virtualenv. Idempotent and quiet on a warm machine; needs no TTY or stdin.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
STAMP="$VENV/.pifleet-installed"

missing_debs() {
  local pkg
  # Comments and blank lines in the list are ignored.
  while read -r pkg; do
    [ -n "$pkg" ] || continue
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
      || echo "$pkg"
  done < <(sed -e 's/#.*//' -e 's/[[:space:]]//g' dev/apt-packages.txt)
}

install_debs() {
  local missing
  missing=$(missing_debs | tr '\n' ' ')
  [ -n "${missing// }" ] || return 0
  if ! command -v apt-get >/dev/null; then
    echo "bootstrap: missing Debian packages ($missing) and no apt-get here; install them" >&2
    exit 1
  fi
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo -n"
  echo "bootstrap: installing Debian packages: $missing"
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  # shellcheck disable=SC2086  # the list is meant to split into words
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    $missing </dev/null
}

check_python() {
  if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    echo "bootstrap: $PYTHON is missing or older than 3.11; pifleet needs Python >= 3.11" >&2
    exit 1
  fi
}

make_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "bootstrap: creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
  if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
    echo "bootstrap: installing pifleet with its dev and sandbox extras into $VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check -e '.[dev,sandbox]'
    touch "$STAMP"
  fi
}

install_debs
check_python
make_venv
