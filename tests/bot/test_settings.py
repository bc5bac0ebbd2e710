"""Settings: every key documented, the secret generated once, the environment honoured."""

from __future__ import annotations

from pathlib import Path

import pytest

from bot.settings import Settings
from tests.conftest import REPO_ROOT


def test_env_example_documents_every_setting() -> None:
    documented = (REPO_ROOT / ".env.example").read_text(encoding="utf-8")
    missing = [f for f in Settings.model_fields if f"DESKBOT_{f.upper()}=" not in documented]
    assert missing == []


def test_env_example_copied_as_it_is_is_a_valid_configuration() -> None:
    settings = Settings(_env_file=REPO_ROOT / ".env.example")  # type: ignore[call-arg]
    assert settings.workers == 1 and settings.worker is None and not settings.http_reuse_port


def test_secret_key_is_generated_once_and_kept(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, var_dir=tmp_path)  # type: ignore[call-arg]
    first = settings.ensure_secret_key()
    assert len(first) >= 40
    assert (tmp_path / "secret_key").stat().st_mode & 0o077 == 0
    assert Settings(_env_file=None, var_dir=tmp_path).ensure_secret_key() == first  # type: ignore[call-arg]
    configured = Settings(_env_file=None, secret_key="s3cr3t-value")  # type: ignore[call-arg]
    assert "s3cr3t-value" not in repr(configured)


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("DESKBOT_HTTP_PORT", "9000")
    monkeypatch.setenv("DESKBOT_WEBCHAT_ALLOWED_ORIGINS", '["https://intranet.example.com"]')
    settings = Settings(_env_file=None, var_dir=tmp_path)  # type: ignore[call-arg]
    assert settings.http_port == 9000
    assert settings.webchat_allowed_origins == ["https://intranet.example.com"]
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")
    assert not settings.slack_enabled and not settings.email_enabled
