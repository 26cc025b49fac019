"""``pifleet-agent doctor``: each thing the agent needs, checked, with a fix for what fails."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .aws.commands import default_endpoint
from .aws.http import HttpClient, HttpError
from .aws.sts import get_caller_identity
from .clock import clock_synchronized
from .config import Config, ConfigError, check_secret_file, load_config, secret_files
from .identity import credential_source, iot_http_client

MIN_FREE_BYTES = 200 * 1024 * 1024
# vcgencmd get_throttled bits: now (0-3) and since boot (16-19).
THROTTLE_BITS = {0: "under-voltage now", 1: "ARM frequency capped now", 2: "throttled now",
                 3: "soft temperature limit now", 16: "under-voltage has occurred",
                 18: "throttling has occurred"}


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # PASS, WARN, FAIL, SKIP
    detail: str
    fix: str = ""

    def line(self) -> str:
        text = f"{self.status:<4} {self.name}: {self.detail}"
        return f"{text}\n     fix: {self.fix}" if self.fix and self.status != "PASS" else text


def run_checks(config_path: Path) -> Iterator[Check]:
    try:
        config = load_config(config_path)
    except ConfigError as exc:
        yield Check("configuration", "FAIL", str(exc), f"edit {config_path}")
        return
    yield Check("configuration", "PASS", f"{config_path} ({config.identity.mode})")
    yield from _secrets(config)
    yield _clock()
    http = HttpClient(timeout_s=15, ca_bundle=config.aws.ca_bundle or None,
                      proxy=config.aws.proxy or None)
    yield _endpoint(config, http)
    yield from _identity(config, http)
    yield _disk(Path(config.agent.deployment_root))
    throttling = _throttling()
    if throttling is not None:
        yield throttling


def _secrets(config: Config) -> Iterator[Check]:
    for path in secret_files(config):
        try:
            check_secret_file(path)
        except ConfigError as exc:
            yield Check("secret file", "FAIL", str(exc), "see the message")
        else:
            yield Check("secret file", "PASS", f"{path} is 0600 and owned by root")


def _clock() -> Check:
    synced = clock_synchronized()
    if synced is None:
        return Check("clock", "WARN", "cannot tell whether the clock is synchronised",
                     "install systemd-timesyncd or check chrony")
    if not synced:
        return Check("clock", "FAIL", "the system clock is not synchronised: AWS will refuse "
                     "signatures", "check network access to NTP: timedatectl timesync-status")
    return Check("clock", "PASS", "synchronised")


def _endpoint(config: Config, http: HttpClient) -> Check:
    url = config.aws.commands_endpoint or default_endpoint(config.aws.region)
    try:
        response = http.request("GET", url.rstrip("/") + "/", headers={})
    except HttpError as exc:
        return Check("command endpoint", "FAIL", f"{url}: {exc}",
                     "check DNS, the proxy setting and outbound HTTPS (port 443)")
    return Check("command endpoint", "PASS", f"{url} answers (HTTP {response.status})")


def _identity(config: Config, http: HttpClient) -> Iterator[Check]:
    try:
        source = credential_source(
            config, iot_http_client(config) if config.identity.mode == "iot-cert" else http)
        source()
    except Exception as exc:  # noqa: BLE001  (doctor reports every failure)
        yield Check("credentials", "FAIL", str(exc), "see the message")
        return
    yield Check("credentials", "PASS", f"obtained ({config.identity.mode})")
    try:
        arn = get_caller_identity(http, source, config.aws.region,
                                  config.aws.sts_endpoint or None)
    except Exception as exc:  # noqa: BLE001
        yield Check("identity", "FAIL", f"sts:GetCallerIdentity: {exc}",
                    "check the credentials and the clock")
        return
    expected = config.identity.host_identifier
    if expected and expected != arn:
        yield Check("identity", "FAIL", f"the credentials are {arn}, the device is registered "
                    f"as {expected}", "re-register the device or fix host_identifier")
    else:
        yield Check("identity", "PASS", arn)


def _disk(root: Path) -> Check:
    probe = root
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < MIN_FREE_BYTES:
        return Check("disk", "FAIL", f"{free // 2**20} MB free under {probe}",
                     "free space: old deployments live in the deployment-root")
    return Check("disk", "PASS", f"{free // 2**20} MB free under {probe}")


def _throttling(run: Callable[..., subprocess.CompletedProcess[str]] = subprocess.run,
                ) -> Check | None:
    vcgencmd = shutil.which("vcgencmd")
    if vcgencmd is None:
        return None  # not a Raspberry Pi (or its firmware tools are missing)
    try:
        out = run([vcgencmd, "get_throttled"], capture_output=True, text=True, timeout=5,
                  check=False).stdout
        value = int(out.strip().split("=")[1], 16)
    except (OSError, IndexError, ValueError, subprocess.TimeoutExpired):
        return Check("power", "WARN", "vcgencmd get_throttled gave no answer")
    problems = [text for bit, text in THROTTLE_BITS.items() if value & (1 << bit)]
    if problems:
        return Check("power", "WARN", ", ".join(problems),
                     "use the official power supply; under-voltage corrupts SD cards")
    return Check("power", "PASS", "no under-voltage or throttling")
