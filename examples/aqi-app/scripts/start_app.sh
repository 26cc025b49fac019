#!/usr/bin/env bash
# ApplicationStart hook of the aqi-app sample revision. CodeDeploy runs it as root after
# AfterInstall. It starts the web app from the install directory: as the systemd service
# aqi-web.service when systemd is running, otherwise as a detached background process whose PID
# goes to a pid file for stop_app.sh.
#
# Environment:
#   AQI_INSTALL_DIR   where the appspec copied app/ (default /opt/aqi)
#   AQI_NO_SYSTEMD=1  never use systemd (containers, tests)
#   AQI_LOG_FILE      output of the background process (default /var/log/aqi-web.log)
#   AQI_PID_FILE      its pid file (default /run/aqi-web.pid)
#   AQI_PORT, AQI_BIND, AQI_READINGS_FILE  passed on to the background process (see aqi_web.py)
#   PIFLEET_INSTALL_ROOT  set by `pifleet-agent deploy-local --root DIR`: the app lives under DIR
set -euo pipefail

install_dir="${AQI_INSTALL_DIR:-${PIFLEET_INSTALL_ROOT:-}/opt/aqi}"
unit=aqi-web.service

if [[ -d /run/systemd/system && "${AQI_NO_SYSTEMD:-0}" != 1 && -z "${PIFLEET_INSTALL_ROOT:-}" ]]; then
    install -m 644 "$install_dir/$unit" "/etc/systemd/system/$unit"
    systemctl daemon-reload
    systemctl enable "$unit"
    # restart, not start: if something started the unit since ApplicationStop, it still runs the
    # old code.
    systemctl restart "$unit"
    echo "start_app: started $unit under systemd"
    exit 0
fi

log_file="${AQI_LOG_FILE:-${PIFLEET_INSTALL_ROOT:-}/var/log/aqi-web.log}"
pid_file="${AQI_PID_FILE:-${PIFLEET_INSTALL_ROOT:-}/run/aqi-web.pid}"
if [[ -e "$pid_file" ]]; then
    # A copy left by a failed deployment would hold the port; stop it the usual way.
    "$(dirname "${BASH_SOURCE[0]}")/stop_app.sh"
fi
mkdir -p "$(dirname "$log_file")" "$(dirname "$pid_file")"

# setsid: the app gets its own session, so the agent's kill of this hook's process group (on a
# timeout) cannot reach it. All three standard streams are redirected because the agent waits
# until the hook's stdout and stderr are closed, and a child holding them would fail the hook.
# This shell runs without job control, so the background child is not a process-group leader:
# setsid then execs in place instead of forking, and $! is the app's own PID.
setsid nohup python3 "$install_dir/aqi_web.py" >>"$log_file" 2>&1 </dev/null &
pid=$!
# Written under another name and renamed, so stop_app.sh never reads half a pid file.
echo "$pid" >"$pid_file.tmp"
mv -f "$pid_file.tmp" "$pid_file"
echo "start_app: started aqi_web.py in the background, pid $pid, log $log_file"
