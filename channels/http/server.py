"""The HTTP server (FastAPI on uvicorn) shared by every web-facing channel.

Channels contribute routers; this module adds ``/healthz`` and ``/metrics`` and runs
uvicorn inside deskbot's own event loop with the common start/stop lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from fastapi import APIRouter, FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bot.metrics import OUTBOX_BACKLOG, REGISTRY

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
        return PlainTextResponse(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)

    for router in routers or []:
        app.include_router(router)
    return app


class HttpServer:
    """uvicorn serving ``app`` in this event loop; ``start`` returns once it listens."""

    def __init__(self, app: FastAPI, *, host: str, port: int, log_level: str = "warning") -> None:
        self.app = app
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
        self._task = asyncio.create_task(self._server.serve(), name="http.server")
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
