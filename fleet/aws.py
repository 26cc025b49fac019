"""AWS access for fleetctl: one session with the AWS CLI's habits (profile, region, endpoint,
the standard environment variables), adaptive retries, and AWS errors turned into FleetErrors
that say which permission on which resource is missing.

boto3 is imported on first use, so ``fleetctl --help`` and ``fleetctl validate`` start fast.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .errors import FleetError, NotFound

DEFAULT_RETRIES = 8  # after the first attempt
_THROTTLING = frozenset({"ThrottlingException", "Throttling", "RequestLimitExceeded", "SlowDown",
                         "TooManyRequestsException", "ThrottledException", "RequestThrottled",
                         "RequestThrottledException"})
_NOT_FOUND = re.compile(r"NotFound|NoSuch|DoesNotExist|NotRegistered|ResourceNotFound")


@dataclass(frozen=True)
class AwsOptions:
    profile: str | None = None
    region: str | None = None
    endpoint_url: str | None = None  # every service at this URL (the sandbox)


@dataclass
class Aws:
    options: AwsOptions = field(default_factory=AwsOptions)
    _session: Any = None
    _clients: dict[str, Any] = field(default_factory=dict)
    _account: str | None = None
    _memo: dict[str, Any] = field(default_factory=dict)

    def remembered(self, key: str, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per Aws (endpoints, the fleet's role): a 1,000-device inventory
        should not look the same things up 1,000 times."""
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    @property
    def session(self) -> Any:
        if self._session is None:
            import boto3  # noqa: PLC0415  (slow to import; only commands that call AWS pay)

            with aws_errors("reading the AWS configuration"):
                self._session = boto3.session.Session(profile_name=self.options.profile,
                                                      region_name=self.options.region)
        return self._session

    @property
    def region(self) -> str:
        region = self.session.region_name
        if not region:
            raise FleetError("no AWS region: pass --region, set AWS_REGION, or configure one "
                             "with `aws configure`")
        return str(region)

    def client(self, service: str) -> Any:
        if service not in self._clients:
            from botocore.config import Config  # noqa: PLC0415

            self._clients[service] = self.session.client(
                service, region_name=self.region, endpoint_url=self.options.endpoint_url,
                config=Config(retries=self.retries(), user_agent_extra="pifleet-fleetctl"))
        return self._clients[service]

    def retries(self) -> dict[str, Any]:
        """Adaptive retries, up to 8 after the first attempt, unless the AWS CLI's settings say
        otherwise (``AWS_RETRY_MODE``/``AWS_MAX_ATTEMPTS`` or the profile's ``retry_mode``/
        ``max_attempts``, attempts in all): a client config given explicitly would silently
        override them."""
        with aws_errors("reading the AWS configuration"):
            scoped = self.session._session.get_scoped_config()
        mode = os.environ.get("AWS_RETRY_MODE") or scoped.get("retry_mode") or "adaptive"
        if mode not in ("legacy", "standard", "adaptive"):
            raise FleetError(f"retry mode {mode!r} (AWS_RETRY_MODE or the profile's retry_mode) "
                             "is not one of legacy, standard, adaptive")
        attempts = os.environ.get("AWS_MAX_ATTEMPTS") or scoped.get("max_attempts")
        if attempts is None:
            return {"mode": mode, "max_attempts": DEFAULT_RETRIES}
        if not str(attempts).isdigit() or int(attempts) < 1:
            raise FleetError(f"max attempts {attempts!r} (AWS_MAX_ATTEMPTS or the profile's "
                             "max_attempts) must be a whole number >= 1")
        return {"mode": mode, "total_max_attempts": int(attempts)}

    @property
    def account_id(self) -> str:
        if self._account is None:
            with aws_errors("finding the AWS account (sts:GetCallerIdentity)"):
                self._account = str(self.client("sts").get_caller_identity()["Account"])
        return self._account

    def partition(self) -> str:
        return "aws-cn" if self.region.startswith("cn-") else "aws"


@contextmanager
def aws_errors(doing: str) -> Iterator[None]:
    """Turn AWS and network errors raised while ``doing`` something into FleetErrors."""
    from botocore.exceptions import (  # noqa: PLC0415
        BotoCoreError,
        ClientError,
        EndpointConnectionError,
        NoCredentialsError,
        NoRegionError,
        ProfileNotFound,
    )

    try:
        yield
    except ClientError as exc:
        raise explain(exc, doing) from None
    except NoCredentialsError:
        raise FleetError(f"{doing}: no AWS credentials; run `aws configure`, set "
                         "AWS_PROFILE, or pass --profile") from None
    except (NoRegionError, ProfileNotFound) as exc:
        raise FleetError(f"{doing}: {exc}") from None
    except EndpointConnectionError as exc:
        raise FleetError(f"{doing}: cannot reach {exc.kwargs.get('endpoint_url')}; check the "
                         "network, --endpoint-url and --region") from None
    except BotoCoreError as exc:
        raise FleetError(f"{doing}: {exc}") from None


def explain(exc: Any, doing: str) -> FleetError:
    """A ClientError as a FleetError; AccessDenied names the action and resource to allow."""
    error = exc.response.get("Error", {})
    code, message = str(error.get("Code", "")), str(error.get("Message", ""))
    operation = getattr(exc, "operation_name", "")
    if "AccessDenied" in code or "UnauthorizedOperation" in code:
        action = re.search(r"perform: (\S+)", message)
        resource = re.search(r"on resource: (\S+)", message)
        what = action.group(1) if action else f"the {operation} call"
        where = f" on {resource.group(1)}" if resource else ""
        return FleetError(f"{doing}: not allowed to {what}{where}; grant it to the identity "
                          f"fleetctl uses (AWS said: {message})")
    meta = exc.response.get("ResponseMetadata", {})
    count = meta.get("RetryAttempts", 0) + 1
    tries = f"{count} attempt" if count == 1 else f"{count} attempts"
    if code in _THROTTLING:
        return FleetError(f"{doing}: AWS is throttling {operation} even after retries "
                          f"({tries}); wait a minute and run the command again")
    status = int(meta.get("HTTPStatusCode") or 0)
    if status >= 500:
        return FleetError(f"{doing}: AWS failed {operation} with {code or 'an error'} (HTTP "
                          f"{status}) even after retries ({tries}); try again in a few "
                          "minutes")
    cls = NotFound if _NOT_FOUND.search(code) else FleetError
    return cls(f"{doing}: {code}: {message}")
