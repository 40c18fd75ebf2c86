"""The usage ledger: every call metered once, reported by day and model, never lost."""

from __future__ import annotations

import asyncio
import json
from decimal import Decimal
from pathlib import Path

import httpx
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL

from mainsail.core.db import Database
from mainsail.llm.gateway import UsageEvent
from mainsail.settings import DatabaseSettings
from mainsail.usage.writer import UsageWriter
from tests.fakes.provider_server import FakeProviderServer, Reply
from tests.fixtures.identity import Account
from tests.fixtures.servers import free_port

ASK = {"model": "fake-gpt", "messages": [{"role": "user", "content": "hi"}]}


async def test_me_usage_reports_this_month_by_day_and_model(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, fake_provider: FakeProviderServer
) -> None:
    fake_provider.script(
        Reply(text="a", input_tokens=10, output_tokens=5),
        Reply(text="b", input_tokens=20, output_tokens=5, cached_input_tokens=10),
    )
    for _ in range(2):
        assert (
            await client.post("/v1/chat/completions", json=ASK, headers=alice.headers)
        ).status_code == 200
    await app.state.quota.drain()
    await app.state.usage.flush()
    report = (await client.get("/me/usage", headers=alice.headers)).json()
    (day,) = report["days"]
    assert (day["model"], day["requests"], day["tokens_in"], day["tokens_out"]) == (
        "fake-gpt",
        2,
        30,
        10,
    )
    # 20 plain + 10 cached ($0.5) input, 10 output: (20*1 + 10*0.5 + 10*2) / 1e6
    assert Decimal(day["cost_usd"]) == Decimal("0.000045")
    budget = report["budget"]
    assert budget["used_tokens"] == 40
    assert Decimal(budget["remaining_cost_usd"]) == Decimal("25") - Decimal("0.000045")
    assert report["totals"]["requests"] == 2


async def test_usage_needs_credentials_and_shows_only_the_callers_own(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    await client.post("/v1/chat/completions", json=ASK, headers=alice.headers)
    await app.state.usage.flush()
    assert (await client.get("/me/usage")).status_code == 401
    bobs = (await client.get("/me/usage", headers=bob.headers)).json()
    assert bobs["days"] == []
    assert bobs["budget"]["used_tokens"] == 0


async def test_each_call_writes_exactly_one_event_and_one_log_line(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, logs: object
) -> None:
    for _ in range(3):
        await client.post("/v1/chat/completions", json=ASK, headers=alice.headers)
    await app.state.usage.flush()
    async with app.state.db.engine.connect() as connection:
        count = await connection.scalar(text("SELECT count(*) FROM usage_events"))
    assert count == 3
    calls = [e for e in logs.events if e["event"] == "llm_call"]  # type: ignore[attr-defined]
    assert len(calls) == 3
    assert {"latency_ms", "tokens_in", "tokens_out", "estimated_cost", "request_id"} <= set(
        calls[0]
    )


def event(**overrides: object) -> UsageEvent:
    values: dict[str, object] = {
        "request_id": "r",
        "user_id": None,
        "api_key_id": None,
        "kind": "chat",
        "requested_model": "m",
        "model": "m",
        "provider": "p",
        "status": "ok",
        "tokens_in": 3,
        "tokens_out": 4,
        "cost_usd": Decimal("0.001"),
    }
    values.update(overrides)
    return UsageEvent(**values)  # type: ignore[arg-type]


async def test_events_survive_a_shutdown_while_the_database_is_down(
    tmp_path: Path, database_url: URL
) -> None:
    dead = URL.create(
        "postgresql+asyncpg", username="u", host="127.0.0.1", port=free_port(), database="x"
    )
    down = Database(dead, DatabaseSettings(connect_timeout_s=0.5))
    writer = UsageWriter(down, spill_dir=tmp_path, flush_interval_s=0.05)
    await writer.start()
    for n in range(7):
        writer.record(event(request_id=f"r{n}", model="m" * 300))  # over-long: clipped, kept
    await asyncio.sleep(0.2)  # failed flushes keep the events
    await writer.stop(timeout_s=2)
    await down.dispose()
    (spill,) = list(tmp_path.glob("usage-spill-*.jsonl"))
    assert len(spill.read_text().splitlines()) == 7

    up = Database(database_url, DatabaseSettings())
    replayer = UsageWriter(up, spill_dir=tmp_path, flush_interval_s=0.05)
    await replayer.start()
    await replayer.stop()
    async with up.engine.connect() as connection:
        ids = (
            (await connection.execute(text("SELECT request_id FROM usage_events"))).scalars().all()
        )
        await connection.execute(text("TRUNCATE usage_events, usage_rollups"))
        await connection.commit()
    await up.dispose()
    assert sorted(ids) == [f"r{n}" for n in range(7)]
    assert not list(tmp_path.glob("usage-spill-*"))


async def test_record_never_waits_for_the_database(tmp_path: Path) -> None:
    dead = URL.create(
        "postgresql+asyncpg", username="u", host="127.0.0.1", port=free_port(), database="x"
    )
    writer = UsageWriter(Database(dead, DatabaseSettings()), spill_dir=tmp_path)
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(10_000):
        writer.record(event())
    assert loop.time() - started < 1.0
    assert writer.pending == 10_000
    writer._spill()
    assert json.loads(next(tmp_path.glob("*.jsonl")).read_text().splitlines()[0])["tokens_out"] == 4


async def test_stop_during_a_slow_flush_loses_nothing(tmp_path: Path, database_url: URL) -> None:
    db = Database(database_url, DatabaseSettings())
    writer = UsageWriter(db, spill_dir=tmp_path, flush_interval_s=0.01)
    async with db.engine.connect() as blocker:
        # Hold the rollup table so the writer's flush blocks half-way through its transaction.
        await blocker.execute(text("LOCK TABLE usage_rollups IN ACCESS EXCLUSIVE MODE"))
        await writer.start()
        for n in range(10):
            writer.record(event(request_id=f"slow{n}"))
        await asyncio.sleep(0.2)  # the flush has begun and is waiting on the lock
        stopping = asyncio.create_task(writer.stop(timeout_s=5))
        await asyncio.sleep(0.2)
        await blocker.rollback()  # releases the lock: the flush may finish
        await stopping
    async with db.engine.connect() as connection:
        ids = (
            (
                await connection.execute(
                    text("SELECT request_id FROM usage_events WHERE request_id LIKE 'slow%'")
                )
            )
            .scalars()
            .all()
        )
        await connection.execute(text("TRUNCATE usage_events, usage_rollups"))
        await connection.commit()
    await db.dispose()
    assert sorted(ids) == sorted(f"slow{n}" for n in range(10))
    assert not list(tmp_path.glob("usage-spill-*"))
