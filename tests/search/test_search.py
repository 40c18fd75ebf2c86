"""POST /search: modes, ranks, pagination, filters, scoping, bad input, cache."""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import text as sql

from mainsail.documents import repository as documents_repository
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest, Search
from tests.search.corpus import ASTRONOMY, BAKING, SAILING


@pytest.fixture
async def library(alice: Account, ingest: Ingest) -> dict[str, str]:
    """Three documents of alice's in two collections."""
    return {
        "sailing": await ingest(
            alice, SAILING, "sailing.md", collection="sea", metadata={"year": 2024, "tag": "s"}
        ),
        "baking": await ingest(
            alice, BAKING, "baking.md", collection="kitchen", metadata={"year": 2023}
        ),
        "astronomy": await ingest(
            alice,
            ASTRONOMY,
            "astronomy.md",
            collection="sea",
            metadata={"year": 2025, "title": "Looking up"},
        ),
    }


def documents_of(response: httpx.Response) -> list[str]:
    return [hit["document_id"] for hit in response.json()["results"]]


async def test_hybrid_finds_the_passage_with_both_ranks_and_its_source(
    alice: Account, library: dict[str, str], search: Search
) -> None:
    response = await search(alice, "how much chain when anchoring?")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["mode"] == "hybrid"
    assert body["index_version"] is not None
    top = body["results"][0]
    assert top["document_id"] == library["sailing"]
    assert "chain" in top["text"]
    assert top["ranks"]["vector"] is not None
    assert top["ranks"]["keyword"] is not None
    assert top["filename"] == top["title"] == "sailing.md"
    assert top["heading"] == ["Anchoring"]
    assert top["collection"] == "sea"
    assert 0 <= top["char_start"] < top["char_end"]
    scores = [hit["score"] for hit in body["results"]]
    assert scores == sorted(scores, reverse=True)


async def test_the_title_comes_from_metadata_when_given(
    alice: Account, library: dict[str, str], search: Search
) -> None:
    response = await search(alice, "eclipse filter", mode="keyword")
    top = response.json()["results"][0]
    assert top["document_id"] == library["astronomy"]
    assert (top["title"], top["filename"]) == ("Looking up", "astronomy.md")


async def test_each_mode_ranks_with_its_own_retriever(
    alice: Account, library: dict[str, str], search: Search
) -> None:
    vector = (await search(alice, "bread starter fermentation", mode="vector")).json()
    assert vector["results"][0]["document_id"] == library["baking"]
    assert all(hit["ranks"]["keyword"] is None for hit in vector["results"])
    assert [hit["ranks"]["vector"] for hit in vector["results"]] == list(
        range(1, len(vector["results"]) + 1)
    )
    assert all(-1.0 <= hit["score"] <= 1.0 for hit in vector["results"])
    assert vector["vector_strategy"] == "exact"  # a handful of chunks: exact search
    # Keyword search stems ("telescopes" finds "telescope") and skips stop words.
    keyword = (await search(alice, "the telescopes", mode="keyword")).json()
    assert keyword["results"]
    assert all(hit["document_id"] == library["astronomy"] for hit in keyword["results"])
    assert all(hit["ranks"]["vector"] is None for hit in keyword["results"])
    assert keyword["vector_strategy"] is None


async def test_keyword_search_with_no_matching_word_is_empty(
    alice: Account, library: dict[str, str], search: Search
) -> None:
    response = await search(alice, "zeppelin", mode="keyword")
    assert response.status_code == 200
    assert response.json()["results"] == []
    # Only stop words: nothing to match either.
    assert (await search(alice, "the and of", mode="keyword")).json()["results"] == []


