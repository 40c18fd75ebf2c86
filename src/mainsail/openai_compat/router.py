"""OpenAI-compatible API: point an OpenAI SDK (or LangChain, or a browser app) at
``http://host:8000/v1`` and keep working, with the provider keys kept on the server."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from mainsail.core import fastjson
from mainsail.core.logging import get_logger
from mainsail.core.sse import EventStreamResponse
from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.errors import (
    InternalError,
    LLMError,
    ModelNotFound,
    StreamInterrupted,
)
from mainsail.llm.gateway import Gateway
from mainsail.llm.types import (
    RefusalDelta,
    StreamEnd,
    StreamEvent,
    StreamStart,
    TextDelta,
    ToolCallDelta,
)
from mainsail.openai_compat.deps import GatewayDep, V1Caller, call_context, v1_caller
from mainsail.openai_compat.errors import llm_error_status, to_openai_error
from mainsail.openai_compat.schemas import (
    ChatCompletionRequest,
    EmbeddingsRequest,
    chunk_json,
    completion_json,
    embeddings_json,
)

log = get_logger(__name__)
# Marks an answer replayed from the response cache (no upstream call, no cost).
CACHE_HIT = {"Mainsail-Cache": "hit"}


class OpenAIRoute(APIRoute):
    """Every failure on this surface, authentication included, in OpenAI's error shape.

    An endpoint marked with ``reads_own_request`` is called without FastAPI's generic request
    handler (see ``_lean_handler``); everything else goes through it as usual.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        body_model: type[BaseModel] | None = getattr(self.endpoint, _LEAN, None)
        if body_model is None:
            return _shaped(super().get_route_handler())
        # The lean handler runs exactly one dependency, ``v1_caller``: refuse to start if the
        # route ever needs another, rather than skip it silently.
        calls = {dependency.call for dependency in self.dependant.dependencies}
        if calls != {v1_caller}:
            raise RuntimeError(f"{self.path}: a lean route may depend on v1_caller only")
        return _shaped(_lean_handler(self.endpoint, body_model))


def _shaped(
    handler: Callable[[Request], Coroutine[Any, Any, Response]],
) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    """``handler`` with every failure it raises answered in OpenAI's error shape, if ours."""

    async def handle(request: Request) -> Response:
        try:
            return await handler(request)
        except Exception as exc:
            shaped = to_openai_error(exc, getattr(request.state, "request_id", None))
            if shaped is None:
                raise
            return shaped

    return handle


_LEAN = "__mainsail_reads_own_request__"
_Endpoint = TypeVar("_Endpoint", bound=Callable[..., Any])
_MISSING_BODY = {"type": "missing", "loc": ("body",), "msg": "Field required", "input": None}


def reads_own_request(body_model: type[BaseModel]) -> Callable[[_Endpoint], _Endpoint]:
    """Marks an endpoint ``(body, request, principal)`` that ``OpenAIRoute`` calls directly.

    Why: FastAPI's generic handler (content-type parsing through ``email.message``, dependency
    resolution with its per-dependency bookkeeping, parameter validation) costs about as much
    per request as the whole gateway call around a fast upstream. The lean handler does the
    same checks in the same order, with the same errors: the body's JSON is decoded first (a
    decode error wins over missing credentials), then ``v1_caller`` (415, 401, 403), then the
    body is validated into ``body_model`` (errors located under ``body``, as FastAPI does).
    The route is still declared with its parameters, so the OpenAPI description is unchanged.
    """

    def mark(endpoint: _Endpoint) -> _Endpoint:
        setattr(endpoint, _LEAN, body_model)
        return endpoint

    return mark


