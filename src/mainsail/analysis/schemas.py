"""The ``POST /analyze`` contract."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mainsail.core.schemas import StrictModel


class AnalyzeRequest(StrictModel):
    task: str = Field(
        description="sentiment | summary | classify | extract | custom", examples=["sentiment"]
    )
    input: str = Field(min_length=1, description="The text to analyze.")
    options: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Per task: model (any); summary: max_words, max_points; classify: labels, "
            "multi_label; extract: types; custom: schema (JSON Schema 2020-12), instructions."
        ),
    )


class AnalyzeUsage(StrictModel):
    input_tokens: int
    output_tokens: int
    cost_usd: str
    attempts: int = Field(description="Model calls made: 1, plus one per repair.")


class AnalyzeResponse(StrictModel):
    task: str
    prompt_version: str
    model: str
    result: Any
    usage: AnalyzeUsage
    request_id: str | None
