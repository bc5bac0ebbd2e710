"""The live Slack channel on slack-bolt (async): requesters and agents.

Connection: Socket Mode when an app token is configured (see ``socket_mode.py``), else
HTTP Events at ``POST /slack/events`` through bolt's Starlette adapter, where bolt's own
request verification checks the signature (with an injectable clock).

The ack path stays short: bolt runs with ``process_before_response=True`` so Slack's
200 (or the Socket Mode ack) is sent only after the listener has put the message into
the durable inbox (one insert, unique on (channel, event id); inserts that arrive
together share one commit, see :class:`GroupAccept`); if that insert fails Slack gets a
500 and retries. The conversation manager is reached only from the inbox
worker, with retry (R6, R7, R8).

Agents act in the triage channel: card buttons and thread replies go straight to
:class:`bot.agents.AgentDesk` (one short transaction each), only for configured agents
(R14). The card follows the conversation's state through the event bus (chat.update).

Outbound: one ``chat.postMessage`` per outbox row. Every post carries its outbox id in
message metadata; a post whose answer was lost (reset, timeout, 5xx) is looked for in
the channel before it is sent again (R12). A 429 pauses that Slack channel for
``Retry-After`` seconds (R11) and is reported as :class:`RateLimited`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import re
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp
from fastapi import APIRouter, Request, Response
from slack_bolt.adapter.starlette.async_handler import AsyncSlackRequestHandler
from slack_bolt.async_app import AsyncApp
from slack_bolt.middleware.authorization.async_single_team_authorization import (
    AsyncSingleTeamAuthorization,
)
from slack_bolt.middleware.request_verification.async_request_verification import (
    AsyncRequestVerification,
)
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import Clock as SlackClock
from slack_sdk.signature import SignatureVerifier
from slack_sdk.web.async_client import AsyncWebClient

from bot.errors import ConfigError, PermanentError, RateLimited, TransientError
from bot.types import Delivery, Inbound, Outbound, Sender
from channels.slack import convert
from channels.slack.socket_mode import SocketModeConnections
from channels.slack.surface import CARD_KIND

if TYPE_CHECKING:
    from bot.agents import AgentDesk

logger = logging.getLogger(__name__)

DEFAULT_API_URL = "https://slack.com/api/"
CONFIG_ERRORS = frozenset(
    {
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "missing_scope",
        "not_allowed_token_type",
        "no_permission",
    }
)
CARD_ACTIONS = re.compile(r"^deskbot_(claim|hand_back|resolve)$")
BOT_BUTTONS = re.compile(r"^deskbot_(button|reply)_\d+$")
NOTE_PREFIX = re.compile(r"^\s*note:\s*", re.I)
IMPACT_SENTENCES = {
    "low": "Only me is affected.",
    "medium": "Several people are affected.",
    "high": "Everyone is affected.",
}
URGENCY_SENTENCES = {
    "low": "It can wait.",
    "medium": "It makes my work slow.",
    "high": "I cannot work.",
}
AGENT_CACHE_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class CardRecord:
    """A conversation's escalation card: its outbox row, where it landed, what it shows."""

    outbox_id: int
    channel: str | None
    ts: str | None
    card: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class SlackCoreAccess:
    """What the composition root hands the channel: the bot's public services."""

    accept: Callable[[Inbound], Awaitable[bool]]
    agents: AgentDesk
    subscribe: Callable[[], contextlib.AbstractAsyncContextManager[asyncio.Queue[Any]]]
    platform_id_of: Callable[[int], Awaitable[str | None]]
    card_of: Callable[[int], Awaitable[CardRecord | None]]
    open_tickets_of: Callable[[str], Awaitable[list[convert.HomeTicket]]]
    services: Sequence[tuple[str, str]] = ()
    # several messages in one transaction; when given, concurrent accepts share commits
    accept_many: Callable[[Sequence[Inbound]], Awaitable[list[bool]]] | None = None


