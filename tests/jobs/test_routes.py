"""GET /jobs/{id} for the owner; the dead-letter list and re-queueing for admins."""

from __future__ import annotations

import uuid

import httpx
from fastapi import FastAPI
from sqlalchemy import text

from mainsail.jobs import service as jobs
from mainsail.settings import JobSettings
from tests.fixtures.identity import Account, create_api_key
from tests.jobs.conftest import FAST_JOBS


async def enqueue(app: FastAPI, owner: Account | None, state: str = "queued") -> uuid.UUID:
    async with app.state.db.unit_of_work() as session:
        job = await jobs.enqueue(
            session,
            JobSettings(**FAST_JOBS),
            "ingest",
            {"document_id": str(uuid.uuid4()), "revision": 1},
            owner_id=owner.id if owner else None,
        )
        job_id = job.id
    if state != "queued":
        async with app.state.db.engine.begin() as connection:
            await connection.execute(
                text(
                    "UPDATE jobs SET state = :state, attempts = max_attempts, "
                    "last_error = 'boom', finished_at = now() WHERE id = :id"
                ),
                {"state": state, "id": job_id},
            )
    return job_id


async def test_the_owner_reads_a_job_and_others_learn_nothing(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, bob: Account
) -> None:
    job_id = await enqueue(app, alice)
    mine = await client.get(f"/jobs/{job_id}", headers=alice.headers)
    assert mine.status_code == 200
    body = mine.json()
    assert (body["id"], body["kind"], body["state"], body["attempts"]) == (
        str(job_id),
        "ingest",
        "queued",
        0,
    )
    assert (await client.get(f"/jobs/{job_id}", headers=bob.headers)).status_code == 404
    assert (await client.get(f"/jobs/{uuid.uuid4()}", headers=alice.headers)).status_code == 404
    assert (await client.get(f"/jobs/{job_id}")).status_code == 401
    assert (await client.get("/jobs/not-a-uuid", headers=alice.headers)).status_code == 422


async def test_reading_a_job_takes_a_key_that_may_read_documents(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    job_id = await enqueue(app, alice)
    chat_only = await create_api_key(client, alice, scopes=["chat"])
    refused = await client.get(
        f"/jobs/{job_id}", headers={"Authorization": f"Bearer {chat_only['key']}"}
    )
    assert refused.status_code == 403
    assert refused.json()["code"] == "insufficient_scope"
    reader = await create_api_key(client, alice, scopes=["documents:read"])
    read = await client.get(f"/jobs/{job_id}", headers={"Authorization": f"Bearer {reader['key']}"})
    assert read.status_code == 200
    assert read.json()["id"] == str(job_id)


async def test_admins_list_dead_jobs_and_requeue_them(
    app: FastAPI, client: httpx.AsyncClient, alice: Account, admin: Account
) -> None:
    dead = await enqueue(app, alice, state="dead")
    await enqueue(app, alice, state="failed")
    await enqueue(app, alice)
    listed = await client.get("/admin/jobs", params={"state": "dead"}, headers=admin.headers)
    assert listed.status_code == 200
    assert [job["id"] for job in listed.json()["items"]] == [str(dead)]
    assert listed.json()["items"][0]["last_error"] == "boom"
    everything = await client.get("/admin/jobs", headers=admin.headers)
    assert everything.json()["total"] == 3

    again = await client.post(f"/admin/jobs/{dead}/requeue", headers=admin.headers)
    assert again.status_code == 200
    assert (again.json()["state"], again.json()["attempts"]) == ("queued", 0)
    assert again.json()["finished_at"] is None
    twice = await client.post(f"/admin/jobs/{dead}/requeue", headers=admin.headers)
    assert twice.status_code == 409
    assert twice.headers["content-type"].startswith("application/problem+json")
    missing = await client.post(f"/admin/jobs/{uuid.uuid4()}/requeue", headers=admin.headers)
    assert missing.status_code == 404


async def test_the_job_admin_routes_are_for_admins_only(
    app: FastAPI, client: httpx.AsyncClient, alice: Account
) -> None:
    dead = await enqueue(app, alice, state="dead")
    assert (await client.get("/admin/jobs", headers=alice.headers)).status_code == 403
    refused = await client.post(f"/admin/jobs/{dead}/requeue", headers=alice.headers)
    assert refused.status_code == 403
    bad_state = await client.get("/admin/jobs", params={"state": "nope"}, headers=alice.headers)
    assert bad_state.status_code in (403, 422)
