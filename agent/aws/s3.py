"""Resumable S3 GetObject for deployment bundles, in the standard library only.

The official agent fetches an S3 revision with one GetObject streamed to ``bundle.tar``
(reference §4.2).  A Pi on flaky Wi-Fi should not start a large bundle over because the link
dropped at 90 %, so :func:`download` streams to ``<destination>.part`` and, when the body breaks
off, asks for the rest with ``Range`` guarded by ``If-Match``: the bytes it appends then belong to
the same object as the bytes it already has.  The ETag those bytes belong to is kept next to them
in ``<destination>.part.etag``, so that a later run (after a reboot, say) can resume too.

Nothing here puts credentials into a log line or an exception: messages name the bucket, key
and version only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from agent.deploy.atomic import fsync_dir

from .credentials import CredentialSource
from .http import HttpClient, HttpError, StreamResponse
from .sigv4 import sign

__all__ = ["DownloadError", "DownloadResult", "download", "object_url"]

log = logging.getLogger(__name__)

BACKOFF_FIRST_S = 0.5
BACKOFF_CAP_S = 10.0
# Enough for any S3 error document; a longer body is not one and is not worth reading.
MAX_ERROR_BODY = 64 * 1024
# S3 error codes that mean "not now" rather than "no": worth another attempt after a pause.
# ExpiredToken is here because the credential source is asked again for every attempt.
_RETRYABLE_CODES = frozenset({
    "SlowDown", "RequestTimeout", "InternalError", "ServiceUnavailable", "Throttling",
    "ThrottlingException", "RequestThrottled", "ExpiredToken",
})
# Names that work as a TLS host name under *.s3.<region>.amazonaws.com; others go path-style
# (a dot would break the wildcard certificate, capitals and "_" are not valid in DNS names).
_DNS_BUCKET = re.compile(r"[a-z0-9][a-z0-9-]{1,61}[a-z0-9]")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+)")


class DownloadError(Exception):
    """The revision could not be downloaded; the message says where and what to check."""


@dataclass(frozen=True)
class DownloadResult:
    size: int           # bytes in the destination file
    bytes_fetched: int  # body bytes received over all attempts (== size when nothing was lost)
    attempts: int       # GET requests sent
    etag: str           # the object's ETag, without quotes


def object_url(bucket: str, key: str, region: str, endpoint_url: str | None = None,
               version: str | None = None) -> str:
    """The GetObject URL: virtual-hosted on AWS, path-style for dotted names and endpoints."""
    if not bucket or not key:
        raise ValueError("an S3 object needs a bucket and a key")
    # S3 wants each byte of the key percent-encoded once, "/" kept as the separator.
    path_key = quote(key, safe="/")
    if endpoint_url:
        url = f"{endpoint_url.rstrip('/')}/{quote(bucket, safe='')}/{path_key}"
    elif _DNS_BUCKET.fullmatch(bucket):
        url = f"https://{bucket}.s3.{region}.{_domain(region)}/{path_key}"
    else:
        url = f"https://s3.{region}.{_domain(region)}/{quote(bucket, safe='')}/{path_key}"
    if version is not None:
        url += f"?versionId={quote(version, safe='')}"
    return url


def _domain(region: str) -> str:
    if region.startswith("cn-"):
        return "amazonaws.com.cn"
    if region.startswith("eusc-"):  # the European Sovereign Cloud (reference §4.2)
        return "amazonaws.eu"
    return "amazonaws.com"


def download(*, http: HttpClient, credentials: CredentialSource, region: str, bucket: str,
             key: str, destination: Path, version: str | None = None, etag: str | None = None,
             endpoint_url: str | None = None, chunk_bytes: int = 1 << 20, max_attempts: int = 6,
             sleep: Callable[[float], None] = time.sleep) -> DownloadResult:
    """GetObject ``bucket``/``key`` (``version``) into ``destination``, resuming broken transfers.

    The body goes to ``<destination>.part`` ``chunk_bytes`` at a time and is renamed into place
    once complete, fsynced and checked: its size against the response's, and, when ``etag`` is
    given, the response's ETag against it (quotes ignored, as the official agent does).  Broken
    connections, 5xx and throttling are retried up to ``max_attempts`` GETs in all, pausing
    0.5 s, 1 s, 2 s ... (at most 10 s) between them.  A missing object, a refusal or a wrong ETag
    raise :class:`DownloadError` at once.
    """
    if max_attempts < 1 or chunk_bytes < 1:
        raise ValueError("max_attempts and chunk_bytes must be at least 1")
    job = _Job(http=http, credentials=credentials, region=region,
               url=object_url(bucket, key, region, endpoint_url, version),
               where=_where(bucket, key, version), files=_Files(destination),
               expected_etag=etag, chunk_bytes=chunk_bytes)
    job.resume_previous_run()
    failures = 0
    while True:
        try:
            job.attempt()
            return job.finish()
        except _Retry as retry:
            if job.attempts >= max_attempts:
                raise _gave_up(job, retry.reason) from None
            if retry.pause:
                failures += 1
                delay = min(BACKOFF_FIRST_S * 2 ** (failures - 1), BACKOFF_CAP_S)
                log.warning("download of %s: %s; retrying in %.1f s", job.where, retry.reason,
                            delay)
                sleep(delay)
            else:
                log.info("download of %s: %s; retrying now", job.where, retry.reason)
        except DownloadError:
            job.files.discard()
            raise


def _gave_up(job: _Job, reason: str) -> DownloadError:
    # The .part and its sidecar stay: they are what lets the next run resume.
    kept = (f" {job.received} bytes are kept in {job.files.part}; the next download resumes "
            "from there." if job.received else "")
    return DownloadError(f"Could not download {job.where} in {_attempts(job.attempts)}; the "
                         f"last failure: {reason}.{kept} Check the network, the proxy or the "
                         "S3 endpoint, then retry.")


def _attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def _where(bucket: str, key: str, version: str | None) -> str:
    return f"s3://{bucket}/{key}" + (f" (version {version})" if version else "")


class _Retry(Exception):
    """This attempt failed in a way another attempt may not; ``pause`` asks for a backoff."""

    def __init__(self, reason: str, *, pause: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.pause = pause


@dataclass(frozen=True)
class _Files:
    destination: Path

    @property
    def part(self) -> Path:
        return self.destination.with_name(self.destination.name + ".part")

    @property
    def sidecar(self) -> Path:
        """Holds the ETag (as S3 sent it) of the object whose first bytes are in ``part``."""
        return self.destination.with_name(self.destination.name + ".part.etag")

    def discard(self) -> None:
        # The sidecar goes first: a part without one is never resumed.
        self.sidecar.unlink(missing_ok=True)
        self.part.unlink(missing_ok=True)


@dataclass
class _Job:
    """One download's settings plus what survives from attempt to attempt."""

    http: HttpClient
    credentials: CredentialSource
    region: str
    url: str
    where: str
    files: _Files
    expected_etag: str | None
    chunk_bytes: int
    received: int = 0  # bytes in the .part file, all of object ``etag``
    etag: str = ""     # the ETag header (as S3 sent it) of the object being fetched
    total: int = 0     # that object's size
    fetched: int = 0
    attempts: int = 0

    def resume_previous_run(self) -> None:
        """Adopt a .part left by an earlier run if its sidecar says which object it is from."""
        try:
            size = self.files.part.stat().st_size
            etag = self.files.sidecar.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            size, etag = 0, ""
        mismatch = (self.expected_etag is not None
                    and _unquote(etag) != _unquote(self.expected_etag))
        if not size or not etag or mismatch:
            self.files.discard()
            return
        # Whether the object is still the same is for S3 to say: the Range GET carries If-Match.
        log.info("resuming %s from %d bytes left by an earlier run", self.where, size)
        self.received, self.etag = size, etag

    def attempt(self) -> None:
        """One GET; returns with the whole object in .part, or raises _Retry/DownloadError."""
        self.attempts += 1
        headers: dict[str, str] = {}
        if self.received:
            headers["Range"] = f"bytes={self.received}-"
            headers["If-Match"] = _quoted(self.etag)
        signed = sign("GET", self.url, headers, b"", credentials=self.credentials(),
                      region=self.region, service="s3")
        # ExitStack so that only sending the request counts as a failed request here; the
        # body's own failures are told apart in _read (resumable) and _write (not).
        with contextlib.ExitStack() as stack:
            try:
                response = stack.enter_context(self.http.stream("GET", self.url,
                                                                headers=signed))
            except HttpError as exc:
                raise _Retry(f"the request failed: {_describe(exc)}", pause=True) from exc
            self._receive(response)

    def _receive(self, response: StreamResponse) -> None:
        status = response.status
        if status in (200, 206):
            append = self._accept(response)
            self._copy_body(response, append=append)
            return
        if status in (412, 416):
            _drain(response)  # a small error document; read so the connection ends cleanly
        if status == 412:  # If-Match failed: the object was replaced since our first bytes
            self._restart()
            raise _Retry("the object changed since the partial download; starting over",
                         pause=False)
        if status == 416:  # a .part as long as the object, or longer: nothing to resume
            self._restart()
            raise _Retry("the partial download does not fit the object; starting over",
                         pause=False)
        raise _s3_failure(status, response, self.where, self.region)

    def _accept(self, response: StreamResponse) -> bool:
        """Check a 200/206 against what we have; True when its body continues the .part."""
        etag = response.headers.get("etag")
        if not etag:
            raise DownloadError(f"S3 sent {self.where} without an ETag; is the endpoint S3?")
        self._check_expected(etag)
        if response.status == 206:
            start, total = _content_range(response.headers.get("content-range", ""))
            if start == self.received and _unquote(etag) == _unquote(self.etag):
                self.total = total
                return True
            # A server that ignores If-Match, or a range we did not ask for: start over.
            self._restart()
            raise _Retry("the ranged response does not continue the partial download; "
                         "starting over", pause=False)
        if self.received:
            log.info("%s: the server ignored the Range header; downloading it whole", self.where)
        self._begin(etag, _content_length(response.headers.get("content-length", "")))
        return False

    def _check_expected(self, etag: str) -> None:
        # The official rule: compare with every '"' removed from both sides.
        if self.expected_etag is None or _unquote(etag) == _unquote(self.expected_etag):
            return
        raise DownloadError(
            f"Expected deployment artifact bundle etag {self.expected_etag} but was actually "
            f"{etag} ({self.where}): the object was overwritten after the deployment was "
            "created; deploy the revision again, or name its version")

    def _begin(self, etag: str, total: int) -> None:
        """A whole-object response: the .part restarts empty and the sidecar names its ETag."""
        self.files.discard()
        self.files.part.parent.mkdir(parents=True, exist_ok=True)
        # Sidecar before any byte: a crash now leaves a part that is resumed or discarded
        # correctly, never bytes of one object labelled with another's ETag.
        self.files.sidecar.write_text(etag + "\n", encoding="utf-8")
        self.received, self.etag, self.total = 0, etag, total

    def _restart(self) -> None:
        self.files.discard()
        self.received, self.etag, self.total = 0, "", 0

    def _copy_body(self, response: StreamResponse, *, append: bool) -> None:
        with self._open_part(append) as out:
            while self.received < self.total:
                chunk = _read(response, min(self.chunk_bytes, self.total - self.received))
                if not chunk:
                    raise _Retry(f"the connection closed after {self.received} of "
                                 f"{self.total} bytes", pause=True)
                self._write(out, chunk)
                self.received += len(chunk)
                self.fetched += len(chunk)
            out.flush()
            os.fsync(out.fileno())

    def _open_part(self, append: bool) -> BinaryIO:
        try:
            return self.files.part.open("ab" if append else "wb")
        except OSError as exc:
            raise DownloadError(f"Cannot write {self.files.part} for {self.where}: "
                                f"{exc.strerror}") from exc

    def _write(self, out: BinaryIO, chunk: bytes) -> None:
        try:
            out.write(chunk)
        except OSError as exc:
            raise DownloadError(f"Cannot write {self.files.part} for {self.where}: "
                                f"{exc.strerror}; free some disk space") from exc

    def finish(self) -> DownloadResult:
        """Check the complete .part and rename it into place."""
        size = self.files.part.stat().st_size
        if size != self.total:
            raise DownloadError(f"Downloaded {size} bytes of {self.where} but S3 said "
                                f"{self.total}; download it again")
        self._check_expected(self.etag)
        os.replace(self.files.part, self.files.destination)
        self.files.sidecar.unlink(missing_ok=True)
        fsync_dir(self.files.destination.parent)
        return DownloadResult(size=size, bytes_fetched=self.fetched, attempts=self.attempts,
                              etag=_unquote(self.etag))


