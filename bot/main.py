"""The composition root and the ``deskbot`` command line.

This is the one module of ``bot`` that may import channel SDKs and the channels: it
reads the settings, builds the enabled channels and starts everything in one lifecycle.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import typer
from apscheduler.schedulers.asyncio import AsyncIOScheduler  # type: ignore[import-untyped]

from bot.agents import AgentDesk
from bot.catalog import Catalog
from bot.clock import Clock, SystemClock
from bot.cluster import ClusterEvents
from bot.events import EventBus
from bot.history import ConversationReader
from bot.inbox import Inbox, InboxWorker
from bot.manager import AgentSurface, ConversationManager
from bot.outbox import OutboxDispatcher, OutboxPolicy
from bot.ports import Channel, ChannelRegistry
from bot.router import DeskRouter, RouterConfig
from bot.settings import Settings
from bot.sweeps import expire_flows
from bot.tickets import TicketDesk
from knowledge import KnowledgeBase
from storage.db import Database
from storage.migrate import upgrade
from storage.repositories import Outbox

if TYPE_CHECKING:
    from channels.webchat import WebChatChannel

logger = logging.getLogger("deskbot")


@dataclass
class Core:
    """The channel-independent parts, wired together."""

    settings: Settings
    clock: Clock
    db: Database
    catalog: Catalog
    knowledge: KnowledgeBase | None
    events: EventBus
    registry: ChannelRegistry
    dispatcher: OutboxDispatcher
    manager: ConversationManager
    agents: AgentDesk
    tickets: TicketDesk
    inbox: Inbox
    surfaces: list[AgentSurface] = field(default_factory=list)
    cluster: ClusterEvents | None = None
    """On PostgreSQL: this node's link to the others (started by ``Runtime``)."""

    async def health(self) -> dict[str, Any]:
        from sqlalchemy import text

        async with self.db.read() as session:
            await session.execute(text("SELECT 1"))
        report: dict[str, Any] = {
            "status": "ok",
            "database": "ok",
            "channels": self.registry.kinds(),
        }
        if self.settings.worker:  # which of several workers on the port answered
            report["worker"] = self.settings.worker
        return report

    async def backlog(self) -> dict[str, int]:
        async with self.db.read() as session:
            return await Outbox(session).count_by_status()


def build_core(
    settings: Settings,
    *,
    clock: Clock | None = None,
    database: Database | None = None,
    policy: OutboxPolicy | None = None,
    fault_hook: Any = None,
    knowledge: KnowledgeBase | None = None,
) -> Core:
    clock = clock or SystemClock()
    db = database or Database(settings.resolved_database_url)
    catalog = Catalog.load(settings.catalog)
    if knowledge is None and settings.kb_dir:
        knowledge = KnowledgeBase.load(settings.kb_dir)
    if knowledge is not None:
        for error in knowledge.errors:
            logger.warning("kb.article.error %s", error)
    events = EventBus()
    # several nodes may share a PostgreSQL database: their events meet through
    # LISTEN/NOTIFY; SQLite is one process by nature and needs no link
    cluster = ClusterEvents(events, db.url) if db.is_postgres else None
    registry = ChannelRegistry()
    dispatcher = OutboxDispatcher(
        db,
        registry,
        clock,
        policy=policy
        or OutboxPolicy(
            max_attempts=settings.outbox_max_attempts,
            base_backoff=settings.outbox_base_backoff,
            max_backoff=settings.outbox_max_backoff,
            lease_seconds=settings.outbox_lease_seconds,
        ),
        events=events,
        fault_hook=fault_hook,
    )
    tickets = TicketDesk(catalog, reopen_grace=timedelta(days=settings.reopen_grace_days))
    router = DeskRouter(
        catalog=catalog,
        tickets=tickets,
        knowledge=knowledge,
        config=RouterConfig(flow_timeout=timedelta(minutes=settings.flow_timeout_minutes)),
    )
    manager = ConversationManager(
        db,
        router,
        clock,
        events=events,
        on_enqueued=dispatcher.wake,
        outbox=dispatcher,
        auto_reply_cap_per_hour=settings.auto_reply_cap_per_hour,
    )
    agents = AgentDesk(
        db, clock, catalog=catalog, tickets=tickets, events=events, on_enqueued=dispatcher.wake
    )
    return Core(
        settings=settings,
        clock=clock,
        db=db,
        catalog=catalog,
        knowledge=knowledge,
        events=events,
        registry=registry,
        dispatcher=dispatcher,
        manager=manager,
        agents=agents,
        tickets=tickets,
        inbox=Inbox(db, clock),
        surfaces=manager.surfaces,
        cluster=cluster,
    )


