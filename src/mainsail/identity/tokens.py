"""Access tokens (JWT) and the opaque secrets behind refresh tokens and API keys."""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jwt

from mainsail.core.principal import Role
from mainsail.settings import Settings

API_KEY_PREFIX = "msk_"
REFRESH_TOKEN_PREFIX = "msr_"  # noqa: S105 - a public marker, not a secret
_PREFIX_ID_LENGTH = 12
_REQUIRED_CLAIMS = ["exp", "iat", "nbf", "sub", "jti", "iss", "aud", "sid", "role"]


class InvalidToken(Exception):
    """The token cannot be trusted; ``str()`` is a short reason safe to send back."""


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def digests_match(left: str, right: str) -> bool:
    return hmac.compare_digest(left.encode(), right.encode())


def new_refresh_token() -> str:
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)


@dataclass(frozen=True, slots=True)
class NewApiKey:
    prefix: str  # public, unique, shown in listings
    secret: str  # the whole key, shown once
    secret_hash: str


def new_api_key() -> NewApiKey:
    public_id = secrets.token_hex(_PREFIX_ID_LENGTH // 2)
    prefix = f"{API_KEY_PREFIX}{public_id}"
    secret = f"{prefix}_{secrets.token_urlsafe(32)}"
    return NewApiKey(prefix=prefix, secret=secret, secret_hash=sha256_hex(secret))


def api_key_prefix(presented: str) -> str | None:
    """The lookup prefix of a presented key, or None if it is not shaped like one of ours."""
    if not presented.startswith(API_KEY_PREFIX):
        return None
    prefix, sep, _ = presented.partition("_")[2].partition("_")
    if not sep or len(prefix) != _PREFIX_ID_LENGTH:
        return None
    return API_KEY_PREFIX + prefix


@dataclass(frozen=True, slots=True)
class AccessClaims:
    user_id: uuid.UUID
    session_id: uuid.UUID
    role: Role
    token_id: str


class TokenCodec:
    """Signs and verifies access tokens with the configured algorithm and key."""

    def __init__(self, settings: Settings) -> None:
        auth = settings.auth
        self.algorithm = auth.jwt_algorithm
        self.issuer = auth.jwt_issuer
        self.audience = auth.jwt_audience
        self.leeway = auth.jwt_leeway_s
        self.ttl = timedelta(seconds=auth.access_token_ttl_s)
        if self.algorithm == "HS256":
            secret = (
                auth.jwt_secret.get_secret_value()
                if auth.jwt_secret is not None
                else _generated_secret(settings.data_dir)
            )
            self._signing_key: Any = secret
            self._verifying_key: Any = secret
        elif auth.jwt_private_key_file is not None and auth.jwt_public_key_file is not None:
            self._signing_key = auth.jwt_private_key_file.read_bytes()
            self._verifying_key = auth.jwt_public_key_file.read_bytes()
        else:  # AuthSettings refuses this combination; kept for direct construction
            raise ValueError(f"{self.algorithm} needs a private and a public key file")

    def issue(self, *, user_id: uuid.UUID, session_id: uuid.UUID, role: Role, now: datetime) -> str:
        claims = {
            "sub": str(user_id),
            "sid": str(session_id),
            "role": role.value,
            "iat": now,
            "nbf": now,
            "exp": now + self.ttl,
            "jti": uuid.uuid4().hex,
            "iss": self.issuer,
            "aud": self.audience,
        }
        return jwt.encode(claims, self._signing_key, algorithm=self.algorithm)

    def verify(self, token: str) -> AccessClaims:
        try:
            claims = jwt.decode(
                token,
                self._verifying_key,
                algorithms=[self.algorithm],  # never "none", never another family
                audience=self.audience,
                issuer=self.issuer,
                leeway=self.leeway,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the access token has expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("the access token is not valid yet") from None
        except (jwt.InvalidAudienceError, jwt.InvalidIssuerError):
            raise InvalidToken("the access token was not issued for this service") from None
        except jwt.InvalidTokenError:
            raise InvalidToken("the access token is malformed or its signature is wrong") from None
        try:
            return AccessClaims(
                user_id=uuid.UUID(claims["sub"]),
                session_id=uuid.UUID(claims["sid"]),
                role=Role(claims["role"]),
                token_id=str(claims["jti"]),
            )
        except (ValueError, TypeError):
            raise InvalidToken("the access token has malformed claims") from None


def _generated_secret(data_dir: Path) -> str:
    """A random HS256 key created once per data dir and shared by every process using it.

    Written to a temporary file and hard-linked into place, so concurrent first starts (two
    workers) agree on one key: the loser of the race reads the winner's complete file.
    """
    path = data_dir / "jwt-secret"
    if not path.exists():
        data_dir.mkdir(parents=True, exist_ok=True)
        tmp = data_dir / f".jwt-secret.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return path.read_text().strip()
