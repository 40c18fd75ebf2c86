"""A short way in for the gateway's hot routes.

Between the app's own middleware and an endpoint FastAPI runs five more layers per request:
its exception middleware, an exit-stack middleware, the router (which resolves included
routers and matches the path against each route in turn), the route's request-response
wrapper with two exit stacks of its own, and a second exception wrapper. For a handler that
takes a ``Request`` and returns a ``Response`` and needs none of that (no dependencies with
``yield``, no file uploads), that is overhead on every call. ``HotRoutes`` sits innermost
among the app's middleware and sends an exact method and path match straight to its handler,
inside a Starlette ``ExceptionMiddleware`` built with the app's own exception handlers, so
errors are answered exactly as on the usual way. Every other request goes down that way.
What the router also does, telling FastAPI's OpenTelemetry instrumentation which route was
taken, is skipped too: the app leaves hot routes out while that instrumentation is on.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from fastapi import FastAPI
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

Handler = Callable[[Request], Awaitable[Response]]


class HotRoutes:
    """Sends requests for ``lanes``' ``(method, path)`` pairs straight to their handlers."""

    def __init__(
        self, app: ASGIApp, *, owner: FastAPI, lanes: Mapping[tuple[str, str], Handler]
    ) -> None:
        self.app = app
        if owner.router.dependencies:  # the app's own dependencies would be skipped
            raise RuntimeError("hot routes skip the router: the app must have no dependencies")
        # As FastAPI builds its exception middleware (this runs when it builds the stack, with
        # every handler added): the catch-all stays with the outermost middleware.
        handlers = {
            key: value
            for key, value in owner.exception_handlers.items()
            if key not in (500, Exception)
        }
        self.lanes: dict[tuple[str, str], ASGIApp] = {
            key: ExceptionMiddleware(_lane(handler), handlers=handlers, debug=owner.debug)
            for key, handler in lanes.items()
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            root = scope.get("root_path", "")
            if root and path.startswith(root):
                path = path[len(root) :]
            lane = self.lanes.get((scope["method"], path))
            if lane is not None:
                await lane(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _lane(handler: Handler) -> ASGIApp:
    async def lane(scope: Scope, receive: Receive, send: Send) -> None:
        scope["path_params"] = {}  # what the router would have set for a fixed path
        response = await handler(Request(scope, receive, send))
        await response(scope, receive, send)

    return lane
