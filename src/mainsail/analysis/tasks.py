"""The shipped analysis tasks: each a versioned prompt file plus the model of its answer.

A task turns the caller's input and options into messages and a JSON Schema for the model,
then checks the model's answer: Pydantic for the shape, and task rules Pydantic cannot know
(labels must be the caller's, spans must point into the input). A failed check returns the
problems as text; the service feeds them back to the model for a repair attempt.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from string import Template
from typing import Any, Literal

from jsonschema import Draft202012Validator
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from referencing.exceptions import Unresolvable

from mainsail.analysis.custom_schema import InvalidSchema, check_custom_schema, validator_for
from mainsail.core.errors import UnprocessableContent

TASKS = ("sentiment", "summary", "classify", "extract", "custom")
DEFAULT_ENTITY_TYPES = ("person", "organization", "location", "date", "money", "product")


class _Answer(BaseModel):
    # Strict shapes: OpenAI's strict json_schema needs additionalProperties false, and an
    # answer with extra keys is a sign the model misread the task.
    model_config = ConfigDict(extra="forbid")


class Sentiment(_Answer):
    label: Literal["positive", "negative", "neutral", "mixed"]
    score: float = Field(ge=-1.0, le=1.0)
    rationale: str = Field(min_length=1, max_length=2000)


class Summary(_Answer):
    summary: str = Field(min_length=1)
    key_points: list[str] = Field(min_length=1, max_length=20)


class LabelScore(_Answer):
    label: str
    confidence: float = Field(ge=0.0, le=1.0)


class Classification(_Answer):
    labels: list[str]
    scores: list[LabelScore]


class Entity(_Answer):
    text: str = Field(min_length=1)
    type: str
    start: int = Field(ge=0)
    end: int = Field(ge=1)


class Extraction(_Answer):
    entities: list[Entity]


# --- options per task ----------------------------------------------------------------------


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str | None = Field(default=None, description="Catalogue model; default: settings.")


class SentimentOptions(_Options):
    pass


class SummaryOptions(_Options):
    max_words: int = Field(default=120, ge=10, le=2000)
    max_points: int = Field(default=5, ge=1, le=20)


class ClassifyOptions(_Options):
    labels: list[str] = Field(min_length=2, max_length=100)
    multi_label: bool = False


class ExtractOptions(_Options):
    types: list[str] = Field(default=list(DEFAULT_ENTITY_TYPES), min_length=1, max_length=50)


class CustomOptions(_Options):
    schema_: dict[str, Any] = Field(alias="schema")
    instructions: str | None = Field(default=None, max_length=4000)


OPTIONS: dict[str, type[_Options]] = {
    "sentiment": SentimentOptions,
    "summary": SummaryOptions,
    "classify": ClassifyOptions,
    "extract": ExtractOptions,
    "custom": CustomOptions,
}


# --- prompts -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prompt:
    task: str
    version: int
    system: Template
    user: Template

    @property
    def tag(self) -> str:
        return f"{self.task}@{self.version}"


@cache
def prompt(task: str) -> Prompt:
    text = resources.files("mainsail.analysis").joinpath("prompts", f"{task}.toml").read_text()
    raw = tomllib.loads(text)
    return Prompt(task, int(raw["version"]), Template(raw["system"]), Template(raw["user"]))


# --- a prepared task -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Prepared:
    """Everything the service needs to ask for and check one answer."""

    prompt: Prompt
    system: str
    user: str
    schema_name: str
    schema: dict[str, Any]
    strict: bool
    check: Callable[[Any], tuple[Any, list[str]]]  # parsed JSON -> (result, problems)


def prepare(task: str, text: str, options: _Options, *, limits: SchemaLimits) -> Prepared:
    p = prompt(task)
    if isinstance(options, SummaryOptions):
        values: dict[str, Any] = {
            "max_words": options.max_words,
            "max_points": options.max_points,
        }
        return _prepared(p, text, values, Summary, lambda r: _check_summary(r, options))
    if isinstance(options, ClassifyOptions):
        labels = _unique_labels(options.labels)
        selection = (
            "every label that applies (possibly none)."
            if options.multi_label
            else "a list with exactly the one label that fits best."
        )
        values = {"labels": "\n".join(f"- {label}" for label in labels)}
        values["selection"] = selection
        return _prepared(
            p, text, values, Classification, lambda r: _check_classes(r, labels, options)
        )
    if isinstance(options, ExtractOptions):
        types = list(dict.fromkeys(options.types))
        values = {"types": ", ".join(types)}
        return _prepared(p, text, values, Extraction, lambda r: _check_spans(r, text, types))
    if isinstance(options, CustomOptions):
        schema = check_custom_schema(
            options.schema_, max_bytes=limits.max_bytes, max_depth=limits.max_depth
        )
        values = {"instructions": options.instructions or ""}
        validator = validator_for(schema)
        return Prepared(
            prompt=p,
            system=p.system.safe_substitute(values).strip(),
            user=p.user.substitute(input=text).strip(),
            schema_name="custom",
            schema=schema,
            strict=False,  # a caller's schema need not fit the providers' strict subset
            check=lambda value: _check_custom(validator, value),
        )
    return _prepared(p, text, {}, Sentiment, lambda r: (r, []))


@dataclass(frozen=True, slots=True)
class SchemaLimits:
    max_bytes: int
    max_depth: int


def _prepared(
    p: Prompt,
    text: str,
    values: dict[str, Any],
    model: type[_Answer],
    rules: Callable[[Any], tuple[Any, list[str]]],
) -> Prepared:
    def check(value: Any) -> tuple[Any, list[str]]:
        try:
            parsed = model.model_validate(value)
        except ValidationError as exc:
            return None, [_describe(error) for error in exc.errors()]
        return rules(parsed)

    return Prepared(
        prompt=p,
        system=p.system.substitute(values).strip(),
        user=p.user.substitute(input=text).strip(),
        schema_name=p.task,
        schema=model.model_json_schema(),
        strict=True,
        check=check,
    )


def _describe(error: Any) -> str:
    where = ".".join(str(part) for part in error.get("loc", ())) or "(root)"
    return f"{where}: {error.get('msg', 'invalid')}"


def _unique_labels(labels: list[str]) -> list[str]:
    cleaned = [label.strip() for label in labels]
    if any(not label for label in cleaned):
        raise UnprocessableContent("options.labels must not contain empty labels.")
    if len(set(cleaned)) != len(cleaned):
        raise UnprocessableContent("options.labels must be unique.")
    return cleaned


def _check_summary(result: Summary, options: SummaryOptions) -> tuple[Any, list[str]]:
    problems = []
    words = len(result.summary.split())
    if words > options.max_words * 1.5:  # a little slack: models count words loosely
        problems.append(f"summary: {words} words, more than the {options.max_words} allowed")
    if len(result.key_points) > options.max_points:
        problems.append(f"key_points: more than {options.max_points} points")
    return result, problems


def _check_classes(
    result: Classification, labels: list[str], options: ClassifyOptions
) -> tuple[Any, list[str]]:
    problems = []
    allowed = set(labels)
    unknown = [label for label in result.labels if label not in allowed]
    if unknown:
        problems.append(f"labels: {unknown} are not among the allowed labels {labels}")
    if not options.multi_label and len(result.labels) != 1:
        problems.append(f"labels: exactly one label is required, got {len(result.labels)}")
    scored = [score.label for score in result.scores]
    if sorted(scored) != sorted(labels):
        problems.append(f"scores: need exactly one score for each of {labels}, got {scored}")
    return result, problems


def _check_spans(result: Extraction, text: str, types: list[str]) -> tuple[Any, list[str]]:
    """Offsets must point at the entity's text in the input. A model that names a real
    occurrence but miscounts is corrected to the nearest occurrence; an entity that is not in
    the input, or offsets outside it, are problems to repair."""
    problems: list[str] = []
    fixed: list[Entity] = []
    for n, entity in enumerate(result.entities):
        where = f"entities.{n}"
        if entity.type not in types:
            problems.append(f"{where}.type: {entity.type!r} is not one of {types}")
        if entity.end > len(text) or entity.start >= entity.end:
            problems.append(
                f"{where}: offsets {entity.start}..{entity.end} are outside the text "
                f"(0..{len(text)})"
            )
            continue
        if text[entity.start : entity.end] == entity.text:
            fixed.append(entity)
            continue
        starts = _occurrences(text, entity.text)
        if not starts:
            problems.append(f"{where}.text: {entity.text!r} does not occur in the text")
            continue
        start = min(starts, key=lambda s: abs(s - entity.start))
        fixed.append(entity.model_copy(update={"start": start, "end": start + len(entity.text)}))
    return Extraction(entities=fixed), problems


def _occurrences(text: str, needle: str) -> list[int]:
    found, at = [], text.find(needle)
    while at != -1:
        found.append(at)
        at = text.find(needle, at + 1)
    return found


def _check_custom(validator: Draft202012Validator, value: Any) -> tuple[Any, list[str]]:
    try:
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.absolute_path))
    except Unresolvable as exc:  # a reference the check could not tell apart: the caller's
        raise InvalidSchema(f"options.schema: a $ref cannot be resolved ({exc}).") from None
    problems = [
        f"{'.'.join(str(p) for p in error.absolute_path) or '(root)'}: {error.message}"
        for error in errors
    ][:20]
    return value, problems


def parse_json(text: str | None) -> tuple[Any, list[str]]:
    """The model's answer as JSON, tolerating a Markdown code fence around it."""
    if text is None:
        return None, ["the answer was empty"]
    cleaned = text.strip()
    if cleaned.startswith("```"):
        cleaned = cleaned.split("\n", 1)[1] if "\n" in cleaned else ""
        cleaned = cleaned.rsplit("```", 1)[0]
    try:
        return json.loads(cleaned), []
    except json.JSONDecodeError as exc:
        return None, [f"the answer is not valid JSON ({exc.msg} at position {exc.pos})"]
