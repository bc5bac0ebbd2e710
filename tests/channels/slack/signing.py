"""Inbound Slack HTTP requests, signed exactly as Slack signs them.

Slack's v0 scheme: ``X-Slack-Request-Timestamp`` carries the Unix time, and
``X-Slack-Signature`` is ``v0=`` + hex HMAC-SHA256, keyed with the app's signing secret,
over ``v0:{timestamp}:{raw body}``. Events arrive as JSON, interactivity as a form with a
single ``payload=`` field holding JSON, slash commands as a plain form. The helpers return
the exact bytes and headers so a test can post them through bolt's own verification (or
tamper with them first).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class SignedRequest:
    """The body and headers of one request as Slack would send it."""

    body: bytes
    headers: Mapping[str, str]

    def tampered(self, body: bytes) -> SignedRequest:
        """The same headers over a different body (what an attacker would send)."""
        return replace(self, body=body)

    def with_headers(self, **headers: str) -> SignedRequest:
        """Replace or add headers; ``X_Slack_Signature="..."`` style names are accepted."""
        merged = dict(self.headers)
        for name, value in headers.items():
            merged[name.replace("_", "-")] = value
        return replace(self, headers=merged)

    def without_header(self, name: str) -> SignedRequest:
        return replace(
            self, headers={k: v for k, v in self.headers.items() if k.lower() != name.lower()}
        )

    @property
    def text(self) -> str:
        return self.body.decode()


def sign(signing_secret: str, timestamp: int | str, body: bytes) -> str:
    """The ``X-Slack-Signature`` value for ``body`` sent at ``timestamp``."""
    base = b"v0:" + str(timestamp).encode() + b":" + body
    digest = hmac.new(signing_secret.encode(), base, hashlib.sha256).hexdigest()
    return f"v0={digest}"


class SlackRequestSigner:
    """Builds signed inbound requests for one app's signing secret.

    ``now`` is the timestamp source (seconds), so tests can sign for a moment in the past
    or the future (R3) without touching the clock.
    """

    def __init__(self, signing_secret: str, *, now: Any = time.time) -> None:
        self.signing_secret = signing_secret
        self._now = now

    def signed(
        self,
        body: bytes,
        *,
        content_type: str,
        timestamp: int | str | None = None,
        retry_num: int | None = None,
        retry_reason: str | None = None,
    ) -> SignedRequest:
        ts = str(int(self._now())) if timestamp is None else str(timestamp)
        headers = {
            "Content-Type": content_type,
            "X-Slack-Request-Timestamp": ts,
            "X-Slack-Signature": sign(self.signing_secret, ts, body),
        }
        if retry_num is not None:
            headers["X-Slack-Retry-Num"] = str(retry_num)
            headers["X-Slack-Retry-Reason"] = retry_reason or "http_timeout"
        return SignedRequest(body=body, headers=headers)

    def event(
        self,
        event: Mapping[str, Any],
        *,
        event_id: str = "Ev0000000001",
        team_id: str = "T0DESK001",
        api_app_id: str = "A0DESKBOT",
        bot_user_id: str = "U0DESKBOT",
        timestamp: int | str | None = None,
        retry_num: int | None = None,
        retry_reason: str | None = None,
    ) -> SignedRequest:
        """An Events API ``event_callback`` carrying ``event``."""
        payload = event_callback(
            event,
            event_id=event_id,
            team_id=team_id,
            api_app_id=api_app_id,
            bot_user_id=bot_user_id,
        )
        return self.signed(
            json.dumps(payload).encode(),
            content_type="application/json",
            timestamp=timestamp,
            retry_num=retry_num,
            retry_reason=retry_reason,
        )

    def url_verification(
        self, challenge: str, *, timestamp: int | str | None = None
    ) -> SignedRequest:
        body = {"token": "unused", "challenge": challenge, "type": "url_verification"}
        return self.signed(
            json.dumps(body).encode(), content_type="application/json", timestamp=timestamp
        )

    def interaction(
        self, payload: Mapping[str, Any], *, timestamp: int | str | None = None
    ) -> SignedRequest:
        """A block action or view submission: a form whose only field is ``payload``."""
        body = urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()
        return self.signed(
            body, content_type="application/x-www-form-urlencoded", timestamp=timestamp
        )

    def slash_command(
        self, form: Mapping[str, str], *, timestamp: int | str | None = None
    ) -> SignedRequest:
        body = urllib.parse.urlencode(dict(form)).encode()
        return self.signed(
            body, content_type="application/x-www-form-urlencoded", timestamp=timestamp
        )


def event_callback(
    event: Mapping[str, Any],
    *,
    event_id: str,
    team_id: str = "T0DESK001",
    api_app_id: str = "A0DESKBOT",
    bot_user_id: str = "U0DESKBOT",
) -> dict[str, Any]:
    """The outer Events API envelope Slack wraps around one event."""
    return {
        "token": "unused-verification-token",
        "team_id": team_id,
        "api_app_id": api_app_id,
        "event": dict(event),
        "type": "event_callback",
        "event_id": event_id,
        "event_time": int(float(event.get("event_ts") or event.get("ts") or 0)),
        "authorizations": [
            {
                "enterprise_id": None,
                "team_id": team_id,
                "user_id": bot_user_id,
                "is_bot": True,
                "is_enterprise_install": False,
            }
        ],
        "is_ext_shared_channel": False,
    }


def slash_command_form(
    text: str,
    *,
    user_id: str = "U0ALICE01",
    channel_id: str = "D0ALICE01",
    command: str = "/desk",
    trigger_id: str = "1337.42.abcdef",
    team_id: str = "T0DESK001",
) -> dict[str, str]:
    """The form fields Slack posts for a slash command."""
    return {
        "token": "unused-verification-token",
        "team_id": team_id,
        "team_domain": "deskbot-test",
        "channel_id": channel_id,
        "channel_name": "directmessage",
        "user_id": user_id,
        "user_name": "alice",
        "command": command,
        "text": text,
        "api_app_id": "A0DESKBOT",
        "is_enterprise_install": "false",
        "response_url": "https://hooks.slack.com/commands/T0DESK001/1/abc",
        "trigger_id": trigger_id,
    }
