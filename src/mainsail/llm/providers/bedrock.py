"""AWS Bedrock through the Converse / ConverseStream API (boto3, standard credential chain), and
Amazon Titan text embeddings through InvokeModel.

boto3 is synchronous: calls run in worker threads, and a stream is read in a thread that hands
events to the event loop through a queue, so the loop never blocks on the network. Titan
embeds one text per InvokeModel call: a batch runs as that many calls at once on the same
threads, so the provider's concurrency bound (the pool's size) holds for them too.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.errors import (
    EmbeddingsUnsupported,
    LLMError,
    UpstreamBadResponse,
    UpstreamMisconfigured,
    UpstreamRateLimited,
    UpstreamRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from mainsail.llm.providers.base import (
    STRUCTURED_TOOL,
    Timeouts,
    alternating_turns,
    answer_schema,
    new_response_id,
    parse_arguments,
    tool_answer,
    wants_structured,
)
from mainsail.llm.types import (
    ChatRequest,
    ChatResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    EventStream,
    FinishReason,
    Message,
    StreamEnd,
    StreamStart,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    Usage,
)

_FINISH: dict[str, FinishReason] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}
TITAN_EMBED_PREFIX = "amazon.titan-embed-text"
_THROTTLED = {"ThrottlingException", "TooManyRequestsException"}
_UNAVAILABLE = {
    "ServiceUnavailableException",
    "InternalServerException",
    "ModelNotReadyException",
    "ModelStreamErrorException",
}
_MISCONFIGURED = {
    "AccessDeniedException",
    "UnrecognizedClientException",
    "ResourceNotFoundException",
    "ExpiredTokenException",
}


class BedrockAdapter:
    def __init__(
        self,
        *,
        name: str,
        region: str,
        timeouts: Timeouts,
        max_connections: int,
        endpoint_url: str | None = None,
        client: Any = None,
    ) -> None:
        self.name = name
        # Our own threads: boto3 blocks, and a stream holds its thread for its whole life; the
        # shared default pool (password hashing uses it too) must not be the one that starves.
        self._threads = ThreadPoolExecutor(
            max_workers=max_connections, thread_name_prefix=f"bedrock-{name}"
        )
        self.read_timeout_s = max(timeouts.read_s, timeouts.total_s)
        if client is None:
            import boto3
            from botocore.config import Config

            client = boto3.client(
                "bedrock-runtime",
                region_name=region,
                endpoint_url=endpoint_url,
                config=Config(
                    connect_timeout=timeouts.connect_s,
                    # One limit for both call kinds (boto has no per-call override): long
                    # enough for a whole non-streaming answer.
                    read_timeout=max(timeouts.read_s, timeouts.total_s),
                    retries={"max_attempts": 1, "mode": "standard"},  # the gateway retries
                    max_pool_connections=max_connections,
                ),
            )
        self.client = client

    async def _in_thread(self, function: Any, /, **kwargs: Any) -> Any:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._threads, lambda: function(**kwargs))

    async def aclose(self) -> None:
        await self._in_thread(self.client.close)
        self._threads.shutdown(wait=False, cancel_futures=True)

    async def complete(self, request: ChatRequest, entry: ModelEntry) -> ChatResponse:
        structured = wants_structured(request)
        try:
            response = await self._in_thread(self.client.converse, **_arguments(request, entry))
            blocks = response["output"]["message"]["content"]
        except (KeyError, TypeError):
            raise UpstreamBadResponse(
                f"{self.name} sent an answer we could not read.",
                provider=self.name,
                model=entry.name,
            ) from None
        except Exception as exc:
            raise map_bedrock_error(exc, provider=self.name, model=entry.name) from None
        texts = [block["text"] for block in blocks if "text" in block]
        calls = [
            ToolCall(
                id=block["toolUse"]["toolUseId"],
                name=block["toolUse"]["name"],
                arguments=json.dumps(block["toolUse"].get("input", {})),
            )
            for block in blocks
            if "toolUse" in block
        ]
        finish = _FINISH.get(response.get("stopReason", "end_turn"), "stop")
        if structured:
            texts, calls, finish = tool_answer(texts, calls, finish)
        return ChatResponse(
            id=response.get("ResponseMetadata", {}).get("RequestId") or new_response_id(),
            model=entry.name,
            provider=self.name,
            message=Message(
                role="assistant", content="".join(texts) or None, tool_calls=tuple(calls)
            ),
            finish_reason=finish,
            usage=_usage(response.get("usage")),
        )

    async def embed(self, request: EmbeddingRequest, entry: ModelEntry) -> EmbeddingResponse:
        """Titan text embeddings: one InvokeModel per text, all of them at once in the
        adapter's threads (at most ``max_connections`` run; the rest wait for a thread).
        If one fails, the ones not yet started are cancelled."""
        if not entry.model.startswith(TITAN_EMBED_PREFIX):
            raise EmbeddingsUnsupported(
                f"{self.name} embeddings support Amazon Titan text models only.",
                provider=self.name,
                model=entry.name,
            )
        settings: dict[str, Any] = {}
        if "-v2" in entry.model:  # v1 takes the text alone
            settings["normalize"] = True
            if request.dimensions is not None:
                settings["dimensions"] = request.dimensions

        def invoke(text: str) -> tuple[list[float], int]:
            response = self.client.invoke_model(
                modelId=entry.model,
                body=json.dumps({"inputText": text, **settings}),
                contentType="application/json",
                accept="application/json",
            )
            raw = response["body"].read()
            try:
                payload = json.loads(raw)
                return payload["embedding"], int(payload.get("inputTextTokenCount") or 0)
            except (KeyError, TypeError, ValueError):
                raise UpstreamBadResponse(
                    f"{self.name} sent an embedding we could not read.",
                    provider=self.name,
                    model=entry.name,
                ) from None

        loop = asyncio.get_running_loop()
        calls = [loop.run_in_executor(self._threads, invoke, text) for text in request.inputs]
        try:
            results = await asyncio.gather(*calls)
        except BaseException as exc:
            for call in calls:  # those still queued for a thread never start
                call.cancel()
                call.add_done_callback(_retrieve)  # a running one's late error is not news
            if not isinstance(exc, Exception):
                raise
            raise map_bedrock_error(exc, provider=self.name, model=entry.name) from None
        try:
            vectors = np.asarray([vector for vector, _ in results], dtype=np.float32)
        except ValueError:  # ragged
            vectors = np.empty(0, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[0] != len(request.inputs):
            raise UpstreamBadResponse(
                f"{self.name} sent embeddings of different lengths.",
                provider=self.name,
                model=entry.name,
            )
        tokens = sum(count for _, count in results)
        return EmbeddingResponse(
            model=entry.name,
            provider=self.name,
            vectors=vectors,
            usage=Usage(input_tokens=tokens) if tokens else Usage(estimated=True),
        )

    async def stream(self, request: ChatRequest, entry: ModelEntry) -> EventStream:
        structured = wants_structured(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=256)
        stop = threading.Event()
        opened: list[Any] = []

        def pump() -> None:
            """Reads the event stream in a worker thread; ends with ('end', None)."""

            def put(item: tuple[str, Any]) -> None:
                if not stop.is_set():
                    asyncio.run_coroutine_threadsafe(queue.put(item), loop).result()

            try:
                response = self.client.converse_stream(**_arguments(request, entry))
                opened.append(response["stream"])
                for event in response["stream"]:
                    if stop.is_set():
                        break
                    put(("event", event))
                put(("end", None))
            except Exception as exc:  # handed to the loop and mapped there
                put(("error", exc))

        worker = loop.run_in_executor(self._threads, pump)
        finish: FinishReason | None = None
        usage: Usage | None = None
        tool_index = -1
        tool_blocks: set[int] = set()
        answer_blocks: set[int] = set()  # blocks of the structured-answer tool: the text
        called = False  # a tool of the caller's was called
        no_arguments: dict[int, int] = {}  # tool blocks with no argument text yet (as Anthropic)
        try:
            yield StreamStart(id=new_response_id(), model=entry.name, provider=self.name)
            while True:
                kind, payload = await queue.get()
                if kind == "end":
                    break
                if kind == "error":
                    raise map_bedrock_error(payload, provider=self.name, model=entry.name)
                if "contentBlockStart" in payload:
                    block = payload["contentBlockStart"]
                    tool = block.get("start", {}).get("toolUse")
                    if tool is not None:
                        tool_blocks.add(block.get("contentBlockIndex", 0))
                        if structured and tool.get("name") == STRUCTURED_TOOL:
                            answer_blocks.add(block.get("contentBlockIndex", 0))
                        else:
                            called = True
                            tool_index += 1
                            yield ToolCallDelta(
                                index=tool_index, id=tool["toolUseId"], name=tool["name"]
                            )
                        no_arguments[block.get("contentBlockIndex", 0)] = tool_index
                elif "contentBlockDelta" in payload:
                    block = payload["contentBlockDelta"]
                    delta = block.get("delta", {})
                    if "text" in delta:
                        yield TextDelta(delta["text"])
                    elif "toolUse" in delta and block.get("contentBlockIndex", 0) in tool_blocks:
                        piece = delta["toolUse"].get("input", "")
                        if not piece:
                            continue
                        no_arguments.pop(block.get("contentBlockIndex", 0), None)
                        if block.get("contentBlockIndex", 0) in answer_blocks:
                            yield TextDelta(piece)
                        else:
                            yield ToolCallDelta(index=tool_index, arguments=piece)
                elif (
                    "contentBlockStop" in payload
                    and (stopped := payload["contentBlockStop"].get("contentBlockIndex", 0))
                    in no_arguments
                ):
                    index = no_arguments.pop(stopped)
                    if stopped in answer_blocks:
                        yield TextDelta("{}")
                    else:
                        yield ToolCallDelta(index, arguments="{}")
                elif "messageStop" in payload:
                    finish = _FINISH.get(
                        payload["messageStop"].get("stopReason", "end_turn"), "stop"
                    )
                elif "metadata" in payload:
                    usage = _usage(payload["metadata"].get("usage"))
                else:
                    for key in (
                        "throttlingException",
                        "modelStreamErrorException",
                        "internalServerException",
                        "serviceUnavailableException",
                        "validationException",
                    ):
                        if key in payload:
                            raise map_bedrock_code(key[0].upper() + key[1:], self.name, entry.name)
        finally:
            stop.set()
            for stream in opened:  # unblocks a read in progress, returns the connection
                with contextlib.suppress(Exception):
                    stream.close()
            while not queue.empty():  # unblock a worker waiting to put
                queue.get_nowait()
            # Never wait long for the thread: a cancelled caller must get control back.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(1.0):
                    await asyncio.shield(worker)
        if finish is None:
            raise UpstreamUnavailable(
                f"{self.name}'s stream ended before the answer was complete.",
                provider=self.name,
                model=entry.name,
            )
        if answer_blocks and not called and finish == "tool_calls":
            finish = "stop"
        yield StreamEnd(finish_reason=finish, usage=usage or Usage(estimated=True))


def _retrieve(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


def _arguments(request: ChatRequest, entry: ModelEntry) -> dict[str, Any]:
    params = request.params
    arguments: dict[str, Any] = {"modelId": entry.model}
    system = [{"text": m.content} for m in request.messages if m.role == "system" and m.content]
    if system:
        arguments["system"] = system
    inference: dict[str, Any] = {
        "maxTokens": params.max_tokens or min(entry.max_output_tokens, 4096)
    }
    if params.temperature is not None:
        inference["temperature"] = params.temperature
    if params.top_p is not None:
        inference["topP"] = params.top_p
    if params.stop:
        inference["stopSequences"] = list(params.stop)
    arguments["inferenceConfig"] = inference
    tools = [
        {
            "toolSpec": {
                "name": tool.name,
                "description": tool.description or tool.name,
                "inputSchema": {"json": tool.parameters},
            }
        }
        for tool in request.tools
    ]
    choice: dict[str, Any] | None = None
    fmt = request.response_format
    if wants_structured(request) and fmt is not None:
        answer = {
            "toolSpec": {
                "name": STRUCTURED_TOOL,
                "description": "Give the answer as this tool's input.",
                "inputSchema": {"json": answer_schema(request)},
            }
        }
        if tools and (request.tool_choice is None or request.tool_choice.mode == "auto"):
            # As OpenAI takes tools beside a JSON-schema answer: the model calls the caller's
            # tools, or gives its answer through the answer tool (one of them, always).
            tools, choice = [*tools, answer], {"any": {}}
        else:
            tools, choice = [answer], {"tool": {"name": STRUCTURED_TOOL}}
    elif request.tool_choice is not None and request.tool_choice.mode != "none":
        mode = request.tool_choice
        choice = (
            {"tool": {"name": mode.name}}
            if mode.mode == "tool"
            else ({"any": {}} if mode.mode == "required" else {"auto": {}})
        )
    if tools and not (request.tool_choice is not None and request.tool_choice.mode == "none"):
        arguments["toolConfig"] = {"tools": tools, **({"toolChoice": choice} if choice else {})}
    # Converse refuses toolUse and toolResult blocks without a toolConfig, and has no choice
    # that calls no tool: with none to offer ("none", or no tools), the history's tool calls
    # and results are told as text.
    blocks = _blocks if "toolConfig" in arguments else _text_blocks
    arguments["messages"] = alternating_turns(request.messages, blocks)
    return arguments


def _text_blocks(message: Message) -> list[dict[str, Any]]:
    """A message's blocks with its tool calls and results as text."""
    if message.role == "tool":
        text = f"Result of tool call {message.tool_call_id or ''}: {message.content or ''}"
        return [{"text": text}]
    lines = [message.content] if message.content else []
    lines += [
        f"Called tool {c.name} ({c.id}) with {c.arguments or '{}'}" for c in message.tool_calls
    ]
    return [{"text": "\n".join(lines)}] if lines else []


