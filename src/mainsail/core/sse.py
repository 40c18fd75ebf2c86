"""Server-sent event responses that stop the moment the client leaves, without a task group.

Starlette's ``StreamingResponse`` watches for the client's disconnect by running the stream
and a listener in an anyio task group: two tasks and a cancel scope per response, about a
twentieth of the gateway's CPU per streamed answer. ``EventStreamResponse`` streams in the
request's own task and starts one plain task that waits for ``http.disconnect``; if that
comes while the stream is still going, it cancels the request's task, which is stopped at an
``await`` of the stream (waiting for the model's next token, or writing one). The stream is
then closed (``aclose``), so the source's ``finally`` blocks run in an ordinary, uncancelled
task: the upstream call is abandoned at once and its tokens are metered and settled.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping

from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

NO_BUFFERING = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStreamResponse(StreamingResponse):
    """``text/event-stream`` from an async iterator of encoded events."""

    def __init__(
        self,
        events: AsyncIterator[bytes],
        *,
        headers: Mapping[str, str] | None = None,
        on_close: Callable[[], Awaitable[object]] | None = None,
    ) -> None:
        """``on_close``: called once the response is over, however it ended, even if
        ``events`` never started (the client left first): what the events come from (a
        model's open stream, a reservation) is closed then, not when garbage collected."""
        super().__init__(
            events, media_type="text/event-stream", headers={**NO_BUFFERING, **(headers or {})}
        )
        self.events = events
        self.on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # pragma: no cover - routes only answer HTTP
            await super().__call__(scope, receive, send)
            return
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - an ASGI server always runs us in a task
            await super().__call__(scope, receive, send)
            return
        streaming = True
        left = False

        async def watch() -> None:
            nonlocal left
            while (await receive())["type"] != "http.disconnect":
                pass
            # Only while the stream runs: the task is then stopped at one of its awaits.
            if streaming:
                left = True
                task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": self.status_code,
                    "headers": self.raw_headers,
                }
            )
            async for event in self.events:
                await send({"type": "http.response.body", "body": event, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if not left:
                raise
            task.uncancel()  # the client left: an end, not an error
        finally:
            # Nothing awaits between the stream's last await and here: the watcher cannot
            # cancel the task once the stream is over.
            streaming = False
            watcher.cancel()
            aclose = getattr(self.events, "aclose", None)
            try:
                if aclose is not None:
                    await aclose()
            finally:
                if self.on_close is not None:
                    await self.on_close()