def _lean_handler(
    endpoint: Callable[..., Any], body_model: type[BaseModel]
) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    async def handle(request: Request) -> Response:
        data: Any = _MISSING_BODY
        try:
            raw = await request.body()
            if raw and _is_json(request.headers.get("content-type")):
                data = json.loads(raw)
            elif raw:
                data = raw  # not JSON: v1_caller answers 415 before it is validated
        except json.JSONDecodeError as exc:
            error = {
                "type": "json_invalid",
                "loc": ("body", exc.pos),
                "msg": "JSON decode error",
                "input": {},
                "ctx": {"error": exc.msg},
            }
            raise RequestValidationError([error], body=exc.doc) from exc
        except HTTPException:  # the body-size limit, raised while reading
            raise
        except Exception as exc:  # not UTF-8/16/32, or the client went away mid-body
            raise HTTPException(400, "There was an error parsing the body") from exc
        principal = await v1_caller(request)
        if data is _MISSING_BODY:
            raise RequestValidationError([_MISSING_BODY])
        try:
            # As FastAPI validates a body parameter (attributes read too).
            body = body_model.model_validate(data, from_attributes=True)
        except ValidationError as exc:
            errors = [
                {**error, "loc": ("body", *error["loc"])} for error in exc.errors(include_url=False)
            ]
            raise RequestValidationError(errors, body=data) from None
        response: Response = await endpoint(body, request, principal)
        return response

    return handle


def _is_json(content_type: str | None) -> bool:
    """``application/json`` or ``application/*+json``, parameters ignored (what FastAPI
    decodes as JSON)."""
    if not content_type:
        return False
    media = content_type.split(";", 1)[0].strip().lower()
    maintype, _, subtype = media.partition("/")
    return maintype == "application" and (subtype == "json" or subtype.endswith("+json"))


router = APIRouter(
    prefix="/v1",
    tags=["openai-compatible"],
    route_class=OpenAIRoute,
    # Every route, present or future, checks the caller; routes that need the principal
    # declare ``V1Caller`` too, which FastAPI resolves once per request.
    dependencies=[Depends(v1_caller)],
)


def _available(gateway: Gateway) -> list[ModelEntry]:
    """The models a caller can use: configured, chat and embeddings."""
    return [*gateway.available_models(), *gateway.available_models("embedding")]


def _model_json(entry: ModelEntry) -> dict[str, Any]:
    return {"id": entry.name, "object": "model", "created": 0, "owned_by": entry.provider}


@router.get("/models", summary="Models this server can answer with (chat and embeddings)")
async def list_models(gateway: GatewayDep) -> dict[str, Any]:
    return {"object": "list", "data": [_model_json(entry) for entry in _available(gateway)]}


# ``:path``: a model name may hold slashes (``org/model``, as on some compatible servers).
@router.get("/models/{model_id:path}", summary="One model, if this server can answer with it")
async def retrieve_model(model_id: str, gateway: GatewayDep) -> dict[str, Any]:
    if not model_id:  # "/v1/models/": the list, as before this route took the path
        return await list_models(gateway)
    available = _available(gateway)
    for entry in available:
        if entry.name == model_id:
            return _model_json(entry)
    # Unknown and unconfigured alike: the list above does not show either.
    raise ModelNotFound(model_id, sorted(entry.name for entry in available))


@router.post("/embeddings", summary="Embeddings of one text or a list of texts")
async def embeddings(
    body: EmbeddingsRequest, request: Request, principal: V1Caller, gateway: GatewayDep
) -> JSONResponse:
    ctx = call_context(request, principal, kind="v1.embeddings")
    response = await gateway.embed(body.to_request(), ctx)
    return JSONResponse(embeddings_json(response, encoding_format=body.encoding_format))


@router.post("/chat/completions", summary="Chat completion (JSON, or SSE with stream: true)")
@reads_own_request(ChatCompletionRequest)
async def chat_completions(
    body: ChatCompletionRequest, request: Request, principal: V1Caller
) -> Response:
    gateway: Gateway = request.app.state.gateway  # not a dependency: one less to resolve
    chat = body.to_request()
    ctx = call_context(request, principal, kind="v1.chat")
    created = int(time.time())
    if not body.stream:
        response = await gateway.complete(chat, ctx)
        return Response(
            fastjson.dumps(completion_json(response, created=created)),
            media_type="application/json",
            headers=CACHE_HIT if response.cache_hit else None,
        )
    events = aiter(gateway.stream(chat, ctx))
    # Wait for the answer to start before sending a status: a failure before the first token
    # (after every retry and fallback) is an ordinary HTTP error, not a stream.
    try:
        first = await anext(events)
    except StopAsyncIteration:  # pragma: no cover - a stream always starts
        raise LLMError("The model produced no answer.") from None
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return EventStreamResponse(
        _sse(first, events, created=created, include_usage=include_usage),
        headers=CACHE_HIT if isinstance(first, StreamStart) and first.cache_hit else None,
        on_close=events.aclose,  # type: ignore[attr-defined]
    )


