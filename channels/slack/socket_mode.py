"""Socket Mode connections with our own reconnect policy (R9, R10).

slack_sdk's aiohttp ``SocketModeClient`` speaks the protocol (hello, envelopes, acks,
pings); on a ``disconnect`` frame or a closed socket it reconnects at once, closing the
old connection first. Two things are wrong with that for deskbot:

- after ``too_many_websockets`` it retries immediately, forever: a reconnect storm (R10);
- on ``refresh_requested`` it closes the old connection before the new one is open, so
  an envelope Slack sends in that moment is lost to us until Slack's own retry.

So each connection here is one client whose reconnects are handed to a supervisor:
``refresh_requested`` and ``warning`` open the replacement first, then close the old
client once its in-flight envelopes are acked (Slack sends a connection it asked to go
away no new envelopes); ``too_many_websockets``, a failed connect or a dead socket wait a
growing, jittered delay before the next attempt of that slot, reset by its next
``hello``. slack_sdk's ``connect()`` retries a failed handshake itself every
``ping_interval``; ``connect_timeout`` bounds it so that the supervisor's backoff is the
only retry policy.

Nothing is lost between the two: an envelope is acked only after bolt's listener has
put it into the durable inbox (``process_before_response``), so one that was still being
handled when its connection went away is redelivered by Slack (``retry_attempt`` > 0,
possibly to the other connection), and the inbox, unique on (channel, event id), keeps
one copy. Every envelope goes through bolt's ``AsyncApp`` (``socket_mode`` requests skip
signature verification, as they must).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
from collections.abc import Callable
from typing import Any

from slack_bolt.adapter.socket_mode.async_internals import (
    run_async_bolt_app,
    send_async_response,
)
from slack_bolt.async_app import AsyncApp
from slack_sdk.socket_mode.aiohttp import SocketModeClient
from slack_sdk.socket_mode.request import SocketModeRequest
from slack_sdk.web.async_client import AsyncWebClient

logger = logging.getLogger(__name__)

GRACEFUL_REASONS = frozenset({"refresh_requested", "warning"})


class _SupervisedClient(SocketModeClient):
    """A Socket Mode client that reports instead of reconnecting on its own."""

    def __init__(
        self,
        *args: Any,
        on_lost: Callable[[_SupervisedClient], None],
        on_hello: Callable[[], None],
        **kw: Any,
    ):
        super().__init__(*args, **kw)
        self.on_lost = on_lost
        self.on_hello = on_hello
        self.hello = asyncio.Event()
        self.lost = asyncio.Event()
        self.disconnect_reason: str | None = None
        # frames received and not yet fully handled (acked): a replaced connection is
        # closed only when this reaches 0
        self.in_flight = 0
        self.idle = asyncio.Event()
        self.idle.set()

    async def enqueue_message(self, message: str) -> None:
        self.in_flight += 1
        self.idle.clear()
        await super().enqueue_message(message)

    async def run_message_listeners(self, message: dict[str, Any], raw_message: str) -> None:
        try:
            kind = message.get("type")
            if kind == "hello":
                self.hello.set()
                self.on_hello()
                return
            if kind == "disconnect":
                self.disconnect_reason = str(message.get("reason") or "unknown")
                self._report_lost()
                return
            await super().run_message_listeners(message, raw_message)
        finally:
            self.in_flight -= 1
            if self.in_flight <= 0:
                self.in_flight = 0
                self.idle.set()

    async def connect_to_new_endpoint(self, force: bool = False) -> None:
        # a dead socket or a CLOSE frame: the supervisor decides when to reconnect
        if not self.closed:
            self._report_lost()

    def _report_lost(self) -> None:
        if not self.lost.is_set():
            self.lost.set()
            self.on_lost(self)


class SocketModeConnections:
    """``count`` supervised Socket Mode connections feeding one bolt app.

    ``base_delay`` doubles per consecutive failure of a slot up to ``max_delay``; each
    wait is drawn from [d/2, d] (equal jitter), so waits never shrink while failures
    continue and several slots do not retry in step. ``delays`` records every wait, for
    operators' logs and for tests.
    """

    def __init__(
        self,
        app: AsyncApp,
        *,
        app_token: str,
        web_client: AsyncWebClient,
        count: int = 1,
        base_delay: float = 1.0,
        max_delay: float = 120.0,
        ping_interval: float = 10.0,
        drain_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.app = app
        self.app_token = app_token
        self.web_client = web_client
        self.count = count
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.ping_interval = ping_interval
        self.drain_timeout = drain_timeout
        self.connect_timeout = connect_timeout
        self.delays: list[float] = []
        self._rng = rng or random.Random()
        self._failures: dict[int, int] = {}
        self._slots: list[asyncio.Task[None]] = []
        self._clients: set[_SupervisedClient] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False

    async def start(self) -> None:
        self._stopping = False
        for index in range(self.count):
            task = asyncio.create_task(self._slot(index), name=f"slack.socket.{index}")
            task.add_done_callback(_log_crash)
            self._slots.append(task)

    async def stop(self) -> None:
        self._stopping = True
        for task in self._slots:
            task.cancel()
        for task in self._slots:
            try:
                await task
            except asyncio.CancelledError:
                pass
        self._slots.clear()
        for client in list(self._clients):
            await self._close(client)
        for task in list(self._tasks):
            task.cancel()

    @property
    def open_clients(self) -> int:
        return sum(1 for c in self._clients if c.hello.is_set() and not c.lost.is_set())

    # one slot: keep one healthy connection ---------------------------------------------

    async def _slot(self, index: int) -> None:
        client: _SupervisedClient | None = None
        while not self._stopping:
            if client is None:
                client = await self._connect_with_backoff(index)
            await client.lost.wait()
            reason = client.disconnect_reason or "closed"
            logger.info("slack.socket.lost slot=%s reason=%s", index, reason)
            old = client
            if reason in GRACEFUL_REASONS:
                # open the replacement first, then let the old one finish and close
                client = await self._connect_with_backoff(index)
                self._spawn(self._drain_and_close(old))
            else:
                client = None
                await self._close(old)
                if reason == "too_many_websockets":
                    self._failures[index] = self._failures.get(index, 0) + 1
                    await self._wait_before_retry(index, reason)

    async def _connect_with_backoff(self, index: int) -> _SupervisedClient:
        while True:
            client = _SupervisedClient(
                app_token=self.app_token,
                logger=logger,
                web_client=self.web_client,
                ping_interval=self.ping_interval,
                on_lost=lambda _c: None,
                on_hello=functools.partial(self._connected, index),
            )
            client.socket_mode_request_listeners.append(self._handler(client))  # type: ignore[arg-type]
            self._clients.add(client)
            try:
                async with asyncio.timeout(self.connect_timeout):
                    client.wss_uri = await client.issue_new_wss_url()
                    await client.connect()
                    await _first(client.hello.wait(), client.lost.wait())
                if client.lost.is_set() or not client.hello.is_set():
                    raise ConnectionError(client.disconnect_reason or "no hello")
            except asyncio.CancelledError:
                await self._close(client)
                raise
            except Exception as exc:
                await self._close(client)
                self._failures[index] = self._failures.get(index, 0) + 1
                await self._wait_before_retry(index, f"{type(exc).__name__}: {exc}")
                continue
            logger.info("slack.socket.connected slot=%s", index)
            return client

    def _connected(self, index: int) -> None:
        """A ``hello`` on the slot's connection: its backoff starts again from the base."""
        self._failures[index] = 0

    async def _wait_before_retry(self, index: int, why: str) -> None:
        failures = self._failures.get(index, 0)
        ceiling = min(self.max_delay, self.base_delay * 2 ** max(0, failures - 1))
        delay = self._rng.uniform(ceiling / 2, ceiling)
        self.delays.append(delay)
        logger.warning("slack.socket.backoff slot=%s delay=%.2f reason=%s", index, delay, why)
        await asyncio.sleep(delay)

    def _handler(self, client: _SupervisedClient) -> Callable[..., Any]:
        async def handle(sdk_client: SocketModeClient, req: SocketModeRequest) -> None:
            response = await run_async_bolt_app(self.app, req)
            await send_async_response(sdk_client, req, response, 0.0)

        return handle

    async def _drain_and_close(self, client: _SupervisedClient) -> None:
        try:
            await asyncio.wait_for(client.idle.wait(), timeout=self.drain_timeout)
        except TimeoutError:
            logger.warning("slack.socket.drain_timeout in_flight=%s", client.in_flight)
        await self._close(client)

    async def _close(self, client: _SupervisedClient) -> None:
        self._clients.discard(client)
        try:
            await client.close()
            if not client.aiohttp_client_session.closed:
                await client.aiohttp_client_session.close()
        except Exception:
            logger.exception("slack.socket.close_failed")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_crash)


async def _first(*aws: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()


def _log_crash(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        logger.error("slack.socket.task_crashed", exc_info=task.exception())
