"""A build whose first step (taking the versions lock, reading the version) keeps failing ends
``failed`` with its reason, like one failing later: not ``building`` for ever behind a dead
job, which also refuses every new build (409, "being built")."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from mainsail.documents import repository as documents_repository
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest
from tests.search.corpus import SAILING
from tests.search.test_index_versions import wait_for_job, wait_for_version


async def test_a_build_failing_before_it_starts_copying_ends_failed_not_building(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    admin: Account,
    ingest: Ingest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    await ingest(alice, SAILING, "sailing.md")
    await app.state.jobs.stop()  # the build stays queued until the lock is made to fail
    try:
        version = (
            await client.post(
                "/admin/index-versions", json={"chunk_size": 64}, headers=admin.headers
            )
        ).json()

        async def lock_timeout(*args: Any, **kwargs: Any) -> None:
            raise TimeoutError("canceling statement due to lock timeout")

        monkeypatch.setattr(documents_repository, "lock_versions", lock_timeout)
    finally:
        await app.state.jobs.start()
    job = await wait_for_job(client, admin, version["job_id"])
    assert job["state"] == "dead"
    failed = await wait_for_version(client, admin, version["id"], "failed", "ready", timeout_s=10)
    assert failed["state"] == "failed"
    assert "TimeoutError" in (failed["error"] or "")
    monkeypatch.undo()
    another = await client.post("/admin/index-versions", json={}, headers=admin.headers)
    assert another.status_code == 202, another.text  # nothing is being built any more
