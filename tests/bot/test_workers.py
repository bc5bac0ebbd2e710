"""``deskbot run`` with ``DESKBOT_WORKERS=2`` (bot/workers.py), as real processes on the
machine's PostgreSQL: one port shared by two workers, one /metrics for both, a crashed
worker started again, a clean stop, and the refusals (SQLite; a worker that cannot start)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from bot.workers import RESTART_FIRST_DELAY, RESTART_MAX_DELAY, STEADY_AFTER, _Worker
from channels.http.server import reuse_port_sockets
from tests.channels.webchat.webchat_harness import frames_until, next_frame
from tests.conftest import PG_DSN, REPO_ROOT, _pg_admin_execute, _pg_available, need_peer, run_async

ORIGIN = "https://intranet.example"


@pytest.fixture
def scratch_pg_url() -> Iterator[str]:
    """An empty PostgreSQL database of its own: the workers migrate it at start."""
    need_peer(_pg_available(), f"PostgreSQL is not reachable at {PG_DSN}")
    name = f"deskbot_workers_{uuid.uuid4().hex[:8]}"
    run_async(_pg_admin_execute(f'CREATE DATABASE "{name}"'))
    yield f"{PG_DSN}/{name}"
    run_async(_pg_admin_execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def _start(tmp_path: Path, **settings: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESKBOT_")}
    env.update(
        {
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
            "DESKBOT_VAR_DIR": str(tmp_path / "var"),
            "DESKBOT_HTTP_PORT": "0",
            "DESKBOT_WORKERS": "2",
            "DESKBOT_WEBCHAT_ALLOWED_ORIGINS": json.dumps([ORIGIN]),
            **settings,
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "bot.main", "run"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _workers_answering(base: str, tries: int = 40) -> set[str]:
    """The workers that answered ``tries`` health checks, each on a new connection (the
    kernel picks a listening worker per connection)."""
    seen: set[str] = set()
    for _ in range(tries):
        report = httpx.get(f"{base}/healthz", timeout=10, trust_env=False).json()
        assert report["status"] == "ok"
        seen.add(report["worker"])
    return seen


def _until(condition: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError("condition not met in time")


async def _ask(base: str, n: int) -> dict[str, object]:
    """Visitor ``n``, from an address of its own (new sessions are limited per address):
    a session, the socket, a knowledge question; the bot's answer."""
    transport = httpx.AsyncHTTPTransport(local_address=f"127.0.1.{n + 1}")
    async with httpx.AsyncClient(
        base_url=base, timeout=10, trust_env=False, transport=transport
    ) as http:
        session = (await http.post("/webchat/session", headers={"Origin": ORIGIN})).json()
    ws_url = base.replace("http://", "ws://")
    url = f"{ws_url}/webchat/ws?visitor={session['visitor']}&token={session['token']}"
    async with connect(url, additional_headers={"Origin": ORIGIN}, open_timeout=10) as ws:
        assert (await next_frame(ws))["type"] == "hello"
        question = {
            "type": "message",
            "client_id": f"w-{n}",
            "text": "how do I connect to the vpn",
        }
        await ws.send(json.dumps(question))
        frames = await frames_until(ws, lambda f: f.get("type") == "message")
    return next(f for f in frames if f["type"] == "message")


def _inbound_total(metrics: str) -> float:
    return sum(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("deskbot_inbound_total{")
    )


def test_two_workers_share_a_port_and_metrics_survive_a_crash_and_stop_together(
    tmp_path: Path, scratch_pg_url: str
) -> None:
    proc = _start(tmp_path, DESKBOT_DATABASE_URL=scratch_pg_url)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "listening on http://127.0.0.1:" in line, line + (
            proc.stderr.read() if proc.stderr and proc.poll() is not None else ""
        )
        base = line.split("listening on ", 1)[1].split()[0].rstrip(".")
        workers = _children(proc.pid)
        assert len(workers) == 2

        # one port, both workers behind it
        assert _workers_answering(base) == {"1/2", "2/2"}

        # visitors on either worker get answers; every scrape counts both workers' messages
        async def visitors() -> list[dict[str, object]]:
            return await asyncio.gather(*(_ask(base, n) for n in range(32)))

        answers = asyncio.run(visitors())
        assert all("vpn" in str(a["markdown"]).lower() for a in answers)
        totals = {
            _inbound_total(httpx.get(f"{base}/metrics", timeout=10, trust_env=False).text)
            for _ in range(10)
        }
        assert totals == {32.0}

        # a worker killed outright is started again; the port keeps answering meanwhile
        os.kill(workers[0], signal.SIGKILL)
        _until(lambda: len(_children(proc.pid)) == 2 and workers[0] not in _children(proc.pid))
        replaced = set(_children(proc.pid)) - set(workers)
        assert len(replaced) == 1
        _until(lambda: _workers_answering(base, tries=20) == {"1/2", "2/2"})
        # the dead worker's counts stay in the sum (a counter never goes back)
        metrics = httpx.get(f"{base}/metrics", timeout=10, trust_env=False).text
        assert _inbound_total(metrics) == 32.0

        # SIGTERM to the supervisor stops every worker, and it says so once
        current = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert out.count("deskbot stopped.") == 1
    assert (line + out).count("listening on") == 1  # the URLs once, not once per worker
    for pid in current:
        assert not Path(f"/proc/{pid}").exists()
    assert "workers.exited worker=1/2 code=-9" in err


def test_workers_refuse_sqlite(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bot.main", "run"],
        cwd=tmp_path,
        env={
            **{k: v for k, v in os.environ.items() if not k.startswith("DESKBOT_")},
            "PYTHONPATH": str(REPO_ROOT),
            "DESKBOT_VAR_DIR": str(tmp_path / "var"),
            "DESKBOT_WORKERS": "2",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "DESKBOT_WORKERS=2 needs PostgreSQL" in done.stderr
    assert not (tmp_path / "var" / "deskbot.sqlite3").exists()


def test_a_worker_that_cannot_start_stops_them_all(tmp_path: Path) -> None:
    need_peer(_pg_available(), f"PostgreSQL is not reachable at {PG_DSN}")
    missing = f"{PG_DSN}/deskbot_missing_{uuid.uuid4().hex[:8]}"  # never created
    proc = _start(tmp_path, DESKBOT_DATABASE_URL=missing)
    try:
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode not in (0, None)
    assert "workers.failed_to_start" in err
    assert "listening on" not in out
    assert "deskbot stopped." not in out


def test_restart_delay_doubles_while_workers_keep_dying_and_resets_once_steady() -> None:
    worker = _Worker(1, 2, {})
    worker.ready_at = 100.0
    delays = [worker.next_delay(100.0 + n) for n in range(7)]
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, RESTART_MAX_DELAY, RESTART_MAX_DELAY]
    assert worker.next_delay(100.0 + STEADY_AFTER) == RESTART_FIRST_DELAY


def test_reuse_port_sockets_share_one_port_across_addresses_and_processes() -> None:
    first = reuse_port_sockets("localhost", 0)
    try:
        ports = {sock.getsockname()[1] for sock in first}
        assert len(ports) == 1
        [port] = ports
        second = reuse_port_sockets("localhost", port)  # another worker, the same port
        try:
            for sock in [*first, *second]:
                sock.listen()
            with socket.create_connection(("127.0.0.1", port), timeout=5) as client:
                assert client.getpeername() == ("127.0.0.1", port)
        finally:
            for sock in second:
                sock.close()
    finally:
        for sock in first:
            sock.close()