class GroupAccept:
    """Group commit for the ack path: messages accepted while a commit is running wait
    for the next one and go in together (at most ``limit``), so a burst of Socket Mode
    envelopes costs a few transactions instead of one each. Each caller still returns
    only after its own message is committed, or gets that commit's exception."""

    def __init__(
        self, accept_many: Callable[[Sequence[Inbound]], Awaitable[list[bool]]], *, limit: int = 200
    ) -> None:
        self._accept_many = accept_many
        self._limit = limit
        self._waiting: list[tuple[Inbound, asyncio.Future[bool]]] = []
        self._lock = asyncio.Lock()

    async def accept(self, inbound: Inbound) -> bool:
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._waiting.append((inbound, future))
        async with self._lock:
            if not future.done():
                batch, self._waiting = self._waiting[: self._limit], self._waiting[self._limit :]
                try:
                    results = await self._accept_many([item for item, _ in batch])
                except asyncio.CancelledError:
                    # the others are still queued on the lock: one of them commits these
                    self._waiting[:0] = [(i, w) for i, w in batch if w is not future]
                    raise
                except Exception as exc:
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(exc)
                else:
                    for (_, waiter), fresh in zip(batch, results, strict=True):
                        if not waiter.done():
                            waiter.set_result(fresh)
        return await future


@dataclass(frozen=True, slots=True)
class SlackConfig:
    """The channel's settings (from ``bot.settings``, resolved by the composition root)."""

    bot_token: str
    app_token: str | None = None
    signing_secret: str | None = None
    api_url: str | None = None
    triage_channel: str | None = None
    agent_usergroup: str | None = None
    agent_users: tuple[str, ...] = ()
    socket_connections: int = 1
    socket_base_delay: float = 1.0
    socket_max_delay: float = 120.0
    identity_timeout: float = 1.5
    now: Callable[[], float] = field(default=time.time)
    monotonic: Callable[[], float] = field(default=time.monotonic)


class _Clock(SlackClock):
    def __init__(self, now: Callable[[], float]) -> None:
        self._now = now

    def now(self) -> float:
        return self._now()


class _StrictVerifier(SignatureVerifier):
    """slack_sdk's verifier; a non-numeric timestamp is a bad request, never a 500 (R4)."""

    def is_valid(self, body: str | bytes, timestamp: str | None, signature: str | None) -> bool:
        if timestamp is None or not timestamp.strip().isdigit():
            return False
        return super().is_valid(body, timestamp, signature)


class _ClockedRequestVerification(AsyncRequestVerification):
    """bolt's request verification, with the clock it checks the 5-minute window on."""

    def __init__(self, signing_secret: str, now: Callable[[], float]) -> None:
        super().__init__(signing_secret)
        self._verifier = _StrictVerifier(signing_secret, clock=_Clock(now))


