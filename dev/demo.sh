#!/usr/bin/env bash
# `make demo`: validate the sample revision, then deploy it twice with deploy-local into a
# throw-away root (no privileges, no AWS), show the running app, and stop it again.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
ROOT=${PIFLEET_DEMO_ROOT:-/tmp/pifleet-demo}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "fleetctl validate examples/aqi-app"
"$BIN/fleetctl" validate examples/aqi-app

step "the same revision with mistakes in it (errors are expected here)"
"$BIN/python" dev/broken_copy.py examples/aqi-app /tmp/pifleet-demo-broken
"$BIN/fleetctl" validate /tmp/pifleet-demo-broken || true

# The app's environment: simulated sensors, a free loopback port, readings in the demo root.
stop_app() {
    [[ -f "$ROOT/run/aqi-web.pid" ]] && AQI_NO_SYSTEMD=1 PIFLEET_INSTALL_ROOT="$ROOT" \
        examples/aqi-app/scripts/stop_app.sh >/dev/null 2>&1 || true
}
stop_app
rm -rf "$ROOT"
mkdir -p "$ROOT/var/lib/pifleet/readings"
export AQI_SIMULATED=1 AQI_NO_SYSTEMD=1 AQI_VALIDATE_TIMEOUT_S=20
AQI_PORT=$("$BIN/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export AQI_PORT AQI_BIND=127.0.0.1 AQI_READINGS_FILE="$ROOT/var/lib/pifleet/readings/latest.json"
cat >"$AQI_READINGS_FILE" <<JSON
{"timestamp": "$(date -u +%Y-%m-%dT%H:%M:%SZ)", "temperature_c": 21.5, "humidity_pct": 48,
 "pm25_ugm3": 12.3, "pm10_ugm3": 20.1}
JSON
trap stop_app EXIT

step "pifleet-agent deploy-local -l examples/aqi-app --root $ROOT   (first deployment)"
"$BIN/pifleet-agent" deploy-local -l examples/aqi-app --root "$ROOT" -a aqi-app

step "the app it started: http://127.0.0.1:$AQI_PORT/readings.json"
"$BIN/python" - "$AQI_PORT" <<'PY'
import json, sys, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
with opener.open(f"http://127.0.0.1:{sys.argv[1]}/readings.json", timeout=10) as response:
    print(json.dumps(json.load(response), indent=2))
PY

step "deploy again: ApplicationStop now runs the installed revision's script, and the"
echo "   clean-up removes the files of the first install before copying (no DISALLOW error)"
"$BIN/pifleet-agent" deploy-local -l examples/aqi-app --root "$ROOT" -a aqi-app

step "what is on disk"
find "$ROOT/opt" "$ROOT/deployment-root/deployment-instructions" -maxdepth 2 | sort
echo
echo "The app is stopped when this demo ends. Try it yourself:"
echo "  $BIN/pifleet-agent deploy-local --help"