@pytest.mark.parametrize("mode", ["hybrid", "vector", "keyword"])
async def test_pages_have_no_duplicates_or_gaps(
    alice: Account, ingest: Ingest, search: Search, mode: str
) -> None:
    for i, text in enumerate([SAILING, BAKING, ASTRONOMY]):
        await ingest(alice, text, f"doc-{i}.md", chunking={"chunk_size": 24, "chunk_overlap": 4})
    query = "anchor light at night, dough and its crust, a telescope mirror"
    whole = (await search(alice, query, mode=mode, top_k=50)).json()
    assert len(whole["results"]) > 2 * 3  # pages of 3: at least two full ones and a third
    paged: list[int] = []
    offset: int | None = 0
    while offset is not None:
        page = (await search(alice, query, mode=mode, top_k=3, offset=offset)).json()
        assert page["offset"] == offset
        paged += [hit["chunk_id"] for hit in page["results"]]
        offset = page["next_offset"]
    assert paged == [hit["chunk_id"] for hit in whole["results"]]
    assert len(set(paged)) == len(paged)
    past_the_end = (await search(alice, query, mode=mode, offset=len(paged))).json()
    assert past_the_end["results"] == []
    assert past_the_end["next_offset"] is None


async def test_keyword_scores_are_bm25_over_the_scope(
    app: FastAPI, alice: Account, bob: Account, ingest: Ingest, search: Search
) -> None:
    """The SQL's scores against BM25 computed here from the stored lexemes (k1 1.2, b 0.75,
    document frequencies and mean length over alice's chunks only; terms repeated in a
    chunk count as often as they occur)."""
    for i, body in enumerate([SAILING, BAKING, ASTRONOMY]):
        await ingest(alice, body, f"doc-{i}.md", chunking={"chunk_size": 24, "chunk_overlap": 4})
    await ingest(bob, SAILING + "\n\nanchor anchor anchor", "bobs.md")  # not in alice's scope
    query = "the anchor chain and anchor light, dough crust, telescope"
    answer = (await search(alice, query, mode="keyword", top_k=50)).json()
    async with app.state.db.engine.connect() as connection:
        terms = set(
            (
                await connection.execute(
                    sql("SELECT lexeme FROM unnest(to_tsvector('english', :q))"), {"q": query}
                )
            ).scalars()
        )
        rows = (
            await connection.execute(
                sql(
                    "SELECT c.id, c.token_count, u.lexeme, "
                    "coalesce(array_length(u.positions, 1), 1) AS tf "
                    "FROM chunks c JOIN documents d ON d.id = c.document_id "
                    "LEFT JOIN LATERAL unnest(c.tsv) AS u ON true "
                    "WHERE d.owner_id = :owner AND c.revision = d.active_revision"
                ),
                {"owner": alice.id},
            )
        ).all()
    lengths = {row.id: row.token_count for row in rows}
    tf: dict[int, dict[str, int]] = {}
    for row in rows:
        if row.lexeme in terms:
            tf.setdefault(row.id, {})[row.lexeme] = row.tf
    n, mean = len(lengths), sum(lengths.values()) / len(lengths)
    df = {term: sum(term in counts for counts in tf.values()) for term in terms}
    expected = {
        chunk: sum(
            math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
            * f
            * 2.2
            / (f + 1.2 * (0.25 + 0.75 * lengths[chunk] / mean))
            for t, f in counts.items()
        )
        for chunk, counts in tf.items()
    }
    assert any(f > 1 for counts in tf.values() for f in counts.values())  # tf really counted
    got = {hit["chunk_id"]: hit["score"] for hit in answer["results"]}
    assert got.keys() == expected.keys()
    for chunk, score in got.items():
        assert score == pytest.approx(expected[chunk], rel=1e-9)
    ordered = sorted(expected, key=lambda chunk: (-expected[chunk], chunk))
    assert [hit["chunk_id"] for hit in answer["results"]] == ordered


