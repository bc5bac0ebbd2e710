"""A local WebSocket server that speaks Slack's Socket Mode envelope protocol.

On connect it sends ``{"type": "hello", ...}``; it pushes ``events_api``,
``interactive`` and ``slash_commands`` envelopes, each with a fresh ``envelope_id``, to
one randomly chosen open connection (as Slack does when an app holds several); it
records the acks the client sends back (``{"envelope_id": ..., "payload": ...}``); it can
ask a connection to go away (``{"type": "disconnect", "reason": "refresh_requested"}``)
and can refuse connections the way Slack does when an app holds too many
(``{"type": "disconnect", "reason": "too_many_websockets"}`` instead of a hello, then a
close).

Like Slack, a connection that was asked to go away gets no new envelopes, and an
``events_api`` envelope that is not acked within ``redeliver_after`` seconds is sent
again (a new envelope, the same event, ``retry_attempt`` + 1, ``retry_reason``
"timeout") to another open connection, at most ``max_retries`` times. Every connection
attempt is timestamped (``attempt_times``, monotonic) so backoff can be checked.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import WSMsgType, web


@dataclass(frozen=True, slots=True)
class Ack:
    """One acknowledgement the client sent for an envelope."""

    envelope_id: str
    payload: Mapping[str, Any] | None
    connection_id: int


@dataclass(frozen=True, slots=True)
class Envelope:
    """One envelope as the fake sent it."""

    envelope_id: str
    type: str
    payload: Mapping[str, Any]
    connection_id: int
    retry_attempt: int = 0
    sent_at: float = 0.0
    accepts_response_payload: bool = False

    @property
    def event_id(self) -> str | None:
        value = self.payload.get("event_id")
        return str(value) if value is not None else None


@dataclass(slots=True)
class SocketConnection:
    """One open WebSocket connection from a client."""

    id: int
    ws: web.WebSocketResponse
    query: Mapping[str, str]
    received: list[dict[str, Any]] = field(default_factory=list)
    closed: asyncio.Event = field(default_factory=asyncio.Event)


class FakeSocketMode:
    """Socket Mode on ``ws://127.0.0.1:<port 0>/link/``; start with :meth:`start`."""

    def __init__(
        self,
        *,
        app_id: str = "A0DESKBOT",
        max_connections: int = 10,
        redeliver_after: float = 3.0,
        max_retries: int = 3,
        rng: random.Random | None = None,
    ) -> None:
        self.app_id = app_id
        self.max_connections = max_connections
        self.redeliver_after = redeliver_after
        self.max_retries = max_retries
        self.rng = rng or random.Random(6)
        self.connections: dict[int, SocketConnection] = {}
        self.draining: set[int] = set()
        self.connection_attempts = 0
        self.attempt_times: list[float] = []
        self.redelivered: list[Envelope] = []
        self.refused = 0
        self.envelopes: list[Envelope] = []
        self.acks: dict[str, Ack] = {}
        self.duplicate_acks: list[Ack] = []
        self.unparsable: list[str] = []
        self._refuse_next = 0
        self._ids = itertools.count(1)
        self._changed = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self._port: int | None = None
        self._unacked: dict[str, Envelope] = {}
        self._redeliverer: asyncio.Task[None] | None = None

    # lifecycle -----------------------------------------------------------------------

    async def start(self) -> str:
        app = web.Application()
        app.router.add_get("/link/", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = int(self._runner.addresses[0][1])
        self._redeliverer = asyncio.create_task(self._redeliver_forever(), name="fake.redeliver")
        return self.url

    async def stop(self) -> None:
        if self._redeliverer is not None:
            self._redeliverer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._redeliverer
            self._redeliverer = None
        for connection in list(self.connections.values()):
            await connection.ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    @property
    def url(self) -> str:
        """What apps.connections.open hands out (the fake Web API adds a ticket)."""
        if self._port is None:
            raise RuntimeError("the fake Socket Mode server is not started")
        return f"ws://127.0.0.1:{self._port}/link/"

    # behaviour -----------------------------------------------------------------------

    def refuse_next(self, count: int = 1) -> None:
        """The next ``count`` connections get ``too_many_websockets`` and are closed."""
        self._refuse_next += count

    @property
    def open_connections(self) -> list[SocketConnection]:
        """Connections that get envelopes: open and not asked to go away."""
        return [
            c
            for c in self.connections.values()
            if not c.closed.is_set() and c.id not in self.draining
        ]

    @property
    def unacked(self) -> list[Envelope]:
        """``events_api`` envelopes sent and not acked (nor yet redelivered)."""
        return list(self._unacked.values())

    async def wait_for_connections(self, count: int, *, timeout: float = 5.0) -> None:
        """Wait until ``count`` connections are open (each has had its hello)."""
        await self._wait(lambda: len(self.open_connections) >= count, timeout)

    async def wait_for_attempts(self, count: int, *, timeout: float = 5.0) -> None:
        """Wait until clients have tried to connect ``count`` times in all."""
        await self._wait(lambda: self.connection_attempts >= count, timeout)

    async def push(
        self,
        type_: str,
        payload: Mapping[str, Any],
        *,
        accepts_response_payload: bool = False,
        retry_attempt: int | None = None,
        retry_reason: str | None = None,
        connection: SocketConnection | None = None,
    ) -> Envelope:
        """Send one envelope to ``connection`` or to a random open connection."""
        if connection is None:
            candidates = self.open_connections
            if not candidates:
                raise RuntimeError("no open Socket Mode connection to push to")
            connection = self.rng.choice(candidates)
        envelope = Envelope(
            str(uuid.uuid4()),
            type_,
            dict(payload),
            connection.id,
            retry_attempt=retry_attempt or 0,
            sent_at=time.monotonic(),
            accepts_response_payload=accepts_response_payload,
        )
        frame: dict[str, Any] = {
            "envelope_id": envelope.envelope_id,
            "payload": dict(payload),
            "type": type_,
            "accepts_response_payload": accepts_response_payload,
        }
        if type_ == "events_api":
            frame["retry_attempt"] = retry_attempt or 0
            frame["retry_reason"] = retry_reason or ""
            self._unacked[envelope.envelope_id] = envelope
        self.envelopes.append(envelope)
        try:
            await connection.ws.send_str(json.dumps(frame))
        except (ConnectionError, RuntimeError):
            pass  # a connection closing under us: unacked, so redelivered like on Slack
        return envelope

    async def push_event(
        self,
        event: Mapping[str, Any],
        *,
        event_id: str | None = None,
        team_id: str = "T0DESK001",
        retry_attempt: int | None = None,
        connection: SocketConnection | None = None,
    ) -> Envelope:
        """Wrap an event in an ``event_callback`` payload and push it as ``events_api``."""
        payload = {
            "token": "verification-token-unused",
            "team_id": team_id,
            "api_app_id": self.app_id,
            "event": dict(event),
            "type": "event_callback",
            "event_id": event_id or f"Ev{next(self._ids):010d}",
            "event_time": int(float(event.get("event_ts") or event.get("ts") or 0)),
            "authorizations": [
                {
                    "enterprise_id": None,
                    "team_id": team_id,
                    "user_id": "U0DESKBOT",
                    "is_bot": True,
                    "is_enterprise_install": False,
                }
            ],
            "is_ext_shared_channel": False,
        }
        return await self.push(
            "events_api",
            payload,
            retry_attempt=retry_attempt,
            retry_reason="timeout" if retry_attempt else None,
            connection=connection,
        )

    async def push_interactive(
        self, payload: Mapping[str, Any], *, connection: SocketConnection | None = None
    ) -> Envelope:
        accepts = payload.get("type") in ("view_submission", "block_suggestion")
        return await self.push(
            "interactive", payload, accepts_response_payload=accepts, connection=connection
        )

    async def push_slash_command(
        self, form: Mapping[str, str], *, connection: SocketConnection | None = None
    ) -> Envelope:
        return await self.push(
            "slash_commands", form, accepts_response_payload=True, connection=connection
        )

    async def wait_for_ack(self, envelope_id: str, *, timeout: float = 5.0) -> Ack:
        await self._wait(lambda: envelope_id in self.acks, timeout)
        return self.acks[envelope_id]

    async def wait_for_acks(self, count: int, *, timeout: float = 5.0) -> None:
        await self._wait(lambda: len(self.acks) >= count, timeout)

    async def send_disconnect(
        self, reason: str = "refresh_requested", *, connection: SocketConnection | None = None
    ) -> None:
        """Ask one connection (or every open one) to reconnect, as Slack does.

        Slack keeps the old connection open for a short while so that the client can
        open the new one first, and sends it no new envelopes; the client closes the old
        one itself.
        """
        targets = [connection] if connection is not None else self.open_connections
        frame = json.dumps(
            {"type": "disconnect", "reason": reason, "debug_info": {"host": "applink-fake"}}
        )
        for target in targets:
            self.draining.add(target.id)
            await target.ws.send_str(frame)

    async def _redeliver_forever(self) -> None:
        while True:
            await asyncio.sleep(min(0.1, self.redeliver_after / 4))
            await self.redeliver_due()

    async def redeliver_due(self) -> None:
        """Send again every ``events_api`` envelope left unacked for ``redeliver_after``."""
        now = time.monotonic()
        due = [e for e in self._unacked.values() if now - e.sent_at >= self.redeliver_after]
        for envelope in due:
            del self._unacked[envelope.envelope_id]
            if envelope.retry_attempt >= self.max_retries:
                continue
            others = [c for c in self.open_connections if c.id != envelope.connection_id]
            candidates = others or self.open_connections
            if not candidates:
                self._unacked[envelope.envelope_id] = envelope  # try again when one opens
                continue
            again = await self.push(
                envelope.type,
                envelope.payload,
                accepts_response_payload=envelope.accepts_response_payload,
                retry_attempt=envelope.retry_attempt + 1,
                retry_reason="timeout",
                connection=self.rng.choice(candidates),
            )
            async with self._changed:
                self.redelivered.append(again)
                self._changed.notify_all()

    # the server ----------------------------------------------------------------------

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse(autoping=True)
        await ws.prepare(request)
        connection = SocketConnection(next(self._ids), ws, dict(request.query))
        async with self._changed:
            self.connection_attempts += 1
            self.attempt_times.append(time.monotonic())
            refuse = self._refuse_next > 0 or len(self.open_connections) >= self.max_connections
            if refuse:
                self._refuse_next = max(0, self._refuse_next - 1)
                self.refused += 1
            else:
                self.connections[connection.id] = connection
            self._changed.notify_all()
        if refuse:
            await ws.send_str(
                json.dumps(
                    {
                        "type": "disconnect",
                        "reason": "too_many_websockets",
                        "debug_info": {"host": "applink-fake"},
                    }
                )
            )
            await ws.close()
            return ws
        await ws.send_str(
            json.dumps(
                {
                    "type": "hello",
                    "num_connections": len(self.open_connections),
                    "debug_info": {
                        "host": "applink-fake",
                        "build_number": 1,
                        "approximate_connection_time": 18060,
                    },
                    "connection_info": {"app_id": self.app_id},
                }
            )
        )
        try:
            async for message in ws:
                if message.type == WSMsgType.TEXT:
                    await self._received(connection, message.data)
        finally:
            async with self._changed:
                connection.closed.set()
                self._changed.notify_all()
        return ws

    async def _received(self, connection: SocketConnection, data: str) -> None:
        try:
            frame = json.loads(data)
        except ValueError:
            self.unparsable.append(data)
            return
        async with self._changed:
            connection.received.append(frame)
            envelope_id = frame.get("envelope_id") if isinstance(frame, dict) else None
            if isinstance(envelope_id, str):
                ack = Ack(envelope_id, frame.get("payload"), connection.id)
                if envelope_id in self.acks:
                    self.duplicate_acks.append(ack)
                else:
                    self.acks[envelope_id] = ack
                self._unacked.pop(envelope_id, None)
            self._changed.notify_all()

    async def wait_until(self, predicate: Any, *, timeout: float = 5.0) -> None:
        """Wait until ``predicate()`` holds; checked whenever the fake's state changes."""
        await self._wait(predicate, timeout)

    async def _wait(self, predicate: Any, timeout: float) -> None:
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(predicate), timeout)
