"""Structured analysis: ask for JSON through the provider's native mechanism, check it, and
repair it with the model's help when it does not hold.

Each attempt is a full gateway call (budgeted, metered with the prompt's version). A failed
check sends the model its own answer back with the list of problems and asks again, up to
``analysis.max_repairs`` times; then the caller gets 502 ``invalid_model_output`` with the
problems (never the prompt, which holds the caller's input).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

from pydantic import ValidationError

from mainsail.analysis import tasks
from mainsail.core.errors import (
    AppError,
    PayloadTooLarge,
    UnprocessableContent,
    describe_validation_errors,
)
from mainsail.core.logging import get_logger
from mainsail.llm.errors import GenerationUnavailable
from mainsail.llm.gateway import CallContext, Gateway
from mainsail.llm.types import ChatRequest, Message, ResponseFormat, SamplingParams, Usage
from mainsail.settings import AnalysisSettings

log = get_logger(__name__)


class InvalidModelOutput(AppError):
    status, code, title = 502, "invalid_model_output", "The model's answer did not validate"


class UnknownTask(UnprocessableContent):
    code, title = "unknown_task", "Unknown task"


@dataclass(frozen=True, slots=True)
class Analysis:
    task: str
    prompt_version: str
    model: str
    result: Any
    usage: Usage
    cost: Decimal
    attempts: int
    cache_hit: bool = False  # every attempt was answered from the response cache


async def analyze(
    gateway: Gateway,
    settings: AnalysisSettings,
    ctx: CallContext,
    *,
    task: str,
    text: str,
    options: dict[str, Any],
) -> Analysis:
    if task not in tasks.TASKS:
        raise UnknownTask(
            f"Unknown task {task!r}; the tasks are: {', '.join(tasks.TASKS)}.",
            extra={"tasks": list(tasks.TASKS)},
        )
    if len(text) > settings.max_input_chars:
        raise PayloadTooLarge(
            f"The input is {len(text)} characters; the limit is {settings.max_input_chars} "
            "(MAINSAIL_ANALYSIS__MAX_INPUT_CHARS)."
        )
    try:
        parsed = tasks.OPTIONS[task].model_validate(options)
    except ValidationError as exc:
        located = [{**e, "loc": ("body", "options", *e["loc"])} for e in exc.errors()]
        raise UnprocessableContent(
            f"Invalid options for the {task} task.",
            extra={"errors": describe_validation_errors(located)},
        ) from None
    prepared = tasks.prepare(
        task,
        text,
        parsed,
        limits=tasks.SchemaLimits(
            settings.custom_schema_max_bytes, settings.custom_schema_max_depth
        ),
    )
    model = parsed.model or settings.model or default_model(gateway)
    max_tokens = min(settings.max_output_tokens, gateway.resolve(model).max_output_tokens)
    ctx = replace(ctx, prompt_version=prepared.prompt.tag)
    messages = [
        Message(role="system", content=prepared.system),
        Message(role="user", content=prepared.user),
    ]
    fmt = ResponseFormat(
        type="json_schema",
        name=prepared.schema_name,
        schema=prepared.schema,
        strict=prepared.strict,
    )
    used = Usage()
    cost = Decimal(0)
    problems: list[str] = []
    attempts = 0
    all_cached = True
    for attempts in range(1, settings.max_repairs + 2):
        request = ChatRequest(
            model=model,
            messages=tuple(messages),
            params=SamplingParams(temperature=settings.temperature, max_tokens=max_tokens),
            response_format=fmt,
        )
        response = await gateway.complete(request, ctx)
        used = Usage(
            input_tokens=used.input_tokens + response.usage.input_tokens,
            output_tokens=used.output_tokens + response.usage.output_tokens,
            estimated=used.estimated or response.usage.estimated,
        )
        all_cached = all_cached and response.cache_hit
        if not response.cache_hit:  # a cached answer was paid for once, by its first call
            cost += gateway.catalogue.models[response.model].cost_usd(response.usage)
        content = response.message.content
        value, problems = tasks.parse_json(content)
        if not problems:
            value, problems = prepared.check(value)
        if not problems:
            return Analysis(
                task=task,
                prompt_version=prepared.prompt.tag,
                model=response.model,
                result=value.model_dump() if hasattr(value, "model_dump") else value,
                usage=used,
                cost=cost,
                attempts=attempts,
                cache_hit=all_cached,
            )
        await gateway.forget(request, ctx)  # a later identical request must not get it again
        if response.finish_reason == "length":
            problems.append("the answer was cut off at the output limit; answer more briefly")
        log.info("analysis_repair", task=task, attempt=attempts, problems=len(problems))
        messages += [
            Message(role="assistant", content=content or ""),
            Message(role="user", content=_repair_request(problems)),
        ]
    raise InvalidModelOutput(
        f"The model's answer did not match the {task} schema after {attempts} attempts.",
        extra={"errors": problems, "attempts": attempts},
    )


def default_model(gateway: Gateway) -> str:
    """The first configured chat model that can generate (not the extractive fallback)."""
    for entry in gateway.available_models():
        if gateway.catalogue.provider(entry.provider).kind != "extractive":
            return entry.name
    raise GenerationUnavailable(
        "Analysis needs a language model; configure OPENAI_API_KEY, ANTHROPIC_API_KEY, AWS "
        "credentials with AWS_REGION, or a catalogue file (MAINSAIL_LLM__CATALOGUE_FILE)."
    )


def _repair_request(problems: list[str]) -> str:
    listed = "\n".join(f"- {problem}" for problem in problems[:20])
    return (
        "Your answer did not validate:\n"
        f"{listed}\n"
        "Answer again with the corrected JSON only, valid against the schema."
    )
