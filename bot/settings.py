"""Settings, read once by the composition root from ``DESKBOT_*`` variables or ``.env``.

Every key is documented in ``.env.example``. A channel is enabled when its settings are
present; nothing else in the code reads the environment.
"""

from __future__ import annotations

import logging
import secrets
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

logger = logging.getLogger(__name__)

PACKAGE_ROOT = Path(__file__).resolve().parent.parent
SAMPLE_KB_DIR = PACKAGE_ROOT / "knowledge" / "sample"
SAMPLE_CATALOG = PACKAGE_ROOT / "config" / "catalog.yaml"


class Settings(BaseSettings):
    """All of deskbot's configuration; see ``.env.example`` for each key."""

    model_config = SettingsConfigDict(
        env_prefix="DESKBOT_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    var_dir: Path = Path("var")
    database_url: str | None = None
    secret_key: SecretStr | None = None
    http_host: str = "127.0.0.1"
    http_port: int = 8080
    http_reuse_port: bool = False
    workers: int = Field(default=1, ge=1, le=64)
    # set by the supervisor of several workers for each of them (bot/workers.py)
    worker: str | None = None
    worker_ready_fd: int | None = None
    public_url: str | None = None
    kb_dir: Path = SAMPLE_KB_DIR
    catalog: Path = SAMPLE_CATALOG
    log_level: str = "INFO"
    timezone: str = "UTC"
    event_loop: Literal["auto", "uvloop", "asyncio"] = "auto"

    # outbox
    outbox_max_attempts: int = 8
    outbox_base_backoff: float = 2.0
    outbox_max_backoff: float = 600.0
    outbox_lease_seconds: float = 60.0

    # conversation behaviour
    flow_timeout_minutes: int = 30
    reopen_grace_days: int = 7
    auto_reply_cap_per_hour: int = 10
    lead_email: str | None = None

    # web chat
    webchat_identity_secret: SecretStr | None = None
    webchat_require_identity: bool = False
    webchat_allowed_origins: list[str] = Field(default_factory=list)
    webchat_rate_per_minute: int = 30
    webchat_max_message_chars: int = 4000
    demo: bool = False

    # Slack
    slack_bot_token: SecretStr | None = None
    slack_app_token: SecretStr | None = None
    slack_signing_secret: SecretStr | None = None
    slack_api_url: str | None = None
    slack_triage_channel: str | None = None
    slack_agent_usergroup: str | None = None
    slack_agent_users: list[str] = Field(default_factory=list)

    # email
    email_address: str | None = None
    imap_host: str | None = None
    imap_port: int = 993
    imap_user: str | None = None
    imap_password: SecretStr | None = None
    imap_ssl: bool = True
    imap_starttls: bool = False
    imap_folder: str = "INBOX"
    imap_processed_folder: str | None = "Processed"
    imap_failed_folder: str | None = "Failed"
    imap_poll_seconds: float = 30.0
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_ssl: bool = False
    smtp_starttls: bool = True
    smtp_connections: int = Field(default=4, ge=1)

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.var_dir / 'deskbot.sqlite3').resolve()}"

    def local_url(self, port: int) -> str:
        """The URL of this machine's HTTP server on ``port`` (the bound port: 0 picks one),
        for the start-up lines; a wildcard host is shown as the loopback address."""
        host = "127.0.0.1" if self.http_host in ("", "0.0.0.0", "::") else self.http_host
        return f"http://{host}:{port}"

    @property
    def on_postgres(self) -> bool:
        from sqlalchemy.engine import make_url

        return make_url(self.resolved_database_url).get_backend_name() == "postgresql"

    @property
    def slack_enabled(self) -> bool:
        return bool(self.slack_bot_token and (self.slack_app_token or self.slack_signing_secret))

    @property
    def email_enabled(self) -> bool:
        return bool(self.email_address and self.imap_host and self.smtp_host)

    def ensure_secret_key(self) -> str:
        """The configured secret, or one generated once and kept under ``var_dir``."""
        if self.secret_key is not None:
            return self.secret_key.get_secret_value()
        path = self.var_dir / "secret_key"
        if path.exists():
            return path.read_text(encoding="utf-8").strip()
        self.var_dir.mkdir(parents=True, exist_ok=True)
        key = secrets.token_urlsafe(48)
        path.touch(mode=0o600)
        path.write_text(key, encoding="utf-8")
        logger.info("settings.secret_key.generated path=%s", path)
        return key
