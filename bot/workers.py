"""``deskbot run`` with ``DESKBOT_WORKERS`` above 1: one supervising process and that many
serving processes (workers) on one port.

A worker is a whole deskbot node (docs/deployment.md, *Several web nodes on one
PostgreSQL*): it runs what ``deskbot run`` runs with one worker, on the same database, and
the nodes already share what must be shared (receipts, outbox and inbox claims, the email
poller's lock, LISTEN/NOTIFY for sockets held by another node). What the supervisor adds
is what a second ``deskbot run`` behind a load balancer would need by hand:

- **one port**: the supervisor binds it with ``SO_REUSEPORT`` and does not listen, which
  holds the port (port 0 picks a free one); each worker binds the same port the same way
  and listens, and the kernel spreads new connections over the workers that listen;
- **one secret key**, made before the workers start, so that a widget token or console
  cookie signed by one worker is good on another;
- **one** ``/metrics``: every worker writes its metrics to files in a fresh directory
  (``PROMETHEUS_MULTIPROC_DIR``), and whichever worker takes a scrape adds them all up;
- **one announcement**: the URLs are printed once, when every worker serves.

A worker that stops after it served (a crash, an out-of-memory kill) is started again, one
second later, the wait doubling up to 30 s while restarted workers keep dying within a
minute. A worker that stops before it served stops them all, and the supervisor exits
with its code: the next start would fail the same way (a setting, the database), and the
service manager is the one to decide what then. SIGTERM or SIGINT stops every worker
(SIGTERM, then SIGKILL after 30 s) and the supervisor exits 0 once each stopped cleanly.

SQLite is refused: it is one process by nature (one writer; its file under ``var/``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.settings import Settings

logger = logging.getLogger(__name__)

STOP_TIMEOUT = 30.0
RESTART_FIRST_DELAY = 1.0
RESTART_MAX_DELAY = 30.0
STEADY_AFTER = 60.0
"""A restarted worker that serves this long resets the restart delay."""


class WorkersRefused(ValueError):
    """``DESKBOT_WORKERS`` above 1 with a setting that cannot have several processes."""


def check(settings: Settings) -> None:
    if not settings.on_postgres:
        raise WorkersRefused(
            f"DESKBOT_WORKERS={settings.workers} needs PostgreSQL (DESKBOT_DATABASE_URL): "
            "SQLite serves from one process"
        )


class _Worker:
    """One serving process, started again after a crash."""

    def __init__(self, index: int, count: int, env: dict[str, str]) -> None:
        self.label = f"{index}/{count}"
        self.env = env
        self.proc: asyncio.subprocess.Process | None = None
        self.ready = asyncio.Event()
        self.ready_at: float | None = None
        self.delay = RESTART_FIRST_DELAY
        self._read_fd: int | None = None

    async def start(self) -> None:
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        self.ready = asyncio.Event()
        self.ready_at = None
        env = {
            **self.env,
            "DESKBOT_WORKER": self.label,
            "DESKBOT_WORKER_READY_FD": str(write_fd),
        }
        try:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "bot.main", "run", env=env, pass_fds=(write_fd,)
            )
        except BaseException:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        self._read_fd = read_fd
        asyncio.get_running_loop().add_reader(read_fd, self.read_ready)
        logger.info("workers.started worker=%s pid=%s", self.label, self.proc.pid)

    def read_ready(self) -> None:
        """Read the worker's pipe: "ready" once it serves, end of file when it exits.
        Also called when the worker exits, for a "ready" not read yet."""
        fd = self._read_fd
        if fd is None:
            return
        try:
            data = os.read(fd, 64)
        except BlockingIOError:
            return  # nothing written (called at exit on an open pipe)
        except OSError:
            data = b""
        if b"ready" in data:
            self.ready_at = asyncio.get_running_loop().time()
            self.ready.set()
        if not data or self.ready.is_set():
            asyncio.get_running_loop().remove_reader(fd)
            os.close(fd)
            self._read_fd = None

    def signal(self, signum: int) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signum)

    def next_delay(self, now: float) -> float:
        """How long to wait before starting it again, after it stopped at ``now``."""
        steady = self.ready_at is not None and now - self.ready_at >= STEADY_AFTER
        delay = RESTART_FIRST_DELAY if steady else self.delay
        self.delay = min(RESTART_MAX_DELAY, delay * 2)
        return delay


def _fresh_metrics_dir(settings: Settings) -> Path:
    path = (settings.var_dir / "metrics").resolve()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def supervise(settings: Settings, announce: Callable[[str], None]) -> int:
    """Run ``settings.workers`` workers until SIGTERM or SIGINT; the exit code.
    ``announce`` prints the URLs (given the local one) once every worker serves."""
    from channels.http.server import reuse_port_sockets

    check(settings)
    settings.ensure_secret_key()
    reserved = reuse_port_sockets(settings.http_host, settings.http_port)  # held, not listening
    try:
        port = reserved[0].getsockname()[1]
        env = {
            **os.environ,
            "DESKBOT_WORKERS": "1",
            "DESKBOT_HTTP_PORT": str(port),
            "DESKBOT_HTTP_REUSE_PORT": "true",
            "PROMETHEUS_MULTIPROC_DIR": str(_fresh_metrics_dir(settings)),
        }
        return asyncio.run(_supervise(settings, env, port, announce))
    finally:
        for sock in reserved:
            sock.close()


async def _supervise(
    settings: Settings, env: dict[str, str], port: int, announce: Callable[[str], None]
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    count = settings.workers
    workers = [_Worker(index, count, env) for index in range(1, count + 1)]
    for worker in workers:
        await worker.start()
    url = settings.local_url(port)
    readiness: asyncio.Task[None] | None = loop.create_task(_all_ready(workers))
    stopping = loop.create_task(stop.wait())
    restarts: dict[asyncio.Task[Any], _Worker] = {}
    waits: dict[asyncio.Task[Any], _Worker] = {
        loop.create_task(_wait(worker)): worker for worker in workers
    }
    failure: int | None = None
    try:
        while True:
            pending: set[asyncio.Task[Any]] = {stopping, *waits, *restarts}
            if readiness is not None:
                pending.add(readiness)
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if readiness in done:
                readiness = None
                logger.info("workers.serving count=%d url=%s", count, url)
                announce(url)
            if stopping in done:
                break
            for task in done & set(restarts):
                worker = restarts.pop(task)
                await worker.start()
                waits[loop.create_task(_wait(worker))] = worker
            for task in done & set(waits):
                worker = waits.pop(task)
                code = task.result()
                worker.read_ready()  # a "ready" written just before it died
                if not worker.ready.is_set():
                    logger.error(
                        "workers.failed_to_start worker=%s code=%s: stopping every worker",
                        worker.label,
                        code,
                    )
                    failure = 128 - code if code < 0 else code or 1  # killed: 128 + signal
                    break
                delay = worker.next_delay(loop.time())
                logger.warning(
                    "workers.exited worker=%s code=%s: starting it again in %.0f s",
                    worker.label,
                    code,
                    delay,
                )
                restarts[loop.create_task(asyncio.sleep(delay))] = worker
            if failure is not None:
                break
    finally:
        stopping.cancel()
        if readiness is not None:
            readiness.cancel()
        for task in restarts:
            task.cancel()
        clean = await _stop_all(workers)
    if failure is not None:
        return failure
    return 0 if clean else 1


async def _wait(worker: _Worker) -> int:
    assert worker.proc is not None
    return await worker.proc.wait()


async def _all_ready(workers: list[_Worker]) -> None:
    for worker in workers:
        await worker.ready.wait()


async def _stop_all(workers: list[_Worker]) -> bool:
    """SIGTERM to every worker still running, SIGKILL to those left after the timeout;
    whether each of them stopped cleanly (exit code 0)."""
    running = [w.proc for w in workers if w.proc is not None and w.proc.returncode is None]
    for worker in workers:
        worker.signal(signal.SIGTERM)
    clean = True
    try:
        async with asyncio.timeout(STOP_TIMEOUT):
            for proc in running:
                if await proc.wait() != 0:
                    clean = False
    except TimeoutError:
        clean = False
        for worker in workers:
            if worker.proc is not None and worker.proc.returncode is None:
                logger.error("workers.killed worker=%s: did not stop in time", worker.label)
                worker.signal(signal.SIGKILL)
        for proc in running:
            await proc.wait()
    return clean
