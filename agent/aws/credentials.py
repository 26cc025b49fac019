"""The AWS credential value the signer, the clients and the credential providers share.

Only the type lives here, so that modules on both sides (providers that fetch credentials, clients
that sign with them) can import it without importing each other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["CredentialSource", "Credentials"]


@dataclass(frozen=True)
class Credentials:
    """An access key, with its session token for temporary credentials."""

    access_key_id: str
    # Kept out of repr so that a logged or traced Credentials never shows a secret.
    secret_access_key: str = field(repr=False)
    session_token: str | None = field(default=None, repr=False)
    expiration: float | None = None  # epoch seconds; None for long-term keys


# Called before every signed request: returns current credentials (it may cache and refresh).
CredentialSource = Callable[[], Credentials]
