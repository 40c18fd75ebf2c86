"""Pure ASGI rate limiting for every route: find the caller, count, answer 429 or add headers.

Authenticated requests count per API key (or per signed-in user) against their role's limits;
anonymous ones, and ones whose credentials fail, count per client address. The principal is
resolved the way the routes resolve it (``identity.deps.authenticate``), which the principal
cache makes a dictionary lookup; a credential that fails is left for the route to refuse with
its own 401, so the limiter never decides who is authenticated.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mainsail.core.errors import TooManyRequests, problem_response
from mainsail.core.ratelimit import request_client_address
from mainsail.identity.deps import authenticate, presented_credentials
from mainsail.openai_compat.errors import openai_error
from mainsail.ratelimits.policy import ANONYMOUS, RateLimits, Verdict

CODE = "rate_limited"
_OPENAI_PREFIX = "/v1/"
_POLICY_VIOLATION = 1008


class RateLimitMiddleware:
    def __init__(self, app: ASGIApp, *, limits: RateLimits) -> None:
        self.app = app
        self.limits = limits

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if (kind != "http" and kind != "websocket") or self.limits.exempt(scope["path"]):
            await self.app(scope, receive, send)
            return
        role, who, ident = await self._caller(scope)
        verdict = await self.limits.check(role, who, ident)
        if verdict is None:
            await self.app(scope, receive, send)
            return
        if not verdict.allowed:
            if kind == "websocket":  # before accept: the server refuses the handshake
                await send({"type": "websocket.close", "code": _POLICY_VIOLATION})
                return
            await _refuse(scope, receive, send, verdict)
            return
        if kind == "websocket":
            await self.app(scope, receive, send)
            return
        headers = verdict.headers()

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), *headers]
            await send(message)

        await self.app(scope, receive, send_with_headers)

    async def _caller(self, scope: Scope) -> tuple[str, str, str]:
        """(role, "key" | "user" | "ip", identifier) of who this request counts against."""
        connection = HTTPConnection(scope)
        try:
            presented = presented_credentials(connection)
            if presented is not None:
                principal = await authenticate(connection, scope["app"].state.identity, presented)
                if principal.api_key_id is not None:
                    return principal.role.value, "key", str(principal.api_key_id)
                return principal.role.value, "user", str(principal.user_id)
        except Exception:  # noqa: S110 - the route refuses it (401, or 503 without a database)
            pass
        return ANONYMOUS, "ip", request_client_address(scope, hops=self.limits.forwarded_for_hops)


async def _refuse(scope: Scope, receive: Receive, send: Send, verdict: Verdict) -> None:
    headers = {
        "Retry-After": str(verdict.reset_s),
        **{name.decode(): value.decode() for name, value in verdict.headers()},
    }
    message = (
        f"Rate limit exceeded ({verdict.item.amount} per {_window(verdict)}); "
        f"retry in {verdict.reset_s} s."
    )
    request = Request(scope, receive)
    if request.url.path.startswith(_OPENAI_PREFIX):
        # The request-id middleware outside this one adds X-Request-ID.
        response = openai_error(429, message, code=CODE, headers=headers)
    else:
        response = problem_response(
            status=429,
            code=CODE,
            title=TooManyRequests.title,
            detail=message,
            request=request,
            headers=headers,
        )
    await response(scope, receive, send)


def _window(verdict: Verdict) -> str:
    item = verdict.item
    unit = item.GRANULARITY.name
    return unit if item.multiples == 1 else f"{item.multiples} {unit}s"