async def test_filters_are_exact(alice: Account, library: dict[str, str], search: Search) -> None:
    query = "light"
    by_collection = await search(alice, query, filters={"collections": ["sea"]}, top_k=50)
    assert set(documents_of(by_collection)) == {library["sailing"], library["astronomy"]}
    by_id = await search(alice, query, filters={"document_ids": [library["baking"]]}, top_k=50)
    assert set(documents_of(by_id)) == {library["baking"]}
    by_year = await search(alice, query, filters={"metadata": {"year": 2024}}, top_k=50)
    assert set(documents_of(by_year)) == {library["sailing"]}
    by_years = await search(alice, query, filters={"metadata": {"year": [2023, 2025]}}, top_k=50)
    assert set(documents_of(by_years)) == {library["baking"], library["astronomy"]}
    # Values compare as JSON: the string "2024" is not the number 2024.
    assert (await search(alice, query, filters={"metadata": {"year": "2024"}})).json()[
        "results"
    ] == []
    both = await search(
        alice, query, filters={"collections": ["sea"], "metadata": {"tag": "s"}}, top_k=50
    )
    assert set(documents_of(both)) == {library["sailing"]}
    later = datetime.now(UTC) + timedelta(minutes=5)
    assert (await search(alice, query, filters={"created_after": later.isoformat()})).json()[
        "results"
    ] == []
    earlier = datetime.now(UTC) - timedelta(hours=1)
    window = {"created_after": earlier.isoformat(), "created_before": later.isoformat()}
    assert len(set(documents_of(await search(alice, query, filters=window, top_k=50)))) == 3


async def test_unknown_collection_and_other_users_documents_give_empty_results(
    alice: Account, bob: Account, library: dict[str, str], search: Search
) -> None:
    nowhere = await search(alice, "anchor", filters={"collections": ["no-such"]})
    assert nowhere.status_code == 200
    assert nowhere.json()["results"] == []
    # bob names alice's document: an empty result, not an error that confirms it exists.
    theirs = await search(bob, "anchor", filters={"document_ids": [library["sailing"]]})
    assert theirs.status_code == 200
    assert theirs.json()["results"] == []
    # bob has no documents: nothing of alice's ever shows.
    for mode in ("hybrid", "vector", "keyword"):
        assert (await search(bob, "anchor chain", mode=mode)).json()["results"] == []


async def test_null_for_an_optional_field_is_its_default(
    client: httpx.AsyncClient, alice: Account, library: dict[str, str], search: Search
) -> None:
    """JSON clients write null for a field they leave unset: the answer is the one without it."""
    unset = await search(alice, "anchor chain")
    nulls = await client.post(
        "/search",
        json={
            "query": "anchor chain",
            "filters": None,
            "mode": None,
            "top_k": None,
            "offset": None,
            "query_syntax": None,
            "index_version": None,
        },
        headers=alice.headers,
    )
    assert nulls.status_code == 200, nulls.text
    assert nulls.json()["mode"] == "hybrid"
    assert [hit["chunk_id"] for hit in nulls.json()["results"]] == [
        hit["chunk_id"] for hit in unset.json()["results"]
    ]
    assert nulls.json()["results"]
    # The query itself stays required, and null inside the filters is still refused.
    no_query = await client.post("/search", json={"query": None}, headers=alice.headers)
    assert no_query.status_code == 422
    assert no_query.json()["errors"][0]["field"] == "body.query"
    null_inside = await client.post(
        "/search", json={"query": "anchor", "filters": {"metadata": {"year": None}}},
        headers=alice.headers,
    )  # fmt: skip
    assert null_inside.status_code == 422


async def test_a_user_with_no_index_yet_gets_an_empty_answer(
    alice: Account, search: Search
) -> None:
    response = await search(alice, "anything at all")
    assert response.status_code == 200
    assert response.json()["results"] == []
    assert response.json()["index_version"] is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"query": ""}, "query"),
        ({"query": "   \n"}, "query"),
        ({"query": "\u200b\ufeff \u2060"}, "query"),  # invisible: nothing to search for
        ({"query": "x" * 2001}, "query"),
        ({"query": "sail", "top_k": 101}, "top_k"),
        ({"query": "sail", "top_k": 0}, "top_k"),
        ({"query": "sail", "mode": "fuzzy"}, "mode"),
        ({"query": "sail", "offset": -1}, "offset"),
        ({"query": "sail", "filters": {"colour": "red"}}, "filters.colour"),
        ({"query": "sail", "filters": {"document_ids": ["not-a-uuid"]}}, "filters.document_ids.0"),
        ({"query": "sail", "filters": {"created_after": "2026-01-01T00:00:00"}}, "filters"),
    ],
)
async def test_bad_input_is_a_422_naming_the_field(
    client: httpx.AsyncClient, alice: Account, body: dict[str, Any], field: str
) -> None:
    response = await client.post("/search", json=body, headers=alice.headers)
    assert response.status_code == 422, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    errors = response.json()["errors"]
    assert all(error["field"] == ".".join(map(str, error["loc"])) for error in errors), errors
    assert any(error["field"].removeprefix("body.").startswith(field) for error in errors), errors


