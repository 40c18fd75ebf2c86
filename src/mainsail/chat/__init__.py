"""``/chat`` and ``/conversations``: answers from the caller's documents, with citations."""
