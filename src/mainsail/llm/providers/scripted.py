"""Deterministic answers from a script, for tests and evals. No network, no randomness.

A script is a list of rules, tried in order against the last user message:

    [{"match": "capital of France", "reply": "Paris."},
     {"match": "weather", "tool_call": {"name": "get_weather", "arguments": {"city": "Oslo"}}},
     {"match": "flaky", "error": "unavailable", "times": 2},
     {"reply": "I only know scripted answers."}]

``match`` is a regular expression (omitted: matches everything); ``times`` limits how often a
rule fires; ``error`` is one of rate_limited, unavailable, timeout, rejected. With no matching
rule the answer echoes the question. Tests may also ``enqueue`` one-shot answers.
"""

from __future__ import annotations

import itertools
import json
import re
import threading
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.errors import (
    LLMError,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from mainsail.llm.providers.base import (
    last_user_text,
    new_response_id,
    no_embeddings,
    replay_as_stream,
)
from mainsail.llm.tokens import count_message_tokens, count_tokens
from mainsail.llm.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    EventStream,
    Message,
    ToolCall,
    Usage,
)

_ERRORS: dict[str, type[LLMError]] = {
    "rate_limited": UpstreamRateLimited,
    "unavailable": UpstreamUnavailable,
    "timeout": UpstreamTimeout,
    "rejected": UpstreamRejected,
}


@dataclass
class Rule:
    reply: str | None = None
    tool_call: dict[str, Any] | None = None
    error: str | None = None
    match: re.Pattern[str] | None = None
    times: int | None = None

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Rule:
        unknown = set(raw) - {"reply", "tool_call", "error", "match", "times"}
        if unknown:
            raise ValueError(f"unknown script keys {sorted(unknown)}")
        if raw.get("error") is not None and raw["error"] not in _ERRORS:
            raise ValueError(f"error must be one of {sorted(_ERRORS)}")
        pattern = raw.get("match")
        return cls(
            reply=raw.get("reply"),
            tool_call=raw.get("tool_call"),
            error=raw.get("error"),
            match=re.compile(pattern, re.IGNORECASE) if pattern else None,
            times=raw.get("times"),
        )


class ScriptedAdapter:
    def __init__(self, *, name: str = "scripted", rules: list[dict[str, Any]] | None = None):
        self.name = name
        self.rules = [Rule.parse(rule) for rule in rules or []]
        self._queue: deque[Rule] = deque()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self.calls: list[ChatRequest] = []

    @classmethod
    def from_file(cls, path: Path) -> ScriptedAdapter:
        text = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            rules = yaml.safe_load(text)
        else:
            rules = json.loads(text)
        if not isinstance(rules, list):
            raise ValueError(f"{path}: a script is a list of rules")
        return cls(rules=rules)

    def enqueue(self, *rules: dict[str, Any]) -> None:
        """One-shot answers, used before the script's rules (tests)."""
        with self._lock:
            self._queue.extend(Rule.parse(rule) for rule in rules)

    async def aclose(self) -> None:
        return None

    async def embed(self, request: EmbeddingRequest, entry: ModelEntry) -> EmbeddingResponse:
        raise no_embeddings(self.name, entry)

    def _pick(self, request: ChatRequest) -> Rule | None:
        question = last_user_text(request.messages)
        with self._lock:
            self.calls.append(request)
            if self._queue:
                return self._queue.popleft()
            for rule in self.rules:
                if rule.times is not None and rule.times <= 0:
                    continue
                if rule.match is None or rule.match.search(question):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule
        return None

    def _answer(self, request: ChatRequest, entry: ModelEntry) -> ChatResponse:
        rule = self._pick(request)
        if rule is not None and rule.error is not None:
            where = {"provider": self.name, "model": entry.name}
            raise _ERRORS[rule.error](f"scripted {rule.error}", **where)
        calls: tuple[ToolCall, ...] = ()
        text: str | None
        if rule is not None and rule.tool_call is not None:
            call = rule.tool_call
            calls = (
                ToolCall(
                    id=f"call_{next(self._ids)}",
                    name=str(call["name"]),
                    arguments=json.dumps(call.get("arguments", {})),
                ),
            )
            text = None
        elif rule is not None and rule.reply is not None:
            text = rule.reply
        else:
            text = f"scripted: {last_user_text(request.messages)}"
        output = count_tokens(text or "") + sum(count_tokens(c.arguments) for c in calls)
        return ChatResponse(
            id=new_response_id(),
            model=entry.name,
            provider=self.name,
            message=Message(role="assistant", content=text, tool_calls=calls),
            finish_reason="tool_calls" if calls else "stop",
            usage=Usage(input_tokens=count_message_tokens(request.messages), output_tokens=output),
        )

    async def complete(self, request: ChatRequest, entry: ModelEntry) -> ChatResponse:
        return self._answer(request, entry)

    def stream(self, request: ChatRequest, entry: ModelEntry) -> EventStream:
        return replay_as_stream(self._answer(request, entry))
