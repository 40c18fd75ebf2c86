"""The query embedding travels to PostgreSQL in pgvector's binary format: the float32 values
themselves, whatever their digits (a text literal rounds them), on every pooled connection
(the driver's codec is registered once per connection, and again on a new one)."""

from __future__ import annotations

import numpy as np
from fastapi import FastAPI
from sqlalchemy import text

from mainsail.search import repository
from tests.fixtures.identity import Account
from tests.search.conftest import Ingest, Search
from tests.search.corpus import SAILING

# Values a 7-digit text literal would round (0.123456789 -> 0.1234568 is another float32),
# the smallest normal and a subnormal, a negative zero and the largest float32.
HARD = np.array(
    [0.123456789, 1 / 3, -2.5e-7, 1.17549435e-38, 1e-45, -0.0, 3.4028235e38, 7.0],
    dtype=np.float32,
)


async def test_a_query_vector_reaches_the_server_bit_for_bit(app: FastAPI) -> None:
    async with app.state.db.autocommit() as connection:
        await repository.use_binary_vectors(connection)
        echoed = await connection.scalar(text("SELECT CAST(:query AS vector)"), {"query": HARD})
        as_text = await connection.scalar(
            text("SELECT CAST(CAST(:query AS vector) AS text)"), {"query": HARD}
        )
    assert isinstance(echoed, np.ndarray)
    assert echoed.dtype == np.float32
    assert echoed.tobytes() == HARD.tobytes()
    # The server read the same numbers, not only our own decoder.
    assert np.array_equal(np.array(as_text.strip("[]").split(","), dtype=np.float32), HARD)


async def test_vector_search_works_again_on_new_connections(
    app: FastAPI, alice: Account, ingest: Ingest, search: Search
) -> None:
    await ingest(alice, SAILING, "sailing.md")
    first = await search(alice, "anchor chain", mode="vector", top_k=3)
    assert first.status_code == 200, first.text
    assert first.json()["results"]

    # Every pooled connection is replaced: each new one needs the codec again (a flag kept
    # anywhere but on the connection would send the next query to a driver without it).
    await app.state.db.engine.dispose()
    again = await search(alice, "anchor chain", mode="vector", top_k=3)
    assert again.status_code == 200, again.text
    assert [r["chunk_id"] for r in again.json()["results"]] == [
        r["chunk_id"] for r in first.json()["results"]
    ]
