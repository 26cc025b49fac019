"""Where the agent's AWS credentials come from, for each identity mode.

- ``iam-user``: static keys from a 0600 INI file (or the official on-premises yml);
- ``iam-session``: a shared-credentials file something else rewrites; re-read when it changes;
- ``iot-cert``: the device certificate exchanged at the IoT credentials provider for temporary
  credentials of the role alias, refreshed well before they expire.

Credentials stay in memory; nothing here logs them.
"""

from __future__ import annotations

import configparser
import json
import logging
import os
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import yaml

from .aws.credentials import Credentials
from .aws.http import HttpClient, HttpError
from .aws.retry import Transient, retrying
from .config import Config

log = logging.getLogger(__name__)

REFRESH_BEFORE_S = 300.0  # renew temporary credentials this long before they expire


class IdentityError(Exception):
    """Credentials cannot be obtained; the message says which file or endpoint and the fix."""


def read_ini_credentials(path: Path, profile: str = "default") -> Credentials:
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with path.open(encoding="utf-8") as fh:
            parser.read_file(fh)
    except FileNotFoundError:
        raise IdentityError(f"Failed to load credentials from path {path}") from None
    except (OSError, configparser.Error) as exc:
        raise IdentityError(f"{path} is not a credentials file: {type(exc).__name__}") from None
    if not parser.has_section(profile):
        raise IdentityError(f"{path} has no [{profile}] profile")
    section = parser[profile]
    key, secret = section.get("aws_access_key_id"), section.get("aws_secret_access_key")
    if not key or not secret:
        raise IdentityError(f"{path} [{profile}] needs aws_access_key_id and "
                            "aws_secret_access_key")
    return Credentials(key.strip(), secret.strip(),
                       (section.get("aws_session_token") or "").strip() or None)


def read_onpremises_keys(path: Path) -> Credentials:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    return Credentials(str(data["aws_access_key_id"]), str(data["aws_secret_access_key"]))


class SessionFileCredentials:
    """The shared-credentials file of ``iam-session`` mode, re-read whenever it changes."""

    def __init__(self, path: Path, profile: str = "default") -> None:
        self._path = path
        self._profile = profile
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._cached: Credentials | None = None

    def __call__(self) -> Credentials:
        with self._lock:
            try:
                info = self._path.stat()
            except OSError:
                raise IdentityError(f"Failed to load credentials from path {self._path}") from None
            stamp = (info.st_mtime_ns, info.st_size)
            if self._cached is None or stamp != self._stamp:
                self._cached = read_ini_credentials(self._path, self._profile)
                self._stamp = stamp
            return self._cached


class IotCertCredentials:
    """Temporary credentials from the AWS IoT credentials provider (mTLS with the device
    certificate), cached until shortly before they expire."""

    def __init__(self, http: HttpClient, *, endpoint: str, role_alias: str, thing_name: str,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self._http = http
        self._sleep = sleep
        self._url = f"{endpoint.rstrip('/')}/role-aliases/{quote(role_alias, safe='')}/credentials"
        self._thing = thing_name
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: Credentials | None = None

    def __call__(self) -> Credentials:
        with self._lock:
            cached = self._cached
            if cached is not None and (cached.expiration is None
                                       or cached.expiration - self._clock() > REFRESH_BEFORE_S):
                return cached
            try:
                self._cached = self._fetch()
            except IdentityError:
                if cached is not None and cached.expiration and cached.expiration > self._clock():
                    log.warning("could not renew credentials; using the current ones until "
                                "they expire", exc_info=True)
                    return cached
                raise
            return self._cached

    def _fetch(self) -> Credentials:
        # Throttling, 5xx and dropped connections are retried: at start-up one throttled
        # answer must not stop the daemon (systemd would restart it, but within a start limit).
        try:
            return retrying(self._attempt, sleep=self._sleep)
        except Transient as exc:
            raise IdentityError(str(exc)) from None

    def _attempt(self) -> Credentials:
        try:
            response = self._http.request("GET", self._url,
                                          headers={"x-amzn-iot-thingname": self._thing})
        except HttpError as exc:
            raise Transient(f"cannot reach the IoT credentials provider: {exc}") from None
        if response.status == 429 or response.status >= 500:
            raise Transient(f"the IoT credentials provider answered {response.status}: "
                            f"{response.body[:200].decode(errors='replace')}")
        if response.status == 403:
            raise IdentityError(
                f"the IoT credentials provider refused the device certificate (403): check that "
                f"the certificate is ACTIVE, attached to thing {self._thing!r}, and that its IoT "
                "policy allows iot:AssumeRoleWithCertificate on the role alias")
        if response.status != 200:
            raise IdentityError(f"the IoT credentials provider answered {response.status}: "
                                f"{response.body[:200].decode(errors='replace')}")
        try:
            raw = json.loads(response.body)["credentials"]
            return Credentials(raw["accessKeyId"], raw["secretAccessKey"], raw["sessionToken"],
                               _epoch(raw["expiration"]))
        except (ValueError, KeyError, TypeError):
            raise IdentityError("the IoT credentials provider's answer has no "
                                "credentials") from None


def _epoch(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def credential_source(config: Config, http: HttpClient) -> Callable[[], Credentials]:
    ident = config.identity
    if ident.mode == "iam-user":
        if ident.onpremises_config:
            credentials = read_onpremises_keys(Path(ident.onpremises_config))
        else:
            credentials = read_ini_credentials(Path(ident.credentials_file), ident.profile)
        return lambda: credentials
    if ident.mode == "iam-session":
        return SessionFileCredentials(Path(ident.credentials_file), ident.profile)
    return IotCertCredentials(http, endpoint=ident.credentials_endpoint,
                              role_alias=ident.role_alias, thing_name=ident.thing_name)


def iot_http_client(config: Config) -> HttpClient:
    """The mTLS client for the credentials provider (device certificate and key)."""
    ident = config.identity
    return HttpClient(timeout_s=30.0, ca_bundle=ident.credentials_ca_bundle or None,
                      client_cert=(ident.certificate, ident.private_key),
                      proxy=config.aws.proxy or None)


def exists(path: str) -> bool:
    return bool(path) and os.path.exists(path)
