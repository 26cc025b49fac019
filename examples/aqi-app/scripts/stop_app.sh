#!/usr/bin/env bash
# ApplicationStop hook of the aqi-app sample revision. CodeDeploy runs it as root at the start of
# a deployment, from the revision installed *before* it, so that the app's files can be replaced.
# It stops aqi-web.service, or the background process named in the pid file, and succeeds when
# nothing runs (the first deployment, or the app already stopped).
#
# Environment:
#   AQI_NO_SYSTEMD=1    do not touch systemd (containers, tests)
#   AQI_PID_FILE        pid file written by start_app.sh (default /run/aqi-web.pid)
#   AQI_STOP_TIMEOUT_S  seconds between SIGTERM and SIGKILL (default 10)
#   PIFLEET_INSTALL_ROOT  set by `pifleet-agent deploy-local --root DIR`: the app lives under DIR
set -euo pipefail

unit=aqi-web.service
pid_file="${AQI_PID_FILE:-${PIFLEET_INSTALL_ROOT:-}/run/aqi-web.pid}"
stop_timeout_s="${AQI_STOP_TIMEOUT_S:-10}"
if ! [[ "$stop_timeout_s" =~ ^[0-9]+$ ]]; then
    echo "stop_app: ERROR: AQI_STOP_TIMEOUT_S must be whole seconds, got '$stop_timeout_s'" >&2
    exit 1
fi

if [[ -d /run/systemd/system && "${AQI_NO_SYSTEMD:-0}" != 1 && -z "${PIFLEET_INSTALL_ROOT:-}" ]]; then
    rc=0
    output="$(systemctl stop "$unit" 2>&1)" || rc=$?
    # 5 is "Unit aqi-web.service not loaded.": never installed, so nothing to stop.
    if ((rc == 0)); then
        echo "stop_app: $unit stopped"
    elif ((rc != 5)); then
        echo "stop_app: ERROR: systemctl stop $unit failed ($rc): $output" >&2
        exit 1
    fi
fi

# True while $1 is a live aqi_web.py process. Checking the command line keeps a stale pid file
# from killing whatever process reused the PID; a zombie has an empty one and counts as gone.
is_app() {
    local cmdline
    cmdline="$(tr '\0' ' ' 2>/dev/null <"/proc/$1/cmdline")" || return 1
    [[ "$cmdline" == *aqi_web.py* ]]
}

if [[ ! -e "$pid_file" ]]; then
    echo "stop_app: no pid file $pid_file, nothing else to stop"
    exit 0
fi
pid="$(<"$pid_file")"
if ! [[ "$pid" =~ ^[0-9]+$ ]] || ! is_app "$pid"; then
    echo "stop_app: $pid_file names no running aqi_web.py (pid '$pid'); removing it"
    rm -f "$pid_file"
    exit 0
fi

kill -TERM "$pid" 2>/dev/null || true
# Counted in 0.1 s steps rather than read from $SECONDS, whose whole-second ticks could cut the
# grace period short.
signal=TERM
steps_left=$((stop_timeout_s * 10))
while is_app "$pid"; do
    if ((steps_left-- <= 0)); then
        if [[ "$signal" == KILL ]]; then
            echo "stop_app: ERROR: pid $pid survived SIGKILL; is it stuck in the kernel?" >&2
            exit 1
        fi
        echo "stop_app: pid $pid still running ${stop_timeout_s}s after SIGTERM, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        signal=KILL
        steps_left=50
    fi
    sleep 0.1
done
rm -f "$pid_file"
echo "stop_app: stopped aqi_web.py (pid $pid, SIG$signal)"
