from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from mainsail.llm.factory import build_gateway
from mainsail.llm.gateway import Gateway, UsageEvent
from mainsail.settings import LLMSettings
from tests.fixtures.gateway import FAST_RESILIENCE


class RecordingSink:
    """Keeps usage events in a list: the gateway's side of the ledger, without a database."""

    def __init__(self) -> None:
        self.events: list[UsageEvent] = []

    def record(self, event: UsageEvent) -> None:
        self.events.append(event)


MakeGateway = Callable[..., Awaitable[tuple[Gateway, RecordingSink]]]


@pytest.fixture
async def make_gateway(catalogue_file: Path) -> AsyncIterator[MakeGateway]:
    closers: list[Any] = []

    async def make(**llm: Any) -> tuple[Gateway, RecordingSink]:
        settings = LLMSettings(**{**FAST_RESILIENCE, "catalogue_file": catalogue_file, **llm})
        sink = RecordingSink()
        gateway, adapters = build_gateway(settings, usage=sink, environ={})
        closers.extend(adapters)
        return gateway, sink

    yield make
    for adapter in closers:
        await adapter.aclose()
