"""PostgreSQL LISTEN on a dedicated connection: how one process learns, within milliseconds,
that another one (a worker, the CLI, a trigger) changed something it keeps in memory.

The listener is honest about gaps: while its connection is down, notifications are lost, so
every subscriber's ``on_gap`` runs when the connection drops and again once it is back (a
cache then clears itself and stays off in between). A periodic ping notices a connection that
died without closing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from mainsail.core.db import Database
from mainsail.core.logging import get_logger

log = get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Subscription:
    channel: str
    on_message: Callable[[str], None]
    on_gap: Callable[[], None]
    on_connected: Callable[[], None]


class PgListener:
    def __init__(
        self,
        db: Database,
        *,
        ping_interval_s: float = 5.0,
        reconnect_max_s: float = 10.0,
    ) -> None:
        self.db = db
        self.ping_interval_s = ping_interval_s
        self.reconnect_max_s = reconnect_max_s
        self._subscriptions: list[Subscription] = []
        self._task: asyncio.Task[None] | None = None
        self._connection: asyncpg.Connection | None = None
        self._lost = asyncio.Event()
        self.connected = asyncio.Event()
        self.connections = 0  # successful (re)connects so far

    def subscribe(
        self,
        channel: str,
        on_message: Callable[[str], None],
        *,
        on_gap: Callable[[], None],
        on_connected: Callable[[], None],
    ) -> None:
        self._subscriptions.append(Subscription(channel, on_message, on_gap, on_connected))

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close()

    async def _connect(self) -> asyncpg.Connection:
        args, kwargs = self.db.engine.dialect.create_connect_args(self.db.engine.url)
        for sqlalchemy_only in ("prepared_statement_cache_size", "prepared_statement_name_func"):
            kwargs.pop(sqlalchemy_only, None)
        kwargs["timeout"] = self.db.settings.connect_timeout_s
        kwargs["server_settings"] = {"application_name": "mainsail-listener"}
        connection: asyncpg.Connection = await asyncpg.connect(*args, **kwargs)
        return connection

    async def _run(self) -> None:
        delay = 0.25
        while True:
            try:
                self._connection = await self._connect()
                self._lost.clear()
                self._connection.add_termination_listener(self._terminated)
                for sub in self._subscriptions:
                    await self._connection.add_listener(sub.channel, self._dispatcher(sub))
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("listener_connect_failed", error=type(exc).__name__, retry_s=delay)
                await self._close()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.reconnect_max_s)
                continue
            delay = 0.25
            self.connections += 1
            # Anything sent before LISTEN took effect was missed: start clean.
            for sub in self._subscriptions:
                sub.on_gap()
                sub.on_connected()
            self.connected.set()
            log.info("listener_connected", channels=[s.channel for s in self._subscriptions])
            await self._watch()
            self.connected.clear()
            for sub in self._subscriptions:
                sub.on_gap()
            log.warning("listener_disconnected")
            await self._close()

    async def _watch(self) -> None:
        """Returns when the connection is gone (closed, or not answering a ping)."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), self.ping_interval_s)
                return
            connection = self._connection
            if connection is None or connection.is_closed():
                return
            try:
                await connection.fetchval("SELECT 1", timeout=self.ping_interval_s)
            except Exception:
                return

    def _terminated(self, _connection: Any) -> None:
        self._lost.set()

    def _dispatcher(self, sub: Subscription) -> Callable[[Any, int, str, str], None]:
        def dispatch(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
            try:
                sub.on_message(payload)
            except Exception:  # a subscriber's bug must not stop the listener
                log.exception("listener_callback_failed", channel=sub.channel)
                sub.on_gap()

        return dispatch

    async def _close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None and not connection.is_closed():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(connection.close(), 2)
