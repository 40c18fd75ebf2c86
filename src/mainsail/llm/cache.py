"""Answers to deterministic requests, kept so the same question is not paid for twice.

A request is cacheable when it asks for temperature 0, offers no tools (a tool call is an
action the caller takes, not an answer to keep), and goes to a remote provider (the local
scripted and extractive models cost nothing). The key is a SHA-256 over a canonical JSON of
the model (public name and the provider's model id), every message, every parameter, the
response format, supplied passages and the prompt version; by default also the caller, so
one tenant can never learn from timing what another asked.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from typing import Any, Literal

from mainsail.core.cache import ByteCache
from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.types import ChatRequest, ChatResponse, Message, ToolCall, Usage

# use: read and write; refresh: skip the read (Cache-Control: no-cache), still write;
# off: neither (Cache-Control: no-store).
CacheMode = Literal["use", "refresh", "off"]
_LOCAL_PROVIDERS = frozenset({"scripted", "extractive"})
# Bump when the stored shape or the key changes (2: tools' strict, parallel_tool_calls).
_FORMAT = 2


def cache_mode(cache_control: str | None) -> CacheMode:
    """What a caller's ``Cache-Control`` header asks of the response cache."""
    directives = {
        part.strip().lower().replace(" ", "") for part in (cache_control or "").split(",")
    }
    if "no-store" in directives:
        return "off"
    if "no-cache" in directives or "max-age=0" in directives:
        return "refresh"
    return "use"


class ResponseCache:
    def __init__(
        self,
        store: ByteCache,
        *,
        ttl_s: float,
        per_user: bool = True,
        max_entry_bytes: int = 256 * 1024,
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.per_user = per_user
        self.max_entry_bytes = max_entry_bytes

    @staticmethod
    def cacheable(request: ChatRequest, entry: ModelEntry, provider_kind: str) -> bool:
        if provider_kind in _LOCAL_PROVIDERS:
            return False
        if request.params.temperature != 0:
            return False
        return not request.tools or (
            request.tool_choice is not None and request.tool_choice.mode == "none"
        )

    def key(
        self,
        request: ChatRequest,
        entry: ModelEntry,
        *,
        user: object,
        prompt_version: str | None,
    ) -> str:
        canonical = {
            "v": _FORMAT,
            "model": entry.name,
            "provider": entry.provider,
            "provider_model": entry.model,
            "request": asdict(request),
            "prompt_version": prompt_version,
            "user": str(user) if self.per_user else None,
        }
        text = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return "rc:" + hashlib.sha256(text.encode()).hexdigest()

    async def get(self, key: str) -> ChatResponse | None:
        raw = await self.store.get(key)
        if raw is None:
            return None
        try:
            return _load(json.loads(raw))
        except (ValueError, KeyError, TypeError):  # written by another version: a miss
            return None

    async def put(self, key: str, response: ChatResponse) -> None:
        if response.finish_reason not in ("stop", "length") or response.refusal is not None:
            return  # a filtered or refused answer may not be so next time
        raw = json.dumps(_dump(response), separators=(",", ":")).encode()
        if len(raw) <= self.max_entry_bytes:
            await self.store.set(key, raw, self.ttl_s)

    async def aclose(self) -> None:
        await self.store.aclose()


def _dump(response: ChatResponse) -> dict[str, Any]:
    message = response.message
    return {
        "id": response.id,
        "model": response.model,
        "provider": response.provider,
        "content": message.content,
        "tool_calls": [asdict(call) for call in message.tool_calls],
        "finish_reason": response.finish_reason,
        "usage": asdict(response.usage),
    }


def _load(data: dict[str, Any]) -> ChatResponse:
    return ChatResponse(
        id=data["id"],
        model=data["model"],
        provider=data["provider"],
        message=Message(
            role="assistant",
            content=data["content"],
            tool_calls=tuple(ToolCall(**call) for call in data["tool_calls"]),
        ),
        finish_reason=data["finish_reason"],
        usage=Usage(**data["usage"]),
        cache_hit=True,
    )
