"""The resumable S3 downloader against the sandbox's real (moto) S3.

Faults come from :class:`FaultyProxy`, a loopback TCP proxy between the downloader and the
sandbox that cuts a response after N bytes, answers a canned 503, or hides the Range header.

What moto 5.2 does, which these tests rely on (``moto/s3/responses.py``): a GET with ``Range:
bytes=N-`` is answered 206 with ``Content-Range: bytes N-last/size``; ``If-Match`` is checked
before the range, quoted or not, and a mismatch is answered 412 PreconditionFailed, as S3 does.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import socket
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from moto.core.authorization import enable_iam_authentication

from agent.aws.credentials import Credentials
from agent.aws.http import HttpClient
from agent.aws.s3 import DownloadError, DownloadResult, download, object_url
from fleet.sandbox.server import Endpoint, Sandbox

SIZE = 5 * 1024 * 1024
BUCKET = "bundles"
KEY = "apps/web app+v1.tar"  # a space and a "+": the key must be encoded once, and signed so
REPO = Path(__file__).resolve().parents[3]


# -- a proxy that breaks things ---------------------------------------------------------------

class FaultyProxy:
    """Forwards loopback TCP connections to the sandbox, misbehaving on purpose.

    ``cut_after``: on the first connection, forward that many response bytes (head included),
    call ``on_cut``, then close the connection, or with ``stall`` keep it open and silent until
    the client gives up.  ``canned``: answer the first ``canned_times``
    connections with these bytes instead.  ``hide_range``: from the second connection on, rename
    the request's Range header so that the server answers the whole object.
    """

    def __init__(self, upstream_url: str, *, cut_after: int | None = None,
                 on_cut: Callable[[], object] | None = None, canned: bytes | None = None,
                 canned_times: int = 1, hide_range: bool = False, stall: bool = False) -> None:
        host, port = upstream_url.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.cut_after, self.on_cut, self.hide_range = cut_after, on_cut, hide_range
        self.stall = stall
        self.canned, self.canned_times = canned, canned_times
        self.first_status: list[bytes] = []  # first response line of each forwarded connection
        self.connections = 0
        self.errors: list[BaseException] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> FaultyProxy:
        self._spawn(self._accept_loop)
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in list(self._threads):
            thread.join(timeout=5)
        self._listener.close()
        if self.errors and exc[0] is None:
            raise self.errors[0]

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)
        self._threads.append(thread)
        thread.start()

    def _accept_loop(self) -> None:
        while not self._stop.is_set():
            # A short select timeout only so that __exit__ is noticed; no test waits on it.
            if select.select([self._listener], [], [], 0.05)[0]:
                client, _ = self._listener.accept()
                self._spawn(self._serve, client, self.connections)
                self.connections += 1

    def _serve(self, client: socket.socket, index: int) -> None:
        try:
            with client:
                if self.canned is not None and index < self.canned_times:
                    _read_request_head(client)
                    client.sendall(self.canned)
                    return
                with socket.create_connection(self.upstream) as upstream:
                    self._pump(client, upstream, index)
        except BaseException as exc:  # noqa: BLE001  (re-raised in the test's thread)
            self.errors.append(exc)

    def _pump(self, client: socket.socket, upstream: socket.socket, index: int) -> None:
        limit = self.cut_after if index == 0 else None
        sent = 0
        while not self._stop.is_set():
            for sock in select.select([client, upstream], [], [], 0.05)[0]:
                data = sock.recv(65536)
                if not data:
                    return
                if sock is client:
                    if self.hide_range and index > 0:
                        data = re.sub(rb"(?i)\r\nrange:", b"\r\nx-hidden-range:", data)
                    upstream.sendall(data)
                    continue
                if sent == 0:
                    self.first_status.append(data.split(b"\r\n", 1)[0])
                if limit is not None and sent + len(data) >= limit:
                    client.sendall(data[:limit - sent])
                    if self.on_cut is not None:
                        self.on_cut()  # before the close, so before the client can retry
                    if self.stall:
                        self._wait_for_hang_up(client)
                    return
                client.sendall(data)
                sent += len(data)


    def _wait_for_hang_up(self, client: socket.socket) -> None:
        while not self._stop.is_set():
            if select.select([client], [], [], 0.05)[0] and not client.recv(65536):
                return


def _read_request_head(sock: socket.socket) -> None:
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(65536)
        if not data:
            return
        head += data


def s3_error_response(status: int, reason: str, code: str, message: str) -> bytes:
    body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
            f"<Message>{message}</Message><RequestId>R1</RequestId></Error>").encode()
    return (f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/xml\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode() + body


SLOW_DOWN = s3_error_response(503, "Slow Down", "SlowDown", "Please reduce your request rate.")


# -- fixtures ------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def no_proxy_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # HttpClient honours http_proxy; these tests talk to loopback servers only.
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def sandbox() -> Iterator[Sandbox]:
    with Sandbox() as server:
        yield server


@dataclass
class Bucket:
    """A versioned bucket holding KEY twice (old, then new), and a way to download it."""

    endpoint: Endpoint
    s3: Any
    tmp: Path
    old: bytes
    new: bytes
    old_version: str
    etag: str  # the current version's, quoted as S3 sends it
    sleeps: list[float] = field(default_factory=list)

    @property
    def destination(self) -> Path:
        return self.tmp / "bundle.tar"

    @property
    def part(self) -> Path:
        return self.tmp / "bundle.tar.part"

    @property
    def sidecar(self) -> Path:
        return self.tmp / "bundle.tar.part.etag"

    def download(self, *, via: str | None = None, access_key: tuple[str, str] | None = None,
                 timeout_s: float = 10, **options: Any) -> DownloadResult:
        key_id, secret = access_key or (self.endpoint.access_key_id,
                                        self.endpoint.secret_access_key)
        options.setdefault("key", KEY)
        with HttpClient(timeout_s=timeout_s, connect_timeout_s=5) as http:
            return download(http=http, credentials=lambda: Credentials(key_id, secret),
                            region=self.endpoint.region, bucket=BUCKET,
                            destination=self.destination, endpoint_url=via or self.endpoint.url,
                            sleep=self.sleeps.append, **options)

    def put(self, body: bytes) -> str:
        return str(self.s3.put_object(Bucket=BUCKET, Key=KEY, Body=body)["ETag"])


def s3_client(endpoint: Endpoint) -> Any:
    return boto3.client("s3", endpoint_url=endpoint.url, region_name=endpoint.region,
                        aws_access_key_id=endpoint.access_key_id,
                        aws_secret_access_key=endpoint.secret_access_key,
                        config=Config(s3={"addressing_style": "path"},
                                      retries={"total_max_attempts": 1}))


def create_bucket(s3: Any, region: str) -> None:
    # us-east-1 is the one region that must not be named as a location constraint.
    where = {} if region == "us-east-1" else {
        "CreateBucketConfiguration": {"LocationConstraint": region}}
    s3.create_bucket(Bucket=BUCKET, **where)


@pytest.fixture
def bucket(sandbox: Sandbox, tmp_path: Path) -> Bucket:
    sandbox.app.reset()
    endpoint = sandbox.endpoint
    s3 = s3_client(endpoint)
    create_bucket(s3, endpoint.region)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    old, new = os.urandom(SIZE), os.urandom(SIZE)
    old_version = s3.put_object(Bucket=BUCKET, Key=KEY, Body=old)["VersionId"]
    etag = s3.put_object(Bucket=BUCKET, Key=KEY, Body=new)["ETag"]
    return Bucket(endpoint, s3, tmp_path, old, new, old_version, etag)


def leftovers(b: Bucket) -> list[str]:
    return sorted(p.name for p in b.tmp.iterdir())


# -- object_url ----------------------------------------------------------------------------

@pytest.mark.parametrize(("args", "url"), [
    (("pi-bundles", "a/b.tar", "eu-west-1"), "https://pi-bundles.s3.eu-west-1.amazonaws.com/a/b.tar"),
    (("my.bucket", "k", "us-east-1"), "https://s3.us-east-1.amazonaws.com/my.bucket/k"),
    (("pi-bundles", "k", "cn-north-1"), "https://pi-bundles.s3.cn-north-1.amazonaws.com.cn/k"),
    (("pi-bundles", "a b+c=d/é~.zip", "eu-west-1"),
     "https://pi-bundles.s3.eu-west-1.amazonaws.com/a%20b%2Bc%3Dd/%C3%A9~.zip"),
    (("pi-bundles", "k", "eu-west-1", "http://127.0.0.1:9/", "v+1/2"),
     "http://127.0.0.1:9/pi-bundles/k?versionId=v%2B1%2F2"),
    (("my.bucket", "x/y", "eu-west-1", "https://minio.lan:9000"),
     "https://minio.lan:9000/my.bucket/x/y"),
])
def test_object_url(args: tuple[str, ...], url: str) -> None:
    assert object_url(*args) == url


# -- whole downloads and checks -------------------------------------------------------------

def test_whole_download_equals_the_object(bucket: Bucket) -> None:
    result = bucket.download()
    assert bucket.destination.read_bytes() == bucket.new
    assert result == DownloadResult(size=SIZE, bytes_fetched=SIZE, attempts=1,
                                    etag=bucket.etag.strip('"'))
    assert leftovers(bucket) == ["bundle.tar"]  # no .part, no sidecar
    assert bucket.sleeps == []


def test_version_id_fetches_the_old_version(bucket: Bucket) -> None:
    bucket.download(version=bucket.old_version)
    assert bucket.destination.read_bytes() == bucket.old


@pytest.mark.parametrize("quoted", [True, False])
def test_expected_etag_matches_quoted_or_not(bucket: Bucket, quoted: bool) -> None:
    expected = bucket.etag if quoted else bucket.etag.strip('"')
    assert bucket.download(etag=expected).size == SIZE
    assert bucket.destination.read_bytes() == bucket.new


def test_wrong_etag_fails_with_the_official_message_and_leaves_no_file(bucket: Bucket) -> None:
    with pytest.raises(DownloadError) as caught:
        bucket.download(etag="0123abcd")
    message = str(caught.value)
    assert message.startswith(
        f"Expected deployment artifact bundle etag 0123abcd but was actually {bucket.etag}")
    assert f"s3://{BUCKET}/{KEY}" in message
    assert leftovers(bucket) == []
    assert bucket.sleeps == []


# -- resuming ------------------------------------------------------------------------------

@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9])
def test_a_cut_download_resumes_where_it_broke(bucket: Bucket, fraction: float) -> None:
    with FaultyProxy(bucket.endpoint.url, cut_after=int(SIZE * fraction)) as proxy:
        result = bucket.download(via=proxy.url)
    assert bucket.destination.read_bytes() == bucket.new
    assert result.attempts == 2
    # Every byte that reached us was kept: the proxy's cut loses nothing in flight.
    assert result.bytes_fetched == SIZE <= 1.1 * SIZE
    assert proxy.first_status == [b"HTTP/1.1 200 OK", b"HTTP/1.1 206 PARTIAL CONTENT"]
    assert bucket.sleeps == [0.5]
    assert leftovers(bucket) == ["bundle.tar"]


def test_a_stalled_download_times_out_and_resumes(bucket: Bucket,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    with FaultyProxy(bucket.endpoint.url, cut_after=SIZE // 2, stall=True) as proxy:
        result = bucket.download(via=proxy.url, timeout_s=0.3)
    assert "timed out after 0.3 s reading the body" in caplog.text
    assert bucket.destination.read_bytes() == bucket.new
    assert (result.attempts, result.bytes_fetched) == (2, SIZE)
    assert proxy.first_status == [b"HTTP/1.1 200 OK", b"HTTP/1.1 206 PARTIAL CONTENT"]


def test_an_object_replaced_between_attempts_is_fetched_again_whole(bucket: Bucket) -> None:
    newest = os.urandom(SIZE)
    with FaultyProxy(bucket.endpoint.url, cut_after=SIZE // 2,
                     on_cut=lambda: bucket.put(newest)) as proxy:
        result = bucket.download(via=proxy.url)
    assert bucket.destination.read_bytes() == newest
    # moto honours If-Match on the ranged GET: 412, then a fresh whole GET.
    assert proxy.first_status[1] == b"HTTP/1.1 412 PRECONDITION FAILED"
    assert result.attempts == 3
    assert result.etag == hashlib.md5(newest).hexdigest()  # noqa: S324  (S3's ETag is MD5)
    assert SIZE < result.bytes_fetched <= 1.6 * SIZE


def test_a_server_that_ignores_range_gets_the_file_restarted(bucket: Bucket) -> None:
    cut = SIZE // 2
    with FaultyProxy(bucket.endpoint.url, cut_after=cut, hide_range=True) as proxy:
        result = bucket.download(via=proxy.url)
    assert proxy.first_status == [b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK"]
    assert bucket.destination.read_bytes() == bucket.new
    assert result.attempts == 2
    # The body bytes before the cut (the cut counts the response head too) were thrown away.
    assert cut - 1024 < result.bytes_fetched - SIZE < cut


def test_giving_up_keeps_the_part_and_the_next_run_resumes_it(bucket: Bucket) -> None:
    with FaultyProxy(bucket.endpoint.url, cut_after=SIZE // 2) as proxy, \
            pytest.raises(DownloadError, match=r"in 1 attempt; the last failure: the conn") \
            as caught:
        bucket.download(via=proxy.url, max_attempts=1)
    assert "next download resumes" in str(caught.value)
    kept = bucket.part.stat().st_size
    assert 0 < kept < SIZE
    assert bucket.sidecar.read_text().strip() == bucket.etag

    result = bucket.download()
    assert bucket.destination.read_bytes() == bucket.new
    assert (result.attempts, result.bytes_fetched) == (1, SIZE - kept)


def test_a_stale_part_with_another_etag_is_discarded(bucket: Bucket) -> None:
    bucket.part.write_bytes(b"x" * 1000)
    bucket.sidecar.write_text('"0123456789abcdef0123456789abcdef"\n')
    result = bucket.download()
    assert bucket.destination.read_bytes() == bucket.new
    # S3 itself said no: the ranged GET's If-Match failed (412), then a whole GET.
    assert (result.attempts, result.bytes_fetched) == (2, SIZE)
    assert bucket.sleeps == []


def test_a_stale_part_is_discarded_unasked_when_the_expected_etag_differs(
        bucket: Bucket) -> None:
    bucket.part.write_bytes(b"x" * 1000)
    bucket.sidecar.write_text('"0123456789abcdef0123456789abcdef"\n')
    result = bucket.download(etag=bucket.etag)
    assert bucket.destination.read_bytes() == bucket.new
    assert (result.attempts, result.bytes_fetched) == (1, SIZE)


def test_a_part_without_a_sidecar_is_discarded(bucket: Bucket) -> None:
    bucket.part.write_bytes(bucket.new[:1000])
    result = bucket.download()
    assert bucket.destination.read_bytes() == bucket.new
    assert (result.attempts, result.bytes_fetched) == (1, SIZE)


def test_a_part_with_the_same_etag_is_resumed(bucket: Bucket) -> None:
    bucket.part.write_bytes(bucket.new[:SIZE // 3])
    bucket.sidecar.write_text(bucket.etag.strip('"'))  # unquoted works too
    result = bucket.download(etag=bucket.etag)
    assert bucket.destination.read_bytes() == bucket.new
    assert (result.attempts, result.bytes_fetched) == (1, SIZE - SIZE // 3)


# -- errors --------------------------------------------------------------------------------

@pytest.mark.parametrize(("options", "code"), [
    ({"key": "apps/gone.tar"}, "NoSuchKey"),
    ({"version": "NoSuchVersionId1234567890abcdefgh"}, "NoSuchVersion"),
])
def test_a_missing_revision_fails_at_once(bucket: Bucket, options: dict[str, Any],
                                          code: str) -> None:
    with pytest.raises(DownloadError) as caught:
        bucket.download(**options)
    message = str(caught.value)
    assert f"404 {code}" in message
    assert f"s3://{BUCKET}/" in message
    assert "deploy a revision that exists" in message
    assert bucket.sleeps == []
    assert leftovers(bucket) == []


def device_key(endpoint: Endpoint, name: str, policy: dict[str, Any] | None) -> tuple[str, str]:
    """An IAM user's access key (in moto's IAM), allowed ``policy``."""
    iam = boto3.client("iam", endpoint_url=endpoint.url, region_name=endpoint.region,
                       aws_access_key_id=endpoint.access_key_id,
                       aws_secret_access_key=endpoint.secret_access_key)
    iam.create_user(UserName=name)
    if policy is not None:
        iam.put_user_policy(UserName=name, PolicyName="bundles",
                            PolicyDocument=json.dumps(policy))
    key = iam.create_access_key(UserName=name)["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


READ_BUNDLES = {"Version": "2012-10-17", "Statement": [
    {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"}]}


# enable_iam_authentication: moto checks signatures and IAM policies (the sandbox's moto runs
# in this process); everything is set up before it is switched on.

def test_unknown_credentials_fail_at_once_without_showing_them(bucket: Bucket) -> None:
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"  # noqa: S105  (not a real secret)
    with enable_iam_authentication(), pytest.raises(DownloadError) as caught:
        bucket.download(access_key=("AKIAIOSFODNN7EXAMPLE", secret))
    message = str(caught.value)
    assert "403 InvalidAccessKeyId" in message
    assert "credentials" in message
    assert secret not in message
    assert "AKIAIOSFODNN7EXAMPLE" not in message
    assert bucket.sleeps == []


def test_a_device_without_s3_get_object_is_told_to_check_its_policy(bucket: Bucket) -> None:
    key_id, secret = device_key(bucket.endpoint, "pi-nopolicy", None)
    with enable_iam_authentication(), pytest.raises(DownloadError) as caught:
        bucket.download(access_key=(key_id, secret))
    message = str(caught.value)
    assert "403 AccessDenied" in message
    assert "bucket policy" in message
    assert "s3:GetObject" in message
    assert secret not in message
    assert bucket.sleeps == []


def test_a_device_allowed_to_read_downloads_with_a_verified_signature(bucket: Bucket) -> None:
    key_id, secret = device_key(bucket.endpoint, "pi-reader", READ_BUNDLES)
    with enable_iam_authentication():
        result = bucket.download(access_key=(key_id, secret))
    assert result.size == SIZE
    assert bucket.destination.read_bytes() == bucket.new


def test_slow_down_is_retried_after_a_pause(bucket: Bucket) -> None:
    with FaultyProxy(bucket.endpoint.url, canned=SLOW_DOWN) as proxy:
        result = bucket.download(via=proxy.url)
    assert bucket.destination.read_bytes() == bucket.new
    assert (result.attempts, result.bytes_fetched) == (2, SIZE)
    assert bucket.sleeps == [0.5]
    assert proxy.connections == 2


def test_backoff_doubles_up_to_ten_seconds_then_gives_up(bucket: Bucket) -> None:
    with FaultyProxy(bucket.endpoint.url, canned=SLOW_DOWN, canned_times=99) as proxy, \
            pytest.raises(DownloadError, match=r"in 8 attempts; .*503 SlowDown"):
        bucket.download(via=proxy.url, max_attempts=8)
    assert bucket.sleeps == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert proxy.connections == 8


# -- memory --------------------------------------------------------------------------------

_SANDBOX_PROCESS = """
import sys
from fleet.sandbox.server import Sandbox
with Sandbox() as sandbox:
    print(sandbox.endpoint.url, sandbox.endpoint.region, flush=True)
    sys.stdin.read()
