"""Chat completions for OpenAI-compatible providers, sent straight over HTTP.

Why this exists: on the gateway's hot path the SDK's request machinery costs more than
everything else a call does. Measured against a local mock (one call after another, CPU per
call): ``AsyncOpenAI.post(cast_to=object)`` about 0.7 ms, the typed ``chat.completions.create``
about 1.4 ms, the same request through aiohttp about 0.16 ms. The SDK builds an options model,
an ``httpx2`` request (URL parsing, header normalisation) and then hands it to aiohttp anyway.
aiohttp in turn was most of what was left (about 80 µs a call at 32 in flight): calls go over
this project's ``h1.Origin`` (15-20 µs).

What stays with the SDK: the client it builds supplies the base URL and every header it would
send (key, user agent, platform headers), so both paths speak identically to the provider;
embeddings and ``transport = "sdk"`` providers go through the SDK itself. What this module
must match is the SDK's behaviour at the edges: errors map to the same ``LLMError`` classes
(statuses through ``status_error``, with ``Retry-After``), and streams are read as the SDK
reads them (SSE events, ``[DONE]``, an ``error`` object inside the stream is a failure).
"""

from __future__ import annotations

import asyncio
import base64
import urllib.request
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from typing import Any
from urllib.parse import unquote, urlsplit

from mainsail.core import fastjson
from mainsail.llm.catalogue import ModelEntry
from mainsail.llm.errors import LLMError, UpstreamBadResponse, UpstreamTimeout, UpstreamUnavailable
from mainsail.llm.providers.base import Timeouts, status_error
from mainsail.llm.providers.h1 import Origin, Unreachable

# Idle connections are closed after this long: shorter than the usual server keep-alive
# (uvicorn 5 s, nginx 75 s) would be better still, but reopening costs a handshake per call.
_KEEPALIVE_S = 4.0
_DONE = "[DONE]"


class ChatWire:
    """``POST {base_url}/chat/completions`` over one connection pool per adapter, through the
    proxy the environment names for the URL, if any."""

    def __init__(
        self,
        *,
        provider: str,
        base_url: str,
        headers: Mapping[str, str],
        timeouts: Timeouts,
        max_connections: int,
    ) -> None:
        self.provider = provider
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.headers = {**headers, "Content-Type": "application/json"}
        self.timeouts = timeouts
        self.proxy, self.proxy_headers = _env_proxy(self.url)
        # Raises ``UnsupportedProxy`` here, at start-up, for a proxy it cannot speak to.
        self.origin = Origin(
            self.url,
            headers=self.headers,
            max_connections=max_connections,
            keepalive_s=_KEEPALIVE_S,
            proxy=self.proxy,
            proxy_headers=self.proxy_headers,
        )

    async def aclose(self) -> None:
        await self.origin.aclose()

    async def complete(self, body: dict[str, Any], entry: ModelEntry) -> Any:
        """The decoded JSON answer (not yet checked for shape), or an ``LLMError``."""
        data = fastjson.dumps(body)
        # No byte of a JSON answer comes before the whole answer: the read limit is the
        # answer's total time (see ``Timeouts.for_answer``).
        read_s = self.timeouts.for_answer(entry)
        try:
            response, raw = await self.origin.post(
                data, connect_s=self.timeouts.connect_s, read_s=read_s
            )
            if response.status >= 300:
                raise status_error(
                    response.status, provider=self.provider, model=entry.name, response=response
                )
        except LLMError:
            raise
        except Exception as exc:
            raise self._transport(exc, entry) from None
        try:
            return fastjson.loads(raw)
        except ValueError:
            raise self._unreadable(entry) from None

    async def stream(self, body: dict[str, Any], entry: ModelEntry) -> AsyncGenerator[Any, None]:
        """Each SSE event's decoded data until ``[DONE]`` or the end of the body. A status
        error raises before the first chunk; a cut connection raises where it happens."""
        data = fastjson.dumps(body)
        try:
            async with self.origin.stream(
                data, connect_s=self.timeouts.connect_s, read_s=self.timeouts.read_s
            ) as response:
                if response.status >= 300:
                    await response.read()
                    raise status_error(
                        response.status, provider=self.provider, model=entry.name, response=response
                    )
                async for payload in _events(response.iter_any()):
                    if payload.startswith(_DONE):
                        return
                    try:
                        chunk = fastjson.loads(payload)
                    except ValueError:
                        raise self._unreadable(entry) from None
                    if isinstance(chunk, dict) and chunk.get("error"):
                        # Upstream's message stays upstream: it can quote the request.
                        raise UpstreamUnavailable(
                            f"{self.provider} failed in the middle of its answer.",
                            provider=self.provider,
                            model=entry.name,
                        )
                    yield chunk
        except LLMError:
            raise
        except Exception as exc:
            raise self._transport(exc, entry) from None

    def _unreadable(self, entry: ModelEntry) -> LLMError:
        return UpstreamBadResponse(
            f"{self.provider} sent an answer we could not read.",
            provider=self.provider,
            model=entry.name,
        )

    def _transport(self, exc: Exception, entry: ModelEntry) -> LLMError:
        where = {"provider": self.provider, "model": entry.name}
        if isinstance(exc, asyncio.TimeoutError | TimeoutError):
            return UpstreamTimeout(f"{self.provider} did not answer in time.", **where)
        if isinstance(exc, Unreachable):
            return UpstreamUnavailable(f"{self.provider} could not be reached.", **where)
        if isinstance(exc, ConnectionError):
            return UpstreamUnavailable(f"{self.provider} broke off the connection.", **where)
        if isinstance(exc, ValueError):
            return self._unreadable(entry)
        return UpstreamBadResponse(
            f"{self.provider} failed unexpectedly ({type(exc).__name__}).", **where
        )


