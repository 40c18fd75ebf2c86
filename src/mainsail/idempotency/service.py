"""Claims, waits, stored answers and the purge: idempotency without HTTP.

A request with a key first *claims* it (one ``INSERT ... ON CONFLICT`` round trip). The
claim is a lease, renewed while the request runs, so a process that dies mid-request blocks
the key for at most ``lease_s``. When the request ends, its answer is stored under the key
(definitive answers) or the key is released (failures worth retrying). A duplicate that
finds the key claimed waits for the outcome, polling the row with a short backoff and woken
at once when the first request ran in the same process, for at most ``wait_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

from mainsail.core.db import Database
from mainsail.core.logging import get_logger
from mainsail.idempotency import repository as repo
from mainsail.idempotency.models import DONE
from mainsail.settings import IdempotencySettings

log = get_logger(__name__)

_PURGE_BATCH = 5_000
_POLL_FIRST_S = 0.02
_POLL_MAX_S = 0.25


@dataclass(frozen=True, slots=True)
class Stored:
    """A stored answer to replay."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    scopes: frozenset[str]


@dataclass(frozen=True, slots=True)
class Mismatch:
    """The key was used for a different request."""


@dataclass(frozen=True, slots=True)
class InProgress:
    """The first request with the key is still running after the wait."""

    retry_after_s: int


@dataclass(slots=True)
class Claim:
    """The key is ours: run the request, then ``finish`` it."""

    user_id: uuid.UUID
    key: str
    owner: uuid.UUID
    done: asyncio.Event = field(default_factory=asyncio.Event)
    keeper: asyncio.Task[None] | None = None


Outcome = Claim | Stored | Mismatch | InProgress


class IdempotencyStore:
    def __init__(self, db: Database, settings: IdempotencySettings) -> None:
        self.db = db
        self.settings = settings
        self.ttl = timedelta(seconds=settings.ttl_s)
        self.lease = timedelta(seconds=settings.lease_s)
        # Claims held by this process, so a local duplicate wakes the moment they end.
        self._claims: dict[tuple[uuid.UUID, str], Claim] = {}
        self._purger: asyncio.Task[None] | None = None

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._purger = asyncio.create_task(self._purge_loop(), name="idempotency-purge")

    async def stop(self) -> None:
        tasks = [self._purger] if self._purger is not None else []
        tasks += [c.keeper for c in self._claims.values() if c.keeper is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._purger = None

    # --- the request path -----------------------------------------------------------------

    async def begin(
        self,
        *,
        user_id: uuid.UUID,
        key: str,
        fingerprint: str,
        method: str,
        path: str,
        scopes: Sequence[str],
    ) -> Outcome:
        """Claim the key, or return what stands in the way. Raises if the database fails."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.wait_s
        delay = _POLL_FIRST_S
        while True:
            owner = uuid.uuid4()
            async with self.db.autocommit() as connection:
                if await repo.claim(
                    connection,
                    user_id=user_id,
                    key=key,
                    fingerprint=fingerprint,
                    method=method,
                    path=path,
                    scopes=sorted(scopes),
                    owner=owner,
                    lease=self.lease,
                    ttl=self.ttl,
                ):
                    return self._hold(Claim(user_id, key, owner))
                row = await repo.find(connection, user_id=user_id, key=key)
            if row is None or row.lapsed:
                # Released or lapsed between the two statements: claim again.
                await asyncio.sleep(0)
                continue
            if row.fingerprint != fingerprint:
                return Mismatch()
            if row.state == DONE:
                return Stored(
                    status=row.status_code or 200,
                    headers=[(name, value) for name, value in row.headers or ()],
                    body=row.body or b"",
                    scopes=frozenset(row.scopes),
                )
            left = deadline - loop.time()
            if left <= 0:
                return InProgress(retry_after_s=1)
            await self._wait_for((user_id, key), min(delay, left))
            delay = min(delay * 2, _POLL_MAX_S)

    async def finish(
        self,
        claim: Claim,
        *,
        status: int | None = None,
        headers: Sequence[tuple[str, str]] = (),
        body: bytes = b"",
    ) -> None:
        """Store the answer (``status`` given) or release the key (``status`` None)."""
        if claim.keeper is not None:
            claim.keeper.cancel()
        try:
            async with self.db.autocommit() as connection:
                if status is None:
                    await repo.release(
                        connection, user_id=claim.user_id, key=claim.key, owner=claim.owner
                    )
                elif not await repo.store(
                    connection,
                    user_id=claim.user_id,
                    key=claim.key,
                    owner=claim.owner,
                    status_code=status,
                    headers=[[name, value] for name, value in headers],
                    body=body,
                    ttl=self.ttl,
                ):
                    log.warning("idempotency_claim_lost", status=status)
        except Exception as exc:
            # The answer is already with the client; the claim lapses after lease_s.
            log.warning("idempotency_finish_failed", error=type(exc).__name__, stored=status)
        finally:
            if self._claims.get((claim.user_id, claim.key)) is claim:
                del self._claims[(claim.user_id, claim.key)]
            claim.done.set()

    # --- internals ------------------------------------------------------------------------

    def _hold(self, claim: Claim) -> Claim:
        self._claims[(claim.user_id, claim.key)] = claim
        claim.keeper = asyncio.create_task(self._keep(claim), name="idempotency-lease")
        return claim

    async def _keep(self, claim: Claim) -> None:
        """Renew the lease while the request runs, so a long model call keeps its key."""
        interval = self.settings.lease_s / 3
        while True:
            await asyncio.sleep(interval)
            try:
                async with self.db.autocommit() as connection:
                    renewed = await repo.renew(
                        connection,
                        user_id=claim.user_id,
                        key=claim.key,
                        owner=claim.owner,
                        lease=self.lease,
                    )
            except Exception as exc:
                log.warning("idempotency_renew_failed", error=type(exc).__name__)
                continue
            if not renewed:
                log.warning("idempotency_claim_lost")
                return

    async def _wait_for(self, key: tuple[uuid.UUID, str], seconds: float) -> None:
        local = self._claims.get(key)
        if local is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await local.done.wait()

    async def purge(self) -> int:
        """Delete expired keys in batches; the number deleted."""
        total = 0
        while True:
            async with self.db.autocommit() as connection:
                gone = await repo.purge_expired(connection, limit=_PURGE_BATCH)
            total += gone
            if gone < _PURGE_BATCH:
                return total

    async def _purge_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.purge_interval_s)
            try:
                gone = await self.purge()
            except Exception as exc:
                log.warning("idempotency_purge_failed", error=type(exc).__name__)
                continue
            if gone:
                log.info("idempotency_purged", keys=gone)