"""


@pytest.fixture
def sandbox_process() -> Iterator[Endpoint]:
    """A sandbox in its own process, so that tracemalloc sees only the downloader's memory."""
    with subprocess.Popen([sys.executable, "-c", _SANDBOX_PROCESS], cwd=REPO,
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE) as process:
        assert process.stdin is not None and process.stdout is not None
        try:
            url, region = process.stdout.readline().decode().split()
            yield Endpoint(url, region)
        finally:
            process.stdin.close()  # the child's stdin.read() returns and the sandbox stops
            process.wait(timeout=10)


def test_a_64_mb_download_stays_under_8_mb_of_memory(sandbox_process: Endpoint,
                                                     tmp_path: Path) -> None:
    block = os.urandom(1 << 20)
    s3 = s3_client(sandbox_process)
    create_bucket(s3, sandbox_process.region)
    s3.put_object(Bucket=BUCKET, Key="big.tar", Body=block * 64)
    e = sandbox_process
    tracemalloc.start()
    try:
        with HttpClient() as http:
            result = download(http=http, region=e.region, bucket=BUCKET, key="big.tar",
                              credentials=lambda: Credentials(e.access_key_id,
                                                              e.secret_access_key),
                              destination=tmp_path / "big.tar", endpoint_url=e.url)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.size == 64 << 20
    assert peak < 8 << 20, f"peak {peak / 2**20:.1f} MiB"
    digest = hashlib.sha256()
    with (tmp_path / "big.tar").open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    assert digest.digest() == hashlib.sha256(block * 64).digest()
