"""Web chat load: N concurrent WebSocket visitors asking knowledge-base questions through
the full path on PostgreSQL, beside a bare uvicorn WebSocket echo server measured by the
same client in the same run.

    .venv/bin/python benchmarks/webchat_load.py --visitors 500 --questions 4

What runs:

- a scratch PostgreSQL database (created, migrated, dropped at the end);
- the deskbot server in its own process, built like ``deskbot run`` builds it: ``build_core``
  (real router, real sample knowledge base, real outbox dispatcher), the enabled channels,
  ``http_routers`` and the one FastAPI app on uvicorn (port 0). The only difference from a
  default configuration is ``DESKBOT_WEBCHAT_RATE_PER_MINUTE``, raised so that the
  per-visitor limit (R42) does not throttle the benchmark's fast typists;
- a bare uvicorn ASGI WebSocket echo server in its own process: for each frame it sends
  the same frames deskbot sends (ack, then a message with buttons), with no work between;
- the client in a third process: every visitor gets a session with ``POST /webchat/session``
  (from its own loopback address, 127.0.x.y, as visitors come from their own machines),
  opens the socket with an allowed ``Origin``, waits for ``hello``, then all visitors start
  together and each asks ``--questions`` questions one after another. Latency is from the
  question frame out of the client to the first reply frame (the bot's answer) back in;
  a turn ends when the "did this help?" buttons have arrived too (deskbot sends them in
  the answer's own frame).

With ``--nodes N`` there are N deskbot processes on the one database, as several nodes
behind a load balancer: visitors are spread over them, and any node's dispatcher may send
a reply to a socket held by another (PostgreSQL LISTEN/NOTIFY, docs/deployment.md).
With ``--workers N`` deskbot is started as a service would start it, ``deskbot run`` with
``DESKBOT_WORKERS=N`` (bot/workers.py): a supervisor and N workers sharing one port, the
kernel spreading the visitors' connections over them; the server CPU is theirs together.

Two phases against each server: *saturation* (no pause between a visitor's questions:
the most the server can answer, and the latency when it is that busy), then *paced*
(questions arrive at random, a Poisson stream at ``--paced-fraction`` of the measured
saturation rate or at ``--paced-rate`` replies/s, each to one of the visitors not waiting
for an answer: the latency at a given load, counted from each question's arrival).

What they ask (``--texts``): *repeated*, the twelve QUESTIONS below in turn, so most texts
of a round have been asked before and the knowledge search and intents answer them from
their caches of recent texts; or *distinct*, some 15,000 wordings of the sample queries
the KB answers, none asked twice in a run, so every search and intent match is computed.
A desk's real traffic lies between the two.

Both servers run on the event loop ``deskbot run`` uses (``--event-loop``, as
``DESKBOT_EVENT_LOOP``; uvloop by default), and the client on the same loop: it shares
the cores with the servers, so the less it takes the more of them the servers get (on
uvloop it took about a tenth less CPU per reply than on asyncio's own). Each phase
reports the CPU the servers, PostgreSQL and the client spent in it per reply, read from
/proc at the phase's start and end; the whole client run's CPU per message (sessions and
warm-up included) follows.

During each phase a commit probe (``CommitProbe``) makes 20 durable one-row commits a
second on the run's database and reports their latency beside the phase: every commit of
deskbot's waits for the same disk, so a run whose tail is a stalled fsync says so itself
(on this machine's disk: 100–300 ms several times a minute, at 20 or 80 commits a
second alike).

The three processes share the machine's cores; everything stops by itself (``--deadline``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

ALLOWED_ORIGIN = "https://intranet.example"
PROBE_RATE = 20  # commits a second, each phase (CommitProbe)
PG_ADMIN = "postgresql+asyncpg://postgres@127.0.0.1:5432"
PG_DSN = PG_ADMIN.replace("postgresql+asyncpg", "postgresql")  # the same, for asyncpg
QUESTIONS = (
    "how do I release my print job",
    "my monitors don't work when I plug into the dock",
    "my laptop is asking for a bitlocker recovery key",
    "how do I pair my bluetooth headset with my laptop",
    "websites won't load properly in chrome",
    "I can't hear anyone in my teams meeting",
    "my camera isn't working in teams",
    "my laptop clock is wrong",
    "how do I get a company phone",
    "how do I join a distribution list",
    "how do I get work email on my phone",
    "how do I set up my email signature",
)
# --texts distinct: the sample queries the sample KB answers, each worded many ways, so
# that no text repeats within a run and nothing is answered from a cache of recent texts.
SAMPLE_QUERIES = REPO_ROOT / "tests" / "knowledge" / "sample_queries.jsonl"
OPENERS = (
    "",
    "hi, ",
    "hello, ",
    "morning, ",
    "good morning, ",
    "afternoon, ",
    "quick one: ",
    "sorry to bother you, ",
    "hey, ",
    "hi team, ",
    "hi there, ",
    "hello IT, ",
    "so ",
)
CLOSERS = (
    "",
    " please",
    " thanks",
    " any idea?",
    " cheers",
    " thank you",
    "?",
    " help",
    " thanks in advance",
    " can you help",
    "!",
    " ...",
    " pls",
    " ta",
)


class Texts:
    """What the visitors ask. ``repeated``: the twelve QUESTIONS in turn, as before.
    ``distinct``: every question a text not asked before in the run."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._distinct: list[str] = distinct_texts() if kind == "distinct" else []
        self._next = 0

    def pick(self, n: int) -> str:
        if self.kind == "repeated":
            return QUESTIONS[n % len(QUESTIONS)]
        if self._next >= len(self._distinct):
            raise RuntimeError(f"only {len(self._distinct)} distinct texts; ask fewer questions")
        self._next += 1
        return self._distinct[self._next - 1]


