"""The offline default: not a language model. It answers only from supplied passages, by
quoting the sentences that best match the question, each with its source marker [n].

Passages come from the request's ``context`` (retrieval results) or, for a plain chat call,
from the system message and earlier turns, one passage per paragraph.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.errors import GenerationUnavailable
from mainsail.llm.providers.base import (
    last_user_text,
    new_response_id,
    no_embeddings,
    replay_as_stream,
)
from mainsail.llm.sentences import SENTENCE, without_markers, words
from mainsail.llm.tokens import count_message_tokens, count_tokens
from mainsail.llm.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    EventStream,
    Message,
    Passage,
    Usage,
)

MAX_SENTENCES = 3
NO_CONTEXT = (
    "I can only answer from supplied sources, and none were given. Configure a language model "
    "(OPENAI_API_KEY, ANTHROPIC_API_KEY or AWS credentials) for generated answers."
)
NOT_FOUND = "The supplied sources do not answer that question."
CONFIGURE = "OPENAI_API_KEY, ANTHROPIC_API_KEY or AWS credentials with AWS_REGION"

_STOPWORDS = frozenset(
    [
        "a",
        "an",
        "and",
        "are",
        "as",
        "at",
        "be",
        "by",
        "did",
        "do",
        "does",
        "for",
        "from",
        "had",
        "has",
        "have",
        "how",
        "i",
        "in",
        "is",
        "it",
        "its",
        "of",
        "on",
        "or",
        "that",
        "the",
        "their",
        "there",
        "this",
        "to",
        "was",
        "were",
        "what",
        "when",
        "where",
        "which",
        "who",
        "why",
        "will",
        "with",
        "you",
        "your",
        "can",
        "could",
        "should",
        "would",
        "about",
        "into",
        "than",
        "then",
        "them",
        "they",
        "we",
        "our",
    ]
)


def _terms(text: str) -> list[str]:
    return [w for w in words(text, shortest=2) if w not in _STOPWORDS]


def passages_for(request: ChatRequest) -> list[Passage]:
    if request.context:
        return list(request.context)
    found: list[Passage] = []
    earlier = [m for m in request.messages[:-1] if m.content and m.role in ("system", "user")]
    for message in earlier:
        for paragraph in re.split(r"\n\s*\n", message.content or ""):
            if paragraph.strip():
                found.append(Passage(id=str(len(found) + 1), text=paragraph.strip()))
    return found


def answer(question: str, passages: list[Passage]) -> str:
    if not passages:
        return NO_CONTEXT
    wanted = set(_terms(question))
    if not wanted:
        return NOT_FOUND
    sentences: list[tuple[int, int, str, list[str]]] = []  # passage, order, text, terms
    for p_index, passage in enumerate(passages):
        for s_index, match in enumerate(SENTENCE.finditer(passage.text)):
            # A sentence is quoted as written, but a bracketed number in the source's own
            # text ("as shown in [2]") would read as a citation marker of this answer.
            text = " ".join(without_markers(match.group()).split())
            if text:
                sentences.append((p_index, s_index, text, _terms(text)))
    document_frequency: Counter[str] = Counter()
    for *_, terms in sentences:
        document_frequency.update(set(terms))
    total = len(sentences)

    def score(terms: list[str]) -> float:
        if not terms:
            return 0.0
        overlap = sum(math.log(1 + total / document_frequency[t]) for t in set(terms) & wanted)
        return overlap / math.sqrt(len(terms))

    ranked = sorted(
        ((score(terms), p, s, text) for p, s, text, terms in sentences),
        key=lambda item: (-item[0], item[1], item[2]),
    )
    best = [item for item in ranked[:MAX_SENTENCES] if item[0] > 0]
    if not best:
        return NOT_FOUND
    best.sort(key=lambda item: (item[1], item[2]))  # in reading order
    return " ".join(f"{text} [{p + 1}]" for _, p, _, text in best)


class ExtractiveAdapter:
    name = "extractive"

    async def aclose(self) -> None:
        return None

    async def embed(self, request: EmbeddingRequest, entry: ModelEntry) -> EmbeddingResponse:
        raise no_embeddings(self.name, entry)

    def _respond(self, request: ChatRequest, entry: ModelEntry) -> ChatResponse:
        fmt = request.response_format
        if (fmt is not None and fmt.type != "text") or (
            request.tool_choice is not None and request.tool_choice.mode in ("required", "tool")
        ):
            raise GenerationUnavailable(
                f"Structured output and tool calls need a language model; configure {CONFIGURE}.",
                provider=self.name,
                model=entry.name,
            )
        text = answer(last_user_text(request.messages), passages_for(request))
        return ChatResponse(
            id=new_response_id(),
            model=entry.name,
            provider=self.name,
            message=Message(role="assistant", content=text),
            finish_reason="stop",
            usage=Usage(
                input_tokens=count_message_tokens(request.messages)
                + sum(count_tokens(p.text) for p in request.context),
                output_tokens=count_tokens(text),
                estimated=True,
            ),
        )

    async def complete(self, request: ChatRequest, entry: ModelEntry) -> ChatResponse:
        return self._respond(request, entry)

    def stream(self, request: ChatRequest, entry: ModelEntry) -> EventStream:
        return replay_as_stream(self._respond(request, entry))