def _blocks(message: Message) -> list[dict[str, Any]]:
    if message.role == "tool":
        return [
            {
                "toolResult": {
                    "toolUseId": message.tool_call_id or "",
                    "content": [{"text": message.content or ""}],
                }
            }
        ]
    blocks: list[dict[str, Any]] = [{"text": message.content}] if message.content else []
    return blocks + [
        {"toolUse": {"toolUseId": c.id, "name": c.name, "input": parse_arguments(c.arguments)}}
        for c in message.tool_calls
    ]


def _usage(usage: dict[str, Any] | None) -> Usage:
    if not usage:
        return Usage(estimated=True)
    cached = usage.get("cacheReadInputTokens", 0) or 0
    written = usage.get("cacheWriteInputTokens", 0) or 0
    return Usage(
        input_tokens=(usage.get("inputTokens", 0) or 0) + cached + written,
        output_tokens=usage.get("outputTokens", 0) or 0,
        cached_input_tokens=cached,
        cache_write_tokens=written,
    )


def map_bedrock_code(code: str, provider: str, model: str) -> LLMError:
    # ConverseStream's exception events name their type in camelCase ("throttlingException"),
    # which botocore reports as the code of the error it raises mid-stream.
    code = code[:1].upper() + code[1:]
    if code in _THROTTLED:
        return UpstreamRateLimited(f"{provider} is throttling us.", provider=provider, model=model)
    if code == "ModelTimeoutException":
        return UpstreamTimeout(
            f"{provider} did not answer in time.", provider=provider, model=model
        )
    if code in _UNAVAILABLE:
        return UpstreamUnavailable(f"{provider} failed ({code}).", provider=provider, model=model)
    if code in _MISCONFIGURED:
        return UpstreamMisconfigured(
            f"{provider} refused our credentials or does not serve this model ({code}).",
            provider=provider,
            model=model,
        )
    return UpstreamRejected(
        f"{provider} rejected the request ({code}).", provider=provider, model=model
    )


def map_bedrock_error(exc: Exception, *, provider: str, model: str) -> LLMError:
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        ConnectTimeoutError,
        NoCredentialsError,
        ReadTimeoutError,
    )

    where = {"provider": provider, "model": model}
    if isinstance(exc, LLMError):
        return exc
    if isinstance(exc, ReadTimeoutError | ConnectTimeoutError):
        return UpstreamTimeout(f"{provider} did not answer in time.", **where)
    if isinstance(exc, ConnectionError):
        return UpstreamUnavailable(f"{provider} could not be reached.", **where)
    if isinstance(exc, NoCredentialsError):
        return UpstreamMisconfigured(f"{provider}: no AWS credentials were found.", **where)
    if isinstance(exc, ClientError):
        return map_bedrock_code(exc.response.get("Error", {}).get("Code", ""), provider, model)
    return UpstreamBadResponse(f"{provider} failed unexpectedly ({type(exc).__name__}).", **where)
