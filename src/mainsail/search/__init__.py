"""``POST /search``: vector, keyword and hybrid retrieval over the caller's chunks."""
