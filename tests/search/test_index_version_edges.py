"""Index versions at their edges: odd ids, paging, a broken evaluation set, skipped documents,
uploads and retirements that meet a build, re-queued builds."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text
from sqlalchemy.engine import URL

from mainsail.documents.pipeline import Ingestor
from mainsail.llm.errors import UpstreamRejected, UpstreamUnavailable
from mainsail.search.indexing import IndexVersions
from mainsail.settings import Settings
from tests.documents.conftest import QUICK_JOBS, essay, wait_for_status
from tests.fakes.provider_server import FakeProviderServer, Fault
from tests.fixtures.app import make_settings
from tests.fixtures.gateway import gateway_settings, write_embedding_catalogue
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest, Search
from tests.search.corpus import BAKING, SAILING
from tests.search.test_index_versions import count_chunks, wait_for_job, wait_for_version

HUGE = 2**40  # a valid JSON/path integer, beyond PostgreSQL's int4 ids


def assert_problem(response: httpx.Response, *statuses: int) -> None:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_an_id_beyond_int4_is_refused_not_a_500(
    client: httpx.AsyncClient, admin: Account, ingest: Ingest, search: Search
) -> None:
    """A version id beyond PostgreSQL's integer range (in the path, or ``index_version`` in a
    search) is refused as such, not sent to the database (where it was a 500)."""
    await ingest(admin, SAILING, "sailing.md")
    for method, path in [
        ("GET", f"/admin/index-versions/{HUGE}"),
        ("POST", f"/admin/index-versions/{HUGE}/activate"),
        ("POST", f"/admin/index-versions/{HUGE}/retire"),
    ]:
        response = await client.request(method, path, headers=admin.headers)
        assert_problem(response, 404, 422)
    response = await search(admin, "anchor", index_version=HUGE)
    assert_problem(response, 404, 422)


async def test_the_admin_list_pages_like_every_other_admin_list(
    app: FastAPI, client: httpx.AsyncClient, admin: Account, ingest: Ingest
) -> None:
    """``GET /admin/index-versions`` pages with ``limit``/``offset`` like every admin list
    (retired versions stay listed, so the list only grows)."""
    await ingest(admin, SAILING, "sailing.md")
    async with app.state.db.engine.begin() as connection:
        for _ in range(4):  # retired versions stay listed forever
            await connection.execute(
                text(
                    "INSERT INTO index_versions (embedder, dimension, chunk_size, chunk_overlap,"
                    " state, created_at, progress) VALUES ('all-MiniLM-L6-v2@int8', 384, 64, 8,"
                    " 'retired', now(), '{}')"
                )
            )
    response = await client.get(
        "/admin/index-versions", params={"limit": 2, "offset": 1}, headers=admin.headers
    )
    assert response.status_code == 200, response.text
    page = response.json()
    assert page["total"] == 5
    assert (page["limit"], page["offset"]) == (2, 1)
    assert len(page["items"]) == 2
    bad = await client.get("/admin/index-versions", params={"limit": 0}, headers=admin.headers)
    assert_problem(bad, 422)


async def activate_or_500(
    client: httpx.AsyncClient, admin: Account, version_id: int
) -> httpx.Response:
    """The activation's answer; an exception the app did not turn into a problem (the test
    transport re-raises those) fails the test as the 500 a client would get."""
    try:
        return await client.post(
            f"/admin/index-versions/{version_id}/activate", headers=admin.headers
        )
    except Exception as exc:
        pytest.fail(f"activation answered 500: unhandled {type(exc).__name__}: {exc}")


class TestBrokenEvaluationSet:
    @pytest.fixture
    def search_settings(self, tmp_path: Path) -> dict[str, Any]:
        return {"eval_set": str(tmp_path / "eval-missing.json")}

    async def test_activation_with_an_unreadable_evaluation_set_is_not_a_500(
        self, client: httpx.AsyncClient, admin: Account, ingest: Ingest, tmp_path: Path
    ) -> None:
        """A missing or invalid evaluation set makes activation a problem that names it and
        ``force=true``, not a 500."""
        await ingest(admin, SAILING, "sailing.md")
        created = await client.post(
            "/admin/index-versions", json={"chunk_size": 64}, headers=admin.headers
        )
        assert created.status_code == 202, created.text
        version = await wait_for_version(client, admin, created.json()["id"], "ready", "failed")
        assert version["state"] == "ready", version["error"]
        response = await activate_or_500(client, admin, version["id"])
        assert_problem(response, 409, 422, 503)
        assert "eval" in response.json()["detail"].lower()
        # An invalid file: the same.
        (tmp_path / "eval-missing.json").write_text('{"owner": ""}')
        response = await activate_or_500(client, admin, version["id"])
        assert_problem(response, 409, 422, 503)

    async def test_a_measurement_that_fails_on_the_model_still_finishes_the_build(
        self,
        monkeypatch: pytest.MonkeyPatch,
        client: httpx.AsyncClient,
        admin: Account,
        ingest: Ingest,
    ) -> None:
        """A model error while the built version is measured (its provider down) still ends
        the build: the version is ready, its quality holds the error, its phase is done."""
        from mainsail.llm.errors import UpstreamUnavailable

        async def down(self: IndexVersions, version_id: int) -> None:
            raise UpstreamUnavailable("fake-openai failed (HTTP 500).")

        monkeypatch.setattr(IndexVersions, "measure", down)
        await ingest(admin, SAILING, "sailing.md")
        created = (
            await client.post(
                "/admin/index-versions", json={"chunk_size": 64}, headers=admin.headers
            )
        ).json()
        await wait_for_version(client, admin, created["id"], "ready", "failed")
        job = await wait_for_job(client, admin, created["job_id"])
        version = (
            await client.get(f"/admin/index-versions/{created['id']}", headers=admin.headers)
        ).json()
        assert version["progress"]["phase"] == "done", (version["progress"], job)
        assert version["quality"] is not None, version
        assert "error" in version["quality"], version


async def build_with_one_unreadable_document(
    app: FastAPI, client: httpx.AsyncClient, admin: Account, ingest: Ingest
) -> tuple[dict[str, Any], str, str]:
    """(the built version, the readable document, the one whose original is gone)."""
    good = await ingest(admin, SAILING, "sailing.md")
    lost = await ingest(admin, BAKING, "baking.md")
    app.state.documents.store.delete(uuid.UUID(lost))  # e.g. a lost volume, a bucket rule
    created = await client.post(
        "/admin/index-versions", json={"chunk_size": 64}, headers=admin.headers
    )
    assert created.status_code == 202, created.text
    version = await wait_for_version(client, admin, created.json()["id"], "ready", "failed")
    assert version["state"] == "ready", version["error"]
    return version, good, lost


async def test_a_skipped_document_is_counted_once_in_the_build_progress(
    app: FastAPI, client: httpx.AsyncClient, admin: Account, ingest: Ingest
) -> None:
    """A document the build skips (its file gone) is counted and listed once, not again
    by the final sweep for documents the pages missed."""
    version, _, lost = await build_with_one_unreadable_document(app, client, admin, ingest)
    progress = version["progress"]
    assert progress["errors"] == [
        {"document_id": lost, "error": "The file is no longer in storage."}
    ], progress
    assert (progress["documents"], progress["done"], progress["skipped"]) == (2, 2, 1), progress


async def test_a_version_missing_a_document_activates_once_that_document_is_replaced(
    app: FastAPI, client: httpx.AsyncClient, admin: Account, ingest: Ingest, search: Search
) -> None:
    """A new revision of a document the build skipped is written into the ready version too:
    it is complete then, and activates without force."""
    version, _, lost = await build_with_one_unreadable_document(app, client, admin, ingest)
    await ingest(admin, BAKING + "\n\nProof the dough overnight.", "baking.md")
    activated = await client.post(
        f"/admin/index-versions/{version['id']}/activate", headers=admin.headers
    )
    assert activated.status_code == 200, activated.text
    body = (await search(admin, "proof the dough overnight", mode="keyword")).json()
    assert body["index_version"] == version["id"]
    assert lost in {hit["document_id"] for hit in body["results"]}


async def test_after_activation_a_skipped_document_shows_the_active_versions_count(
    app: FastAPI, client: httpx.AsyncClient, admin: Account, ingest: Ingest, search: Search
) -> None:
    """A version the build skipped a document of is not activated unless forced (search
    would no longer find it); forced, the document shows 0 chunks (no search finds it), not
    its count in the previous version."""
    version, _, lost = await build_with_one_unreadable_document(app, client, admin, ingest)
    refused = await client.post(
        f"/admin/index-versions/{version['id']}/activate", headers=admin.headers
    )
    assert_problem(refused, 409)
    assert refused.json()["code"] == "index_version_incomplete"
    assert refused.json()["missing_documents"] == [lost]
    assert "force=true" in refused.json()["detail"]
    still = await client.get(f"/admin/index-versions/{version['id']}", headers=admin.headers)
    assert still.json()["state"] == "ready"
    activated = await client.post(
        f"/admin/index-versions/{version['id']}/activate",
        params={"force": "true"},
        headers=admin.headers,
    )
    assert activated.status_code == 200, activated.text
    body = (await search(admin, "sourdough starter flour", mode="keyword")).json()
    assert body["index_version"] == version["id"]
    assert lost not in {hit["document_id"] for hit in body["results"]}  # not searchable
    document = (await client.get(f"/documents/{lost}", headers=admin.headers)).json()
    assert document["chunk_count"] == 0, document


KELP = "Kelp forests shelter otters and urchins along cold coasts."


class TestUploadsWhileAProviderVersionBuilds:
    @pytest.fixture
    def settings(
        self, database_url: URL, tmp_path: Path, fake_provider: FakeProviderServer
    ) -> Settings:
        return gateway_settings(
            database_url,
            write_embedding_catalogue(tmp_path, fake_provider),
            jobs={**QUICK_JOBS, "max_attempts": 2},
        )

    async def test_an_upload_is_not_failed_by_the_version_being_built(
        self,
        monkeypatch: pytest.MonkeyPatch,
        client: httpx.AsyncClient,
        alice: Account,
        admin: Account,
        ingest: Ingest,
        search: Search,
        fake_provider: FakeProviderServer,
    ) -> None:
        """An upload is not failed by a version no search reads yet: while a version of a
        provider embedder builds and its provider is down, the upload is ready in the active
        version, and the version lists the document it could not take."""
        active = await ingest(alice, SAILING, "sailing.md")
        release = asyncio.Event()

        async def held(self: IndexVersions, ctx: Any, spec: Any) -> None:
            await release.wait()  # a long build: still copying the corpus

        monkeypatch.setattr(IndexVersions, "_build", held)
        created = await client.post(
            "/admin/index-versions",
            json={"embedder": "text-embedding-3-small"},
            headers=admin.headers,
        )
        assert created.status_code == 202, created.text
        fake_provider.script(*[Fault("server_error")] * 200)  # the new model's provider is down
        try:
            uploaded = await client.post(
                "/documents", json={"text": KELP, "filename": "kelp.txt"}, headers=alice.headers
            )
            assert uploaded.status_code in (200, 202), uploaded.text
            document = await wait_for_status(
                client, alice, uploaded.json()["id"], "ready", "failed"
            )
        finally:
            release.set()
            fake_provider.reset()
        assert document["status"] == "ready", document["error"]
        body = (await search(alice, "kelp otters", mode="keyword")).json()
        assert body["results"][0]["document_id"] == uploaded.json()["id"]
        assert active
        version = (
            await client.get(f"/admin/index-versions/{created.json()['id']}", headers=admin.headers)
        ).json()
        assert [e["document_id"] for e in version["progress"]["errors"]] == [uploaded.json()["id"]]


class TestTwoBuildLanes:
    @pytest.fixture
    def settings(self, database_url: URL) -> Settings:
        # Two long lanes: as with the service plus a `mainsail worker`, or long_concurrency=2.
        return make_settings(database_url, jobs={**QUICK_JOBS, "long_concurrency": 2})

    async def test_requeueing_a_failed_build_does_not_start_a_second_build(
        self,
        monkeypatch: pytest.MonkeyPatch,
        app: FastAPI,
        client: httpx.AsyncClient,
        admin: Account,
        ingest: Ingest,
    ) -> None:
        """A failed build re-queued while another version builds does not run beside it (as
        creating a version is refused then): it stays failed, saying why."""
        await ingest(admin, SAILING, "sailing.md")
        original = IndexVersions._build
        running = peak = 0

        async def tracked(self: IndexVersions, ctx: Any, spec: Any) -> None:
            nonlocal running, peak
            running += 1
            peak = max(peak, running)
            try:
                await asyncio.sleep(1.0)  # a build of a real corpus takes a while
                await original(self, ctx, spec)
            finally:
                running -= 1

        monkeypatch.setattr(IndexVersions, "_build", tracked)
        await app.state.jobs.stop()
        try:
            failed = (
                await client.post(
                    "/admin/index-versions", json={"chunk_size": 64}, headers=admin.headers
                )
            ).json()
            async with app.state.db.engine.begin() as connection:  # its build failed
                await connection.execute(
                    text(
                        "UPDATE index_versions SET state = 'failed', error = 'provider down' "
                        "WHERE id = :v"
                    ),
                    {"v": failed["id"]},
                )
                await connection.execute(
                    text("UPDATE jobs SET state = 'dead', finished_at = now() WHERE id = :j"),
                    {"j": failed["job_id"]},
                )
            other = await client.post(
                "/admin/index-versions", json={"chunk_size": 80}, headers=admin.headers
            )
            assert other.status_code == 202, other.text  # a failed build is not in the way
            requeued = await client.post(
                f"/admin/jobs/{failed['job_id']}/requeue", headers=admin.headers
            )
        finally:
            await app.state.jobs.start()
        assert requeued.status_code == 200, requeued.text
        for job_id in (failed["job_id"], other.json()["job_id"]):
            await wait_for_job(client, admin, job_id)
        assert peak == 1, "two index versions were built at the same time"
        version = (
            await client.get(f"/admin/index-versions/{failed['id']}", headers=admin.headers)
        ).json()
        if version["state"] == "failed":  # its job ran while the other one built
            assert f"Index version {other.json()['id']} is being built" in version["error"]
        else:  # or after it
            assert version["state"] == "ready", version


async def test_a_retired_version_gets_no_chunks_from_an_upload_in_flight(
    monkeypatch: pytest.MonkeyPatch,
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    admin: Account,
    ingest: Ingest,
) -> None:
    """An upload that listed the live versions before one was retired leaves no chunks in
    it once the purge has run."""
    await ingest(alice, SAILING, "sailing.md")
    release_build = asyncio.Event()

    async def held(self: IndexVersions, ctx: Any, spec: Any) -> None:
        await release_build.wait()

    monkeypatch.setattr(IndexVersions, "_build", held)
    created = (
        await client.post("/admin/index-versions", json={"chunk_size": 64}, headers=admin.headers)
    ).json()
    version_id = created["id"]
    original = Ingestor.write_version
    reached, go_on = asyncio.Event(), asyncio.Event()

    async def slow(self: Ingestor, source: Any, version: Any, **kwargs: Any) -> Any:
        if version.id == version_id:  # a large document: embedding it takes a while
            reached.set()
            await go_on.wait()
        return await original(self, source, version, **kwargs)

    monkeypatch.setattr(Ingestor, "write_version", slow)
    uploaded = await client.post(
        "/documents", json={"text": KELP, "filename": "kelp.txt"}, headers=alice.headers
    )
    assert uploaded.status_code in (200, 202), uploaded.text
    try:
        await asyncio.wait_for(reached.wait(), 60)
        retired = await client.post(
            f"/admin/index-versions/{version_id}/retire", headers=admin.headers
        )
        assert retired.status_code == 202, retired.text
        release_build.set()  # the build sees the retirement and stops; the purge runs
        purge = await wait_for_job(client, admin, retired.json()["purge_job_id"])
        assert purge["state"] == "succeeded", purge
    finally:
        release_build.set()
        go_on.set()
    document = await wait_for_status(client, alice, uploaded.json()["id"], "ready", "failed")
    assert document["status"] == "ready", document["error"]
    assert await count_chunks(app, version_id) == 0


async def test_progress_never_reports_more_documents_done_than_there_are(
    monkeypatch: pytest.MonkeyPatch,
    client: httpx.AsyncClient,
    alice: Account,
    admin: Account,
    ingest: Ingest,
) -> None:
    """A build's progress never reports more documents done than it counted: those uploaded
    during the build are written into it by their own ingestion, not copied again."""
    await ingest(alice, SAILING, "sailing.md")
    paused, go_on = pause_before_the_first_page(monkeypatch)
    created = (
        await client.post("/admin/index-versions", json={"chunk_size": 64}, headers=admin.headers)
    ).json()
    try:
        await asyncio.wait_for(paused.wait(), 60)
        await ingest(alice, KELP, "kelp.txt")  # uploaded during the build
    finally:
        go_on.set()
    built = await wait_for_version(client, admin, created["id"], "ready", "failed")
    assert built["state"] == "ready", built["error"]
    progress = built["progress"]
    assert progress["done"] <= progress["documents"], progress


class TestUploadsWrittenInPartIntoABuild:
    @pytest.fixture
    def settings(self, database_url: URL) -> Settings:
        # Small embedder calls: a document is stored in several batches.
        return make_settings(database_url, jobs=QUICK_JOBS, documents={"embed_window": 16})

    @staticmethod
    def fail_uploads_into(
        monkeypatch: pytest.MonkeyPatch, version_id: int, *, after_batches: int
    ) -> None:
        """Uploads' writes into the version fail (its provider goes down) after that many
        stored batches; the build's own writes do not."""
        original = Ingestor.write_version

        async def flaky(self: Ingestor, source: Any, version: Any, **kwargs: Any) -> Any:
            on_batch = kwargs.get("on_batch")
            if version.id == version_id and on_batch is not None:  # an upload's write
                stored = 0

                async def down(batch_version: int, stats: Any) -> None:
                    nonlocal stored
                    if stored >= after_batches:
                        raise UpstreamUnavailable("the new version's provider went down")
                    stored += 1
                    await on_batch(batch_version, stats)

                kwargs["on_batch"] = down
            return await original(self, source, version, **kwargs)

        monkeypatch.setattr(Ingestor, "write_version", flaky)

    async def test_a_build_holds_all_of_a_document_its_upload_wrote_in_part(
        self,
        monkeypatch: pytest.MonkeyPatch,
        app: FastAPI,
        client: httpx.AsyncClient,
        alice: Account,
        admin: Account,
        ingest: Ingest,
    ) -> None:
        """An upload whose write into a version being built fails part-way leaves none of
        that revision there, so the build copies all of it (not the batches stored before
        the failure), and the upload's note of it goes once the build has it."""
        await ingest(alice, SAILING, "sailing.md")
        paused, go_on = pause_before_the_first_page(monkeypatch)
        created = (
            await client.post("/admin/index-versions", json={}, headers=admin.headers)
        ).json()
        self.fail_uploads_into(monkeypatch, created["id"], after_batches=1)
        try:
            await asyncio.wait_for(paused.wait(), 60)
            document_id = await ingest(alice, essay(60), "essay.txt")  # during the build
        finally:
            go_on.set()
        built = await wait_for_version(client, admin, created["id"], "ready", "failed")
        assert built["state"] == "ready", built["error"]
        counts = await chunks_by_version(app, document_id)
        active = next(v for v in counts if v != created["id"])
        assert counts[active] > 1, counts  # several batches: the failure came part-way
        # The same embedder and chunking as the active version: the same chunks, all.
        assert counts.get(created["id"], 0) == counts[active], counts
        assert (built["progress"]["skipped"], built["progress"]["errors"]) == (0, []), built

    async def test_a_document_an_upload_missed_late_in_a_build_stays_listed(
        self,
        monkeypatch: pytest.MonkeyPatch,
        client: httpx.AsyncClient,
        alice: Account,
        admin: Account,
        ingest: Ingest,
    ) -> None:
        """A document an upload could not write into the version after the build's last
        sweep (while its vector index was built) is listed on the built version: the build's
        own writes of its progress keep what uploads noted."""
        await ingest(alice, SAILING, "sailing.md")
        original_index = IndexVersions._build_index
        uploaded: list[str] = []

        async def index_meanwhile(self: IndexVersions, spec: Any) -> None:
            uploaded.append(await ingest(alice, KELP, "kelp.txt"))
            await original_index(self, spec)

        monkeypatch.setattr(IndexVersions, "_build_index", index_meanwhile)
        created = (
            await client.post("/admin/index-versions", json={}, headers=admin.headers)
        ).json()
        self.fail_uploads_into(monkeypatch, created["id"], after_batches=0)
        built = await wait_for_version(client, admin, created["id"], "ready", "failed")
        assert built["state"] == "ready", built["error"]
        progress = built["progress"]
        assert [e["document_id"] for e in progress["errors"]] == uploaded, progress
        assert progress["skipped"] == 1, progress


