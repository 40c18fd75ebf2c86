from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from fastapi import FastAPI
from sqlalchemy.engine import URL

from mainsail.core.db import Database
from mainsail.jobs.service import Handler, JobRunner
from mainsail.settings import JobSettings, Settings
from tests.fixtures.app import make_settings

# Quick retries and leases; the app runs no jobs itself (each test drives its own runners).
FAST_JOBS: dict[str, Any] = {
    "executor": "external",
    "max_attempts": 3,
    "lease_s": 1.0,
    "poll_interval_s": 0.05,
    "backoff_base_s": 0.0,
    "backoff_max_s": 0.0,
}


@pytest.fixture
def settings(database_url: URL) -> Settings:
    return make_settings(database_url, jobs=FAST_JOBS)


MakeRunner = Callable[..., Awaitable[JobRunner]]


@pytest.fixture
async def make_runner(app: FastAPI) -> AsyncIterator[MakeRunner]:
    runners: list[JobRunner] = []

    async def make(
        handlers: dict[str, Handler], *, start: bool = False, **overrides: Any
    ) -> JobRunner:
        db: Database = app.state.db
        runner = JobRunner(
            db,
            JobSettings(**{**FAST_JOBS, "executor": "inprocess", **overrides}),
            handlers=handlers,
        )
        if start:
            await runner.start()
        runners.append(runner)
        return runner

    yield make
    for runner in runners:
        await runner.stop()