@pytest.mark.parametrize("mode", ["keyword", "vector", "hybrid"])
@pytest.mark.parametrize(
    "filters",
    [
        # Time-zone-aware datetimes whose UTC instant lies outside years 1-9999: the driver
        # cannot send them.
        {"created_after": "0001-01-01T00:00:00+14:00"},
        {"created_before": "9999-12-31T23:59:59-14:00"},
    ],
)
async def test_a_date_filter_outside_the_representable_range_is_a_422(
    alice: Account, library: dict[str, str], search: Search, filters: dict[str, Any], mode: str
) -> None:
    response = await search(alice, "sail", mode=mode, filters=filters)
    assert response.status_code == 422, (response.status_code, response.text)
    fields = [error["field"] for error in response.json()["errors"]]
    assert any(field.startswith("body.filters.created_") for field in fields), fields


@pytest.mark.parametrize("mode", ["keyword", "vector", "hybrid"])
@pytest.mark.parametrize("value", ["\udfff", ["ok", "\ud800"]])
async def test_a_metadata_filter_value_with_a_lone_surrogate_is_a_422(
    client: httpx.AsyncClient, alice: Account, library: dict[str, str], value: Any, mode: str
) -> None:
    """JSON may spell a lone surrogate; a metadata value holding one would reach PostgreSQL,
    which refuses it."""
    body = {"query": "sail", "mode": mode, "filters": {"metadata": {"tag": value}}}
    response = await client.post(
        "/search",
        content=json.dumps(body).encode(),  # ensure_ascii: the surrogate as an escape
        headers={**alice.headers, "content-type": "application/json"},
    )
    assert response.status_code == 422, (response.status_code, response.text)
    fields = [error["field"] for error in response.json()["errors"]]
    assert "body.filters.metadata" in fields, fields


async def test_search_needs_authentication(client: httpx.AsyncClient) -> None:
    response = await client.post("/search", json={"query": "sail"})
    assert response.status_code == 401


async def test_repeated_search_is_served_from_cache_until_the_documents_change(
    alice: Account, library: dict[str, str], ingest: Ingest, search: Search
) -> None:
    first = await search(alice, "croissant butter")
    assert first.json()["cached"] is False
    assert "mainsail-cache" not in first.headers
    second = await search(alice, "croissant butter")
    assert second.headers["mainsail-cache"] == "hit"
    assert second.json()["cached"] is True
    assert second.json()["results"] == first.json()["results"]
    # Another page, mode or filter is another entry.
    assert (await search(alice, "croissant butter", top_k=2)).json()["cached"] is False
    # A new document changes what the answer could be: the cache is bypassed.
    new = await ingest(alice, "Croissant butter must be cold and pliable.", "tips.txt")
    third = await search(alice, "croissant butter")
    assert third.json()["cached"] is False
    assert new in documents_of(third)


async def test_a_delete_changes_the_cached_answer_and_another_owners_upload_does_not(
    client: httpx.AsyncClient, alice: Account, bob: Account, ingest: Ingest, search: Search
) -> None:
    kept = await ingest(alice, "Anchors hold boats in the bay.", "kept.md")
    gone = await ingest(alice, "Anchor chains rust in the bay.", "gone.md")
    await search(alice, "anchor bay")
    await ingest(bob, "Anchors and bays, says Bob.", "bob.md")
    again = (await search(alice, "anchor bay")).json()
    assert again["cached"] is True  # Bob's corpus is his own
    assert {hit["document_id"] for hit in again["results"]} == {kept, gone}
    deleted = await client.delete(f"/documents/{gone}", headers=alice.headers)
    assert deleted.status_code == 204
    after = (await search(alice, "anchor bay")).json()
    assert after["cached"] is False
    assert {hit["document_id"] for hit in after["results"]} == {kept}


