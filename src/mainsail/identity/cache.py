"""Who a credential belongs to, remembered for a few seconds so the gateway's hot path does
not ask the database on every call.

Revocation stays immediate:
- Every change that can end or narrow a credential (a key revoked or re-scoped, a session
  ended, a user disabled, demoted, re-passworded or deleted) fires a PostgreSQL trigger that
  sends the user's id on the ``mainsail_identity`` channel (migration 0004). Every process
  listens and drops that user's entries; the process that made the change also drops them
  itself before it answers.
- While the listener is not connected the cache is off (nothing is served from it), and it is
  emptied when the connection drops and again when it is back: a missed notification can
  never leave a revoked credential usable.
- A lookup that raced an invalidation is not stored (the generation check), and every entry
  also expires on its own after ``auth.principal_cache_ttl_s`` or at the credential's own
  expiry, whichever comes first.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

from mainsail.core.principal import Principal

CHANNEL = "mainsail_identity"


@dataclass(slots=True)
class _Entry:
    principal: Principal
    valid_until: float  # monotonic
    touch_due: float  # monotonic; API keys only: when last_used_at is next worth writing


class PrincipalCache:
    def __init__(
        self,
        *,
        ttl_s: float,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.clock = clock
        self.generation = 0
        self.online = False  # set by the listener: no invalidation feed, no cache
        self.hits = 0
        self.misses = 0
        self._entries: dict[str, _Entry] = {}
        self._by_user: dict[uuid.UUID, set[str]] = {}

    @property
    def active(self) -> bool:
        return self.online and self.ttl_s > 0

    def get(self, key: str) -> _Entry | None:
        if not self.active:
            return None
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        if entry.valid_until <= self.clock():
            self._drop(key)
            self.misses += 1
            return None
        self.hits += 1
        return entry

    def put(
        self,
        key: str,
        principal: Principal,
        *,
        generation: int,
        expires_in_s: float | None = None,
        touch_in_s: float = 0.0,
    ) -> None:
        """Remember ``principal`` unless an invalidation happened since ``generation`` was
        read (the lookup may then have seen the state from before the change)."""
        if not self.active or generation != self.generation:
            return
        now = self.clock()
        lifetime = self.ttl_s if expires_in_s is None else min(self.ttl_s, expires_in_s)
        if lifetime <= 0:
            return
        if key not in self._entries and len(self._entries) >= self.max_entries:
            self._drop(next(iter(self._entries)))  # the oldest insertion
        self._entries[key] = _Entry(principal, now + lifetime, now + touch_in_s)
        self._by_user.setdefault(principal.user_id, set()).add(key)

    def invalidate_user(self, user_id: uuid.UUID | str) -> None:
        self.generation += 1
        try:
            user = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(user_id)
        except ValueError:  # not ours to understand: be safe
            self.clear()
            return
        for key in self._by_user.pop(user, ()):
            self._entries.pop(key, None)

    def forget(self, key: str) -> None:
        self.generation += 1
        self._drop(key)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._by_user.clear()

    def set_online(self, online: bool) -> None:
        self.clear()
        self.online = online

    def __len__(self) -> int:
        return len(self._entries)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            keys = self._by_user.get(entry.principal.user_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_user[entry.principal.user_id]