def distinct_texts() -> list[str]:
    """The sample queries the KB answers (and no intent takes), each with every opener,
    closer and first-letter case that still gets an answer: some 15,000 texts, shuffled."""
    from bot.intents import IntentMatcher
    from knowledge import KnowledgeBase

    kb = KnowledgeBase.load(REPO_ROOT / "knowledge" / "sample")
    intents = IntentMatcher()

    def answered(text: str) -> bool:
        return kb.search(text).decision == "answer" and intents.match(text) is None

    queries = [json.loads(line)["query"] for line in SAMPLE_QUERIES.read_text().splitlines()]
    texts = [
        worded
        for query in queries
        if answered(query)
        for opener in OPENERS
        for closer in CLOSERS
        for worded in {f"{opener}{query}{closer}", f"{opener}{query}{closer}".capitalize()}
        if answered(worded)
    ]
    random.Random(11).shuffle(texts)
    return texts


# --------------------------------------------------------------------------------------
# the servers (each in its own process; they print "PORT <n>" once they listen)


async def serve_deskbot(database_url: str, var_dir: Path) -> None:
    from bot.main import build_channels, build_core, http_routers, settle_garbage_collector
    from bot.settings import Settings
    from channels.http.server import HttpServer, build_app
    from storage.migrate import upgrade

    var_dir.mkdir(parents=True, exist_ok=True)
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        database_url=database_url,
        var_dir=var_dir,
        secret_key="benchmark-secret-key",
        webchat_allowed_origins=[ALLOWED_ORIGIN],
        webchat_rate_per_minute=100_000,
        log_level="WARNING",
    )
    core = build_core(settings)
    await upgrade(core.db)
    if core.cluster is not None:  # as `deskbot run` on PostgreSQL: linked to other nodes
        await core.cluster.start()
    for channel in build_channels(core):
        core.registry.add(channel)
    app = build_app(health=core.health, routers=http_routers(core), backlog=core.backlog)
    server = HttpServer(app, host="127.0.0.1", port=0)
    await server.start()
    for channel in core.registry:
        await channel.start()
    await core.dispatcher.start()
    settle_garbage_collector()  # as `deskbot run` does once started
    print(f"PORT {server.port}", flush=True)
    await _until_stdin_closes()
    await core.dispatcher.stop()
    await server.stop()
    if core.cluster is not None:
        await core.cluster.stop()
    await core.db.dispose()