async def test_a_write_committed_after_a_later_one_still_changes_the_cached_answer(
    app: FastAPI, alice: Account, ingest: Ingest, search: Search
) -> None:
    """Ingestion A stamps its document's updated_at, then B changes another document and
    commits first; a search between the two commits caches a page without A's revision.
    A's commit must still make that page stale, though its updated_at is the older."""
    a = await ingest(alice, "Anchors hold boats in the bay.", "a.md")
    b = await ingest(alice, "Lanterns glow at night.", "b.md")
    db = app.state.db
    async with db.engine.begin() as connection:  # revision 2 of a.md, written, not active
        version = await connection.scalar(
            sql("SELECT id FROM index_versions WHERE state = 'active'")
        )
        await connection.execute(
            sql(
                "INSERT INTO chunks (document_id, index_version, revision, ordinal, owner_id,"
                " collection, text, token_count, char_start, char_end, page, page_end, heading,"
                " embedding, created_at)"
                " SELECT document_id, index_version, 2, ordinal, owner_id, collection,"
                " 'Zeppelins float over harbours.', token_count, char_start, char_end, page,"
                " page_end, heading, embedding, created_at FROM chunks WHERE document_id = :a"
            ),
            {"a": a},
        )
        await connection.execute(sql("UPDATE documents SET revision = 2 WHERE id = :a"), {"a": a})
    async with db.unit_of_work() as first:
        assert await documents_repository.activate_revision(first, uuid.UUID(a), 2, version)
        await asyncio.sleep(0.01)
        async with db.unit_of_work() as second:  # commits first, with a later updated_at
            await documents_repository.set_status(second, uuid.UUID(b), 1, "ready")
        before = (await search(alice, "zeppelins", mode="keyword")).json()
        assert before["results"] == []
    after = (await search(alice, "zeppelins", mode="keyword")).json()
    assert after["cached"] is False
    assert [hit["text"] for hit in after["results"]] == ["Zeppelins float over harbours."]


async def test_a_bulk_write_stamps_each_owner_once(
    app: FastAPI, alice: Account, bob: Account, ingest: Ingest, search: Search
) -> None:
    """A transaction that writes many documents writes each owner's corpus stamp once, not
    once per row (each such write walked the stamp row's growing chain of versions: deleting
    one user's 40,000 documents took 7.8 s at commit instead of 0.03 s), and still changes
    it: the cached answer is stale."""
    kept = await ingest(alice, "Anchors hold boats in the bay.", "kept.md")
    bobs = await ingest(bob, "Anchors and bays, says Bob.", "bob.md")
    await search(alice, "anchor bay")
    # The backend's pending statistics may still hold writes of earlier transactions on the
    # same pooled connection (they are flushed at most once a second, and only when idle),
    # so the count is taken before and after, inside one transaction where nothing flushes.
    stamp_writes = sql(
        "SELECT n_tup_ins + n_tup_upd FROM pg_stat_xact_user_tables WHERE relname = 'corpus_stamps'"
    )
    async with app.state.db.engine.begin() as connection:
        before = await connection.scalar(stamp_writes)
        await connection.execute(
            sql(
                "INSERT INTO documents (id, owner_id, collection, filename, content_type,"
                " size_bytes, sha256, metadata, chunking, status, error, revision,"
                " active_revision, chunk_count, job_id, created_at, updated_at)"
                " SELECT gen_random_uuid(), owner_id, collection, filename || g, content_type,"
                " size_bytes, md5(g::text), metadata, chunking, status, error, revision,"
                " active_revision, chunk_count, NULL, created_at, updated_at"
                " FROM documents, generate_series(1, 200) AS g WHERE id IN (:kept, :bobs)"
            ),
            {"kept": kept, "bobs": bobs},
        )  # 200 more documents of each owner, in one statement
        await connection.execute(sql("SET CONSTRAINTS ALL IMMEDIATE"))  # the stamps now
        writes = await connection.scalar(stamp_writes) - before
    assert writes == 2  # one per owner, not one per row (400)
    again = (await search(alice, "anchor bay")).json()
    assert again["cached"] is False
    assert {hit["document_id"] for hit in again["results"]} == {kept}


