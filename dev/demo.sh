#!/usr/bin/env bash
# `make demo`: the whole story on the local sandbox, no AWS account needed:
# validate the sample app, start the sandbox (CodeDeploy, S3, IAM, IoT, an MQTT broker), set up
# the fleet, start three simulated Pis (real pifleet-agent processes with certificate
# identities and simulated sensors), deploy examples/aqi-app to them by tag with the live table,
# and read what they report. Everything is stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
WORK=$(mktemp -d /tmp/pifleet-demo.XXXXXX)
export XDG_RUNTIME_DIR="$WORK"   # the sandbox's state file lives here, not in your session's
export COLUMNS=${COLUMNS:-110}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

cleanup() {
    "$BIN/fleetctl" sandbox devices --stop --root "$WORK/devices" >/dev/null 2>&1 || true
    "$BIN/fleetctl" sandbox down >/dev/null 2>&1 || true
}
trap cleanup EXIT

step "fleetctl validate examples/aqi-app"
"$BIN/fleetctl" validate examples/aqi-app

step "fleetctl sandbox up   (a local CodeDeploy, S3, IAM, STS, IoT and MQTT broker)"
"$BIN/fleetctl" sandbox up --port 0 --output json >"$WORK/sandbox.json" 2>"$WORK/sandbox.log" &
for _ in $(seq 1 100); do [[ -s "$WORK/sandbox.json" ]] && break; sleep 0.1; done
eval "$("$BIN/python" - "$WORK/sandbox.json" <<'PY'
import json, sys
info = json.load(open(sys.argv[1]))
print(f"export AWS_ENDPOINT_URL={info['endpoint_url']} AWS_REGION={info['region']} "
      f"AWS_ACCESS_KEY_ID={info['aws_access_key_id']} "
      f"AWS_SECRET_ACCESS_KEY={info['aws_secret_access_key']}")
print(f"echo 'sandbox at {info['endpoint_url']}, MQTT broker on port {info['mqtt_port']}'")
PY
)"

step "fleetctl init --group roof --tag ring=roof   (bucket, application, roles, IoT policy, group)"
"$BIN/fleetctl" init --group roof --tag ring=roof --config CodeDeployDefault.AllAtOnce

step "fleetctl sandbox devices 3 --tag ring=roof   (register, enroll and start three Pis)"
"$BIN/fleetctl" sandbox devices 3 --tag ring=roof --root "$WORK/devices"
"$BIN/fleetctl" list --tag ring=roof

step "fleetctl deploy examples/aqi-app --group roof --wait"
"$BIN/fleetctl" deploy examples/aqi-app --group roof --wait

step "the app on pi-1 (its page reads the Pi's latest sensor readings)"
"$BIN/python" - <<'PY'
import json, time, urllib.request
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
for _ in range(50):  # the sensors report every few seconds
    with opener.open("http://127.0.0.1:18081/readings.json", timeout=5) as response:
        body = json.load(response)
    if body.get("readings"):
        break
    time.sleep(0.2)
print(json.dumps(body, indent=2))
PY

step "fleetctl shadow pi-1   (what the Pi reported to its device shadow)"
"$BIN/fleetctl" shadow pi-1
step "fleetctl shadow pi-1 --name agent   (the agent's own status)"
"$BIN/fleetctl" --output json shadow pi-1 --name agent | "$BIN/python" -c \
    'import json,sys; d=json.load(sys.stdin); r=d["reported"]; print(json.dumps({k: r[k] for k in ("state","identity","pi","last_results") if k in r}, indent=2)[:1500])'

echo
echo "Everything is stopped when this demo ends. Its files: $WORK"
