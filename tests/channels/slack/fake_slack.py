"""A fake of the Slack Web API: a real HTTP server on loopback.

``slack_sdk``'s ``AsyncWebClient(token=..., base_url=fake.url + "/api/")`` talks to it
unchanged. Every call is recorded (method, merged arguments, headers); the methods deskbot
uses answer the way Slack answers them, including Slack's habit of returning HTTP 200 with
``{"ok": false, "error": ...}`` for application errors. Faults are injected per method:
HTTP 429 with ``Retry-After``, HTTP 5xx, a post that is accepted and stored before the
connection is dropped (R12), a slow answer, or a held answer that a test releases.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

DEFAULT_BOT_TOKEN = "xoxb-deskbot-test"
DEFAULT_APP_TOKEN = "xapp-1-deskbot-test"


@dataclass(frozen=True, slots=True)
class RecordedCall:
    """One request as the fake received it."""

    method: str
    http_method: str
    args: Mapping[str, Any]
    headers: Mapping[str, str]
    token: str | None
    content_type: str
    raw_body: bytes


@dataclass(slots=True)
class _Fault:
    kind: str  # "status", "error", "reset", "slow", "hold"
    status: int = 200
    retry_after: int | None = None
    error: str | None = None
    delay: float = 0.0
    gate: asyncio.Event | None = None


@dataclass(slots=True)
class SlackUser:
    """A member of the fake workspace, as users.info reports it."""

    id: str
    name: str
    real_name: str = ""
    display_name: str = ""
    email: str | None = None
    is_bot: bool = False
    deleted: bool = False
    tz: str = "Europe/Berlin"

    def to_api(self, team_id: str) -> dict[str, Any]:
        profile: dict[str, Any] = {
            "real_name": self.real_name,
            "display_name": self.display_name,
        }
        if self.email is not None:
            profile["email"] = self.email
        return {
            "id": self.id,
            "team_id": team_id,
            "name": self.name,
            "real_name": self.real_name,
            "deleted": self.deleted,
            "is_bot": self.is_bot,
            "tz": self.tz,
            "profile": profile,
        }


@dataclass(slots=True)
class _Channel:
    id: str
    messages: list[dict[str, Any]] = field(default_factory=list)


class FakeSlackWebApi:
    """The Slack Web API on ``127.0.0.1:<port 0>``; start with :meth:`start`."""

    def __init__(
        self,
        *,
        bot_token: str = DEFAULT_BOT_TOKEN,
        app_token: str = DEFAULT_APP_TOKEN,
        team_id: str = "T0DESK001",
        bot_user_id: str = "U0DESKBOT",
        bot_id: str = "B0DESKBOT",
        app_id: str = "A0DESKBOT",
        socket_mode_url: str | None = None,
    ) -> None:
        self.bot_token = bot_token
        self.app_token = app_token
        self.team_id = team_id
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.app_id = app_id
        self.socket_mode_url = socket_mode_url
        self.calls: list[RecordedCall] = []
        self.ephemeral: list[dict[str, Any]] = []
        self.views_opened: list[dict[str, Any]] = []
        self.views_published: dict[str, dict[str, Any]] = {}
        self.users: dict[str, SlackUser] = {}
        self.usergroups: dict[str, list[str]] = {}
        self._channels: dict[str, _Channel] = {}
        self._faults: dict[str, collections.deque[_Fault]] = collections.defaultdict(
            collections.deque
        )
        self._changed = asyncio.Condition()
        self._last_ts = 0.0
        self._ids = itertools.count(1)
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._stopping = asyncio.Event()
        self.add_user(SlackUser(id=bot_user_id, name="deskbot", real_name="deskbot", is_bot=True))

    # lifecycle -----------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/api/{method}", self._dispatch)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        return self.url

    async def stop(self) -> None:
        # slow and held answers end at once, so shutting down never waits on them
        self._stopping.set()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``; the Web API lives under ``/api/``."""
        if self._port is None:
            raise RuntimeError("the fake Slack Web API is not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def api_url(self) -> str:
        return self.url + "/api/"

    # workspace set-up ----------------------------------------------------------------

    def add_user(self, user: SlackUser) -> SlackUser:
        self.users[user.id] = user
        return user

    def set_usergroup(self, usergroup_id: str, user_ids: list[str]) -> None:
        self.usergroups[usergroup_id] = list(user_ids)

    def add_message(
        self,
        channel: str,
        *,
        text: str,
        user: str,
        thread_ts: str | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        """Put a message into a channel's history as if someone had posted it."""
        message: dict[str, Any] = {"type": "message", "user": user, "text": text}
        message["ts"] = self._next_ts()
        if thread_ts is not None:
            message["thread_ts"] = thread_ts
        message.update(extra)
        self._channel(channel).messages.append(message)
        return message

    def messages_in(self, channel: str, *, thread_ts: str | None = None) -> list[dict[str, Any]]:
        """Messages in posting order: top level, or one thread's replies when asked."""
        messages = self._channel(channel).messages
        if thread_ts is None:
            return [m for m in messages if _is_top_level(m)]
        return [m for m in messages if m.get("thread_ts") == thread_ts and m["ts"] != thread_ts]

    def all_messages(self, channel: str) -> list[dict[str, Any]]:
        return list(self._channel(channel).messages)

    def im_channel_for(self, user_id: str) -> str:
        return "D" + user_id.lstrip("UW")

    # observation ---------------------------------------------------------------------

    def calls_to(self, method: str) -> list[RecordedCall]:
        return [c for c in self.calls if c.method == method]

    async def wait_for_calls(
        self, method: str, count: int = 1, *, timeout: float = 5.0
    ) -> list[RecordedCall]:
        """Wait until ``method`` was called at least ``count`` times."""
        async with self._changed:
            await asyncio.wait_for(
                self._changed.wait_for(lambda: len(self.calls_to(method)) >= count), timeout
            )
        return self.calls_to(method)

    # fault injection -----------------------------------------------------------------

    def fail_next(
        self,
        method: str,
        *,
        status: int = 429,
        retry_after: int | None = None,
        times: int = 1,
    ) -> None:
        """The next ``times`` calls answer with HTTP ``status`` and do nothing.

        A 429 carries ``Retry-After`` (30 s unless told) and Slack's
        ``{"ok": false, "error": "ratelimited"}`` body.
        """
        if status == 429 and retry_after is None:
            retry_after = 30
        for _ in range(times):
            self._faults[method].append(_Fault("status", status=status, retry_after=retry_after))

    def error_next(self, method: str, error: str, *, times: int = 1) -> None:
        """The next calls answer HTTP 200 with ``{"ok": false, "error": error}``."""
        for _ in range(times):
            self._faults[method].append(_Fault("error", error=error))

    def reset_after_accept(self, method: str, *, times: int = 1) -> None:
        """The next calls take effect (a post is stored), then the connection drops."""
        for _ in range(times):
            self._faults[method].append(_Fault("reset"))

    def answer_slowly(self, method: str, seconds: float, *, times: int = 1) -> None:
        """The next calls take effect, then the answer comes ``seconds`` later."""
        for _ in range(times):
            self._faults[method].append(_Fault("slow", delay=seconds))

    def hold_next(self, method: str) -> asyncio.Event:
        """The next call takes effect but is not answered until the event is set."""
        gate = asyncio.Event()
        self._faults[method].append(_Fault("hold", gate=gate))
        return gate

    # the server ----------------------------------------------------------------------

    async def _dispatch(self, request: web.Request) -> web.StreamResponse:
        method = request.match_info["method"]
        raw = await request.read()
        args = _parse_args(request, raw)
        token = _bearer(request.headers.get("Authorization")) or _str_or_none(
            args.pop("token", None)
        )
        call = RecordedCall(
            method=method,
            http_method=request.method,
            args=args,
            headers=dict(request.headers),
            token=token,
            content_type=request.content_type,
            raw_body=raw,
        )
        async with self._changed:
            self.calls.append(call)
            self._changed.notify_all()

        queue = self._faults.get(method)
        fault = queue.popleft() if queue else None
        if fault is not None and fault.kind == "status":
            headers = {}
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            if fault.status == 429:
                return web.json_response(
                    {"ok": False, "error": "ratelimited"}, status=429, headers=headers
                )
            return web.Response(status=fault.status, text="upstream failure", headers=headers)
        if fault is not None and fault.kind == "error":
            return web.json_response({"ok": False, "error": fault.error})

        body = self._answer(method, call)

        if fault is not None and fault.kind == "reset":
            transport = request.transport
            assert transport is not None
            transport.abort()
            # The effect happened; the client never learns of it.
            raise asyncio.CancelledError
        if fault is not None and fault.kind in ("slow", "hold"):
            await self._delay(fault)
        return web.json_response(body)

    async def _delay(self, fault: _Fault) -> None:
        waits = [asyncio.ensure_future(self._stopping.wait())]
        if fault.gate is not None:
            waits.append(asyncio.ensure_future(fault.gate.wait()))
        timeout = fault.delay if fault.kind == "slow" else None
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waits:
                waiter.cancel()

    def _answer(self, method: str, call: RecordedCall) -> dict[str, Any]:
        if method == "apps.connections.open":
            if call.token is None:
                return _error("not_authed")
            if call.token == self.bot_token:
                return _error("not_allowed_token_type")
            if call.token != self.app_token:
                return _error("invalid_auth")
            if self.socket_mode_url is None:
                return _error("socket_mode_not_enabled")
            ticket = next(self._ids)
            return {"ok": True, "url": f"{self.socket_mode_url}?ticket=t{ticket}"}
        if call.token is None:
            return _error("not_authed")
        if call.token == self.app_token:
            return _error("not_allowed_token_type")
        if call.token != self.bot_token:
            return _error("invalid_auth")
        handler = self._methods.get(method)
        if handler is None:
            return _error("unknown_method")
        return handler(self, call.args)

    # Web API methods -----------------------------------------------------------------

    def _auth_test(self, args: Mapping[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://deskbot-test.slack.com/",
            "team": "deskbot test",
            "user": "deskbot",
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, args: Mapping[str, Any]) -> dict[str, Any]:
        channel = _str_or_none(args.get("channel"))
        if not _looks_like_channel(channel):
            return _error("channel_not_found")
        assert channel is not None
        text = _str_or_none(args.get("text"))
        blocks = _json_field(args.get("blocks"))
        if not text and not blocks:
            return _error("no_text")
        message: dict[str, Any] = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "app_id": self.app_id,
            "team": self.team_id,
            "text": text or "",
            "ts": self._next_ts(),
        }
        if blocks:
            message["blocks"] = blocks
        thread_ts = _str_or_none(args.get("thread_ts"))
        if thread_ts:
            message["thread_ts"] = thread_ts
        metadata = _json_field(args.get("metadata"))
        if metadata:
            message["metadata"] = metadata
        self._channel(channel).messages.append(message)
        return {"ok": True, "channel": channel, "ts": message["ts"], "message": message}

    def _chat_update(self, args: Mapping[str, Any]) -> dict[str, Any]:
        channel = _str_or_none(args.get("channel"))
        ts = _str_or_none(args.get("ts"))
        if not channel or channel not in self._channels:
            return _error("channel_not_found")
        for message in self._channels[channel].messages:
            if message["ts"] == ts:
                break
        else:
            return _error("message_not_found")
        if message.get("bot_id") != self.bot_id:
            return _error("cant_update_message")
        if "text" in args:
            message["text"] = args["text"]
        blocks = _json_field(args.get("blocks"))
        if blocks is not None:
            message["blocks"] = blocks
        metadata = _json_field(args.get("metadata"))
        if metadata is not None:
            message["metadata"] = metadata
        message["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        return {"ok": True, "channel": channel, "ts": ts, "text": message["text"]}

    def _chat_post_ephemeral(self, args: Mapping[str, Any]) -> dict[str, Any]:
        channel = _str_or_none(args.get("channel"))
        user = _str_or_none(args.get("user"))
        if not channel:
            return _error("channel_not_found")
        if not user or user not in self.users:
            return _error("user_not_found")
        ts = self._next_ts()
        self.ephemeral.append(
            {
                "channel": channel,
                "user": user,
                "text": args.get("text", ""),
                "blocks": _json_field(args.get("blocks")),
                "thread_ts": args.get("thread_ts"),
                "message_ts": ts,
            }
        )
        return {"ok": True, "message_ts": ts}

    def _conversations_history(self, args: Mapping[str, Any]) -> dict[str, Any]:
        channel = _str_or_none(args.get("channel"))
        if not _looks_like_channel(channel):
            return _error("channel_not_found")
        messages = [m for m in reversed(self._channel(channel).messages) if _is_top_level(m)]
        return _page(messages, args)

    def _conversations_replies(self, args: Mapping[str, Any]) -> dict[str, Any]:
        channel = _str_or_none(args.get("channel"))
        ts = _str_or_none(args.get("ts"))
        if not _looks_like_channel(channel):
            return _error("channel_not_found")
        thread = [
            m for m in self._channel(channel).messages if m["ts"] == ts or m.get("thread_ts") == ts
        ]
        if not thread:
            return _error("thread_not_found")
        # replies come oldest first, the parent included
        result = _page(list(reversed(thread)), args)
        result["messages"] = list(reversed(result["messages"]))
        return result

    def _conversations_open(self, args: Mapping[str, Any]) -> dict[str, Any]:
        users = _str_or_none(args.get("users"))
        if not users:
            return _error("users_list_not_supplied")
        user_ids = users.split(",")
        if any(u not in self.users for u in user_ids):
            return _error("user_not_found")
        if len(user_ids) != 1:
            return _error("method_not_supported_for_channel_type")
        channel = self.im_channel_for(user_ids[0])
        self._channel(channel)
        return {"ok": True, "channel": {"id": channel, "is_im": True, "user": user_ids[0]}}

    def _users_info(self, args: Mapping[str, Any]) -> dict[str, Any]:
        user = self.users.get(str(args.get("user", "")))
        if user is None:
            return _error("user_not_found")
        return {"ok": True, "user": user.to_api(self.team_id)}

    def _usergroups_users_list(self, args: Mapping[str, Any]) -> dict[str, Any]:
        group = str(args.get("usergroup", ""))
        if group not in self.usergroups:
            return _error("no_such_subteam")
        return {"ok": True, "users": list(self.usergroups[group])}

    def _views_open(self, args: Mapping[str, Any]) -> dict[str, Any]:
        trigger_id = _str_or_none(args.get("trigger_id"))
        view = _json_field(args.get("view"))
        if not trigger_id:
            return _error("invalid_trigger_id")
        if not isinstance(view, dict):
            return _error("invalid_arguments")
        opened = {**view, "id": f"V{next(self._ids):08d}", "team_id": self.team_id}
        self.views_opened.append({"trigger_id": trigger_id, "view": opened})
        return {"ok": True, "view": opened}

    def _views_publish(self, args: Mapping[str, Any]) -> dict[str, Any]:
        user_id = _str_or_none(args.get("user_id"))
        view = _json_field(args.get("view"))
        if not user_id or user_id not in self.users:
            return _error("user_not_found")
        if not isinstance(view, dict) or view.get("type") != "home":
            return _error("invalid_arguments")
        published = {**view, "id": f"V{next(self._ids):08d}", "team_id": self.team_id}
        self.views_published[user_id] = published
        return {"ok": True, "view": published}

    _methods = {
        "auth.test": _auth_test,
        "chat.postMessage": _chat_post_message,
        "chat.update": _chat_update,
        "chat.postEphemeral": _chat_post_ephemeral,
        "conversations.history": _conversations_history,
        "conversations.replies": _conversations_replies,
        "conversations.open": _conversations_open,
        "users.info": _users_info,
        "usergroups.users.list": _usergroups_users_list,
        "views.open": _views_open,
        "views.publish": _views_publish,
    }

    # internals -----------------------------------------------------------------------

    def _channel(self, channel_id: str) -> _Channel:
        if channel_id not in self._channels:
            self._channels[channel_id] = _Channel(channel_id)
        return self._channels[channel_id]

    def _next_ts(self) -> str:
        # Slack ts values are unique per channel and increase; microsecond steps suffice.
        now = max(time.time(), self._last_ts + 0.000001)
        self._last_ts = now
        return f"{now:.6f}"


def _looks_like_channel(channel: str | None) -> bool:
    return bool(channel) and channel[0] in "CDG"  # type: ignore[index]


def _is_top_level(message: Mapping[str, Any]) -> bool:
    thread_ts = message.get("thread_ts")
    return thread_ts is None or thread_ts == message["ts"]


def _page(newest_first: list[dict[str, Any]], args: Mapping[str, Any]) -> dict[str, Any]:
    inclusive = _truthy(args.get("inclusive"))
    oldest = _ts_arg(args.get("oldest"))
    latest = _ts_arg(args.get("latest"))
    selected = []
    for message in newest_first:
        ts = float(message["ts"])
        if oldest is not None and (ts < oldest or (ts == oldest and not inclusive)):
            continue
        if latest is not None and (ts > latest or (ts == latest and not inclusive)):
            continue
        selected.append(message)
    limit = int(args.get("limit") or 100)
    limit = max(1, min(limit, 999))
    page = selected[:limit]
    return {
        "ok": True,
        "messages": [dict(m) for m in page],
        "has_more": len(selected) > limit,
        "response_metadata": {"next_cursor": ""},
    }


def _error(error: str) -> dict[str, Any]:
    return {"ok": False, "error": error}


def _bearer(header: str | None) -> str | None:
    if header and header.startswith("Bearer "):
        return header[len("Bearer ") :].strip()
    return None


def _str_or_none(value: Any) -> str | None:
    if value is None:
        return None
    return str(value)


def _truthy(value: Any) -> bool:
    return value in (True, 1, "1", "true", "True")


def _ts_arg(value: Any) -> float | None:
    if value in (None, ""):
        return None
    return float(value)


def _json_field(value: Any) -> Any:
    """Form-encoded calls carry ``blocks``/``metadata``/``view`` as JSON strings."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        return json.loads(value)
    return value


def _parse_args(request: web.Request, raw: bytes) -> dict[str, Any]:
    args: dict[str, Any] = dict(request.query)
    if not raw:
        return args
    if request.content_type == "application/json":
        body = json.loads(raw)
        if isinstance(body, dict):
            args.update(body)
    elif request.content_type in ("application/x-www-form-urlencoded", ""):
        args.update(dict(urllib.parse.parse_qsl(raw.decode(), keep_blank_values=True)))
    return args
