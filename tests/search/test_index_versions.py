"""Index versions: a reindex built beside the active version while search keeps serving,
atomic activation, uploads during a build, retirement, failure, and bad requests."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from tests.fixtures.identity import Account
from tests.search.conftest import Ingest, Search
from tests.search.corpus import ASTRONOMY, BAKING, SAILING

QUERIES = ("how much anchor chain", "sourdough starter", "eclipse filter", "night lights")


async def wait_for_version(
    client: httpx.AsyncClient, admin: Account, version_id: int, *states: str, timeout_s: float = 180
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        response = await client.get(f"/admin/index-versions/{version_id}", headers=admin.headers)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["state"] in states:
            return body
        assert time.monotonic() < deadline, f"version still {body['state']}: {body['progress']}"
        await asyncio.sleep(0.1)


async def wait_for_job(
    client: httpx.AsyncClient, admin: Account, job_id: str, timeout_s: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        body: dict[str, Any] = (await client.get(f"/jobs/{job_id}", headers=admin.headers)).json()
        if body["state"] in ("succeeded", "failed", "dead"):
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.1)


async def chunk_versions(app: FastAPI, chunk_ids: list[int]) -> dict[int, int]:
    async with app.state.db.engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT id, index_version FROM chunks WHERE id = ANY(:ids)"), {"ids": chunk_ids}
        )
        return {int(row.id): int(row.index_version) for row in rows}


async def count_chunks(app: FastAPI, version_id: int) -> int:
    async with app.state.db.engine.connect() as connection:
        value = await connection.scalar(
            text("SELECT count(*) FROM chunks WHERE index_version = :v"), {"v": version_id}
        )
    return int(value or 0)


@pytest.fixture
async def library(alice: Account, ingest: Ingest) -> dict[str, str]:
    return {
        "sailing": await ingest(alice, SAILING, "sailing.md"),
        "baking": await ingest(alice, BAKING, "baking.md"),
        "astronomy": await ingest(alice, ASTRONOMY, "astronomy.md"),
    }


async def test_search_serves_without_a_gap_while_a_new_version_builds_and_activates(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    admin: Account,
    library: dict[str, str],
    search: Search,
) -> None:
    first = (await search(alice, "anchor")).json()["index_version"]
    seen: list[tuple[int, int | None, list[int]]] = []  # (status, version, chunk ids)
    stop = asyncio.Event()

    async def keep_searching() -> None:
        turn = 0
        while not stop.is_set():
            response = await search(alice, QUERIES[turn % len(QUERIES)], top_k=5)
            body = response.json()
            seen.append(
                (
                    response.status_code,
                    body.get("index_version"),
                    [hit["chunk_id"] for hit in body.get("results", [])],
                )
            )
            turn += 1
            await asyncio.sleep(0.01)

    searcher = asyncio.create_task(keep_searching())
    try:
        created = await client.post(
            "/admin/index-versions",
            json={"chunk_size": 40, "chunk_overlap": 5},
            headers=admin.headers,
        )
        assert created.status_code == 202, created.text
        version = created.json()
        assert (version["state"], version["chunk_size"], version["chunk_overlap"]) == (
            "building",
            40,
            5,
        )
        assert version["embedder"] == "all-MiniLM-L6-v2@int8"
        assert version["job_id"] is not None
        built = await wait_for_version(client, admin, version["id"], "ready", "failed")
        assert built["state"] == "ready", built["error"]
        assert built["progress"]["documents"] == built["progress"]["done"] == 3
        assert built["progress"]["skipped"] == 0
        during_build = len(seen)
        # Built, not active: search still reads the first version; admins may compare.
        assert (await search(alice, "anchor")).json()["index_version"] == first
        compared = await search(admin, "anchor", index_version=version["id"])
        assert compared.status_code == 200
        assert compared.json()["index_version"] == version["id"]
        activated = await client.post(
            f"/admin/index-versions/{version['id']}/activate", headers=admin.headers
        )
        assert activated.status_code == 200, activated.text
        assert activated.json()["previous_id"] == first
        assert activated.json()["version"]["state"] == "active"
        after_switch = len(seen)
    finally:
        stop.set()
        await searcher
    for query in QUERIES:  # after the switch: the new version only
        response = await search(alice, query, top_k=5)
        body = response.json()
        seen.append(
            (response.status_code, body["index_version"], [h["chunk_id"] for h in body["results"]])
        )
    assert during_build > 0  # searches ran while the version was built
    assert {status for status, _, _ in seen} == {200}
    assert {v for _, v, _ in seen} <= {first, version["id"]}
    # A search in flight at the switch may still answer from the old version; none after.
    assert all(v == version["id"] for _, v, _ in seen[after_switch + 1 :])
    assert seen[-1][1] == version["id"]
    # Every answer came from exactly one version: the one it names.
    owners = await chunk_versions(app, sorted({c for _, _, ids in seen for c in ids}))
    for _, named, ids in seen:
        assert {owners[c] for c in ids} <= {named}
    # Smaller chunks in the new version; documents show its counts now.
    assert await count_chunks(app, version["id"]) > await count_chunks(app, first)
    document = (await client.get(f"/documents/{library['sailing']}", headers=alice.headers)).json()
    async with app.state.db.engine.connect() as connection:
        new_count = await connection.scalar(
            text("SELECT count(*) FROM chunks WHERE document_id = :d AND index_version = :v"),
            {"d": library["sailing"], "v": version["id"]},
        )
    assert document["chunk_count"] == new_count

    # The old version stays queryable until retired; retiring deletes its chunks and index.
    old = await search(admin, "anchor", index_version=first)
    assert old.status_code == 200
    assert old.json()["index_version"] == first
    retired = await client.post(f"/admin/index-versions/{first}/retire", headers=admin.headers)
    assert retired.status_code == 202, retired.text
    assert retired.json()["version"]["state"] == "retired"
    purge = await wait_for_job(client, admin, retired.json()["purge_job_id"])
    assert purge["state"] == "succeeded", purge["last_error"]
    assert await count_chunks(app, first) == 0
    async with app.state.db.engine.connect() as connection:
        index = await connection.scalar(
            text("SELECT to_regclass(:n)"), {"n": f"ix_chunks_embedding_v{first}"}
        )
    assert index is None
    after = await search(alice, "anchor chain")
    assert after.status_code == 200
    assert after.json()["results"]
    retired = await search(admin, "anchor", index_version=first)
    assert retired.status_code == 404  # not an empty page that looks like "nothing found"
    assert f"{first} is not ready or active" in retired.json()["detail"]
    assert (await search(admin, "anchor", index_version=999)).status_code == 404


async def test_a_document_uploaded_during_a_build_is_in_the_new_version(
    client: httpx.AsyncClient,
    alice: Account,
    admin: Account,
    library: dict[str, str],
    ingest: Ingest,
    search: Search,
) -> None:
    created = await client.post(
        "/admin/index-versions", json={"chunk_size": 64}, headers=admin.headers
    )
    assert created.status_code == 202, created.text
    assert created.json()["chunk_overlap"] == 16  # the default overlap, cut to fit the size
    late = await ingest(
        alice, "Kelp forests shelter otters and urchins along cold coasts.", "kelp.txt"
    )
    await wait_for_version(client, admin, created.json()["id"], "ready")
    activated = await client.post(
        f"/admin/index-versions/{created.json()['id']}/activate", headers=admin.headers
    )
    assert activated.status_code == 200, activated.text
    for mode in ("keyword", "vector"):
        body = (await search(alice, "kelp otters", mode=mode)).json()
        assert body["index_version"] == created.json()["id"]
        assert body["results"][0]["document_id"] == late, mode


async def test_admins_only_and_requests_that_cannot_work(
    app: FastAPI,
    client: httpx.AsyncClient,
    alice: Account,
    admin: Account,
    library: dict[str, str],
    search: Search,
) -> None:
    refused = await client.post("/admin/index-versions", json={}, headers=alice.headers)
    assert refused.status_code == 403
    assert (await client.get("/admin/index-versions", headers=alice.headers)).status_code == 403
    assert (await search(alice, "anchor", index_version=1)).status_code == 403
    for body, phrase in [
        ({"embedder": "nonsense-model"}, "cannot be used"),
        ({"embedder": "all-MiniLM-L6-v2@int4"}, "Unknown embedder"),
        ({"chunk_size": 64, "chunk_overlap": 64}, "smaller than chunk_size"),
        ({"chunk_size": 1000}, "reads at once"),
        ({"chunk_size": 8}, None),  # below the schema's minimum
    ]:
        response = await client.post("/admin/index-versions", json=body, headers=admin.headers)
        assert response.status_code == 422, (body, response.text)
        assert response.headers["content-type"].startswith("application/problem+json")
        if phrase:
            assert phrase in response.json()["detail"], response.json()
    missing = await client.get("/admin/index-versions/999999", headers=admin.headers)
    assert missing.status_code == 404
    listed = (await client.get("/admin/index-versions", headers=admin.headers)).json()
    (active,) = [v for v in listed["items"] if v["state"] == "active"]
    retire_active = await client.post(
        f"/admin/index-versions/{active['id']}/retire", headers=admin.headers
    )
    assert retire_active.status_code == 409
    assert retire_active.json()["code"] == "index_version_state"
    again = await client.post(
        f"/admin/index-versions/{active['id']}/activate", headers=admin.headers
    )
    assert again.status_code == 200  # activating the active version changes nothing
    assert (again.json()["version"]["state"], again.json()["previous_id"]) == ("active", None)

    await app.state.jobs.stop()  # the build stays queued while the checks below run
    try:
        building = (
            await client.post(
                "/admin/index-versions", json={"chunk_size": 80}, headers=admin.headers
            )
        ).json()
        assert building["state"] == "building"
        second = await client.post("/admin/index-versions", json={}, headers=admin.headers)
        assert second.status_code == 409  # one build at a time
        early = await client.post(
            f"/admin/index-versions/{building['id']}/activate", headers=admin.headers
        )
        assert early.status_code == 409
        assert "only a ready one" in early.json()["detail"]
        dropped = await client.post(
            f"/admin/index-versions/{building['id']}/retire", headers=admin.headers
        )
        assert dropped.status_code == 202
    finally:
        await app.state.jobs.start()
    job = await wait_for_job(client, admin, building["job_id"])
    assert job["state"] == "succeeded"  # the build saw the version retired and stopped
    assert (
        await client.get(f"/admin/index-versions/{building['id']}", headers=admin.headers)
    ).json()["state"] == "retired"
    assert (await search(alice, "anchor")).json()["index_version"] == active["id"]
