"""Argon2id password hashing, off the event loop, with equal work for unknown accounts."""

from __future__ import annotations

import asyncio
import secrets

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from mainsail.settings import AuthSettings


class Passwords:
    def __init__(self, settings: AuthSettings) -> None:
        self._hash = PasswordHash(
            (
                Argon2Hasher(
                    time_cost=settings.argon2_time_cost,
                    memory_cost=settings.argon2_memory_kib,
                    parallelism=settings.argon2_parallelism,
                ),
            )
        )
        # Verified against when the account does not exist, so that answer costs the same.
        self._decoy = self._hash.hash(secrets.token_urlsafe(24))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hash.hash, password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """True if ``password`` matches; with no hash, does the same work and returns False."""
        if password_hash is None:
            await asyncio.to_thread(self._hash.verify, password, self._decoy)
            return False
        return await asyncio.to_thread(self._hash.verify, password, password_hash)
