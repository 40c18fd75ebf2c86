"""A fake LLM provider on real loopback HTTP, for the official OpenAI and Anthropic SDKs.

The provider adapters talk through the vendors' SDKs, so the only faithful way to test them
(headers, SSE parsing, error mapping, timeouts) is to answer real HTTP in each vendor's shape.
Tests script one action per request (a ``Reply`` or a ``Fault``) and read back every call,
which also lets retry, breaker and fallback tests count upstream attempts.

Fault kinds: ``rate_limit`` (429, optional Retry-After), ``server_error`` (500 or ``status``),
``overloaded`` (Anthropic 529, OpenAI 503), ``bad_request`` (400), ``hang`` (wait ``hang_s``,
then answer normally), ``malformed`` (200 with invalid JSON) and ``cut_stream`` (send
``after_chunks`` content deltas, then drop the connection; a 500 for non-stream requests).

Embeddings: OpenAI's ``POST /v1/embeddings`` (float or base64) and Bedrock's InvokeModel for
Titan text embeddings (``POST /model/{id}/invoke``, for boto3 with ``endpoint_url``). Vectors
are deterministic (``fake_embedding``: seeded by the model and the text, unit length) of
``embedding_dimension`` (or the request's ``dimensions``); usage counts words, as for chat.
Each request takes the next scripted action too: a ``Fault`` fails it in that vendor's error
shape (Bedrock: ``x-amzn-ErrorType``), a ``Reply`` may set ``input_tokens``, ``report_usage``
or ``delay_s``. A streamed ``Reply`` may pause ``chunk_delay_s`` before each content delta;
``abandoned_streams`` counts streams whose client went away before their end.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import itertools
import json
import logging
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

__all__ = ["FakeProviderServer", "Fault", "RecordedCall", "Reply", "ToolCall", "fake_embedding"]

FAULT_KINDS = frozenset(
    {"rate_limit", "server_error", "overloaded", "bad_request", "hang", "malformed", "cut_stream"}
)
MALFORMED_BODY = b'{"this is": not json'
DEFAULT_EMBEDDING_DIMENSION = 48
# Bedrock errors by fault kind: status and error code (botocore reads x-amzn-ErrorType).
_BEDROCK_ERRORS = {
    "rate_limit": (429, "ThrottlingException"),
    "server_error": (500, "InternalServerException"),
    "overloaded": (503, "ServiceUnavailableException"),
    "bad_request": (400, "ValidationException"),
}


def fake_embedding(model: str, text: str, dimension: int) -> list[float]:
    """The fake's vector for ``text``: seeded by model and text, unit length, float32."""
    seed = int.from_bytes(hashlib.sha256(f"{model}\x00{text}".encode()).digest()[:8], "little")
    vector = np.random.default_rng(seed).standard_normal(dimension).astype(np.float32)
    vector /= np.linalg.norm(vector)
    return [float(value) for value in vector]


def _words(text: str) -> int:
    return max(len(text.split()), 1)


@dataclass(frozen=True)
class ToolCall:
    """A tool call made by the fake model; an ``id`` is generated when not given."""

    name: str
    arguments: dict[str, Any]
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    """A successful answer. Token counts default to word counts, so tests can predict them.

    ``finish_reason`` may use either vendor's names; each dialect translates. Usage values are
    reported as given, in each vendor's own fields.
    """

    text: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    finish_reason: str | None = None
    input_tokens: int | None = None
    output_tokens: int | None = None
    cached_input_tokens: int = 0
    cache_write_tokens: int = 0
    report_usage: bool = True  # Anthropic always reports usage: its schema requires it.
    delay_s: float = 0.0
    chunk_delay_s: float = 0.0  # streams: the pause before each content delta after the first


@dataclass(frozen=True)
class Fault:
    """A failure injected into one request (kinds in the module docstring).

    ``status`` overrides the HTTP status of error faults; ``retry_after`` adds a Retry-After
    header to them.
    """

    kind: str
    retry_after: float | None = None
    status: int | None = None
    after_chunks: int = 1
    hang_s: float = 30.0

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {self.kind!r}; expected {sorted(FAULT_KINDS)}")


