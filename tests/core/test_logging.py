from __future__ import annotations

from mainsail.core.logging import REDACTED, get_logger
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
