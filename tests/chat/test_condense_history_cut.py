"""The condensing prompt's history, cut to the model's window, starts with a question: an
answer whose question was cut reads as one to nothing the model can see (the answer's own
prompt, ``pack`` and ``_history``, never start with one either)."""

from __future__ import annotations

from typing import Any

from mainsail.chat.service import ChatService
from mainsail.llm.gateway import CallContext
from mainsail.llm.tokens import count_message_tokens
from mainsail.llm.types import ChatRequest, ChatResponse, Message, Usage
from mainsail.settings import ChatSettings


class _Gateway:
    def __init__(self) -> None:
        self.requests: list[ChatRequest] = []

    async def complete(self, request: ChatRequest, ctx: CallContext) -> ChatResponse:
        self.requests.append(request)
        return ChatResponse(
            id="1",
            model="m",
            provider="p",
            message=Message(role="assistant", content="How long do croissants proof?"),
            finish_reason="stop",
            usage=Usage(input_tokens=1, output_tokens=1),
        )


async def test_a_condensing_history_cut_to_the_window_does_not_start_with_an_answer() -> None:
    gateway = _Gateway()
    service = ChatService(None, gateway, None, ChatSettings())  # type: ignore[arg-type]
    turns = [
        Message(role="user", content="croissant " * 300 + "?"),  # too long for the window
        Message(role="assistant", content="Laminate the butter with three folds [1]."),
        Message(role="user", content="And the oven?"),
        Message(role="assistant", content="Bake at 200 degrees [2]."),
    ]
    # Room for the last three turns, not for the long first question.
    limit = count_message_tokens([Message(role="user", content=str(turns[1:]))]) + 200

    def limits(model: str, answer_tokens: int) -> tuple[int, int]:
        return answer_tokens, limit

    service._limits = limits  # type: ignore[method-assign]
    usage: list[Any] = []
    standalone = await service._condense(
        "m", False, turns, "And how long do they proof?", CallContext(), usage
    )
    assert standalone == "How long do croissants proof?"
    (request,) = gateway.requests
    prompt = request.messages[-1].content or ""
    history = prompt.split("Conversation:\n", 1)[1].split("\n\nLast question:", 1)[0]
    assert history.startswith("user: And the oven?"), history
    assert "Laminate" not in history
