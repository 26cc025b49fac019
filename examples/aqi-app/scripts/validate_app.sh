#!/usr/bin/env bash
# ValidateService hook of the aqi-app sample revision. CodeDeploy runs it as root after
# ApplicationStart; the deployment succeeds on this Pi only if the app answers
# GET /healthz with 200 before the deadline.
#
# python3 and urllib rather than curl, which a minimal Raspberry Pi OS image may lack.
#
# Environment:
#   AQI_PORT                port the app listens on (default 8080); AQI_BIND must include loopback
#   AQI_VALIDATE_TIMEOUT_S  how long to wait, in seconds (default 30; the appspec allows 120)
set -euo pipefail

port="${AQI_PORT:-8080}"
timeout_s="${AQI_VALIDATE_TIMEOUT_S:-30}"
if ! [[ "$port" =~ ^[0-9]+$ && "$timeout_s" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    echo "validate_app: ERROR: AQI_PORT ($port) and AQI_VALIDATE_TIMEOUT_S ($timeout_s) must be" \
        "numbers." >&2
    exit 1
fi
url="http://127.0.0.1:$port/healthz"
echo "validate_app: waiting up to ${timeout_s}s for $url to answer 200"

# No proxy handler: an http_proxy from /etc/profile must not send a loopback check elsewhere.
python3 -c '
import http.client, sys, time, urllib.error, urllib.request

url, timeout_s = sys.argv[1], float(sys.argv[2])
opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
deadline = time.monotonic() + timeout_s
last = "no answer"
while True:
    try:
        attempt_s = min(2.0, max(0.1, deadline - time.monotonic()))
        with opener.open(url, timeout=attempt_s) as response:
            if response.status == 200:
                print(f"validate_app: {url} answered 200")
                sys.exit(0)
            last = f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        last = f"HTTP {exc.code}"
        exc.close()
    except (OSError, http.client.HTTPException) as exc:
        last = str(getattr(exc, "reason", exc))
    remaining_s = deadline - time.monotonic()
    if remaining_s <= 0:
        break
    time.sleep(min(0.5, remaining_s))
print(
    f"validate_app: ERROR: {url} did not answer 200 within {timeout_s:g}s (last: {last}). "
    "See the app log (journalctl -u aqi-web, or AQI_LOG_FILE).",
    file=sys.stderr,
)
sys.exit(1)
' "$url" "$timeout_s"