def _read(response: StreamResponse, n: int) -> bytes:
    try:
        # What has arrived, not a full n: bytes received before a cut are kept and not fetched
        # again.
        return response.read_some(n)
    except HttpError as exc:
        raise _Retry(f"the connection broke: {_describe(exc)}", pause=True) from exc


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _unquote(etag: str) -> str:
    return etag.replace('"', "")


def _quoted(etag: str) -> str:
    return etag if etag.startswith(('"', 'W/"')) else f'"{etag}"'


def _content_length(value: str) -> int:
    try:
        length = int(value)
    except ValueError:
        length = -1
    if length < 0:
        raise _Retry(f"the response has no usable Content-Length ({value!r})", pause=True)
    return length


def _content_range(value: str) -> tuple[int, int]:
    """(first byte, object size) of a ``bytes first-last/size`` Content-Range."""
    match = _CONTENT_RANGE.fullmatch(value.strip())
    if match is None:
        raise _Retry(f"the response has no usable Content-Range ({value!r})", pause=True)
    return int(match[1]), int(match[3])


# -- S3 errors -----------------------------------------------------------------------------

_XML_CODE = re.compile(rb"<Code>([^<]{1,128})</Code>")
_XML_MESSAGE = re.compile(rb"<Message>([^<]{1,1024})</Message>")