def hot_routes() -> dict[tuple[str, str], Callable[[Request], Coroutine[Any, Any, Response]]]:
    """The surface's hot routes and their handlers, for ``core.hotpath.HotRoutes``: the same
    handler the route builds (lean, OpenAI-shaped errors), called without the router."""
    calls = [dependency.dependency for dependency in router.dependencies]
    if calls != [v1_caller]:  # what the lean handler checks itself, and nothing more
        raise RuntimeError("the /v1 router's dependencies changed: the hot route would skip them")
    lean = _shaped(_lean_handler(chat_completions, ChatCompletionRequest))
    return {("POST", "/v1/chat/completions"): lean}


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + fastjson.dumps(payload) + b"\n\n"


async def openai_chunks(
    first: StreamEvent,
    events: AsyncIterator[StreamEvent],
    *,
    created: int,
    include_usage: bool,
) -> AsyncIterator[dict[str, Any]]:
    """The answer as OpenAI chunk objects: a role chunk, deltas, a finish chunk, and a usage
    chunk if asked for. Raises ``LLMError`` if the answer breaks off."""
    start = first if isinstance(first, StreamStart) else StreamStart("chatcmpl", "unknown", "")
    chunk_id, model = start.id, start.model
    yield chunk_json(chunk_id, model, created, delta={"role": "assistant", "content": ""})
    pending: list[StreamEvent] = [] if isinstance(first, StreamStart) else [first]
    ended = False
    async for event in _chain(pending, events):
        if isinstance(event, TextDelta):
            yield chunk_json(chunk_id, model, created, delta={"content": event.text})
        elif isinstance(event, RefusalDelta):
            yield chunk_json(chunk_id, model, created, delta={"refusal": event.text})
        elif isinstance(event, ToolCallDelta):
            call: dict[str, Any] = {
                "index": event.index,
                "function": {"arguments": event.arguments},
            }
            if event.id is not None:
                call["id"], call["type"] = event.id, "function"
            if event.name is not None:
                call["function"]["name"] = event.name
            yield chunk_json(chunk_id, model, created, delta={"tool_calls": [call]})
        elif isinstance(event, StreamEnd):
            ended = True
            yield chunk_json(chunk_id, model, created, delta={}, finish_reason=event.finish_reason)
            if include_usage:
                yield chunk_json(chunk_id, model, created, usage=event.usage)
    if not ended:  # a stream without its end is not an answer, whatever the reason
        raise StreamInterrupted("The answer ended without finishing.")


def stream_error(exc: Exception) -> dict[str, Any]:
    """The error event that ends a broken stream; never the text of an unexpected error."""
    if not isinstance(exc, LLMError):
        log.error("stream_crashed", exc_info=exc)
        exc = InternalError("The answer failed unexpectedly; the request id identifies it.")
    return {
        "message": exc.message,
        "type": "api_error",
        "param": None,
        "code": exc.code,
        "status": llm_error_status(exc),
    }


async def _sse(
    first: StreamEvent,
    events: AsyncIterator[StreamEvent],
    *,
    created: int,
    include_usage: bool,
) -> AsyncIterator[bytes]:
    """Every stream ends with a finish chunk (+ usage) and ``[DONE]``, or with an explicit
    error event: never a silent cut."""
    try:
        async for chunk in openai_chunks(
            first, events, created=created, include_usage=include_usage
        ):
            yield _data(chunk)
        yield b"data: [DONE]\n\n"
    except Exception as exc:
        log.warning("stream_failed", code=getattr(exc, "code", type(exc).__name__))
        yield _data({"error": stream_error(exc)})
    finally:
        await events.aclose()  # type: ignore[attr-defined]  # runs the gateway's metering


async def _chain(
    first: list[StreamEvent], rest: AsyncIterator[StreamEvent]
) -> AsyncIterator[StreamEvent]:
    for event in first:
        yield event
    async for event in rest:
        yield event
