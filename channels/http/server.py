"""The HTTP server (FastAPI on uvicorn) shared by every web-facing channel.

Channels contribute routers; this module adds ``/healthz`` and ``/metrics`` and runs
uvicorn inside deskbot's own event loop with the common start/stop lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.metrics import OUTBOX_BACKLOG, scrape_registry

logger = logging.getLogger(__name__)

HealthCheck = Callable[[], Awaitable[dict[str, Any]]]


def build_app(
    *,
    health: HealthCheck,
    routers: list[APIRouter] | None = None,
    title: str = "deskbot",
    backlog: Callable[[], Awaitable[dict[str, int]]] | None = None,
) -> FastAPI:
    """The FastAPI application with every contributed router mounted."""
    app = FastAPI(
        title=title, version="0.1.0", docs_url="/api/docs", openapi_url="/api/openapi.json"
    )

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> JSONResponse:
        try:
            report = await health()
        except Exception as exc:  # the probe must answer, not crash
            logger.warning("http.healthz.failed error=%s", type(exc).__name__)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        status = 200 if report.get("status") == "ok" else 503
        return JSONResponse(report, status_code=status)

    @app.get("/metrics", tags=["ops"], response_class=PlainTextResponse)
    async def metrics() -> PlainTextResponse:
        if backlog is not None:
            try:
                for status, count in (await backlog()).items():
                    OUTBOX_BACKLOG.labels(status=status).set(count)
            except Exception:
                logger.warning("http.metrics.backlog_failed")
        return PlainTextResponse(generate_latest(scrape_registry()), media_type=CONTENT_TYPE_LATEST)

    for router in routers or []:
        app.include_router(router)
    return app


def reuse_port_sockets(host: str, port: int) -> list[socket.socket]:
    """Sockets bound to ``host:port`` with ``SO_REUSEPORT``, not yet listening: several
    processes that each bind the same port this way share it, and the kernel spreads new
    connections over those that listen (Linux, by a hash of the client's address and port).
    One socket per address the host resolves to, as uvicorn's own binding does; with port
    0, all on the port the first one was given."""
    sockets: list[socket.socket] = []
    seen: set[tuple[int, Any]] = set()
    try:
        infos = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        for family, kind, proto, _, address in infos:
            if (family, address) in seen:
                continue
            seen.add((family, address))
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and sockets[1:]:  # port 0: every address on the first one's port
                address = (address[0], sockets[0].getsockname()[1], *address[2:])
            sock.bind(address)
            sock.setblocking(False)
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class HttpServer:
    """uvicorn serving ``app`` in this event loop; ``start`` returns once it listens.

    With ``reuse_port`` the port is bound with ``SO_REUSEPORT``, to be shared with other
    processes bound the same way (``DESKBOT_WORKERS``, bot/workers.py)."""

    def __init__(
        self,
        app: FastAPI,
        *,
        host: str,
        port: int,
        log_level: str = "warning",
        reuse_port: bool = False,
    ) -> None:
        self.app = app
        self.reuse_port = reuse_port
        config = uvicorn.Config(
            app,
            host=host,
            port=port,
            log_level=log_level,
            lifespan="off",
            access_log=False,
            ws_max_size=64 * 1024,
        )
        self._server = uvicorn.Server(config)
        # deskbot's own lifecycle handles SIGINT/SIGTERM and stops the server itself
        self._server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        servers = getattr(self._server, "servers", [])
        for server in servers:
            for sock in server.sockets:
                return int(sock.getsockname()[1])
        return int(self._server.config.port)

    @property
    def host(self) -> str:
        return str(self._server.config.host)

    async def start(self) -> None:
        config = self._server.config
        sockets = reuse_port_sockets(config.host, config.port) if self.reuse_port else None
        self._task = asyncio.create_task(self._server.serve(sockets), name="http.server")
        while not self._server.started:
            if self._task.done():
                self._task.result()
                raise RuntimeError("HTTP server stopped during start")
            await asyncio.sleep(0.01)
        logger.info("http.listening url=http://%s:%s", self.host, self.port)

    async def stop(self) -> None:
        if self._task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(self._task, timeout=10)
        except TimeoutError:
            self._server.force_exit = True
            self._task.cancel()
        self._task = None
