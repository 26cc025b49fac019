#!/usr/bin/env bash
# BeforeInstall hook of the aqi-app sample revision. CodeDeploy runs it as root after downloading
# the bundle and before copying app/ to /opt/aqi, so a Pi that cannot read the DHT11 fails the
# deployment while its running app is still the old, working one.
#
# Environment:
#   AQI_GPIO_DEVICE  GPIO character device the DHT11 is read through (default /dev/gpiochip0)
#   AQI_SIMULATED=1  sensors are simulated (sandbox fleet, a VM): skip the hardware check
set -euo pipefail

gpio_device="${AQI_GPIO_DEVICE:-/dev/gpiochip0}"
model_file=/proc/device-tree/model

if [[ "${AQI_SIMULATED:-0}" == 1 ]]; then
    echo "check_gpio: AQI_SIMULATED=1: sensors are simulated, not checking $gpio_device"
    exit 0
fi

if [[ -r "$model_file" ]]; then
    # The device-tree string ends in a NUL byte, which bash would warn about.
    echo "check_gpio: board: $(tr -d '\0' <"$model_file")"
else
    echo "check_gpio: board: unknown ($model_file is missing: not a Raspberry Pi?)"
fi

if [[ ! -c "$gpio_device" ]]; then
    echo "check_gpio: ERROR: GPIO character device $gpio_device not found, so the DHT11 cannot" \
        "be read. Deploy to a Raspberry Pi (kernel 4.8 or later), point AQI_GPIO_DEVICE at the" \
        "right /dev/gpiochipN, or set AQI_SIMULATED=1 to run without sensors." >&2
    exit 1
fi
echo "check_gpio: found GPIO device $gpio_device"
