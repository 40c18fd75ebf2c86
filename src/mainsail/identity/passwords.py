"""Argon2id password hashing, off the event loop, with equal work for unknown accounts."""

from __future__ import annotations

import asyncio
import os
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
        # Each hash holds ARGON2_MEMORY_KIB; a burst of sign-ins must not multiply that
        # without bound, nor take every thread of the default pool.
        self._slots = asyncio.Semaphore(max(2, os.cpu_count() or 2))

    async def hash(self, password: str) -> str:
        async with self._slots:
            return await asyncio.to_thread(self._hash.hash, password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        matches, _ = await self.verify_and_update(password, password_hash)
        return matches

    async def verify_and_update(
        self, password: str, password_hash: str | None
    ) -> tuple[bool, str | None]:
        """(matches, new hash if the stored one was made with older costs).

        With no stored hash, does the same work against a decoy and answers no match.
        """
        async with self._slots:
            if password_hash is None:
                await asyncio.to_thread(self._hash.verify, password, self._decoy)
                return False, None
            return await asyncio.to_thread(self._hash.verify_and_update, password, password_hash)
