from __future__ import annotations

import asyncio
import logging
from typing import Any

import structlog

from mainsail.core.logging import REDACTED, configure_logging, get_logger, level_check
from mainsail.core.middleware import RequestContextMiddleware
from mainsail.settings import LogSettings
from tests.fixtures.logs import CapturedLogs


def test_sensitive_keys_are_redacted_at_any_depth(logs: CapturedLogs) -> None:
    get_logger("t").info(
        "login",
        password="pw-1",
        headers={"Authorization": "Bearer tok-2", "accept": "json"},
        api_key="key-3",
        user="ada",
    )
    (event,) = [e for e in logs.events if e["event"] == "login"]
    assert event["password"] == REDACTED
    assert event["api_key"] == REDACTED
    assert event["headers"] == {"Authorization": REDACTED, "accept": "json"}
    assert event["user"] == "ada"
    for secret in ("pw-1", "tok-2", "key-3"):
        assert secret not in logs.text


def test_stdlib_loggers_come_out_as_json(logs: CapturedLogs) -> None:
    import logging

    logging.getLogger("sqlalchemy.engine").warning("from stdlib %s", "args")
    (event,) = [e for e in logs.events if e["event"] == "from stdlib args"]
    assert event["level"] == "warning"
    assert event["logger"] == "sqlalchemy.engine"
    assert "timestamp" in event


def test_hot_paths_skip_lines_below_the_level_and_work_before_logging_is_configured() -> None:
    check = level_check("mainsail.access", logging.INFO)
    try:
        configure_logging(LogSettings(format="json", level="WARNING"))
        assert not check()
        configure_logging(LogSettings(format="json", level="INFO"))
        assert check()
        structlog.reset_defaults()  # as for an app made without configure_logging
        assert check()  # structlog's defaults print every line
        app = RequestContextMiddleware(_ok)
        messages: list[dict[str, object]] = []

        async def receive() -> dict[str, object]:
            return {"type": "http.request", "body": b""}

        async def send(message: dict[str, object]) -> None:
            messages.append(message)

        scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
        asyncio.run(app(scope, receive, send))  # type: ignore[arg-type]
        assert messages[0]["status"] == 200
    finally:
        configure_logging(LogSettings(format="json", level="INFO"))


async def _ok(scope: object, receive: object, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b""})
