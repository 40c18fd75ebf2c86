"""Index versions under odd inputs and races: an evaluation query that is no valid search,
a version retired while its index is built, progress with documents deleted or still being
ingested during a build, two activations at once, and a gate whose active version changed."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL

from mainsail.documents.pipeline import Ingestor
from mainsail.search.indexing import IndexVersions
from mainsail.settings import Settings
from tests.documents.conftest import QUICK_JOBS, wait_for_status
from tests.fixtures.app import make_settings
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest
from tests.search.corpus import BAKING, SAILING
from tests.search.test_index_version_edges import pause_before_the_first_page
from tests.search.test_index_versions import wait_for_job, wait_for_version


def eval_set(tmp_path: Path, query: str) -> dict[str, Any]:
    """Search settings naming an evaluation set of one keyword query for sailing.md."""
    path = tmp_path / "eval.json"
    query_set = {"query": query, "relevant": ["sailing.md"]}
    body = {"owner": "alice@example.com", "mode": "keyword", "k": 10, "queries": [query_set]}
    path.write_text(json.dumps(body))
    return {"eval_set": str(path)}


KELP = "Kelp forests shelter otters and urchins along cold coasts."


# 1. An evaluation query that loads but is not a valid search: a 422, not a 500 ----------


class TestBlankEvaluationQuery:
    @pytest.fixture
    def search_settings(self, tmp_path: Path) -> dict[str, Any]:
        # Passes the evaluation set's own schema (min_length=1), not SearchIn's.
        return eval_set(tmp_path, "   ")

    async def test_activation_with_a_blank_evaluation_query_is_a_problem_not_a_500(
        self, client: httpx.AsyncClient, alice: Account, admin: Account, ingest: Ingest
    ) -> None:
        await ingest(alice, SAILING, "sailing.md")
        created = await client.post(
            "/admin/index-versions", json={"chunk_size": 64}, headers=admin.headers
        )
        assert created.status_code == 202, created.text
        version = await wait_for_version(client, admin, created.json()["id"], "ready", "failed")
        assert version["state"] == "ready", version["error"]
        try:
            response = await client.post(
                f"/admin/index-versions/{version['id']}/activate", headers=admin.headers
            )
        except Exception as exc:  # the test transport re-raises what became a 500
            pytest.fail(f"activation answered 500: unhandled {type(exc).__name__}: {exc}")
        assert response.status_code in (409, 422), response.text
        assert response.headers["content-type"].startswith("application/problem+json")


# 2. A version retired while its build builds the HNSW index: the index goes too --------


class TestRetiredDuringTheIndexPhase:
    @pytest.fixture
    def settings(self, database_url: URL) -> Settings:
        # Every version gets its HNSW index; two long lanes (the build and the purge), as
        # with the service plus a `mainsail worker`.
        return make_settings(
            database_url,
            jobs={**QUICK_JOBS, "long_concurrency": 2},
            search={"exact_below": 0},
        )

    async def test_a_version_retired_while_its_index_is_built_leaves_no_index(
        self,
        monkeypatch: pytest.MonkeyPatch,
        app: FastAPI,
        client: httpx.AsyncClient,
        alice: Account,
        admin: Account,
        ingest: Ingest,
    ) -> None:
        await ingest(alice, SAILING, "sailing.md")
        original = IndexVersions._build_index
        reached, go_on = asyncio.Event(), asyncio.Event()

        async def slow_index(self: IndexVersions, spec: Any) -> None:
            reached.set()  # a large version: CREATE INDEX CONCURRENTLY takes a while
            await go_on.wait()
            await original(self, spec)

        monkeypatch.setattr(IndexVersions, "_build_index", slow_index)
        created = (
            await client.post(
                "/admin/index-versions", json={"chunk_size": 64}, headers=admin.headers
            )
        ).json()
        try:
            await asyncio.wait_for(reached.wait(), 120)
            retired = await client.post(
                f"/admin/index-versions/{created['id']}/retire", headers=admin.headers
            )
            assert retired.status_code == 202, retired.text
            purge = await wait_for_job(client, admin, retired.json()["purge_job_id"])
            assert purge["state"] == "succeeded", purge
        finally:
            go_on.set()
        build = await wait_for_job(client, admin, created["job_id"])
        assert build["state"] == "succeeded", build
        async with app.state.db.engine.connect() as connection:
            index = await connection.scalar(
                text("SELECT to_regclass(:n)"), {"n": f"ix_chunks_embedding_v{created['id']}"}
            )
        # The retired version's index outlives its purge: nothing ever drops it.
        assert index is None, f"index {index} of retired version {created['id']} is left"


# 3. Progress figures of a finished build --------------------------------------------------


async def test_a_document_deleted_during_a_build_leaves_progress_complete(
    monkeypatch: pytest.MonkeyPatch,
    client: httpx.AsyncClient,
    alice: Account,
    admin: Account,
    ingest: Ingest,
) -> None:
    """A document counted at the start of a build and deleted before its page is read: the
    finished (ready) build reports done == documents, not one document short for ever."""
    await ingest(alice, SAILING, "sailing.md")
    gone = await ingest(alice, BAKING, "baking.md")
    paused, go_on = pause_before_the_first_page(monkeypatch)
    created = (
        await client.post("/admin/index-versions", json={"chunk_size": 64}, headers=admin.headers)
    ).json()
    try:
        await asyncio.wait_for(paused.wait(), 60)
        deleted = await client.delete(f"/documents/{gone}", headers=alice.headers)
        assert deleted.status_code == 204, deleted.text
    finally:
        go_on.set()
    built = await wait_for_version(client, admin, created["id"], "ready", "failed")
    assert built["state"] == "ready", built["error"]
    progress = built["progress"]
    assert progress["phase"] == "done", progress
    assert progress["done"] == progress["documents"], progress


class TestADocumentStillProcessingWhenTheBuildCounts:
    @pytest.fixture
    def settings(self, database_url: URL) -> Settings:
        # Two ingestions at once: one held, another finishing meanwhile.
        return make_settings(database_url, jobs={**QUICK_JOBS, "concurrency": 2})

    async def test_progress_never_reports_more_documents_done_than_it_counted(
        self,
        monkeypatch: pytest.MonkeyPatch,
        client: httpx.AsyncClient,
        alice: Account,
        admin: Account,
        ingest: Ingest,
    ) -> None:
        """A document uploaded before the build but still being ingested when the build
        counts the searchable ones (so not counted), with an id below the last counted one:
        its page copies it and counts it done: documents follows, never done > documents."""
        original = Ingestor.write_version
        held, release = asyncio.Event(), asyncio.Event()
        slow_ids: set[str] = set()

        async def slow(self: Ingestor, source: Any, version: Any, **kwargs: Any) -> Any:
            if str(source.document_id) in slow_ids and not release.is_set():
                held.set()
                await release.wait()
            return await original(self, source, version, **kwargs)

        monkeypatch.setattr(Ingestor, "write_version", slow)
        uploaded = await client.post(
            "/documents", json={"text": KELP, "filename": "kelp.txt"}, headers=alice.headers
        )
        assert uploaded.status_code in (200, 202), uploaded.text
        kelp = uploaded.json()["id"]
        slow_ids.add(kelp)
        paused, go_on = pause_before_the_first_page(monkeypatch)
        try:
            await asyncio.wait_for(held.wait(), 60)
            later = await ingest(alice, SAILING, "sailing.md")  # id above kelp's (uuid7)
            assert later > kelp
            created = (
                await client.post(
                    "/admin/index-versions", json={"chunk_size": 64}, headers=admin.headers
                )
            ).json()
            await asyncio.wait_for(paused.wait(), 60)  # counted: sailing only
            release.set()
            document = await wait_for_status(client, alice, kelp, "ready", "failed")
            assert document["status"] == "ready", document["error"]
        finally:
            release.set()
            go_on.set()
        built = await wait_for_version(client, admin, created["id"], "ready", "failed")
        assert built["state"] == "ready", built["error"]
        progress = built["progress"]
        assert progress["done"] <= progress["documents"], progress


# 4. Two activations of the same ready version at once ----------------------------------


async def test_two_simultaneous_activations_of_one_version_both_succeed(
    monkeypatch: pytest.MonkeyPatch,
    client: httpx.AsyncClient,
    alice: Account,
    admin: Account,
    ingest: Ingest,
) -> None:
    """Activating the active version answers 200 and changes nothing (the existing
    ``test_admins_only_and_requests_that_cannot_work``); a double-click that sends two
    activations at once must not answer the second with 409 "changed meanwhile"."""
    await ingest(alice, SAILING, "sailing.md")
    created = (
        await client.post("/admin/index-versions", json={"chunk_size": 64}, headers=admin.headers)
    ).json()
    built = await wait_for_version(client, admin, created["id"], "ready", "failed")
    assert built["state"] == "ready", built["error"]
    original = IndexVersions.get
    arrived = 0
    both = asyncio.Event()

    async def get(self: IndexVersions, version_id: int) -> Any:
        nonlocal arrived
        version = await original(self, version_id)
        arrived += 1
        if arrived >= 2:
            both.set()
        await asyncio.wait_for(both.wait(), 10)  # both requests read it ready
        return version

    monkeypatch.setattr(IndexVersions, "get", get)
    path = f"/admin/index-versions/{created['id']}/activate"
    first, second = await asyncio.gather(
        client.post(path, headers=admin.headers), client.post(path, headers=admin.headers)
    )
    assert sorted([first.status_code, second.status_code]) == [200, 200], (
        first.text,
        second.text,
    )


# 5. The gate compares a version with the active one, even when that changes meanwhile ----


class TestGateAgainstAVersionActivatedMeanwhile:
    @pytest.fixture
    def search_settings(self, tmp_path: Path) -> dict[str, Any]:
        return eval_set(tmp_path, "anchor chain")

    async def test_an_activation_measured_against_a_replaced_version_is_refused(
        self,
        monkeypatch: pytest.MonkeyPatch,
        client: httpx.AsyncClient,
        alice: Account,
        admin: Account,
        ingest: Ingest,
    ) -> None:
        """Version B is measured against the active version A; version C is activated
        meanwhile. B must not then replace C unmeasured against it: 409, activate again."""
        await ingest(alice, SAILING, "sailing.md")
        await ingest(alice, BAKING, "baking.md")
        ids = []
        for size in (64, 80):
            created = await client.post(
                "/admin/index-versions", json={"chunk_size": size}, headers=admin.headers
            )
            assert created.status_code == 202, created.text
            built = await wait_for_version(client, admin, created.json()["id"], "ready", "failed")
            assert built["state"] == "ready", built["error"]
            ids.append(built["id"])
        b, c = ids
        original = IndexVersions.measure
        measured, hold = asyncio.Event(), asyncio.Event()

        async def measure(self: IndexVersions, version_id: int) -> Any:
            result = await original(self, version_id)
            if version_id == b and not hold.is_set():
                measured.set()
                await asyncio.wait_for(hold.wait(), 30)
            return result

        monkeypatch.setattr(IndexVersions, "measure", measure)
        pending = asyncio.create_task(
            client.post(f"/admin/index-versions/{b}/activate", headers=admin.headers)
        )
        await asyncio.wait_for(measured.wait(), 30)
        switched = await client.post(
            f"/admin/index-versions/{c}/activate", params={"force": "true"}, headers=admin.headers
        )
        assert switched.status_code == 200, switched.text
        hold.set()
        refused = await pending
        assert refused.status_code == 409, refused.text
        assert "activate again" in refused.json()["detail"]
        listed = (await client.get(f"/admin/index-versions/{c}", headers=admin.headers)).json()
        assert listed["state"] == "active"