def _s3_failure(status: int, response: StreamResponse, where: str,
                region: str) -> DownloadError | _Retry:
    """The exception for a non-2xx answer: a _Retry for throttling and 5xx, else final."""
    code, message = _error_fields(response)
    code = code or f"HTTP {status}"
    text = f"S3 answered {status} {code}" + (f" ({message})" if message else "")
    if status >= 500 or status in (408, 429) or code in _RETRYABLE_CODES:
        return _Retry(text, pause=True)
    bucket_region = response.headers.get("x-amz-bucket-region", "")
    return DownloadError(f"Could not download {where}: {text}. "
                         f"{_hint(code, status, region, bucket_region)}")


def _drain(response: StreamResponse) -> bytes:
    try:
        return response.read(MAX_ERROR_BODY)
    except HttpError:
        return b""


def _error_fields(response: StreamResponse) -> tuple[str, str]:
    """Code and Message of an S3 XML error body (regexes: no XML parser on untrusted input)."""
    body = _drain(response)
    code, message = _XML_CODE.search(body), _XML_MESSAGE.search(body)
    return (code[1].decode("utf-8", "replace").strip() if code else "",
            message[1].decode("utf-8", "replace").strip() if message else "")


def _hint(code: str, status: int, region: str, bucket_region: str) -> str:
    if code == "NoSuchKey":
        return "The revision no longer exists: check the key, or deploy a revision that exists."
    if code == "NoSuchVersion":
        return ("That version of the revision no longer exists (deleted or expired by a "
                "lifecycle rule): deploy a revision that exists.")
    if code == "NoSuchBucket":
        return "Check the bucket name, and that the bucket still exists."
    if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                "RequestTimeTooSkewed"):
        return ("S3 rejected the device's credentials: check the access key in the agent's "
                "credentials and that the device clock is right.")
    if (bucket_region and bucket_region != region) or code in (
            "PermanentRedirect", "AuthorizationHeaderMalformed", "IllegalLocationConstraint"):
        where = f" ({bucket_region})" if bucket_region else ""
        return (f"The bucket is not in {region}{where}: deploy from a bucket in the device's "
                "region, or set the agent's region.")
    if code == "AccessDenied" or status == 403:
        return ("Check the bucket policy, and that the device's role or IAM user allows "
                "s3:GetObject (and s3:GetObjectVersion for a versioned revision) on the object, "
                "and kms:Decrypt if it is encrypted with a KMS key.")
    return "Check that the revision exists and that the device may read it."
