"""Structured outputs and the usage ledger at their edges: custom schemas with keywords used
as property names, shared references and unresolvable ones; an Anthropic structured answer
cut at its limit; a spill replayed then spilled again; usage days on a non-UTC server."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import URL

from mainsail.analysis.custom_schema import InvalidSchema, check_custom_schema
from mainsail.core.db import Database
from mainsail.llm.providers.anthropic import AnthropicAdapter
from mainsail.llm.providers.base import Timeouts
from mainsail.llm.types import ChatRequest, Message, ResponseFormat, SamplingParams
from mainsail.settings import DatabaseSettings
from mainsail.usage import repository as repo
from mainsail.usage import writer as writer_module
from mainsail.usage.writer import UsageWriter
from tests.fakes.provider_server import FakeProviderServer, Reply
from tests.fakes.provider_server import ToolCall as FakeToolCall
from tests.fixtures.servers import free_port
from tests.llm.test_providers import ENTRY
from tests.usage.test_usage import event

LIMITS = {"max_bytes": 32_768, "max_depth": 16}


# --- custom schemas --------------------------------------------------------------------------


@pytest.mark.parametrize("keyword_named_property", ["enum", "const", "default", "examples"])
def test_a_remote_ref_under_a_property_named_like_a_keyword_is_refused(
    keyword_named_property: str,
) -> None:
    """A property *named* enum/const/default/examples holds a subschema: a remote $ref
    there is refused like anywhere else (the walk skipped such keys, and the validator then
    fetched the URL while checking the model's answer: SSRF)."""
    schema = {
        "type": "object",
        "properties": {keyword_named_property: {"$ref": "http://169.254.169.254/latest.json"}},
    }
    with pytest.raises(InvalidSchema):
        check_custom_schema(schema, **LIMITS)


def test_a_property_named_dollar_ref_is_a_valid_schema() -> None:
    """A property called "$ref" (its value a subschema) is valid JSON Schema, not a
    reference pointing outside the document."""
    schema = {"type": "object", "properties": {"$ref": {"type": "string"}}}
    assert check_custom_schema(schema, **LIMITS) == schema


def test_checking_a_small_schema_with_shared_refs_takes_bounded_time() -> None:
    """Depth is bounded, and so is total work: a 13 KB schema of 4 levels of 100 shared
    references once cost ~100**4 node visits on the event loop. The check finishes (accepts
    or refuses) quickly."""
    script = textwrap.dedent(
        """
        from mainsail.analysis.custom_schema import check_custom_schema
        b = 100
        defs = {
            f"d{i}": {"type": "object",
                      "properties": {f"p{j}": {"$ref": f"#/$defs/d{i + 1}"} for j in range(b)}}
            for i in range(4)
        }
        defs["d4"] = {"type": "string"}
        schema = {"type": "object", "$defs": defs, "properties": {"x": {"$ref": "#/$defs/d0"}}}
        try:
            check_custom_schema(schema, max_bytes=32768, max_depth=16)
        except Exception:
            pass
        """
    )
    try:
        subprocess.run([sys.executable, "-c", script], timeout=15, check=True)
    except subprocess.TimeoutExpired:
        pytest.fail("check_custom_schema ran for over 15 s on a 13 KB schema")


# --- structured output through Anthropic's forced tool ------------------------------------


async def test_anthropic_structured_answer_cut_off_reports_length(
    fake_provider: FakeProviderServer,
) -> None:
    """complete() keeps "length" for the forced tool's answer when Anthropic stopped at
    max_tokens (it said "stop": a truncated answer looked complete, and the analysis repair
    never heard it was cut off), as stream() does."""
    adapter = AnthropicAdapter(
        name="p",
        api_key="k",
        base_url=fake_provider.anthropic_base_url,
        timeouts=Timeouts(connect_s=1, read_s=2, total_s=2),
        max_connections=4,
    )
    try:
        schema = {"type": "object", "properties": {"label": {"type": "string"}}}
        fake_provider.script(
            Reply(
                tool_calls=(FakeToolCall("structured_answer", {"label": "o"}),),
                finish_reason="length",
            )
        )
        request = ChatRequest(
            model="public-name",
            messages=(Message(role="user", content="hi"),),
            params=SamplingParams(max_tokens=16),
            response_format=ResponseFormat(type="json_schema", name="v", schema=schema),
        )
        response = await adapter.complete(request, ENTRY)
        assert fake_provider.calls[-1].body["tool_choice"]["name"] == "structured_answer"
        assert response.finish_reason == "length"
    finally:
        await adapter.aclose()


# --- the usage writer ------------------------------------------------------------------------


async def test_a_replayed_spill_spilled_again_is_not_counted_twice(
    tmp_path: Path, database_url: URL, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process replays a spill file (claiming it as ``.replaying-<pid>``), the database is
    still down at shutdown, so it spills the same events to a new file; the claim goes (it
    stayed, and the next process replayed both: every event written twice)."""
    dead = URL.create(
        "postgresql+asyncpg", username="u", host="127.0.0.1", port=free_port(), database="x"
    )
    first = Database(dead, DatabaseSettings(connect_timeout_s=0.5))
    writer = UsageWriter(first, spill_dir=tmp_path, flush_interval_s=0.05)
    for n in range(5):
        writer.record(event(request_id=f"dup{n}"))
    writer._spill()  # a previous shutdown while the database was down

    # Next start: the database is still down; the process replays, then shuts down again.
    await writer.start()
    await asyncio.sleep(0.2)
    await writer.stop(timeout_s=2)
    await first.dispose()
    lines = [
        line
        for path in tmp_path.glob("usage-spill-*")
        for line in path.read_text().splitlines()
        if line.strip()
    ]
    assert len(lines) == 5, "the spill directory holds each pending event once"

    # A later process (the first one gone) replays into a database that is up.
    monkeypatch.setattr(writer_module.psutil, "pid_exists", lambda pid: False)
    up = Database(database_url, DatabaseSettings())
    replayer = UsageWriter(up, spill_dir=tmp_path, flush_interval_s=0.05)
    await replayer.start()
    await replayer.stop()
    async with up.engine.connect() as connection:
        ids = (
            (
                await connection.execute(
                    text("SELECT request_id FROM usage_events WHERE request_id LIKE 'dup%'")
                )
            )
            .scalars()
            .all()
        )
        await connection.execute(text("TRUNCATE usage_events, usage_rollups"))
        await connection.commit()
    await up.dispose()
    assert sorted(ids) == [f"dup{n}" for n in range(5)]


# --- reports ---------------------------------------------------------------------------------


@pytest.fixture
def los_angeles_database(pg_cluster: object) -> Iterator[URL]:
    """A migrated database whose server TimeZone is not UTC (a common server default)."""
    url = pg_cluster.create_database(migrate=True)  # type: ignore[attr-defined]
    from tests.fixtures.database import run_sql

    run_sql(
        pg_cluster.admin_url,  # type: ignore[attr-defined]
        f"ALTER DATABASE \"{url.database}\" SET timezone TO 'America/Los_Angeles'",
    )
    yield url
    pg_cluster.drop_database(url)  # type: ignore[attr-defined]


async def test_usage_days_are_utc_days_whatever_the_server_timezone(
    los_angeles_database: URL,
) -> None:
    """Budgets and month starts are UTC, and so are usage days: ``date_trunc('day', hour)``
    runs in the session's TimeZone, which the app sets to UTC (use at 02:00 UTC on the 5th
    was reported on the 4th on a server whose TimeZone is not UTC)."""
    import uuid

    db = Database(los_angeles_database, DatabaseSettings())
    user = uuid.uuid4()
    hour = datetime(2026, 12, 5, 2, tzinfo=UTC)
    try:
        async with db.unit_of_work() as session:
            await repo.add_to_rollups(
                session,
                repo.rollup_rows([event(user_id=user, created_at=hour.replace(minute=30))]),
            )
        async with db.unit_of_work() as session:
            rows = await repo.usage_by_day_and_model(
                session, user, since=datetime(2026, 12, 1, tzinfo=UTC)
            )
    finally:
        await db.dispose()
    (row,) = rows
    assert row.day.astimezone(UTC).date().isoformat() == "2026-12-05"


# --- POST /analyze with a reference the checker and the validator read differently --------


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param(
            {
                "type": "object",
                "$defs": {"a%20b": {"type": "string"}},
                "properties": {"x": {"$ref": "#/$defs/a%20b"}},
            },
            id="percent-encoded-pointer",
        ),
        pytest.param(
            {
                "type": "object",
                "$defs": {"z": {"type": "string"}},
                "properties": {"x": {"$id": "http://example.com/inner.json", "$ref": "#/$defs/z"}},
            },
            id="ref-under-a-nested-id",
        ),
    ],
)
async def test_a_custom_schema_whose_ref_cannot_resolve_is_a_422_not_a_500(
    app: object,
    client: object,
    alice: object,
    fake_provider: FakeProviderServer,
    schema: dict[str, object],
) -> None:
    """A reference the validator cannot resolve (percent-encoded, under a nested ``$id``)
    is a 422 before any model call, not a 500 after a paid one."""
    fake_provider.script(Reply(text=json.dumps({"x": "s"})))
    response = await client.post(  # type: ignore[attr-defined]
        "/analyze",
        json={
            "task": "custom",
            "input": "some text",
            "options": {"model": "fake-gpt", "schema": schema},
        },
        headers=alice.headers,  # type: ignore[attr-defined]
    )
    assert response.status_code == 422, response.text
    assert fake_provider.calls == []
