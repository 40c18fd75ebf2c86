"""Access tokens that must not be accepted: every one is a real request, every answer a 401."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL

from mainsail.app import create_app
from mainsail.settings import SettingsError, load_settings
from tests.fixtures.app import TEST_JWT_SECRET, make_settings, truncate_all
from tests.fixtures.identity import Account, create_user, sign_in


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims_of(token: str) -> dict[str, Any]:
    return jwt.decode(token, options={"verify_signature": False})  # type: ignore[no-any-return]


def resign(token: str, **changes: Any) -> str:
    claims = {**claims_of(token), **changes}
    return jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")


def tampered_signature(token: str) -> str:
    head, body, signature = token.split(".")
    flipped = ("A" if signature[0] != "A" else "B") + signature[1:]
    return f"{head}.{body}.{flipped}"


def alg_none(token: str) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims_of(token)).encode())
    return f"{header}.{body}."


def forged_role(token: str) -> str:
    head, _, signature = token.split(".")
    body = b64(json.dumps({**claims_of(token), "role": "admin"}).encode())
    return f"{head}.{body}.{signature}"


def other_key(token: str) -> str:
    return jwt.encode(claims_of(token), "another-key-" + "z" * 40, algorithm="HS256")


def missing_claim(name: str) -> Callable[[str], str]:
    def forge(token: str) -> str:
        claims = {k: v for k, v in claims_of(token).items() if k != name}
        return jwt.encode(claims, TEST_JWT_SECRET, algorithm="HS256")

    return forge


NOW = datetime.now(UTC)
FORGERIES: dict[str, Callable[[str], str]] = {
    "tampered signature": tampered_signature,
    "alg none": alg_none,
    "payload edited, signature kept": forged_role,
    "signed with another key": other_key,
    "wrong audience": lambda t: resign(t, aud="someone-else"),
    "wrong issuer": lambda t: resign(t, iss="https://evil.example"),
    "expired": lambda t: resign(t, exp=int((NOW - timedelta(hours=1)).timestamp())),
    "not yet valid": lambda t: resign(t, nbf=int((NOW + timedelta(hours=1)).timestamp())),
    **{
        f"no {claim}": missing_claim(claim)
        for claim in ("exp", "iat", "nbf", "sub", "jti", "iss", "aud", "sid", "role")
    },
    "unknown session": lambda t: resign(t, sid="00000000-0000-7000-8000-000000000000"),
    "session of another user": lambda t: resign(t, sub="00000000-0000-7000-8000-000000000001"),
    "garbage": lambda t: "not.a.jwt",
}


def assert_rejected(response: httpx.Response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == "application/problem+json"
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="mainsail"')
    assert 'error="invalid_token"' in challenge
    assert response.json()["code"] == "invalid_credentials"


@pytest.mark.parametrize("forge", FORGERIES.values(), ids=FORGERIES.keys())
async def test_forged_or_invalid_tokens_are_refused(
    client: httpx.AsyncClient, alice: Account, forge: Callable[[str], str]
) -> None:
    token = forge(alice.access_token)
    assert_rejected(await client.get("/me", headers={"Authorization": f"Bearer {token}"}))
    # The genuine token still works: each refusal is about the forgery, not the account.
    assert (await client.get("/me", headers=alice.headers)).status_code == 200


async def test_token_of_a_disabled_user_is_refused(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    async with app.state.db.engine.begin() as connection:
        await connection.execute(text("UPDATE users SET disabled = true"))
    assert_rejected(await client.get("/me", headers=alice.headers))


async def test_token_after_logout_is_refused(client: httpx.AsyncClient, alice: Account) -> None:
    await client.post("/auth/logout", headers=alice.headers)
    assert_rejected(await client.get("/me", headers=alice.headers))


@pytest.mark.parametrize(
    "header", ["Basic YWxpY2U6cHc=", "Bearer", "Bearer    ", "Token abc", "bearer"]
)
async def test_malformed_authorization_headers_are_refused(
    client: httpx.AsyncClient, header: str
) -> None:
    response = await client.get("/me", headers={"Authorization": header})
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")


async def test_missing_credentials_get_a_bare_challenge(client: httpx.AsyncClient) -> None:
    response = await client.get("/me")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="mainsail"'
    assert response.json()["code"] == "not_authenticated"


def write_keys(tmp_path: Path, algorithm: str) -> tuple[Path, Path]:
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if algorithm == "RS256"
        else ec.generate_private_key(ec.SECP256R1())
    )
    private = tmp_path / "private.pem"
    public = tmp_path / "public.pem"
    private.write_bytes(
        private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    public.write_bytes(
        private_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return private, public


@pytest.mark.parametrize("algorithm", ["RS256", "ES256"])
async def test_asymmetric_algorithms_sign_and_verify(
    tmp_path: Path, database_url: URL, algorithm: str
) -> None:
    private, public = write_keys(tmp_path, algorithm)
    settings = make_settings(
        database_url,
        auth={
            "jwt_algorithm": algorithm,
            "jwt_private_key_file": str(private),
            "jwt_public_key_file": str(public),
        },
    )
    application = create_app(settings)
    try:
        async with application.router.lifespan_context(application):
            await create_user(application, email="ada@example.com")
            transport = httpx.ASGITransport(app=application)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                tokens = await sign_in(client, "ada@example.com", "correct horse battery staple")
                token = tokens["access_token"]
                assert jwt.get_unverified_header(token)["alg"] == algorithm
                ok = await client.get("/me", headers={"Authorization": f"Bearer {token}"})
                assert ok.status_code == 200
                # Algorithm confusion: an HS256 token keyed with the public key is refused.
                confused = _hs256_with_key(claims_of(token), public.read_bytes())
                refused = await client.get("/me", headers={"Authorization": f"Bearer {confused}"})
                assert_rejected(refused)
    finally:
        await truncate_all(database_url)


def _hs256_with_key(claims: dict[str, Any], key: bytes) -> str:
    """Sign by hand: PyJWT itself refuses to use a PEM public key as an HMAC secret."""
    import hashlib
    import hmac

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps(claims).encode())
    signature = hmac.new(key, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(signature)}"


def test_asymmetric_algorithm_without_key_files_is_a_settings_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAINSAIL_AUTH__JWT_ALGORITHM", "RS256")
    with pytest.raises(SettingsError, match="JWT_PRIVATE_KEY_FILE"):
        load_settings()
    monkeypatch.setenv("MAINSAIL_AUTH__JWT_PRIVATE_KEY_FILE", str(tmp_path / "missing.pem"))
    monkeypatch.setenv("MAINSAIL_AUTH__JWT_PUBLIC_KEY_FILE", str(tmp_path / "missing.pem"))
    with pytest.raises(SettingsError, match="MAINSAIL_AUTH__JWT_PRIVATE_KEY_FILE"):
        load_settings()


@pytest.mark.parametrize(
    ("secret", "reason"),
    [("short", "at least 32 bytes"), ("x" * 40, "placeholder"), ("ab" * 20, "placeholder")],
)
def test_weak_hs256_secrets_are_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, secret: str, reason: str
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAINSAIL_AUTH__JWT_SECRET", secret)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert reason in str(caught.value)
    assert secret not in str(caught.value)


def test_production_requires_a_configured_secret(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MAINSAIL_ENVIRONMENT", "production")
    with pytest.raises(SettingsError, match="MAINSAIL_AUTH__JWT_SECRET is required"):
        load_settings()
    monkeypatch.setenv("MAINSAIL_AUTH__JWT_SECRET", "0123456789abcdef" * 4)
    assert load_settings().environment == "production"


async def test_development_key_is_generated_once_and_shared(
    tmp_path: Path, database_url: URL
) -> None:
    from mainsail.identity.tokens import TokenCodec

    settings = make_settings(database_url, auth={"jwt_secret": None}, data_dir=str(tmp_path))
    first, second = TokenCodec(settings), TokenCodec(settings)
    key_file = tmp_path / "jwt-secret"
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert first._signing_key == second._signing_key == key_file.read_text().strip()
    assert len(first._signing_key) == 64
