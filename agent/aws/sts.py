"""``sts:GetCallerIdentity``: who the agent's credentials say it is (its session ARN in
``iot-cert`` mode, which must be the ARN the device was registered with)."""

from __future__ import annotations

import time
import xml.etree.ElementTree as ET
from collections.abc import Callable

from .commands import THROTTLING_CODES
from .credentials import CredentialSource
from .http import HttpClient, HttpError
from .retry import MAX_ATTEMPTS, Transient, retrying
from .sigv4 import sign

BODY = b"Action=GetCallerIdentity&Version=2011-06-15"


class StsError(Exception):
    """GetCallerIdentity failed; the message carries AWS's error code and text."""


def default_endpoint(region: str) -> str:
    suffix = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"https://sts.{region}.{suffix}"


def get_caller_identity(http: HttpClient, credentials: CredentialSource, region: str,
                        endpoint: str | None = None, *, max_attempts: int = MAX_ATTEMPTS,
                        sleep: Callable[[float], None] = time.sleep) -> str:
    """The caller's ARN (``arn:aws:sts::<account>:assumed-role/<role>/<session>`` for a role).

    Throttling, 5xx and network errors are retried (jittered exponential back-off, like the
    command client): at start-up a throttled STS must not stop the daemon.
    """
    url = (endpoint or default_endpoint(region)).rstrip("/") + "/"
    try:
        return retrying(lambda: _attempt(http, credentials, region, url),
                        max_attempts=max_attempts, sleep=sleep)
    except Transient as exc:
        raise StsError(str(exc)) from None


class _Retryable(StsError, Transient):
    """A failure another attempt may not have."""


def _attempt(http: HttpClient, credentials: CredentialSource, region: str, url: str) -> str:
    headers = sign("POST", url, {"Content-Type": "application/x-www-form-urlencoded; "
                                                 "charset=utf-8"}, BODY,
                   credentials=credentials(), region=region, service="sts")
    try:
        response = http.request("POST", url, headers=headers, body=BODY)
    except HttpError as exc:
        raise _Retryable(f"sts:GetCallerIdentity failed: {exc}") from None
    root = _parse(response.body)
    if response.status != 200:
        code = _text(root, "Code") or str(response.status)
        text = f"sts:GetCallerIdentity failed: {code}: {_text(root, 'Message') or ''}"
        if response.status >= 500 or response.status == 429 or code in THROTTLING_CODES:
            raise _Retryable(text)
        raise StsError(text)
    arn = _text(root, "Arn")
    if not arn:
        raise StsError("sts:GetCallerIdentity answered without an Arn")
    return arn


def _parse(body: bytes) -> ET.Element | None:
    try:
        return ET.fromstring(body)  # noqa: S314  (a small response from the configured endpoint)
    except ET.ParseError:
        return None


def _text(root: ET.Element | None, tag: str) -> str | None:
    if root is None:
        return None
    for element in root.iter():
        if element.tag.rsplit("}", 1)[-1] == tag and element.text:
            return element.text.strip()
    return None