class Runtime:
    """``deskbot run``: migrations, channels, HTTP server, scheduler and dispatcher."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        knowledge: KnowledgeBase | None = None,
    ) -> None:
        self.settings = settings
        self.core = build_core(settings, clock=clock, knowledge=knowledge)
        self.scheduler = AsyncIOScheduler(timezone="UTC")
        self._started: list[Any] = []
        self.http: Any = None
        self.inbox_worker = InboxWorker(self.core.inbox, self.core.manager.handle)

    async def start(self) -> None:
        try:
            await upgrade(self.core.db)
            if self.core.cluster is not None:  # before anything that publishes or listens
                await self.core.cluster.start()
                self._started.append(self.core.cluster)
            for channel in build_channels(self.core):
                self.core.registry.add(channel)
            from channels.http.server import HttpServer, build_app

            routers = http_routers(self.core)
            app = build_app(health=self.core.health, routers=routers, backlog=self.core.backlog)
            self.http = HttpServer(
                app,
                host=self.settings.http_host,
                port=self.settings.http_port,
                reuse_port=self.settings.http_reuse_port,
            )
            await self.http.start()
            self._started.append(self.http)
            for channel in self.core.registry:
                await channel.start()
                self._started.append(channel)
            await self.core.dispatcher.start()
            self._started.append(self.core.dispatcher)
            await self.inbox_worker.start()
            self._started.append(self.inbox_worker)
            self._schedule()
            self.scheduler.start()
        except BaseException:
            await self.stop()
            raise

    def _schedule(self) -> None:
        core = self.core
        self.scheduler.add_job(
            expire_flows,
            "interval",
            seconds=30,
            args=[core.db, core.clock, core.events],
            id="expire_flows",
            max_instances=1,
            coalesce=True,
            misfire_grace_time=60,
        )
        if core.knowledge is not None:
            self.scheduler.add_job(
                core.knowledge.refresh_if_changed,
                "interval",
                seconds=5,
                id="kb_refresh",
                max_instances=1,
                coalesce=True,
            )

    async def stop(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        for part in reversed(self._started):
            try:
                await part.stop()
            except Exception:
                logger.exception("runtime.stop.failed part=%s", type(part).__name__)
        self._started.clear()
        await self.core.db.dispose()


def build_channels(core: Core) -> list[Channel]:
    """The channels whose settings are present (one line per channel)."""
    channels: list[Channel] = []
    channels.append(build_webchat(core))
    if core.settings.slack_enabled:  # Slack (channels/slack): requesters and triage
        from channels.slack.wiring import build_slack

        slack, surface = build_slack(core)
        channels.append(slack)
        if surface is not None:
            core.manager.surfaces.append(surface)
    if core.settings.email_enabled:  # email (channels/email): IMAP in, SMTP out
        from channels.email.adapter import EmailChannel
        from channels.email.imap import ImapSettings
        from channels.email.smtp import SmtpSettings

        es = core.settings
        channels.append(
            EmailChannel(
                desk_address=es.email_address or "",
                secret=es.ensure_secret_key(),
                imap=ImapSettings(
                    host=es.imap_host or "",
                    port=es.imap_port,
                    user=es.imap_user or es.email_address or "",
                    password=es.imap_password.get_secret_value() if es.imap_password else "",
                    ssl=es.imap_ssl,
                    starttls=es.imap_starttls,
                    folder=es.imap_folder,
                    processed_folder=es.imap_processed_folder or None,
                    failed_folder=es.imap_failed_folder or None,
                    poll_seconds=es.imap_poll_seconds,
                ),
                smtp=SmtpSettings(
                    host=es.smtp_host or "",
                    port=es.smtp_port,
                    user=es.smtp_user,
                    password=es.smtp_password.get_secret_value() if es.smtp_password else None,
                    ssl=es.smtp_ssl,
                    starttls=es.smtp_starttls,
                ),
                handle=core.manager.handle,
                claim_archive=core.manager.claim_archives,
                mailbox_lock=core.manager.exclusive,
                smtp_connections=es.smtp_connections,
            )
        )
    return channels


def build_webchat(core: Core) -> WebChatChannel:
    """The web chat channel, reaching visitors' sockets on every node through the bus."""
    from channels.webchat import WebChatChannel

    return WebChatChannel(events=core.events, load_outbound=ConversationReader(core.db).outbound)


