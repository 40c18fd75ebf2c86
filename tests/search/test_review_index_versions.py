"""Review of index versions and zero-downtime reindex: reproductions of bugs found.

Each test fails on the code as reviewed because of the bug its docstring names."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text

from tests.fixtures.identity import Account
from tests.search.conftest import Ingest, Search
from tests.search.corpus import ASTRONOMY, BAKING, SAILING
from tests.search.test_index_versions import wait_for_version

HUGE = 2**40  # a valid JSON/path integer, beyond PostgreSQL's int4 ids


def assert_problem(response: httpx.Response, *statuses: int) -> None:
    assert response.status_code in statuses, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json")


async def test_an_id_beyond_int4_is_a_404_not_a_500(
    client: httpx.AsyncClient, admin: Account, ingest: Ingest, search: Search
) -> None:
    """Bug: a version id beyond PostgreSQL's integer range (path or ``index_version`` in the
    body) reaches asyncpg, which refuses to encode it: 500 instead of 404/422."""
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
    """Bug: ``GET /admin/index-versions`` ignores ``limit``/``offset`` (every other admin
    list takes ``PageParams``) and always answers every version, with ``limit`` set to the
    number of rows (0 when there are none, over the 100 maximum when there are many)."""
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


class TestBrokenEvaluationSet:
    @pytest.fixture
    def search_settings(self, tmp_path: Path) -> dict[str, Any]:
        return {"eval_set": str(tmp_path / "eval-missing.json")}

    async def test_activation_with_an_unreadable_evaluation_set_is_not_a_500(
        self, client: httpx.AsyncClient, admin: Account, ingest: Ingest, tmp_path: Path
    ) -> None:
        """Bug: the activation gate reads the evaluation set and lets ``OSError`` (missing
        file) and ``ValueError`` (invalid file) escape: a bare 500 with no hint, where the
        build's own measurement turns the same errors into a message. The admin cannot tell
        that ``force=true`` or fixing SEARCH__EVAL_SET would do."""
        await ingest(admin, SAILING, "sailing.md")
        created = await client.post(
            "/admin/index-versions", json={"chunk_size": 64}, headers=admin.headers
        )
        assert created.status_code == 202, created.text
        version = await wait_for_version(client, admin, created.json()["id"], "ready", "failed")
        assert version["state"] == "ready", version["error"]
        response = await client.post(
            f"/admin/index-versions/{version['id']}/activate", headers=admin.headers
        )
        assert_problem(response, 409, 422, 503)
        assert "eval" in response.json()["detail"].lower()
        # An invalid file: the same.
        (tmp_path / "eval-missing.json").write_text('{"owner": ""}')
        response = await client.post(
            f"/admin/index-versions/{version['id']}/activate", headers=admin.headers
        )
        assert_problem(response, 409, 422, 503)