async def echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A bare ASGI app: a session endpoint and a WebSocket that answers each frame at once."""
    if scope["type"] == "http":
        body = json.dumps({"visitor": uuid.uuid4().hex, "token": "t", "verified": False})
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})
        return
    if scope["type"] != "websocket":
        return
    await receive()  # websocket.connect
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.send", "text": json.dumps({"type": "hello"})})
    counter = 0
    while True:
        message = await receive()
        if message["type"] != "websocket.receive":
            return
        frame = json.loads(message.get("text") or "{}")
        counter += 1
        ack = {"type": "ack", "client_id": frame.get("client_id")}
        await send({"type": "websocket.send", "text": json.dumps(ack)})
        reply = {
            "type": "message",
            "id": counter,
            "author": "bot",
            "markdown": frame.get("text", ""),
            "buttons": [{"label": "No", "value": "kb:no:echo"}],
        }
        await send({"type": "websocket.send", "text": json.dumps(reply)})


async def serve_echo() -> None:
    import uvicorn

    config = uvicorn.Config(
        echo_app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    await _until_stdin_closes()
    server.should_exit = True
    await task


async def _until_stdin_closes() -> None:
    await asyncio.to_thread(sys.stdin.read)


# --------------------------------------------------------------------------------------
# the client


@dataclass
class PhaseResult:
    name: str
    replies: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    cpu_ms_per_reply: dict[str, float] = field(default_factory=dict)
    messages_per_round: float | None = None
    wall: tuple[float, float] = (0.0, 0.0)  # the phase's start and end, wall-clock

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float:
            if not lat:
                return float("nan")
            return round(lat[min(len(lat) - 1, int(p / 100 * len(lat)))], 1)

        return {
            "phase": self.name,
            "replies": self.replies,
            "errors": self.errors,
            "seconds": round(self.seconds, 2),
            "replies_per_s": round(self.replies / self.seconds, 1) if self.seconds else 0.0,
            "p50_ms": pct(50),
            "p90_ms": pct(90),
            "p99_ms": pct(99),
            "max_ms": round(lat[-1], 1) if lat else float("nan"),
            "mean_ms": round(statistics.fmean(lat), 1) if lat else float("nan"),
            "cpu_ms_per_reply": self.cpu_ms_per_reply,
            "messages_per_round": self.messages_per_round,
            "wall": self.wall,
        }


class CommitProbe:
    """PostgreSQL's durable commits while the client runs: ``PROBE_RATE`` one-row INSERTs a
    second, each its own transaction (one WAL flush, one fsync), on a connection of its
    own to the run's scratch database, from a thread of the orchestrator (idle meanwhile,
    so the probe waits for no busy event loop). Every server's commit waits for the same
    disk, so a stalled fsync shows here as it does in the servers' latency."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.samples: list[tuple[float, float]] = []  # (wall-clock time, ms)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> CommitProbe:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    async def _run(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            began = time.perf_counter()
            n = 0
            while not self._stop.is_set():
                at = time.perf_counter()
                await conn.execute("INSERT INTO bench_commit_probe DEFAULT VALUES")
                self.samples.append((time.time(), (time.perf_counter() - at) * 1000))
                n += 1
                await asyncio.sleep(max(0.0, began + n / PROBE_RATE - time.perf_counter()))
        finally:
            await conn.close()

    def during(self, start: float, end: float) -> dict[str, float]:
        """The commits made between two wall-clock times."""
        lat = sorted(ms for at, ms in self.samples if start <= at <= end)
        if not lat:
            return {}
        return {
            "commits": len(lat),
            "p50": round(lat[len(lat) // 2], 1),
            "p99": round(lat[min(len(lat) - 1, int(0.99 * len(lat)))], 1),
            "max": round(lat[-1], 1),
            "over_50": sum(ms > 50 for ms in lat),
        }


class Visitor:
    def __init__(self, index: int, ws: Any) -> None:
        self.index = index
        self.ws = ws
        self.sent = 0

    async def ask(self, text: str, timeout: float, *, since: float | None = None) -> float:
        """Send one question; the ms until the first reply frame (the turn is then read out),
        counted from ``since`` (the question's arrival) when given."""
        self.sent += 1
        client_id = f"v{self.index}-{self.sent}-{uuid.uuid4().hex[:6]}"
        frame = json.dumps({"type": "message", "client_id": client_id, "text": text})
        started = since if since is not None else time.perf_counter()
        await self.ws.send(frame)
        first: float | None = None
        acked = feedback = False
        deadline = started + timeout
        while not (acked and feedback):
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                raise TimeoutError(f"no complete turn within {timeout}s")
            data = json.loads(await asyncio.wait_for(self.ws.recv(), timeout=remaining))
            kind = data.get("type")
            if kind == "error":
                raise RuntimeError(f"server said {data}")
            if kind == "ack":
                acked = True
            elif kind == "message":
                if first is None:
                    first = (time.perf_counter() - started) * 1000
                buttons = data.get("buttons") or []
                if any(str(b.get("value", "")).startswith("kb:no:") for b in buttons):
                    feedback = True
        assert first is not None
        return first


async def open_visitors(bases: list[str], count: int, *, timeout: float) -> list[Visitor]:
    import httpx
    from websockets.asyncio.client import connect

    gate = asyncio.Semaphore(50)

    async def one(index: int) -> Visitor:
        base = bases[index % len(bases)]  # several nodes: visitors spread over them
        ws_base = base.replace("http://", "ws://")
        # each visitor from its own loopback address, like visitors on their own machines
        local = f"127.0.{1 + index // 250}.{1 + index % 250}"
        transport = httpx.AsyncHTTPTransport(local_address=local)
        async with gate:
            async with httpx.AsyncClient(transport=transport, timeout=timeout) as http:
                response = await http.post(
                    f"{base}/webchat/session", headers={"Origin": ALLOWED_ORIGIN}
                )
            response.raise_for_status()
            session = response.json()
            url = f"{ws_base}/webchat/ws?visitor={session['visitor']}&token={session['token']}"
            ws = await connect(
                url,
                additional_headers={"Origin": ALLOWED_ORIGIN},
                open_timeout=timeout,
                compression=None,
                max_queue=None,
            )
            hello = json.loads(await asyncio.wait_for(ws.recv(), timeout=timeout))
            assert hello.get("type") == "hello", hello
            return Visitor(index, ws)

    return list(await asyncio.gather(*(one(i) for i in range(count))))


async def _rounds_snapshot(bases: list[str]) -> tuple[float, float] | None:
    """(messages, rounds) handled so far by the deskbot servers, from their /metrics
    (``deskbot_handle_round_messages``); None for a server without them (the echo)."""
    import httpx

    messages = rounds = 0.0
    async with httpx.AsyncClient(timeout=10) as http:
        for base in bases:
            response = await http.get(f"{base}/metrics")
            if response.status_code != 200:
                return None
            for line in response.text.splitlines():
                if line.startswith("deskbot_handle_round_messages_sum"):
                    messages += float(line.split()[-1])
                elif line.startswith("deskbot_handle_round_messages_count"):
                    rounds += float(line.split()[-1])
    return messages, rounds


def _cpu_snapshot(server_pids: list[int]) -> tuple[float, float, float]:
    """CPU seconds so far of the servers, of PostgreSQL and of this client."""
    return sum(_cpu_of(pid) for pid in server_pids), _postgres_cpu(), time.process_time()


async def run_phase(
    visitors: list[Visitor],
    name: str,
    *,
    questions: int,
    timeout: float,
    texts: Texts,
    rate: float | None = None,
    server_pids: list[int] = (),  # type: ignore[assignment]
    bases: list[str] = (),  # type: ignore[assignment]
) -> PhaseResult:
    """``questions`` per visitor. Without ``rate``: every visitor asks again as soon as
    its turn ends (saturation). With ``rate``: the questions arrive at random (Poisson)
    at ``rate`` per second, each to a visitor not waiting for an answer, and a turn's
    latency counts from its question's arrival (waiting for a free visitor included)."""
    result = PhaseResult(name)
    rounds_before = await _rounds_snapshot(list(bases)) if bases else None
    before = _cpu_snapshot(server_pids)
    started, wall_started = time.perf_counter(), time.time()

    async def turn(visitor: Visitor, text: str, since: float | None) -> bool:
        try:
            latency = await visitor.ask(text, timeout, since=since)
        except Exception as exc:
            result.errors += 1
            print(f"visitor {visitor.index}: {type(exc).__name__}: {exc}", file=sys.stderr)
            return False
        result.latencies_ms.append(latency)
        result.replies += 1
        return True

    if rate is None:

        async def visitor_loop(visitor: Visitor) -> None:
            for n in range(questions):
                if not await turn(visitor, texts.pick(visitor.index + n), None):
                    return

        await asyncio.gather(*(visitor_loop(v) for v in visitors))
    else:
        rng = random.Random(7)
        idle: asyncio.Queue[Visitor] = asyncio.Queue()
        for visitor in visitors:
            idle.put_nowait(visitor)
        running: set[asyncio.Task[None]] = set()

        async def one(visitor: Visitor, text: str, since: float) -> None:
            if await turn(visitor, text, since):
                idle.put_nowait(visitor)

        arrival = started
        for n in range(questions * len(visitors)):
            arrival += rng.expovariate(rate)
            await asyncio.sleep(max(0.0, arrival - time.perf_counter()))
            visitor = await idle.get()
            task = asyncio.create_task(one(visitor, texts.pick(n), arrival))
            running.add(task)
            task.add_done_callback(running.discard)
        await asyncio.gather(*running)
    result.seconds = time.perf_counter() - started
    after = _cpu_snapshot(server_pids)
    result.wall = (wall_started, time.time())
    rounds_after = await _rounds_snapshot(list(bases)) if bases else None
    if rounds_before and rounds_after and rounds_after[1] > rounds_before[1]:
        result.messages_per_round = round(
            (rounds_after[0] - rounds_before[0]) / (rounds_after[1] - rounds_before[1]), 1
        )
    if result.replies:
        parts = ("server", "postgres", "client")
        result.cpu_ms_per_reply = {
            part: round((end - begin) * 1000 / result.replies, 2)
            for part, begin, end in zip(parts, before, after, strict=True)
        }
    return result


async def client_main(args: argparse.Namespace) -> None:
    bases = args.base.split(",")
    texts = Texts(args.texts)
    visitors = await open_visitors(bases, args.visitors, timeout=args.turn_timeout)
    # warm-up: one question per visitor, not measured (first-time person/conversation rows)
    await run_phase(visitors, "warm-up", questions=1, timeout=args.turn_timeout, texts=texts)
    phases = []
    pids = [int(pid) for pid in args.server_pids.split(",") if pid]
    saturation = await run_phase(
        visitors,
        "saturation",
        questions=args.questions,
        timeout=args.turn_timeout,
        texts=texts,
        server_pids=pids,
        bases=bases,
    )
    phases.append(saturation.summary())
    rate = saturation.replies / saturation.seconds if saturation.seconds else 0.0
    if args.paced_rate > 0 or (args.paced_fraction > 0 and rate > 0):
        offered = args.paced_rate or rate * args.paced_fraction
        label = "paced" if args.paced_rate else f"paced {int(args.paced_fraction * 100)}%"
        paced = await run_phase(
            visitors,
            f"{label} ({offered:.0f}/s offered)",
            questions=args.questions,
            rate=offered,
            timeout=args.turn_timeout,
            texts=texts,
            server_pids=pids,
            bases=bases,
        )
        phases.append(paced.summary())
    for visitor in visitors:
        with contextlib.suppress(Exception):
            await visitor.ws.close()
    handled = sum(v.sent for v in visitors)
    print(
        json.dumps(
            {"phases": phases, "messages": handled, "client_cpu_s": round(time.process_time(), 2)}
        ),
        flush=True,
    )


# --------------------------------------------------------------------------------------
# the orchestrator

_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_of(pid: int) -> float:
    """User + system CPU seconds of one process (Linux /proc), 0 when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK


def _postgres_cpu() -> float:
    """CPU seconds of every PostgreSQL server process on this machine."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm == "postgres":
                total += _cpu_of(int(entry.name))
    return total


class Child:
    """A subprocess of this script; a server prints ``PORT n``, stops when stdin closes."""

    def __init__(self, *role_args: str, profile: Path | None = None) -> None:
        command = [sys.executable]
        if profile is not None:
            command += ["-m", "cProfile", "-o", str(profile)]
        command += [str(Path(__file__).resolve()), *role_args]
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=REPO_ROOT,
        )

    def port(self, timeout: float) -> int:
        assert self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                break
            if line.startswith("PORT "):
                return int(line.split()[1])
        raise RuntimeError("server did not start")

    def pids(self) -> list[int]:
        return [self.proc.pid]

    def stop(self, timeout: float = 30) -> None:
        if self.proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Workers:
    """``deskbot run`` with ``DESKBOT_WORKERS=n`` (its own settings, from the environment
    only), stopped by SIGTERM as a service manager stops it."""

    def __init__(self, workers: int, database_url: str, var_dir: Path, event_loop: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DESKBOT_")}
        env.update(
            {
                "PYTHONPATH": str(REPO_ROOT),
                "DESKBOT_WORKERS": str(workers),
                "DESKBOT_DATABASE_URL": database_url,
                "DESKBOT_VAR_DIR": str(var_dir),
                "DESKBOT_HTTP_PORT": "0",
                "DESKBOT_SECRET_KEY": "benchmark-secret-key",
                "DESKBOT_WEBCHAT_ALLOWED_ORIGINS": json.dumps([ALLOWED_ORIGIN]),
                "DESKBOT_WEBCHAT_RATE_PER_MINUTE": "100000",
                "DESKBOT_LOG_LEVEL": "WARNING",
                "DESKBOT_EVENT_LOOP": event_loop,
            }
        )
        var_dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot.main", "run"],
            cwd=var_dir,  # no .env of a checkout is read
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )

    def url(self) -> str:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # the supervisor prints it once every worker serves
            if "listening on " in line:
                return line.split("listening on ", 1)[1].split()[0].rstrip(".")
        raise RuntimeError("deskbot run did not start")

    def pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        return [self.proc.pid, *(int(pid) for pid in children.read_text().split())]

    def stop(self, timeout: float = 60) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def run_client(
    bases: list[str],
    args: argparse.Namespace,
    deadline: float,
    servers: list[Child] | list[Workers],
    probe_dsn: str,
) -> dict[str, Any]:
    pids = [pid for server in servers for pid in server.pids()]
    server_before, pg_before = sum(_cpu_of(pid) for pid in pids), _postgres_cpu()
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--role",
        "client",
        "--base",
        ",".join(bases),
        "--visitors",
        str(args.visitors),
        "--questions",
        str(args.questions),
        "--paced-fraction",
        str(args.paced_fraction),
        "--paced-rate",
        str(args.paced_rate),
        "--turn-timeout",
        str(args.turn_timeout),
        "--texts",
        args.texts,
        "--server-pids",
        ",".join(str(pid) for pid in pids),
        "--event-loop",
        args.event_loop,
    ]
    remaining = max(10.0, deadline - time.monotonic())
    with CommitProbe(probe_dsn) as probe:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=remaining, cwd=REPO_ROOT
        )
    if done.returncode != 0:
        raise RuntimeError(f"client failed:\n{done.stderr[-4000:]}")
    if done.stderr.strip():
        print(done.stderr[-2000:], file=sys.stderr)
    result = dict(json.loads(done.stdout.strip().splitlines()[-1]))
    for phase in result["phases"]:
        phase["commit_probe_ms"] = probe.during(*phase.pop("wall"))
    # CPU over the client's whole run (sessions, warm-up and phases), per message handled
    messages = max(1, int(result["messages"]))
    server_cpu = sum(_cpu_of(pid) for pid in pids) - server_before
    pg_cpu = _postgres_cpu() - pg_before
    result["cpu_ms_per_message"] = {
        "server": round(server_cpu * 1000 / messages, 2),
        "postgres": round(pg_cpu * 1000 / messages, 2),
        "client": round(float(result["client_cpu_s"]) * 1000 / messages, 2),
    }
    return result