async def chunks_by_version(app: FastAPI, document_id: str) -> dict[int, int]:
    async with app.state.db.engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT index_version, count(*) FROM chunks WHERE document_id = :d "
                "GROUP BY index_version"
            ),
            {"d": document_id},
        )
        return {int(version): int(n) for version, n in rows.all()}


def pause_before_the_first_page(
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[asyncio.Event, asyncio.Event]:
    """(paused, go_on): the next build sets ``paused`` once it has counted the documents,
    before it reads its first page, and goes on when ``go_on`` is set."""
    original = IndexVersions._building
    paused, go_on = asyncio.Event(), asyncio.Event()

    async def building(connection: Any, version_id: int) -> bool:
        if not paused.is_set():
            paused.set()
            await go_on.wait()
        return await original(connection, version_id)

    monkeypatch.setattr(IndexVersions, "_building", staticmethod(building))
    return paused, go_on


class TestADocumentBothAnUploadAndTheBuildCouldNotWrite:
    @pytest.fixture
    def settings(self, database_url: URL) -> Settings:
        return make_settings(database_url, jobs=QUICK_JOBS)

    async def test_it_is_counted_and_listed_once(
        self,
        monkeypatch: pytest.MonkeyPatch,
        client: httpx.AsyncClient,
        alice: Account,
        admin: Account,
        ingest: Ingest,
    ) -> None:
        """A document uploaded during a build whose new version's provider refuses it: its
        upload notes the miss, then the build's sweep tries it too and is refused again. One
        document, counted and listed once."""
        before = uuid.UUID(await ingest(alice, SAILING, "sailing.md"))
        paused, go_on = pause_before_the_first_page(monkeypatch)
        created = (
            await client.post("/admin/index-versions", json={}, headers=admin.headers)
        ).json()
        original = Ingestor.write_version

        async def refusing(self: Ingestor, source: Any, version: Any, **kwargs: Any) -> Any:
            if version.id == created["id"] and source.document_id != before:
                raise UpstreamRejected("The provider refused this document.", status=400)
            return await original(self, source, version, **kwargs)

        monkeypatch.setattr(Ingestor, "write_version", refusing)
        try:
            await asyncio.wait_for(paused.wait(), 60)
            kelp = await ingest(alice, KELP, "kelp.txt")  # during the build
        finally:
            go_on.set()
        built = await wait_for_version(client, admin, created["id"], "ready", "failed")
        assert built["state"] == "ready", built["error"]
        progress = built["progress"]
        listed = [e["document_id"] for e in progress["errors"]]
        assert (len(listed), progress["skipped"]) == (1, 1), progress
        assert listed == [kelp]
