"""The buffered usage writer: ``record()`` never blocks and never waits for the database.

Events collect in memory and are written in one transaction per batch (raw events and
rollups together) every ``flush_interval_s`` or when ``batch_size`` are waiting. A failed
write keeps the batch and tries again later. On shutdown the buffer is flushed; if the
database is unreachable then, the events are written to a spill file in the data dir and
replayed at the next start, so a graceful shutdown never loses one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from collections import deque
from dataclasses import asdict, fields, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import psutil

from mainsail.core.db import Database
from mainsail.core.logging import get_logger
from mainsail.llm.gateway import UsageEvent as UsageRecord
from mainsail.usage import repository as repo

log = get_logger(__name__)
_PURGE_EVERY_S = 3600
# While the database is away, at most this many events wait in memory; more go to disk.
MAX_PENDING = 100_000
_PURGE_BATCH = 10_000


class UsageWriter:
    def __init__(
        self,
        db: Database,
        *,
        spill_dir: Path,
        flush_interval_s: float = 0.5,
        batch_size: int = 500,
        retention_days: int = 30,
    ) -> None:
        self.db = db
        self.spill_dir = spill_dir
        self.flush_interval_s = flush_interval_s
        self.batch_size = batch_size
        self.retention = timedelta(days=retention_days)
        self._buffer: deque[UsageRecord] = deque()
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._flush_lock = asyncio.Lock()
        self._last_purge = 0.0
        self._replayed: list[Path] = []
        self.written = 0

    # --- the request path -----------------------------------------------------------------

    def record(self, event: UsageRecord) -> None:
        self._buffer.append(_fit(event))
        if len(self._buffer) >= MAX_PENDING:
            self._spill()  # bounded memory; replayed at the next start
        elif len(self._buffer) >= self.batch_size:
            self._wake.set()

    def stopping(self) -> bool:
        return self._stopping

    @property
    def pending(self) -> int:
        return len(self._buffer)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        self._replay_spills()
        self._task = asyncio.create_task(self._run(), name="usage-writer")

    async def stop(self, *, timeout_s: float = 10.0) -> None:
        """Let the loop finish its current flush (never cancel one half-way), then flush what
        is left; spill to disk whatever the database would not take."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            try:
                async with asyncio.timeout(timeout_s):
                    await asyncio.shield(self._task)
            except TimeoutError:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
        try:
            async with asyncio.timeout(timeout_s):
                while self._buffer:
                    if not await self.flush():
                        break
        except TimeoutError:
            pass
        if self._buffer:
            self._spill()

    async def _run(self) -> None:
        delay = self.flush_interval_s
        while not self.stopping():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()
            if self.stopping():
                return  # stop() does the final flush
            ok = await self.flush()
            # Back off while the database is away; the buffer keeps growing meanwhile.
            delay = self.flush_interval_s if ok else min(delay * 2, 30.0)
            if ok:
                await self._purge_if_due()

    async def flush(self) -> bool:
        """Write what is buffered; False (batch kept) if the database refused."""
        async with self._flush_lock:
            while self._buffer:
                batch = [
                    self._buffer.popleft() for _ in range(min(self.batch_size, len(self._buffer)))
                ]
                try:
                    async with self.db.unit_of_work() as session:
                        await repo.insert_events(session, batch)
                        await repo.add_to_rollups(session, repo.rollup_rows(batch))
                except BaseException as exc:
                    # Whatever stopped the write (the database, a cancellation), the batch
                    # goes back in front of the queue, in order.
                    self._buffer.extendleft(reversed(batch))
                    if not isinstance(exc, Exception):
                        raise
                    log.warning(
                        "usage_write_failed", pending=len(self._buffer), error=type(exc).__name__
                    )
                    return False
                self.written += len(batch)
            for path in self._replayed:  # their events are in the database now
                path.unlink(missing_ok=True)
            self._replayed.clear()
            return True

    async def _purge_if_due(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._last_purge < _PURGE_EVERY_S:
            return
        self._last_purge = now
        cutoff = datetime.now(UTC) - self.retention
        try:
            while True:
                async with self.db.unit_of_work() as session:
                    gone = await repo.purge_events_before(session, cutoff, limit=_PURGE_BATCH)
                if gone < _PURGE_BATCH:
                    break
        except Exception as exc:
            log.warning("usage_purge_failed", error=type(exc).__name__)

    # --- spill files ----------------------------------------------------------------------

    def _spill(self) -> None:
        self.spill_dir.mkdir(parents=True, exist_ok=True)
        path = self.spill_dir / f"usage-spill-{os.getpid()}-{uuid.uuid4().hex[:8]}.jsonl"
        with path.open("w") as handle:
            for event in self._buffer:
                handle.write(json.dumps(asdict(event), default=str) + "\n")
        log.warning("usage_spilled", events=len(self._buffer), path=str(path))
        self._buffer.clear()
        # Replayed files' events not yet written are in this file now: replayed again from
        # both, they would be counted twice.
        for replayed in self._replayed:
            replayed.unlink(missing_ok=True)
        self._replayed.clear()

    def _replay_spills(self) -> None:
        if not self.spill_dir.is_dir():
            return
        # Spill files, and claims left by a process that died while replaying one.
        candidates = sorted(self.spill_dir.glob("usage-spill-*.jsonl")) + [
            path
            for path in sorted(self.spill_dir.glob("usage-spill-*.replaying-*"))
            if not psutil.pid_exists(int(path.name.rsplit("-", 1)[1]))
        ]
        for path in candidates:
            stem = path.name.split(".replaying-")[0]
            claimed = path.with_name(f"{stem}.replaying-{os.getpid()}")
            try:
                path.rename(claimed)  # atomic: of two workers, one gets each file
            except OSError:
                continue
            with claimed.open() as handle:
                for line in handle:
                    if line.strip():
                        self._buffer.append(_from_json(json.loads(line)))
            # Deleted once its events are written (see flush): a crash before that leaves the
            # file to be replayed again rather than lost.
            self._replayed.append(claimed)
            log.info("usage_spill_replayed", path=str(path))


_TYPES = {f.name: f.type for f in fields(UsageRecord)}
_WIDTHS = {
    "request_id": 128,
    "kind": 32,
    "requested_model": 128,
    "model": 128,
    "provider": 64,
    "status": 16,
    "error_code": 64,
    "prompt_version": 32,
}


def _fit(event: UsageRecord) -> UsageRecord:
    """Clip strings to their columns: one odd value must not poison a whole batch."""
    long: dict[str, Any] = {
        name: value[:width]
        for name, width in _WIDTHS.items()
        if isinstance(value := getattr(event, name), str) and len(value) > width
    }
    return replace(event, **long) if long else event


def _from_json(raw: dict[str, Any]) -> UsageRecord:
    values: dict[str, Any] = dict(raw)
    for name in ("user_id", "api_key_id"):
        if values.get(name):
            values[name] = uuid.UUID(values[name])
    values["cost_usd"] = Decimal(values["cost_usd"])
    values["created_at"] = datetime.fromisoformat(values["created_at"])
    return UsageRecord(**{k: v for k, v in values.items() if k in _TYPES})
