"""Index versions measured on an evaluation set: activation refused when the new version
retrieves worse (unless forced), allowed with its figures otherwise; and a build that fails
(its embedding provider is down) leaves the active version serving, then resumes when its
job is re-queued. The worse version embeds with the fake provider, whose vectors carry no
meaning."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.engine import URL

from mainsail.settings import Settings
from tests.documents.conftest import QUICK_JOBS
from tests.fakes.provider_server import FakeProviderServer, Fault
from tests.fixtures.gateway import gateway_settings, write_embedding_catalogue
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest, Search
from tests.search.corpus import ASTRONOMY, BAKING, SAILING
from tests.search.test_index_versions import wait_for_job, wait_for_version

PROVIDER_MODEL = "text-embedding-3-small"
MORE = {
    "volcanoes.md": "# Volcanoes\n\nMagma rises through the crust and erupts as lava, ash and "
    "gas. Basalt flows build shield volcanoes such as those of Hawaii.",
    "chess.md": "# Chess openings\n\nThe Sicilian Defence answers the king's pawn with the "
    "c-pawn. Castling early keeps the king safe while the rooks connect.",
    "bees.md": "# Beekeeping\n\nA hive needs a laying queen, workers and stores of honey for "
    "the winter. Smoke calms the colony while the frames are inspected.",
}
QUERIES = [
    ("how much chain should I let out when anchoring", ["sailing.md"]),
    ("feeding a sourdough starter", ["baking.md"]),
    ("is it safe to look at a solar eclipse", ["astronomy.md"]),
    ("lava and ash from an eruption", ["volcanoes.md"]),
    ("what to play against e4", ["chess.md"]),
    ("keeping a honey bee colony through winter", ["bees.md"]),
]


@pytest.fixture
def eval_set(tmp_path: Path) -> Path:
    path = tmp_path / "eval.json"
    queries = [{"query": q, "relevant": names} for q, names in QUERIES]
    path.write_text(
        json.dumps({"owner": "alice@example.com", "mode": "vector", "k": 10, "queries": queries})
    )
    return path


@pytest.fixture
def settings(
    database_url: URL, tmp_path: Path, fake_provider: FakeProviderServer, eval_set: Path
) -> Settings:
    return gateway_settings(
        database_url,
        write_embedding_catalogue(tmp_path, fake_provider),
        jobs={**QUICK_JOBS, "max_attempts": 2},
        search={"eval_set": str(eval_set), "eval_margin": 0.05},
    )


@pytest.fixture
async def library(alice: Account, ingest: Ingest) -> None:
    for name, body in {
        "sailing.md": SAILING,
        "baking.md": BAKING,
        "astronomy.md": ASTRONOMY,
        **MORE,
    }.items():
        await ingest(alice, body, name)


async def create(client: httpx.AsyncClient, admin: Account, **body: Any) -> dict[str, Any]:
    response = await client.post("/admin/index-versions", json=body, headers=admin.headers)
    assert response.status_code == 202, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_a_worse_version_is_refused_with_its_figures_unless_forced(
    client: httpx.AsyncClient, alice: Account, admin: Account, library: None, search: Search
) -> None:
    active = (await search(alice, "anchor")).json()["index_version"]
    version = await create(client, admin, embedder=PROVIDER_MODEL)
    assert version["dimension"] == 48  # the catalogue entry's
    built = await wait_for_version(client, admin, version["id"], "ready", "failed")
    assert built["state"] == "ready", built["error"]
    measured = await wait_for_version(client, admin, version["id"], "ready")
    for _ in range(100):
        if measured["quality"] is not None:
            break
        measured = await wait_for_version(client, admin, version["id"], "ready")
    assert measured["quality"]["queries"] == len(QUERIES)

    refused = await client.post(
        f"/admin/index-versions/{version['id']}/activate", headers=admin.headers
    )
    assert refused.status_code == 409, refused.text
    problem = refused.json()
    assert problem["code"] == "quality_regression"
    figures = problem["quality"]
    assert figures["active"]["ndcg_at_10"] > figures["candidate"]["ndcg_at_10"] + 0.05
    assert figures["active"]["ndcg_at_10"] >= 0.9  # the local model finds each topic
    assert "ndcg_at_10" in problem["detail"]
    assert (await search(alice, "anchor")).json()["index_version"] == active  # unchanged

    forced = await client.post(
        f"/admin/index-versions/{version['id']}/activate",
        params={"force": "true"},
        headers=admin.headers,
    )
    assert forced.status_code == 200, forced.text
    assert forced.json()["quality"] is None  # not measured when forced
    assert (await search(alice, "anchor")).json()["index_version"] == version["id"]

    # Switching back to the previous version, still ready, passes the gate with figures.
    back = await client.post(f"/admin/index-versions/{active}/activate", headers=admin.headers)
    assert back.status_code == 200, back.text
    assert back.json()["previous_id"] == version["id"]
    gate = back.json()["quality"]
    assert gate["candidate"]["ndcg_at_10"] > gate["active"]["ndcg_at_10"]
    assert gate["margin"] == 0.05


async def test_a_failed_build_leaves_the_active_version_and_resumes_when_requeued(
    client: httpx.AsyncClient,
    alice: Account,
    admin: Account,
    library: None,
    search: Search,
    fake_provider: FakeProviderServer,
) -> None:
    active = (await search(alice, "anchor")).json()["index_version"]
    fake_provider.script(*[Fault("server_error")] * 200)  # the provider is down
    version = await create(client, admin, embedder=PROVIDER_MODEL)
    failed = await wait_for_version(client, admin, version["id"], "failed", "ready")
    assert failed["state"] == "failed"
    assert "Gave up after 2 attempts" in failed["error"]
    job = (await client.get(f"/jobs/{version['job_id']}", headers=admin.headers)).json()
    assert job["state"] == "dead"
    body = (await search(alice, "how much anchor chain")).json()
    assert body["index_version"] == active
    assert body["results"][0]["filename"] == "sailing.md"
    refused = await client.post(
        f"/admin/index-versions/{version['id']}/activate", headers=admin.headers
    )
    assert refused.status_code == 409

    fake_provider.reset()  # the provider is back: the re-queued build finishes
    requeued = await client.post(f"/admin/jobs/{version['job_id']}/requeue", headers=admin.headers)
    assert requeued.status_code == 200, requeued.text
    done = await wait_for_job(client, admin, version["job_id"])
    assert done["state"] == "succeeded", done["last_error"]
    rebuilt = await wait_for_version(client, admin, version["id"], "ready", "failed")
    assert rebuilt["state"] == "ready", rebuilt["error"]
    assert rebuilt["error"] is None
