"""STS GetCallerIdentity for credentials the sandbox issued itself.

moto's STS knows only moto's IAM keys and AssumeRole sessions; asked about a key it has never seen
it answers with its default identity, which would tell an agent in ``iot-cert`` mode the wrong
session ARN.  :class:`StsIdentity` answers GetCallerIdentity for keys held by the sandbox's
:class:`~fleet.sandbox.auth.CredentialStore` that moto does not know (IoT credentials provider
sessions, test credentials), after verifying the SigV4 signature.  Everything else -- other STS
actions, moto's own keys, unsigned requests -- goes to moto unchanged.
"""

from __future__ import annotations

import hashlib
import io
import re
import uuid
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

from .auth import Credential, CredentialStore, verify_sigv4
from .errors import ServiceError

__all__ = ["StsIdentity"]

STS_NAMESPACE = "https://sts.amazonaws.com/doc/2011-06-15/"
# Only the key id and the scope's service are needed to decide whether to intercept.
_CREDENTIAL = re.compile(r"Credential=([^/,\s]+)/[^/]*/[^/]*/([^/,\s]+)/")
_ASSUMED_ROLE = re.compile(r"arn:aws:sts::(\d{12}):assumed-role/([^/]+)/(.+)")
_USER = re.compile(r"arn:aws:iam::(\d{12}):user/(?:.*/)?([^/]+)")
# The JSON-protocol codes verify_sigv4 raises, as the query protocol (STS) names them.
_QUERY_ERRORS = {
    "UnrecognizedClientException": ("InvalidClientTokenId", 403),
    "ExpiredTokenException": ("ExpiredToken", 400),
    "InvalidSignatureException": ("SignatureDoesNotMatch", 403),
    "IncompleteSignatureException": ("IncompleteSignature", 400),
    "MissingAuthenticationTokenException": ("MissingAuthenticationToken", 403),
}
MAX_BODY = 64 * 1024  # a GetCallerIdentity form is a few dozen bytes


class StsIdentity:
    def __init__(self, store: CredentialStore) -> None:
        self.store = store
        # The same lookup with nothing issued: what moto alone knows about a key.
        self._moto_only = CredentialStore(account_id=store.account_id, use_moto=True)

    def claims(self, environ: dict[str, Any]) -> bool:
        """Whether this is an STS request signed with a key only the sandbox knows.

        Reads nothing but headers, so a request we do not claim reaches moto untouched.
        """
        found = _CREDENTIAL.search(environ.get("HTTP_AUTHORIZATION", ""))
        if found is None or found.group(2) != "sts":
            return False
        key = found.group(1)
        ours = self.store.lookup(key)
        # Issued credentials shadow moto's (CredentialStore.lookup); a key whose lookup differs
        # from moto's answer is therefore one the sandbox issued.
        return ours is not None and ours != self._moto_only.lookup(key)

    def action(self, environ: dict[str, Any], body: bytes) -> str | None:
        """The Query ``Action``, from the query string or the form body."""
        for source in (str(environ.get("QUERY_STRING", "")), body.decode("utf-8", "replace")):
            actions = parse_qs(source).get("Action")
            if actions:
                return actions[0]
        return None

    def handle(self, body: bytes, *, method: str, path_and_query: str,
               headers: dict[str, str], now: float) -> tuple[int, bytes]:
        """Answer GetCallerIdentity (status, XML body)."""
        request_id = str(uuid.uuid4())
        try:
            caller = verify_sigv4(method, path_and_query, headers, body, store=self.store,
                                  service="sts", now=now)
        except ServiceError as exc:
            code, status = _QUERY_ERRORS.get(exc.code, (exc.code, exc.status))
            return status, _error(code, exc.message, request_id)
        arn = caller.principal_arn
        return 200, (
            f'<GetCallerIdentityResponse xmlns="{STS_NAMESPACE}">'
            "<GetCallerIdentityResult>"
            f"<Arn>{escape(arn)}</Arn>"
            f"<UserId>{escape(user_id(caller))}</UserId>"
            f"<Account>{escape(_account(arn, self.store.account_id))}</Account>"
            "</GetCallerIdentityResult>"
            f"<ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata>"
            "</GetCallerIdentityResponse>"
        ).encode()


def user_id(caller: Credential) -> str:
    """``AROA…:<session>`` for a role session, ``AIDA…`` for a user, as STS reports them.

    The role's or user's id comes from moto IAM when it exists there, else a stable made-up one.
    """
    role = _ASSUMED_ROLE.fullmatch(caller.principal_arn)
    if role is not None:
        account, name, session = role.groups()
        return f"{_moto_role_id(account, name) or _fake_id('AROA', caller.principal_arn)}:{session}"
    user = _USER.fullmatch(caller.principal_arn)
    if user is not None:
        return _moto_user_id(user.group(1), user.group(2)) or _fake_id("AIDA",
                                                                       caller.principal_arn)
    return caller.access_key_id


def _fake_id(prefix: str, seed: str) -> str:
    return prefix + hashlib.sha256(seed.encode()).hexdigest()[:17].upper()


def _account(arn: str, default: str) -> str:
    parts = arn.split(":")
    return parts[4] if len(parts) > 4 and parts[4] else default


# Both rely on moto 5.2 internals (IAMBackend.roles / .users, keyed by partition "aws").


def _moto_role_id(account_id: str, role_name: str) -> str | None:
    from moto.iam.models import iam_backends  # noqa: PLC0415 - slow to import

    for role in list(iam_backends[account_id]["aws"].roles.values()):
        if role.name == role_name:
            return str(role.id)
    return None


def _moto_user_id(account_id: str, user_name: str) -> str | None:
    from moto.iam.models import iam_backends  # noqa: PLC0415 - slow to import

    user = iam_backends[account_id]["aws"].users.get(user_name)
    return None if user is None else str(user.id)


def _error(code: str, message: str, request_id: str) -> bytes:
    kind = "Receiver" if code.startswith("Internal") else "Sender"
    return (
        f'<ErrorResponse xmlns="{STS_NAMESPACE}">'
        f"<Error><Type>{kind}</Type><Code>{escape(code)}</Code>"
        f"<Message>{escape(message)}</Message></Error>"
        f"<RequestId>{request_id}</RequestId></ErrorResponse>"
    ).encode()


def restore_body(environ: dict[str, Any], body: bytes) -> None:
    """Put a body we read back, so the request can go on to moto."""
    environ["wsgi.input"] = io.BytesIO(body)
    environ["CONTENT_LENGTH"] = str(len(body))
