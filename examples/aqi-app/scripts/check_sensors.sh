#!/usr/bin/env bash
# AfterInstall hook of the aqi-app sample revision. CodeDeploy runs it as root once app/ has been
# copied to /opt/aqi and the appspec permissions applied, before ApplicationStart. It fails the
# deployment early, with a clear message, when the app did not land or cannot run, or when the
# SDS011 is not plugged in.
#
# Environment:
#   AQI_INSTALL_DIR  where the appspec copied app/ (default /opt/aqi)
#   AQI_SDS011_PORT  serial port of the SDS011's USB adapter (default /dev/ttyUSB0)
#   AQI_SIMULATED=1  sensors are simulated: skip the serial-port check (the file checks still run)
#   PIFLEET_INSTALL_ROOT  set by `pifleet-agent deploy-local --root DIR`: the app lives under DIR
set -euo pipefail

install_dir="${AQI_INSTALL_DIR:-${PIFLEET_INSTALL_ROOT:-}/opt/aqi}"
serial_port="${AQI_SDS011_PORT:-/dev/ttyUSB0}"

for name in aqi_web.py aqi-web.service; do
    if [[ ! -f "$install_dir/$name" ]]; then
        echo "check_sensors: ERROR: $install_dir/$name was not installed; check the files" \
            "section of appspec.yml and the revision's app/ directory." >&2
        exit 1
    fi
done
# Parsing with the Pi's own python3 catches a missing interpreter or one too old for the code
# now, rather than as a ValidateService timeout. ast.parse writes no __pycache__ into /opt/aqi.
if ! python3 -c 'import ast, sys; ast.parse(open(sys.argv[1], "rb").read(), sys.argv[1])' \
    "$install_dir/aqi_web.py"; then
    echo "check_sensors: ERROR: python3 cannot parse $install_dir/aqi_web.py (see above)." >&2
    exit 1
fi
echo "check_sensors: $install_dir/aqi_web.py installed ($(python3 --version 2>&1))"

if [[ "${AQI_SIMULATED:-0}" == 1 ]]; then
    echo "check_sensors: AQI_SIMULATED=1: sensors are simulated, not checking $serial_port"
    exit 0
fi
if [[ ! -c "$serial_port" ]]; then
    echo "check_sensors: ERROR: SDS011 serial port $serial_port not found. Plug in the sensor's" \
        "USB adapter, set AQI_SDS011_PORT (e.g. /dev/serial0 when it is wired to the UART pins)," \
        "or set AQI_SIMULATED=1 to run without sensors." >&2
    exit 1
fi
echo "check_sensors: found SDS011 serial port $serial_port"