Action = Reply | Fault


@dataclass(frozen=True)
class RecordedCall:
    """One request as the fake received it (header names lower-cased)."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass(frozen=True)
class _Answer:
    """A ``Reply`` resolved against its request: ids, model, finish reason and usage fixed."""

    serial: int
    created: int
    model: str
    text: str
    tool_calls: tuple[tuple[str, str, dict[str, Any]], ...]  # (id, name, arguments)
    finish: str
    input_tokens: int
    output_tokens: int
    cached: int
    cache_write: int
    report_usage: bool


@dataclass(frozen=True)
class _Frame:
    """One SSE event. ``kind`` tells cut_stream where to cut: it counts "content" deltas and
    never lets a "final" event (finish, usage, stop, [DONE]) through."""

    data: str
    kind: str  # "meta" | "content" | "final"


class _StreamCut(Exception):
    """Raised inside a streaming body: uvicorn then closes the socket with no end-of-body."""


def _is_cut(exc: BaseException | None) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return any(_is_cut(inner) for inner in exc.exceptions)
    return isinstance(exc, _StreamCut)


class _QuietStreamCut(logging.Filter):
    """Drops uvicorn's 'Exception in ASGI application' record for a deliberate cut."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and _is_cut(record.exc_info[1]))


_QUIET_CUT = _QuietStreamCut()