class SlackChannel:
    """Slack for requesters (DM, mention, App Home, ``/desk``) and agents (triage)."""

    kind = "slack"

    def __init__(self, config: SlackConfig, access: SlackCoreAccess) -> None:
        self.config = config
        self.access = access
        self.client = AsyncWebClient(
            token=config.bot_token,
            base_url=config.api_url or DEFAULT_API_URL,
            retry_handlers=[],
        )
        verification = (
            _ClockedRequestVerification(config.signing_secret, config.now)
            if config.signing_secret
            else None
        )
        self.app = AsyncApp(
            client=self.client,
            signing_secret=config.signing_secret,
            process_before_response=True,
            request_verification_enabled=False,
            before_authorize=verification,
            logger=logging.getLogger("channels.slack.bolt"),
        )
        self.bot_user_id: str | None = None
        self.monotonic = config.monotonic  # the clock of per-channel pauses (R11)
        self.socket: SocketModeConnections | None = None
        self._paused: dict[str, float] = {}
        self._ambiguous: set[int] = set()
        self._people: dict[str, tuple[str | None, str | None, bool]] = {}
        self._people_pending: dict[
            str, asyncio.Future[tuple[str | None, str | None, bool] | None]
        ] = {}
        self._agent_locks: collections.defaultdict[str, asyncio.Lock] = collections.defaultdict(
            asyncio.Lock
        )
        self._agents_cache: tuple[float, frozenset[str]] | None = None
        self._card_conversations: dict[tuple[str, str], int] = {}
        self._resolved_by: dict[int, str] = {}
        self._agent_events_done: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._agent_events_running: set[str] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._group = GroupAccept(access.accept_many) if access.accept_many else None
        self._register()

    # lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            auth = await self.client.auth_test()
        except SlackApiError as exc:
            raise translate(exc) from exc
        self.bot_user_id = auth.get("user_id")
        # bolt's single-team authorization calls auth.test on first use, once per request
        # until one returns: a burst of Socket Mode envelopes would make one call each
        for middleware in self.app._async_middleware_list:
            if isinstance(middleware, AsyncSingleTeamAuthorization):
                middleware.auth_test_result = auth
        self._spawn(self._follow_state(), name="slack.cards")
        if self.config.app_token:
            self.socket = SocketModeConnections(
                self.app,
                app_token=self.config.app_token,
                web_client=self.client,
                count=self.config.socket_connections,
                base_delay=self.config.socket_base_delay,
                max_delay=self.config.socket_max_delay,
            )
            await self.socket.start()
        logger.info(
            "slack.started mode=%s bot_user=%s",
            "socket" if self.socket else "http",
            self.bot_user_id,
        )

    async def stop(self) -> None:
        if self.socket is not None:
            await self.socket.stop()
            self.socket = None
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    def router(self) -> APIRouter:
        """``POST /slack/events`` (events, interactivity and ``/desk`` in HTTP mode)."""
        handler = AsyncSlackRequestHandler(self.app)
        router = APIRouter(tags=["slack"])

        @router.post("/slack/events", include_in_schema=False)
        async def slack_events(request: Request) -> Response:
            return await handler.handle(request)

        return router

    # listeners -------------------------------------------------------------------------

    def _register(self) -> None:
        app = self.app
        app.event("message")(self._on_message)
        app.event("app_mention")(self._on_message)
        app.event("app_home_opened")(self._on_home_opened)
        app.command("/desk")(self._on_command)
        app.action(CARD_ACTIONS)(self._on_card_action)
        app.action(convert.REPORT_ISSUE_ACTION)(self._on_report_button)
        app.action(BOT_BUTTONS)(self._on_button)
        app.view(convert.REPORT_ISSUE_CALLBACK)(self._on_report_submitted)

    async def _on_message(self, body: dict[str, Any], context: Any) -> None:
        bot_user_id = context.get("bot_user_id") or self.bot_user_id
        event = body.get("event") or {}
        if convert.is_from_bot(event, bot_user_id=bot_user_id):
            return  # R13: ours (bolt drops most of those already) and other bots'
        triage = self.config.triage_channel
        if triage and event.get("channel") == triage:
            await self._on_triage_message(body, event)
            return
        inbound = convert.inbound_from_event(body, bot_user_id=bot_user_id)
        if inbound is None:
            return
        await self._accept(inbound)

    async def _on_home_opened(self, event: dict[str, Any]) -> None:
        user = event.get("user")
        if not user or event.get("tab", "home") != "home":
            return
        tickets = await self.access.open_tickets_of(str(user))
        await self.client.views_publish(
            user_id=str(user), view=convert.app_home_view(tickets=tickets)
        )

    async def _on_command(self, ack: Any, body: dict[str, Any]) -> None:
        if convert.slash_command_opens_report(body):
            await ack()
            channel = str(body.get("channel_id") or "")
            await self._open_report_modal(
                str(body.get("trigger_id")), channel if channel.startswith("D") else None
            )
            return
        inbound = convert.inbound_from_slash_command(body)
        if inbound is not None:
            await self._accept(inbound)
        await ack()

    async def _on_report_button(self, ack: Any, body: dict[str, Any]) -> None:
        await ack()
        await self._open_report_modal(str(body.get("trigger_id")), None)

    async def _on_button(self, ack: Any, body: dict[str, Any]) -> None:
        inbound = convert.inbound_from_block_action(body)
        if inbound is not None:
            await self._accept(inbound)
        await ack()

    async def _on_report_submitted(self, ack: Any, body: dict[str, Any]) -> None:
        inbound = convert.inbound_from_view_submission(body)
        if inbound is not None:
            inbound = dataclasses.replace(inbound, text=self.report_text(inbound.meta))
            await self._accept(inbound)
        await ack()

    def report_text(self, form: Mapping[str, Any]) -> str:
        """The modal's fields as one message the router's slot extraction reads.

        The router fills service, impact and urgency from free text, so the form's
        choices are appended as plain sentences it recognises ("Service: VPN.",
        "Only me is affected.", "I cannot work.").
        """
        names = dict(self.access.services)
        parts = [str(form.get("description") or "").strip()]
        service = form.get("service")
        if service:
            parts.append(f"Service: {names.get(str(service), str(service))}.")
        impact = IMPACT_SENTENCES.get(str(form.get("impact")))
        urgency = URGENCY_SENTENCES.get(str(form.get("urgency")))
        parts.extend(s for s in (impact, urgency) if s)
        return "\n".join(p for p in parts if p)

    async def _open_report_modal(self, trigger_id: str, origin_channel: str | None) -> None:
        await self.client.views_open(
            trigger_id=trigger_id,
            view=convert.report_issue_modal(
                services=list(self.access.services), origin_channel=origin_channel
            ),
        )

    async def _accept(self, inbound: Inbound) -> None:
        """Into the durable inbox; raising here makes bolt answer 500 so Slack retries."""
        enriched = await self._with_identity(inbound)
        if enriched is None:
            return
        if self._group is not None:
            fresh = await self._group.accept(enriched)
        else:
            fresh = await self.access.accept(enriched)
        if not fresh:
            logger.info("slack.inbound.duplicate external_id=%s", inbound.external_id)

    async def _with_identity(self, inbound: Inbound) -> Inbound | None:
        """users.info → the email Slack verified; cached. ``None`` for a bot user."""
        user = inbound.sender.external_id
        known = self._people.get(user)
        if known is None:
            # a burst of events from one person (Socket Mode delivers them concurrently)
            # asks users.info once
            pending = self._people_pending.get(user)
            if pending is None:
                pending = asyncio.ensure_future(self._look_up_person(user))
                self._people_pending[user] = pending
                pending.add_done_callback(lambda _f: self._people_pending.pop(user, None))
            known = await asyncio.shield(pending)
            if known is None:
                return inbound
        email, name, is_bot = known
        if is_bot:
            return None
        return dataclasses.replace(
            inbound,
            sender=Sender(
                external_id=user,
                display_name=name or inbound.sender.display_name,
                email=email,
                email_verified=email is not None,
            ),
        )

    async def _look_up_person(self, user: str) -> tuple[str | None, str | None, bool] | None:
        try:
            answer = await asyncio.wait_for(
                self.client.users_info(user=user), self.config.identity_timeout
            )
        except (SlackApiError, aiohttp.ClientError, TimeoutError) as exc:
            # without an email the message is still handled; the person is linked
            # to their email on a later message (the manager fills a missing email)
            logger.warning("slack.identity.unavailable error=%s", type(exc).__name__)
            return None
        info = answer.get("user") or {}
        profile = info.get("profile") or {}
        name = (
            profile.get("display_name")
            or profile.get("real_name")
            or info.get("real_name")
            or info.get("name")
        )
        email = profile.get("email") if not info.get("is_bot") else None
        known = (email, name, bool(info.get("is_bot")))
        self._people[user] = known
        return known

    # agents ----------------------------------------------------------------------------

    async def is_agent(self, user_id: str) -> bool:
        """A configured agent: listed in ``agent_users`` or a member of the user group."""
        if user_id in self.config.agent_users:
            return True
        group = self.config.agent_usergroup
        if not group:
            return False
        now = time.monotonic()
        if self._agents_cache is None or now - self._agents_cache[0] > AGENT_CACHE_SECONDS:
            answer = await self.client.usergroups_users_list(usergroup=group)
            self._agents_cache = (now, frozenset(answer.get("users") or ()))
        return user_id in self._agents_cache[1]

    async def _agent(self, user_id: str) -> Any:
        name = (self._people.get(user_id) or (None, None, False))[1]
        if name is None:
            enriched = await self._with_identity(Inbound("slack", "-", Sender(user_id), "", "-"))
            name = enriched.sender.display_name if enriched else None
        # two clicks at once would both create the agent (unique on slack_user_id): one
        # at a time here, and once more when another process created it first
        async with self._agent_locks[user_id]:
            try:
                return await self.access.agents.ensure_external_agent(
                    channel="slack", external_id=user_id, display_name=name
                )
            except Exception:
                logger.info("slack.agent.created_concurrently user=%s", user_id)
                return await self.access.agents.ensure_external_agent(
                    channel="slack", external_id=user_id, display_name=name
                )

    async def _on_card_action(self, ack: Any, body: dict[str, Any], action: dict[str, Any]) -> None:
        await ack()
        user = str((body.get("user") or {}).get("id") or "")
        channel = str(
            (body.get("container") or {}).get("channel_id")
            or (body.get("channel") or {}).get("id")
            or ""
        )
        verb, _, ref = str(action.get("value") or "").partition(":")
        if not user or not ref.isdigit():
            return
        if not await self.is_agent(user):
            logger.warning("slack.agent.refused user=%s action=%s", user, verb)
            await self._ephemeral(channel, user, "Only service desk agents can do that.")
            return
        from bot.agents import AgentActionRefused

        conversation_id = int(ref)
        agent = await self._agent(user)
        try:
            if verb == "claim":
                if not await self.access.agents.claim(conversation_id, agent):
                    await self._ephemeral(channel, user, "Someone has already claimed this.")
            elif verb == "hand_back":
                await self.access.agents.hand_back(conversation_id, agent)
            elif verb == "resolve":
                self._resolved_by[conversation_id] = user
                await self.access.agents.resolve(conversation_id, agent)
        except AgentActionRefused as exc:
            self._resolved_by.pop(conversation_id, None)
            await self._ephemeral(channel, user, f"That did not work: {exc}.")

    async def _on_triage_message(self, body: dict[str, Any], event: Mapping[str, Any]) -> None:
        """An agent's reply in a card's thread → the requester (or an internal note)."""
        thread_ts, ts = event.get("thread_ts"), event.get("ts")
        user, channel = event.get("user"), str(event.get("channel"))
        event_id = str(body.get("event_id") or f"{channel}:{ts}")
        if not thread_ts or thread_ts == ts or not user or event.get("subtype"):
            return
        if event_id in self._agent_events_done or event_id in self._agent_events_running:
            return  # a retry of what is being or was handled
        if not await self.is_agent(str(user)):
            return  # colleagues chatting in the thread: not for the requester
        conversation_id = await self._card_conversation(channel, str(thread_ts))
        if conversation_id is None:
            return
        from bot.agents import AgentActionRefused

        self._agent_events_running.add(event_id)
        try:
            text = convert.slack_to_plain(str(event.get("text") or "")).strip()
            private = NOTE_PREFIX.match(text) is not None
            if private:
                text = NOTE_PREFIX.sub("", text, count=1)
            agent = await self._agent(str(user))
            try:
                await self.access.agents.reply(
                    conversation_id, agent, text, private=private, external_id=f"slack:{event_id}"
                )
            except AgentActionRefused as exc:
                await self._ephemeral(
                    channel, str(user), f"Not sent to the requester: {exc}.", thread_ts=thread_ts
                )
            self._agent_events_done[event_id] = None
            while len(self._agent_events_done) > 5000:
                self._agent_events_done.popitem(last=False)
        finally:
            self._agent_events_running.discard(event_id)

    async def _card_conversation(self, channel: str, thread_ts: str) -> int | None:
        key = (channel, thread_ts)
        if key in self._card_conversations:
            return self._card_conversations[key]
        answer = await self.client.conversations_replies(
            channel=channel,
            ts=thread_ts,
            latest=thread_ts,
            inclusive=True,
            limit=1,
            include_all_metadata=True,
        )
        for message in answer.get("messages") or ():
            if message.get("ts") != thread_ts:
                continue
            payload = (message.get("metadata") or {}).get("event_payload") or {}
            value = payload.get("conversation_id")
            if (
                convert.outbox_id_of(message) is not None
                and isinstance(value, int | str)
                and str(value).isdigit()
            ):
                self._card_conversations[key] = int(value)
                return int(value)
        return None

    async def _ephemeral(
        self, channel: str, user: str, text: str, *, thread_ts: str | None = None
    ) -> None:
        if not channel:
            return
        try:
            kwargs: dict[str, Any] = {"channel": channel, "user": user, "text": text}
            if thread_ts:
                kwargs["thread_ts"] = thread_ts
            await self.client.chat_postEphemeral(**kwargs)
        except SlackApiError:
            logger.warning("slack.ephemeral.failed channel=%s", channel)

    # the card follows the conversation -----------------------------------------------------

    async def _follow_state(self) -> None:
        async with self.access.subscribe() as queue:
            while True:
                event = await queue.get()
                if event.kind != "state" or event.conversation_id is None:
                    continue
                try:
                    await self.update_card(event.conversation_id, dict(event.data))
                except Exception:
                    logger.exception(
                        "slack.card.update_failed conversation=%s", event.conversation_id
                    )

    async def update_card(self, conversation_id: int, data: Mapping[str, Any]) -> bool:
        """chat.update the conversation's card to its new state; False when there is none."""
        record = await self.access.card_of(conversation_id)
        if record is None or not record.ts or not record.channel:
            return False
        card = dict(record.card)
        state = data.get("state")
        claimed_by: str | None = None
        resolved_by: str | None = None
        if state == "agent" and data.get("agent_id") is not None:
            agent = await self.access.agents.get_agent(int(data["agent_id"]))
            claimed_by = (agent.slack_user_id or agent.display_name) if agent else "an agent"
        elif state == "resolved":
            resolved_by = self._resolved_by.pop(conversation_id, None) or "an agent"
        rendered = convert.escalation_card(**card, claimed_by=claimed_by, resolved_by=resolved_by)
        await self.client.chat_update(
            channel=record.channel, ts=record.ts, text=rendered["text"], blocks=rendered["blocks"]
        )
        return True

    # outbound ------------------------------------------------------------------------------

    async def send(self, outbound: Outbound) -> Delivery:
        address = outbound.address
        if convert.is_ephemeral(address):
            return await self._send_ephemeral(outbound)
        channel = await self._channel_of(address)
        thread_ts = address.get("thread_ts")
        card_outbox = address.get("card_outbox")
        if card_outbox is not None:
            thread_ts = await self.access.platform_id_of(int(card_outbox))
            if not thread_ts:
                raise TransientError("the escalation card is not delivered yet", retry_after=1.0)
        kwargs = self._post_kwargs(outbound, channel, thread_ts)
        self._check_pause(channel)
        outbox_id = outbound.outbox_id
        if outbox_id is not None and outbox_id in self._ambiguous:
            found = await self._find_posted(channel, thread_ts, outbox_id)
            if found is not None:
                self._ambiguous.discard(outbox_id)
                logger.info("slack.send.reconciled outbox_id=%s", outbox_id)
                return found
        try:
            answer = await self.client.chat_postMessage(**kwargs)
        except SlackApiError as exc:
            error = translate(exc)
            if isinstance(error, RateLimited):
                self._pause(channel, error.retry_after or 1.0)
            elif isinstance(error, TransientError) and outbox_id is not None:
                self._ambiguous.add(outbox_id)  # a 5xx may have posted
            raise error from exc
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # the request may have reached Slack: look before sending again (R12)
            if outbox_id is not None:
                self._ambiguous.add(outbox_id)
            raise TransientError(f"slack: {type(exc).__name__}") from exc
        if outbox_id is not None:
            self._ambiguous.discard(outbox_id)
        return Delivery(platform_id=str(answer["ts"]), meta={"channel": answer.get("channel")})

    async def reconcile(self, outbound: Outbound) -> Delivery | None:
        """Find the post carrying this outbox id (after a crash in the ambiguous window)."""
        if outbound.outbox_id is None or convert.is_ephemeral(outbound.address):
            return None
        channel = await self._channel_of(outbound.address)
        thread_ts = outbound.address.get("thread_ts")
        card_outbox = outbound.address.get("card_outbox")
        if card_outbox is not None:
            thread_ts = await self.access.platform_id_of(int(card_outbox))
            if not thread_ts:
                return None
        return await self._find_posted(channel, thread_ts, outbound.outbox_id)

    async def _find_posted(
        self, channel: str, thread_ts: str | None, outbox_id: int
    ) -> Delivery | None:
        try:
            if thread_ts:
                answer = await self.client.conversations_replies(
                    channel=channel, ts=str(thread_ts), limit=200, include_all_metadata=True
                )
            else:
                answer = await self.client.conversations_history(
                    channel=channel, limit=100, include_all_metadata=True
                )
        except SlackApiError as exc:
            raise translate(exc) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"slack: {type(exc).__name__}") from exc
        message = convert.find_outbox_message(answer.get("messages") or (), outbox_id)
        if message is None:
            return None
        return Delivery(platform_id=str(message["ts"]), meta={"channel": channel})

    def _post_kwargs(
        self, outbound: Outbound, channel: str, thread_ts: str | None
    ) -> dict[str, Any]:
        if outbound.kind == CARD_KIND:
            card = convert.escalation_card(**dict(outbound.meta["card"]))
            kwargs: dict[str, Any] = {
                "channel": channel,
                "text": card["text"],
                "blocks": card["blocks"],
                "unfurl_links": False,
                "unfurl_media": False,
            }
            if outbound.outbox_id is not None:
                metadata = convert.outbox_metadata(outbound.outbox_id)
                metadata["event_payload"]["conversation_id"] = outbound.conversation_id
                kwargs["metadata"] = metadata
            return kwargs
        address = {k: v for k, v in outbound.address.items() if k != "card_outbox"}
        address["channel"] = channel
        if thread_ts:
            address["thread_ts"] = thread_ts
        return convert.outbound_to_post_kwargs(dataclasses.replace(outbound, address=address))

    async def _send_ephemeral(self, outbound: Outbound) -> Delivery:
        kwargs = convert.outbound_to_ephemeral_kwargs(outbound)
        self._check_pause(kwargs["channel"])
        try:
            answer = await self.client.chat_postEphemeral(**kwargs)
        except SlackApiError as exc:
            error = translate(exc)
            if isinstance(error, RateLimited):
                self._pause(kwargs["channel"], error.retry_after or 1.0)
            raise error from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            # an ephemeral message cannot be looked up; a rare duplicate is harmless
            raise TransientError(f"slack: {type(exc).__name__}") from exc
        return Delivery(platform_id=f"ephemeral:{answer.get('message_ts')}")

    async def _channel_of(self, address: Mapping[str, Any]) -> str:
        channel = address.get("channel")
        if channel:
            return str(channel)
        user = address.get("user")
        if not user:
            raise PermanentError("a Slack outbound needs a channel or a user")
        try:
            answer = await self.client.conversations_open(users=str(user))
        except SlackApiError as exc:
            raise translate(exc) from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientError(f"slack: {type(exc).__name__}") from exc
        return str((answer.get("channel") or {})["id"])

    def _pause(self, channel: str, seconds: float) -> None:
        until = self.monotonic() + seconds
        self._paused[channel] = max(until, self._paused.get(channel, 0.0))
        logger.warning("slack.rate_limited channel=%s retry_after=%.1f", channel, seconds)

    def _check_pause(self, channel: str) -> None:
        until = self._paused.get(channel)
        if until is None:
            return
        left = until - self.monotonic()
        if left > 0:
            raise RateLimited(f"slack channel {channel} paused", retry_after=left)
        del self._paused[channel]

    def paused_for(self, channel: str) -> float:
        """Seconds this Slack channel is still paused (0 when it is not)."""
        return max(0.0, self._paused.get(channel, 0.0) - self.monotonic())

    def _spawn(self, coro: Any, *, name: str) -> None:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_crash)


def translate(exc: SlackApiError) -> Exception:
    """A SlackApiError as what the caller should do (bot.errors)."""
    response = exc.response
    status = int(getattr(response, "status_code", 0) or 0)
    error = ""
    with contextlib.suppress(Exception):
        error = str(response.get("error") or "")
    if status == 429 or error == "ratelimited":
        headers = getattr(response, "headers", {}) or {}
        retry_after = _retry_after(headers)
        return RateLimited(f"slack: rate limited ({error or status})", retry_after=retry_after)
    if status >= 500:
        return TransientError(f"slack: HTTP {status}")
    if error in CONFIG_ERRORS:
        return ConfigError(f"slack: {error}")
    if error in ("fatal_error", "internal_error", "service_unavailable", "request_timeout"):
        return TransientError(f"slack: {error}")
    return PermanentError(f"slack: {error or status}")


def _retry_after(headers: Mapping[str, Any]) -> float:
    for key, value in headers.items():
        if key.lower() == "retry-after":
            raw = value[0] if isinstance(value, list | tuple) else value
            with contextlib.suppress(TypeError, ValueError):
                return max(0.0, float(raw))
    return 1.0


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("slack.task.crashed", exc_info=task.exception())