async def _events(blocks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The ``data`` of each server-sent event (lines joined with newlines, as the SSE format
    says); comments, ids and retry hints are skipped, and an event without data is none."""
    data: list[str] = []
    async for raw in _lines(blocks):
        line = raw.decode("utf-8")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:  # a last event without its blank line
        yield "\n".join(data)


async def _lines(blocks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """The body's lines without their ends (``\\r\\n``, ``\\n`` or ``\\r``, as the SSE format
    allows), of any length: one chunk of a long tool call, or of a server that sends its
    answer whole, can be hundreds of KiB on one line."""
    parts: list[bytes] = []  # the unfinished line so far
    async for block in blocks:
        if b"\n" not in block and b"\r" not in block:
            parts.append(block)
            continue
        if parts:
            parts.append(block)
            block = b"".join(parts)
            parts = []
        lines = block.splitlines(keepends=True)
        last = lines[-1]
        # A line ending in a lone CR may be the first half of CRLF split across two blocks.
        if not last.endswith(b"\n"):
            parts.append(lines.pop())
        for line in lines:
            yield line.rstrip(b"\r\n")
    if parts:  # the last line, without its end
        yield b"".join(parts).rstrip(b"\r\n")


def _env_proxy(url: str) -> tuple[str | None, dict[str, str] | None]:
    """The proxy the environment names for ``url`` (``HTTPS_PROXY``, ``ALL_PROXY``,
    ``NO_PROXY``, ...) and the headers it needs, looked up once: the SDK's client honours these
    variables, and so must this path. Credentials in the proxy's URL become a
    ``Proxy-Authorization`` header, sent to the proxy alone."""
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None, None
    if "://" not in proxy:
        proxy = "http://" + proxy
    address = urlsplit(proxy)
    if address.username is None:
        return proxy, None
    host = address.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if address.port is not None:
        netloc += f":{address.port}"
    secret = f"{unquote(address.username)}:{unquote(address.password or '')}"
    authorization = "Basic " + base64.b64encode(secret.encode()).decode("ascii")
    return address._replace(netloc=netloc).geturl(), {"Proxy-Authorization": authorization}