@pytest.mark.parametrize("mode", ["hybrid", "vector", "keyword"])
async def test_a_quoted_phrase_must_occur_and_an_excluded_word_must_not(
    alice: Account, library: dict[str, str], search: Search, mode: str
) -> None:
    phrase = (await search(alice, '"white masthead light" dough', mode=mode)).json()
    assert phrase["results"]
    assert all("white masthead light" in hit["text"] for hit in phrase["results"])
    # The same words as plain text: the dough passages come back too.
    loose = (
        await search(alice, '"white masthead light" dough', mode=mode, query_syntax="plain")
    ).json()
    assert library["baking"] in documents_of_body(loose)

    excluded = (await search(alice, "light through a lens -telescope", mode=mode)).json()
    assert excluded["results"]
    assert all("telescope" not in hit["text"].lower() for hit in excluded["results"])
    unconstrained = (await search(alice, "light through a lens", mode=mode)).json()
    assert any("telescope" in hit["text"].lower() for hit in unconstrained["results"])


def documents_of_body(body: dict[str, Any]) -> list[str]:
    return [hit["document_id"] for hit in body["results"]]


async def test_an_exclusion_removes_passages_without_changing_the_others_scores(
    alice: Account, library: dict[str, str], search: Search
) -> None:
    every = (await search(alice, "light", mode="keyword")).json()["results"]
    kept = (await search(alice, 'light -"reflecting telescope"', mode="keyword")).json()
    scores = {hit["chunk_id"]: hit["score"] for hit in every}
    assert kept["results"]
    assert len(kept["results"]) < len(every)
    for hit in kept["results"]:
        assert hit["score"] == pytest.approx(scores[hit["chunk_id"]])


@pytest.mark.parametrize("mode", ["keyword", "hybrid"])
async def test_an_excluded_word_with_a_colon_is_excluded_whole_not_partly_required(
    alice: Account, ingest: Ingest, search: Search, mode: str
) -> None:
    """PostgreSQL's web-search reading of a bare ``-site:reddit.com`` negates "site" and
    requires "reddit.com": the exclusion must instead drop only what holds the whole word."""
    await ingest(alice, "Anchors hold boats in the bay.", "plain.md")
    await ingest(alice, "Anchors were discussed on reddit.com at length.", "mentions.md")
    await ingest(alice, "Anchors: search site:reddit.com for more.", "literal.md")
    found = (await search(alice, "anchors -site:reddit.com", mode=mode)).json()["results"]
    assert sorted(hit["filename"] for hit in found) == ["mentions.md", "plain.md"]


async def test_a_constraint_of_stop_words_alone_is_ignored(
    alice: Account, library: dict[str, str], search: Search
) -> None:
    """'"the"' and '-a' name no word the full-text index keeps: they match every passage
    rather than none."""
    plain = (await search(alice, "anchor chain")).json()["results"]
    assert plain
    for query in ["anchor chain -a", 'anchor chain -"of the"']:
        constrained = (await search(alice, query)).json()["results"]
        assert [hit["chunk_id"] for hit in constrained] == [hit["chunk_id"] for hit in plain]
    # A phrase's words are part of what the query means, so the model reads "the" too and the
    # vector ranks may move; nothing is filtered out.
    phrase = (await search(alice, 'anchor chain "the"')).json()["results"]
    assert sorted(hit["chunk_id"] for hit in phrase) == sorted(hit["chunk_id"] for hit in plain)


@pytest.mark.parametrize("query", ["-anchor", '-"white light" -dough', '""'])
async def test_a_query_with_nothing_to_look_for_is_a_422(
    client: httpx.AsyncClient, alice: Account, query: str
) -> None:
    response = await client.post("/search", json={"query": query}, headers=alice.headers)
    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["errors"]] == ["body.query"]
    # As plain text the same query is searched.
    plain = await client.post(
        "/search", json={"query": query, "query_syntax": "plain"}, headers=alice.headers
    )
    assert plain.status_code == 200, plain.text