async def _pg_admin(sql: str, dsn: str | None = None) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn or f"{PG_DSN}/postgres")
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def orchestrate(args: argparse.Namespace) -> None:
    deadline = time.monotonic() + args.deadline
    name = f"deskbot_bench_{uuid.uuid4().hex[:8]}"
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    probe = f"{PG_DSN}/{name}"
    results: dict[str, Any] = {}
    try:
        # the commit probe's table, beside (not in) deskbot's schema
        asyncio.run(
            _pg_admin("CREATE TABLE bench_commit_probe (at timestamptz DEFAULT now())", probe)
        )
        echo = Child("--role", "echo", "--event-loop", args.event_loop)
        try:
            port = echo.port(30)
            results["echo"] = run_client(
                [f"http://127.0.0.1:{port}"], args, deadline, [echo], probe
            )
        finally:
            echo.stop()
        if args.workers:
            with tempfile.TemporaryDirectory() as var_dir:
                service = Workers(
                    args.workers, f"{PG_ADMIN}/{name}", Path(var_dir), args.event_loop
                )
                try:
                    url = service.url()
                    results["deskbot"] = run_client([url], args, deadline, [service], probe)
                finally:
                    service.stop()
        else:
            with tempfile.TemporaryDirectory() as var_dir:
                profile = Path(args.profile) if args.profile else None
                nodes: list[Child] = []
                bases: list[str] = []
                try:
                    for n in range(args.nodes):  # one after the other: the first migrates
                        nodes.append(
                            Child(
                                "--role",
                                "server",
                                "--database-url",
                                f"{PG_ADMIN}/{name}",
                                "--var-dir",
                                str(Path(var_dir) / f"node{n}"),
                                "--event-loop",
                                args.event_loop,
                                profile=profile if n == 0 else None,
                            )
                        )
                        bases.append(f"http://127.0.0.1:{nodes[-1].port(120)}")
                    results["deskbot"] = run_client(bases, args, deadline, nodes, probe)
                finally:
                    for node in nodes:
                        node.stop()
    finally:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    report(results, args)


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    print(
        f"\n{args.visitors} concurrent visitors, {args.questions} questions each "
        f"({args.texts} texts), "
        + (
            f"deskbot run with {args.workers} workers on one port, "
            if args.workers
            else f"{args.nodes} deskbot node(s), "
        )
        + f"{os.cpu_count()} CPUs shared by client and servers, "
        f"event loop: {args.event_loop}\n"
    )
    print("| server | phase | replies | replies/s | p50 ms | p90 ms | p99 ms | max ms | errors |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for server in ("echo", "deskbot"):
        for phase in results.get(server, {}).get("phases", []):
            print(
                f"| {'bare uvicorn echo' if server == 'echo' else 'deskbot (PostgreSQL)'} "
                f"| {phase['phase']} | {phase['replies']} | {phase['replies_per_s']} "
                f"| {phase['p50_ms']} | {phase['p90_ms']} | {phase['p99_ms']} "
                f"| {phase['max_ms']} | {phase['errors']} |"
            )
    print()
    for server in ("echo", "deskbot"):
        for phase in results.get(server, {}).get("phases", []):
            cpu = phase.get("cpu_ms_per_reply")
            if cpu:
                per_round = phase.get("messages_per_round")
                print(
                    f"{server}, {phase['phase']}: CPU per reply: server {cpu['server']} ms, "
                    f"PostgreSQL {cpu['postgres']} ms, client {cpu['client']} ms"
                    + (f"; {per_round} messages per round" if per_round else "")
                )
        cpu = results.get(server, {}).get("cpu_ms_per_message")
        if cpu:
            print(
                f"{server}, whole client run (sessions, warm-up, phases): CPU per message: "
                f"server {cpu['server']} ms, PostgreSQL {cpu['postgres']} ms, "
                f"client {cpu['client']} ms"
            )
    print()
    for server in ("echo", "deskbot"):
        for phase in results.get(server, {}).get("phases", []):
            probe = phase.get("commit_probe_ms")
            if probe:
                print(
                    f"{server}, {phase['phase']}: PostgreSQL commit probe ({PROBE_RATE}/s): "
                    f"p50 {probe['p50']} ms, p99 {probe['p99']} ms, max {probe['max']} ms, "
                    f"{probe['over_50']} of {probe['commits']} over 50 ms"
                )
    print("\n" + json.dumps(results))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--visitors", type=int, default=500)
    parser.add_argument("--questions", type=int, default=4, help="questions per visitor")
    parser.add_argument(
        "--paced-fraction",
        type=float,
        default=0.5,
        help="offered load of the paced phase, as a fraction of the saturation rate (0: skip)",
    )
    parser.add_argument(
        "--paced-rate",
        type=float,
        default=0.0,
        help="offered load of the paced phase in replies/s (instead of --paced-fraction)",
    )
    parser.add_argument(
        "--texts",
        choices=["repeated", "distinct"],
        default="repeated",
        help="repeated: twelve questions in turn; distinct: no text asked twice in the run",
    )
    parser.add_argument("--turn-timeout", type=float, default=60.0)
    parser.add_argument("--deadline", type=float, default=600.0, help="whole run, seconds")
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="deskbot server processes on the one database (visitors spread over them)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="start deskbot as `deskbot run` with DESKBOT_WORKERS=N (one port) instead",
    )
    parser.add_argument("--profile", help="write a cProfile of the first deskbot node here")
    parser.add_argument(
        "--event-loop",
        choices=["auto", "uvloop", "asyncio"],
        default="auto",
        help="the servers' and the client's event loop, as DESKBOT_EVENT_LOOP (auto: uvloop "
        "when installed)",
    )
    parser.add_argument("--role", choices=["orchestrate", "server", "echo", "client"])
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--database-url", help=argparse.SUPPRESS)
    parser.add_argument("--server-pids", default="", help=argparse.SUPPRESS)
    parser.add_argument("--var-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.workers and (args.nodes != 1 or args.profile):
        parser.error("--workers replaces --nodes and --profile")
    role = args.role or "orchestrate"
    if role in ("server", "echo", "client"):
        from bot.main import event_loop_factory

        # both servers on the event loop `deskbot run` serves on (DESKBOT_EVENT_LOOP), and
        # the client on it too, so that it takes less of the cores the servers need
        with asyncio.Runner(loop_factory=event_loop_factory(args.event_loop)) as runner:
            if role == "server":
                runner.run(serve_deskbot(args.database_url, Path(args.var_dir)))
            elif role == "echo":
                runner.run(serve_echo())
            else:
                runner.run(client_main(args))
    else:
        orchestrate(args)


if __name__ == "__main__":
    main()