def _pieces(text: str, count: int) -> list[str]:
    """Split ``text`` into about ``count`` pieces, so streams have several deltas."""
    if not text:
        return []
    size = -(-len(text) // count)
    return [text[i : i + size] for i in range(0, len(text), size)]


def _block_text(content: Any) -> list[str]:
    """Text of a message's content: a string, or text parts / tool results in a list."""
    if isinstance(content, str):
        return [content]
    texts: list[str] = []
    for part in content if isinstance(content, list) else []:
        if not isinstance(part, dict):
            continue
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif part.get("type") == "tool_result":
            texts.extend(_block_text(part.get("content")))
    return texts


def _messages(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [m for m in body.get("messages", []) if isinstance(m, dict)]


class _Dialect:
    """What differs between vendors: request validation, error shape, answer shape."""

    finish_names: ClassVar[dict[str, str]]  # Reply.finish_reason -> this vendor's name
    tool_id_prefix: ClassVar[str]
    errors: ClassVar[dict[str, tuple[int, str, str, str | None]]]  # kind: status, type, msg, code

    def validate(self, body: dict[str, Any]) -> str | None:
        if not isinstance(body.get("model"), str):
            return "model: field required"
        if not isinstance(body.get("messages"), list):
            return "messages: field required"
        return None

    def prompt_texts(self, body: dict[str, Any]) -> list[str]:
        return [t for m in _messages(body) for t in _block_text(m.get("content"))]

    def last_user_text(self, body: dict[str, Any]) -> str:
        users = [m for m in _messages(body) if m.get("role") == "user"]
        return " ".join(_block_text(users[-1].get("content"))) if users else ""


class _OpenAI(_Dialect):
    finish_names: ClassVar = {"end_turn": "stop", "tool_use": "tool_calls", "max_tokens": "length"}
    tool_id_prefix = "call_"
    errors: ClassVar = {
        "rate_limit": (429, "requests", "Rate limit reached (fake).", "rate_limit_exceeded"),
        "server_error": (500, "server_error", "The server had an error (fake).", None),
        "overloaded": (503, "server_error", "overloaded", None),
        "bad_request": (400, "invalid_request_error", "Invalid request (fake).", None),
    }

    def error(self, kind: str, message: str | None = None) -> tuple[int, dict[str, Any]]:
        status, type_, default, code = self.errors[kind]
        detail = {"message": message or default, "type": type_, "param": None, "code": code}
        return status, {"error": detail}

    def _usage(self, a: _Answer) -> dict[str, Any]:
        return {
            "prompt_tokens": a.input_tokens,
            "completion_tokens": a.output_tokens,
            "total_tokens": a.input_tokens + a.output_tokens,
            "prompt_tokens_details": {"cached_tokens": a.cached},
        }

    def _tool_calls(self, a: _Answer) -> list[dict[str, Any]]:
        return [
            {"id": i, "type": "function", "function": {"name": n, "arguments": json.dumps(args)}}
            for i, n, args in a.tool_calls
        ]

    def render(self, a: _Answer) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": a.text or None, "refusal": None}
        if a.tool_calls:
            message["tool_calls"] = self._tool_calls(a)
        choice = {"index": 0, "message": message, "finish_reason": a.finish, "logprobs": None}
        result: dict[str, Any] = {"id": f"chatcmpl-{a.serial}", "object": "chat.completion"}
        result |= {"created": a.created}
        result |= {"model": a.model, "system_fingerprint": None, "choices": [choice]}
        return result | ({"usage": self._usage(a)} if a.report_usage else {})

    def frames(self, a: _Answer, body: dict[str, Any]) -> list[_Frame]:
        head: dict[str, Any] = {"id": f"chatcmpl-{a.serial}", "object": "chat.completion.chunk"}
        head |= {"created": a.created, "model": a.model, "system_fingerprint": None}

        def chunk(
            delta: dict[str, Any], kind: str = "content", finish: str | None = None
        ) -> _Frame:
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            return _Frame(f"data: {json.dumps({**head, 'choices': [choice]})}\n\n", kind)

        frames = [chunk({"role": "assistant", "content": ""}, "meta")]
        frames += [chunk({"content": piece}) for piece in _pieces(a.text, 3)]
        for index, call in enumerate(self._tool_calls(a)):
            opening = {**call, "function": {"name": call["function"]["name"], "arguments": ""}}
            frames.append(chunk({"tool_calls": [{"index": index, **opening}]}))
            for piece in _pieces(call["function"]["arguments"], 2):
                delta = {"index": index, "function": {"arguments": piece}}
                frames.append(chunk({"tool_calls": [delta]}))
        frames.append(chunk({}, "final", a.finish))
        options = body.get("stream_options")
        if a.report_usage and isinstance(options, dict) and options.get("include_usage"):
            usage = {**head, "choices": [], "usage": self._usage(a)}
            frames.append(_Frame(f"data: {json.dumps(usage)}\n\n", "final"))
        frames.append(_Frame("data: [DONE]\n\n", "final"))
        return frames


class _Anthropic(_Dialect):
    finish_names: ClassVar = {"stop": "end_turn", "tool_calls": "tool_use", "length": "max_tokens"}
    tool_id_prefix = "toolu_"
    errors: ClassVar = {
        "rate_limit": (429, "rate_limit_error", "Rate limit reached (fake).", None),
        "server_error": (500, "api_error", "Internal server error (fake).", None),
        "overloaded": (529, "overloaded_error", "Overloaded", None),
        "bad_request": (400, "invalid_request_error", "Invalid request (fake).", None),
    }

    def validate(self, body: dict[str, Any]) -> str | None:
        problem = super().validate(body)
        if problem is None and not isinstance(body.get("max_tokens"), int):
            problem = "max_tokens: field required"
        return problem

    def prompt_texts(self, body: dict[str, Any]) -> list[str]:
        return _block_text(body.get("system")) + super().prompt_texts(body)

    def error(self, kind: str, message: str | None = None) -> tuple[int, dict[str, Any]]:
        status, type_, default, _ = self.errors[kind]
        return status, {"type": "error", "error": {"type": type_, "message": message or default}}

    def _blocks(self, a: _Answer) -> list[dict[str, Any]]:
        blocks: list[dict[str, Any]] = []
        if a.text or not a.tool_calls:
            blocks.append({"type": "text", "text": a.text})
        blocks += [{"type": "tool_use", "id": i, "name": n, "input": x} for i, n, x in a.tool_calls]
        return blocks

    def _usage(self, a: _Answer, output_tokens: int) -> dict[str, Any]:
        return {
            "input_tokens": a.input_tokens,
            "output_tokens": output_tokens,
            "cache_creation_input_tokens": a.cache_write,
            "cache_read_input_tokens": a.cached,
        }

    def _shell(self, a: _Answer) -> dict[str, Any]:
        return {"id": f"msg_{a.serial}", "type": "message", "role": "assistant", "model": a.model}

    def render(self, a: _Answer) -> dict[str, Any]:
        return {
            **self._shell(a),
            "content": self._blocks(a),
            "stop_reason": a.finish,
            "stop_sequence": None,
            "usage": self._usage(a, a.output_tokens),
        }

    def frames(self, a: _Answer, body: dict[str, Any]) -> list[_Frame]:
        def event(type_: str, kind: str = "meta", **payload: Any) -> _Frame:
            data = json.dumps({"type": type_, **payload})
            return _Frame(f"event: {type_}\ndata: {data}\n\n", kind)

        start = {**self._shell(a), "content": [], "stop_reason": None, "stop_sequence": None}
        frames = [event("message_start", message={**start, "usage": self._usage(a, 1)})]
        for index, block in enumerate(self._blocks(a)):
            if block["type"] == "text":
                opening, pieces = {**block, "text": ""}, _pieces(block["text"], 3)
                deltas = [{"type": "text_delta", "text": piece} for piece in pieces]
            else:
                opening, pieces = {**block, "input": {}}, _pieces(json.dumps(block["input"]), 2)
                deltas = [{"type": "input_json_delta", "partial_json": piece} for piece in pieces]
            frames.append(event("content_block_start", index=index, content_block=opening))
            frames += [
                event("content_block_delta", "content", index=index, delta=d) for d in deltas
            ]
            frames.append(event("content_block_stop", index=index))
        stop = {"stop_reason": a.finish, "stop_sequence": None}
        usage = {"output_tokens": a.output_tokens}
        frames.append(event("message_delta", "final", delta=stop, usage=usage))
        frames.append(event("message_stop", "final"))
        return frames


_OPENAI = _OpenAI()
_ANTHROPIC = _Anthropic()
_Vendor = _OpenAI | _Anthropic


async def _sse(
    frames: list[_Frame],
    cut_after: int | None,
    *,
    chunk_delay_s: float = 0.0,
    on_abandoned: Callable[[], None] | None = None,
) -> AsyncIterator[str]:
    """Yield the frames; with ``cut_after``, stop with ``_StreamCut`` before the finish.
    ``on_abandoned`` runs if the client goes away before the last frame."""
    sent = 0
    finished = False
    try:
        for frame in frames:
            if cut_after is not None and (
                frame.kind == "final" or (frame.kind == "content" and sent >= cut_after)
            ):
                raise _StreamCut(f"stream cut after {sent} content chunk(s)")
            if frame.kind == "content" and sent and chunk_delay_s:
                await asyncio.sleep(chunk_delay_s)
            yield frame.data
            sent += frame.kind == "content"
            await asyncio.sleep(0)  # Let each event go out on its own, as a real stream would.
        finished = True
    finally:
        if not finished and cut_after is None and on_abandoned is not None:
            on_abandoned()


class FakeProviderServer:
    """OpenAI- and Anthropic-compatible HTTP server on 127.0.0.1, run by uvicorn in a thread."""

    def __init__(
        self,
        models: Iterable[str] = ("fake-model",),
        *,
        embedding_dimension: int = DEFAULT_EMBEDDING_DIMENSION,
    ) -> None:
        self.models = tuple(models)
        self.embedding_dimension = embedding_dimension
        self._lock = threading.Lock()
        self._script: deque[Action] = deque()
        self._calls: list[RecordedCall] = []
        self.abandoned_streams = 0  # streams whose client left before the last event
        self._serial = itertools.count(1)
        self._stopping = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None

    def start(self) -> FakeProviderServer:
        logging.getLogger("uvicorn.error").addFilter(_QUIET_CUT)
        config = uvicorn.Config(
            self._app(), host="127.0.0.1", port=0, log_config=None, lifespan="off", access_log=False
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="fake-provider", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("fake provider server did not start")
            time.sleep(0.01)
        self._port = self._server.servers[0].sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        """Stop serving; pending hangs and delays end at once so shutdown is quick."""
        self._stopping.set()
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=10)
        self._server = self._thread = None

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("fake provider server is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    def script(self, *actions: Action) -> None:
        """Queue actions; each chat/messages request takes the next one (echo when empty)."""
        for action in actions:
            if not isinstance(action, Reply | Fault):
                raise TypeError(f"expected Reply or Fault, got {action!r}")
        with self._lock:
            self._script.extend(actions)

    def reset(self) -> None:
        with self._lock:
            self._script.clear()
            self._calls.clear()

    @property
    def calls(self) -> list[RecordedCall]:
        with self._lock:
            return list(self._calls)

    def count(self, path_suffix: str | None = None) -> int:
        return sum(1 for c in self.calls if path_suffix is None or c.path.endswith(path_suffix))

    def _app(self) -> Starlette:
        async def openai(request: Request) -> Response:
            return await self._complete(request, _OPENAI)

        async def anthropic(request: Request) -> Response:
            return await self._complete(request, _ANTHROPIC)

        return Starlette(
            routes=[
                Route("/v1/chat/completions", openai, methods=["POST"]),
                Route("/v1/messages", anthropic, methods=["POST"]),
                Route("/v1/models", self._list_models, methods=["GET"]),
                Route("/v1/embeddings", self._openai_embeddings, methods=["POST"]),
                Route("/model/{model_id:path}/invoke", self._bedrock_invoke, methods=["POST"]),
            ]
        )

    async def _record(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        call = RecordedCall(
            path=request.url.path,
            headers={k.lower(): v for k, v in request.headers.items()},
            body=body if isinstance(body, dict) else {},
        )
        with self._lock:
            self._calls.append(call)
        return call.body

    def _abandoned(self) -> None:
        with self._lock:
            self.abandoned_streams += 1

    def _next_action(self) -> Action | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    async def _list_models(self, request: Request) -> Response:
        await self._record(request)
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "fake"} for m in self.models]
        return JSONResponse({"object": "list", "data": data})

    async def _pause(self, request: Request, seconds: float) -> bool:
        """Wait without blocking the loop; False if the client left (then nobody reads on)."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0 and not self._stopping.is_set():
            if await request.is_disconnected():
                return False
            await asyncio.sleep(min(left, 0.05))
        return True

    async def _complete(self, request: Request, dialect: _Vendor) -> Response:
        body = await self._record(request)
        if (problem := dialect.validate(body)) is not None:
            return self._error(dialect, Fault("bad_request"), problem)
        action = self._next_action()
        streaming = body.get("stream") is True
        cut_after: int | None = None
        if isinstance(action, Fault):
            if action.kind == "hang":
                if not await self._pause(request, action.hang_s):
                    return Response(status_code=499)
                action = None
            elif action.kind == "malformed":
                return Response(MALFORMED_BODY, media_type="application/json")
            elif action.kind == "cut_stream" and streaming:
                cut_after, action = action.after_chunks, None
            else:
                return self._error(dialect, action)
        reply = action or Reply(text=f"echo: {dialect.last_user_text(body)}")
        if reply.delay_s and not await self._pause(request, reply.delay_s):
            return Response(status_code=499)
        answer = self._resolve(dialect, body, reply)
        if streaming:
            stream = _sse(
                dialect.frames(answer, body),
                cut_after,
                chunk_delay_s=reply.chunk_delay_s,
                on_abandoned=self._abandoned,
            )
            return StreamingResponse(stream, media_type="text/event-stream")
        return JSONResponse(dialect.render(answer))

    async def _embedding_action(self, request: Request) -> Fault | Reply | Response:
        """The next scripted action for an embedding request, with hangs and delays served;
        a Response when the client went away meanwhile."""
        action = self._next_action()
        if isinstance(action, Fault) and action.kind == "hang":
            if not await self._pause(request, action.hang_s):
                return Response(status_code=499)
            action = None
        reply = action or Reply()
        if isinstance(reply, Fault):
            return reply
        if reply.delay_s and not await self._pause(request, reply.delay_s):
            return Response(status_code=499)
        return reply

    async def _openai_embeddings(self, request: Request) -> Response:
        body = await self._record(request)
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        valid = isinstance(inputs, list) and inputs and all(isinstance(t, str) for t in inputs)
        if not isinstance(body.get("model"), str) or not valid or not all(inputs):
            return self._error(_OPENAI, Fault("bad_request"), "input: non-empty texts required")
        action = await self._embedding_action(request)
        if isinstance(action, Response):
            return action
        if isinstance(action, Fault):
            if action.kind == "malformed":
                return Response(MALFORMED_BODY, media_type="application/json")
            return self._error(_OPENAI, action)
        dimension = body.get("dimensions") or self.embedding_dimension
        encode_base64 = body.get("encoding_format") == "base64"
        data = []
        for index, text in enumerate(inputs):
            vector = fake_embedding(body["model"], text, dimension)
            embedding: Any = vector
            if encode_base64:
                raw = np.asarray(vector, dtype="<f4").tobytes()
                embedding = base64.b64encode(raw).decode("ascii")
            data.append({"object": "embedding", "index": index, "embedding": embedding})
        tokens = sum(map(_words, inputs)) if action.input_tokens is None else action.input_tokens
        result: dict[str, Any] = {"object": "list", "data": data, "model": body["model"]}
        if action.report_usage:
            result["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return JSONResponse(result)

    async def _bedrock_invoke(self, request: Request) -> Response:
        """InvokeModel for Titan text embeddings (v2 request and answer shape)."""
        body = await self._record(request)
        model = request.path_params["model_id"]
        text = body.get("inputText")
        if not model.startswith("amazon.titan-embed-text") or not isinstance(text, str) or not text:
            return self._bedrock_error(Fault("bad_request"), "inputText: a non-empty string")
        action = await self._embedding_action(request)
        if isinstance(action, Response):
            return action
        if isinstance(action, Fault):
            if action.kind == "malformed":
                return Response(MALFORMED_BODY, media_type="application/json")
            return self._bedrock_error(action)
        vector = fake_embedding(model, text, body.get("dimensions") or self.embedding_dimension)
        tokens = _words(text) if action.input_tokens is None else action.input_tokens
        answer: dict[str, Any] = {"embedding": vector, "embeddingsByType": {"float": vector}}
        if action.report_usage:
            answer["inputTextTokenCount"] = tokens
        return JSONResponse(answer)

    def _bedrock_error(self, fault: Fault, message: str | None = None) -> Response:
        kind = "server_error" if fault.kind == "cut_stream" else fault.kind
        status, code = _BEDROCK_ERRORS[kind]
        headers = {"x-amzn-errortype": f"{code}:http://internal.amazon.com/coral/fake/"}
        if fault.retry_after is not None:
            headers["retry-after"] = f"{fault.retry_after:g}"
        payload = {"message": message or f"{code} (fake)."}
        return JSONResponse(payload, status_code=fault.status or status, headers=headers)

    def _error(self, dialect: _Vendor, fault: Fault, message: str | None = None) -> Response:
        kind = "server_error" if fault.kind == "cut_stream" else fault.kind
        status, payload = dialect.error(kind, message)
        retry = fault.retry_after
        headers = {} if retry is None else {"retry-after": f"{retry:g}"}
        return JSONResponse(payload, status_code=fault.status or status, headers=headers)

    def _resolve(self, dialect: _Vendor, body: dict[str, Any], reply: Reply) -> _Answer:
        serial = next(self._serial)
        calls = tuple(
            (call.id or f"{dialect.tool_id_prefix}{serial}_{n}", call.name, call.arguments)
            for n, call in enumerate(reply.tool_calls)
        )
        finish = reply.finish_reason or ("tool_calls" if calls else "stop")
        prompt_words = sum(len(text.split()) for text in dialect.prompt_texts(body))
        output_words = len(reply.text.split()) + 10 * len(calls)
        return _Answer(
            serial=serial,
            created=int(time.time()),
            model=body["model"],
            text=reply.text,
            tool_calls=calls,
            finish=dialect.finish_names.get(finish, finish),
            input_tokens=max(prompt_words, 1) if reply.input_tokens is None else reply.input_tokens,
            output_tokens=output_words if reply.output_tokens is None else reply.output_tokens,
            cached=reply.cached_input_tokens,
            cache_write=reply.cache_write_tokens,
            report_usage=reply.report_usage,
        )