async def test_slow_scope_figures_are_served_stale_while_one_background_count_replaces_them(
    app: FastAPI,
    alice: Account,
    ingest: Ingest,
    search: Search,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """BM25's chunk count and mean length are exact for the owner's corpus stamp. Counted
    cheaply, they are counted again right after an upload; when counting took long (every
    count here, with the threshold at 0) the old figures answer until a background count
    has replaced them."""
    from mainsail.search import service

    monkeypatch.setattr(service, "SLOW_FIGURES_S", 60.0)  # every count is cheap, however slow
    await ingest(alice, SAILING, "sailing.md")

    async def anchor_score() -> float:
        hits = (await search(alice, "anchor", mode="keyword")).json()["results"]
        return float(hits[0]["score"])

    first = await anchor_score()
    await ingest(alice, BAKING, "baking.md")  # more chunks: the same passage's idf rises
    exact = await anchor_score()
    assert exact > first  # cheap figures: counted again at once

    monkeypatch.setattr(service, "SLOW_FIGURES_S", 0.0)
    await ingest(alice, ASTRONOMY, "astronomy.md")
    assert await anchor_score() == pytest.approx(exact)  # stale, while the count runs
    searcher = app.state.search
    await asyncio.gather(*searcher._figures.refreshing.values())
    assert not searcher._figures.refreshing
    assert await anchor_score() > exact  # the new figures


async def test_input_the_database_cannot_hold_is_a_422_not_a_500(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, search: Search
) -> None:
    """A NUL character (in a query, a chat question, metadata) and a NaN filter value."""
    await ingest(alice, "Anchors hold boats. Chain is heavy.", "a.md", metadata={"year": 2024})
    for mode in ("keyword", "vector", "hybrid"):
        nul = await search(alice, "anchor\x00chain", mode=mode)
        assert nul.status_code == 422, nul.text
        assert nul.headers["content-type"].startswith("application/problem+json")
        assert [error["field"] for error in nul.json()["errors"]] == ["body.query"]
    question = await client.post(
        "/chat", json={"question": "how\x00 heavy is chain?"}, headers=alice.headers
    )
    assert question.status_code == 422
    assert [error["field"] for error in question.json()["errors"]] == ["body.question"]
    metadata = await client.post(
        "/documents",
        json={"text": "Sails.", "filename": "s.md", "metadata": {"note": "a\x00b"}},
        headers=alice.headers,
    )
    assert metadata.status_code == 422  # refused by PostgreSQL: nothing stored
    assert "U+0000" in metadata.json()["detail"]
    nan = await client.post(
        "/search",
        content=b'{"query": "anchor", "filters": {"metadata": {"year": NaN}}}',
        headers={**alice.headers, "content-type": "application/json"},
    )
    assert nan.status_code == 422
    fine = await search(alice, "anchor", filters={"metadata": {"year": 2024}})
    assert [hit["filename"] for hit in fine.json()["results"]] == ["a.md"]


@pytest.mark.parametrize("mode", ["hybrid", "vector", "keyword"])
@pytest.mark.parametrize(
    "query", ["-anchor \u200b", '"\u200b" -anchor', "-anchor \u2060\ufeff", "\u200b -bread"]
)
async def test_a_query_whose_words_are_only_invisible_besides_exclusions_is_a_422(
    client: httpx.AsyncClient, alice: Account, ingest: Ingest, mode: str, query: str
) -> None:
    """A query of invisible characters alone is blank (a 422), and so is one that only
    excludes: one that only excludes and adds invisible characters has nothing to look for
    either. It was searched for a zero-width space: arbitrary passages (every one in scope
    that lacks the excluded word) came back as 'results'."""
    await ingest(alice, "Anchors hold boats in the bay.", "a.md")
    await ingest(alice, "Bread rises in the oven.", "b.md")
    response = await client.post(
        "/search", json={"query": query, "mode": mode}, headers=alice.headers
    )
    assert response.status_code == 422, response.text
    assert [error["field"] for error in response.json()["errors"]] == ["body.query"]