def http_routers(core: Core) -> list[Any]:
    """Routers the enabled web-facing channels contribute to the one HTTP server."""
    from bot.reports import DeskReports
    from channels.webchat import WebChatChannel
    from channels.webchat.app import web_routers

    webchat = core.registry.get("webchat")
    if not isinstance(webchat, WebChatChannel):
        webchat = build_webchat(core)
        core.registry.add(webchat)
    routers = list(
        web_routers(
            settings=core.settings,
            channel=webchat,
            handle=core.manager.handle,
            agents=core.agents,
            events=core.events,
            reader=ConversationReader(core.db),
            reports=DeskReports(core.db, catalog=core.catalog, knowledge=core.knowledge),
        )
    )
    slack = core.registry.get("slack")  # Slack in HTTP mode: POST /slack/events
    if slack is not None and not core.settings.slack_app_token:
        routers.append(slack.router())  # type: ignore[attr-defined]
    return routers


# --------------------------------------------------------------------------------------
# the command line

app = typer.Typer(
    help="deskbot: a chat-first, omnichannel IT service desk bot.", no_args_is_help=True
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
agent_app = typer.Typer(help="Agents who take conversations over.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(agent_app, name="agent")


def _mount_optional(name: str, module: str) -> None:
    import importlib

    try:
        sub = importlib.import_module(module)
    except ImportError:
        return
    app.add_typer(sub.app, name=name)


_mount_optional("kb", "knowledge.cli")
_mount_optional("email", "channels.email.cli")


def _setup_logging(level: str, *, worker: str | None = None) -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    node = f" worker={worker}" if worker else ""  # one of several on a port (bot/workers.py)
    logging.basicConfig(
        level=numeric,
        format=f"%(asctime)s %(levelname)s %(name)s{node} %(message)s",
        stream=sys.stderr,
    )
    # APScheduler logs two INFO lines for every job run, and the KB sync runs every few
    # seconds: noise unless debugging; its warnings (missed runs, failed jobs) still show
    logging.getLogger("apscheduler.executors").setLevel(
        logging.DEBUG if numeric <= logging.DEBUG else logging.WARNING
    )


@app.command()
def run() -> None:
    """Start deskbot: HTTP server, enabled channels, scheduler and outbox dispatcher."""
    settings = Settings()
    _setup_logging(settings.log_level, worker=settings.worker)
    if settings.workers > 1:
        from bot.workers import WorkersRefused, supervise

        try:
            code = supervise(settings, lambda url: _announce(settings, url))
        except WorkersRefused as exc:
            typer.echo(f"deskbot: {exc}", err=True)
            raise typer.Exit(2) from None
        if code == 0:
            typer.echo("deskbot stopped.")
        raise typer.Exit(code)
    settings.ensure_secret_key()
    with asyncio.Runner(loop_factory=event_loop_factory(settings.event_loop)) as runner:
        runner.run(_serve(settings))


GC_YOUNG_THRESHOLD = 50_000


def settle_garbage_collector() -> None:
    """Tune the cyclic garbage collector for serving, once everything has started.

    What start-up made lives as long as the process (the knowledge index, the catalogue,
    compiled statements): ``gc.freeze`` takes it out of every later collection. A turn
    allocates thousands of short-lived objects, so the youngest generation is collected
    every 50,000 allocations instead of 700 (docs/benchmarks.md has what each saves).
    """
    import gc

    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def event_loop_factory(choice: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop ``deskbot run`` serves on: uvloop when installed (``auto``) or asked for,
    else asyncio's own (``None``: the default)."""
    if choice == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        if choice == "uvloop":
            raise typer.BadParameter(
                "DESKBOT_EVENT_LOOP=uvloop, but uvloop is not installed"
            ) from None
        return None
    return uvloop.new_event_loop


def _announce(settings: Settings, url: str) -> None:
    """The lines a person starting deskbot reads first: where it listens."""
    shown = (settings.public_url or url).rstrip("/")
    typer.echo(f"deskbot is listening on {url}. Ctrl-C stops it.")
    for label, path in (
        ("demo page", "/"),
        ("agent console", "/agent"),
        ("API docs", "/api/docs"),
        ("health", "/healthz"),
    ):
        typer.echo(f"  {label:<14} {shown}{path}")


async def _serve(settings: Settings) -> None:
    runtime = Runtime(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(signum, stop.set)
    await runtime.start()
    settle_garbage_collector()
    url = settings.local_url(runtime.http.port)
    logger.info(
        "deskbot.started url=%s channels=%s loop=%s",
        url,
        ",".join(runtime.core.registry.kinds()),
        "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio",
    )
    if settings.worker_ready_fd is not None:  # one of several: the supervisor announces
        os.write(settings.worker_ready_fd, b"ready\n")
        os.close(settings.worker_ready_fd)
    else:
        _announce(settings, url)
    if settings.demo:
        import secrets

        from sqlalchemy.exc import IntegrityError

        from bot.reports import count_agents

        if await count_agents(runtime.core.db) == 0:
            password = secrets.token_urlsafe(12)
            try:
                await runtime.core.agents.add_agent(
                    "demo", password=password, display_name="Demo Agent", is_lead=True
                )
            except IntegrityError:  # another node created it first
                logger.info("deskbot.demo_agent.exists")
            else:
                typer.echo(
                    f"  demo agent     username demo, password {password} "
                    "(shown only this once; `deskbot agent add` creates real agents)"
                )
    await stop.wait()
    logger.info("deskbot.stopping")
    await runtime.stop()
    if settings.worker is None:  # a worker's supervisor says it once for all of them
        typer.echo("deskbot stopped.")


@db_app.command("upgrade")
def db_upgrade(revision: str = typer.Argument("head")) -> None:
    """Apply the database migrations (also done by ``deskbot run`` at start)."""
    settings = Settings()
    _setup_logging(settings.log_level)

    async def _go() -> None:
        database = Database(settings.resolved_database_url)
        try:
            await upgrade(database, revision)
        finally:
            await database.dispose()

    asyncio.run(_go())
    typer.echo(f"database at {revision}")


@app.command()
def chat(
    user: str = typer.Option(None, help="Who you are in this chat (default: your login)."),
) -> None:
    """Talk to the bot in this terminal (also works with piped input)."""
    settings = Settings()
    _setup_logging("WARNING" if settings.log_level.upper() == "INFO" else settings.log_level)
    asyncio.run(_chat(settings, user))


async def _chat(settings: Settings, user: str | None) -> None:
    from channels.terminal import TerminalChannel

    core = build_core(settings)
    await upgrade(core.db)
    terminal = TerminalChannel(user=user)
    core.registry.add(terminal)
    interactive = sys.stdin.isatty()
    if interactive:
        typer.echo("deskbot chat: type a message, Ctrl-D to leave. Try 'help'.")
    try:
        while True:
            if interactive:
                typer.echo("you> ", nl=False)
            line = await asyncio.to_thread(sys.stdin.readline)
            if not line:
                break
            if not line.strip():
                continue
            if not interactive:
                typer.echo(f"you> {line.strip()}")
            await core.manager.handle(terminal.inbound(line))
            await core.dispatcher.drain()
    finally:
        await core.db.dispose()


@agent_app.command("add")
def agent_add(
    username: str,
    password: str = typer.Option(..., prompt=True, hide_input=True, confirmation_prompt=True),
    name: str = typer.Option(None, help="Display name."),
    email: str = typer.Option(None),
    group: list[str] | None = typer.Option(None, help="Agent group id(s) from the catalogue."),
    lead: bool = typer.Option(False, help="A team lead (sees every group, gets alerts)."),
    slack_user: str = typer.Option(None, help="The agent's Slack user id."),
) -> None:
    """Create an agent who can log into the console (password hashed with argon2)."""
    settings = Settings()
    _setup_logging("WARNING")

    async def _go() -> None:
        core = build_core(settings)
        try:
            await upgrade(core.db)
            agent = await core.agents.add_agent(
                username,
                password=password,
                display_name=name,
                email=email,
                groups=group,
                is_lead=lead,
                slack_user_id=slack_user,
            )
            typer.echo(f"agent {agent.username} created (id {agent.id})")
        finally:
            await core.db.dispose()

    asyncio.run(_go())


def main(argv: Sequence[str] | None = None) -> None:
    app(args=list(argv) if argv is not None else None)


if __name__ == "__main__":
    main()


__all__ = ["Core", "Runtime", "app", "build_core", "main"]
