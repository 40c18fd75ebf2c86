from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from mainsail.settings import ENV_PREFIX, NESTED_DELIMITER, Settings, SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(__import__("os").environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)  # no stray .env from the checkout


def test_defaults_describe_the_embedded_shape() -> None:
    settings = load_settings()
    assert settings.database_url is None
    assert settings.async_database_url() is None
    assert settings.embedded_dir() == Path(".mainsail/pg")
    assert (settings.http.host, settings.http.port) == ("127.0.0.1", 8000)


def test_the_embedded_database_follows_the_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """DATA_DIR is where local state lives, the embedded database included (it stayed in
    ./.mainsail/pg whatever DATA_DIR said); EMBEDDED_DIR still names another place."""
    monkeypatch.setenv("MAINSAIL_DATA_DIR", "/srv/mainsail")
    assert load_settings().embedded_dir() == Path("/srv/mainsail/pg")
    monkeypatch.setenv("MAINSAIL_DATABASE__EMBEDDED_DIR", "/var/lib/pg")
    assert load_settings().embedded_dir() == Path("/var/lib/pg")


def test_nested_sections_read_double_underscore_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINSAIL_HTTP__PORT", "9001")
    monkeypatch.setenv("MAINSAIL_DATABASE__POOL_SIZE", "3")
    monkeypatch.setenv("MAINSAIL_LOG__LEVEL", "debug")
    settings = load_settings()
    assert settings.http.port == 9001
    assert settings.database.pool_size == 3
    assert settings.log.level == "DEBUG"


def test_dotenv_file_in_working_directory_is_read(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("MAINSAIL_HTTP__PORT=8123\n")
    assert load_settings().http.port == 8123


def test_database_url_is_normalised_to_asyncpg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINSAIL_DATABASE_URL", "postgresql://app:pw@db.internal:5433/main")
    url = load_settings().async_database_url()
    assert url is not None
    assert url.drivername == "postgresql+asyncpg"
    assert (url.host, url.port, url.database, url.password) == ("db.internal", 5433, "main", "pw")


def test_database_url_is_secret_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINSAIL_DATABASE_URL", "postgresql://app:hunter2@db/main")
    settings = load_settings()
    assert "hunter2" not in repr(settings)
    assert "hunter2" not in str(settings.model_dump())


def test_invalid_value_names_the_variable_and_expected_form(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MAINSAIL_HTTP__PORT", "eighty")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert message.count("\n") == 0
    assert "MAINSAIL_HTTP__PORT" in message
    assert "valid integer" in message
    assert "'eighty'" in message


def test_invalid_secret_is_never_echoed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINSAIL_DATABASE_URL", "mysql://root:topsecret@db/main")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    message = str(caught.value)
    assert "MAINSAIL_DATABASE_URL" in message
    assert "PostgreSQL URL" in message
    assert "topsecret" not in message


def test_out_of_range_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MAINSAIL_HTTP__PORT", "70000")
    monkeypatch.setenv("MAINSAIL_LOG__FORMAT", "xml")
    with pytest.raises(SettingsError) as caught:
        load_settings()
    lines = str(caught.value).splitlines()
    assert len(lines) == 2
    assert any("MAINSAIL_HTTP__PORT" in line and "65535" in line for line in lines)
    assert any("MAINSAIL_LOG__FORMAT" in line for line in lines)


def _variables(model: type[BaseModel], prefix: str) -> set[str]:
    names = set()
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names |= _variables(annotation, f"{prefix}{name.upper()}{NESTED_DELIMITER}")
        else:
            names.add(f"{prefix}{name.upper()}")
    return names


def test_env_example_lists_every_setting_with_a_comment() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#?\s*(MAINSAIL_[A-Z0-9_]+)=", text, flags=re.MULTILINE))
    assert listed == _variables(Settings, ENV_PREFIX)
    lines = text.splitlines()
    for index, line in enumerate(lines):
        if re.match(r"^#?\s*MAINSAIL_[A-Z0-9_]+=", line):
            assert index > 0
            assert lines[index - 1].startswith("#"), f"no comment above {line}"
