"""The REST API under /api over a real server: the console session authenticates it, an
agent sees their groups' tickets only (R39), and what they may not see reads as missing
(R34); without a session every endpoint answers 401, never 5xx."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest

from bot.tickets import NewTicket
from storage.repositories import Alerts, Conversations, People
from tests.channels.webchat.webchat_harness import AgentClient, WebDesk


async def _open_ticket(web: WebDesk, service: str | None, title: str) -> tuple[str, int]:
    """A ticket for ``service`` (its catalogue agent group) with a conversation."""
    core = web.core
    now = core.clock.now()
    async with core.db.transaction() as session:
        person = await People(session).ensure_by_email(
            f"{title.split()[0].lower()}@example.com", display_name=title, now=now
        )
        conversation, _ = await Conversations(session).find_or_open(
            channel="webchat",
            thread_key=f"webchat:{title}",
            person_id=person.id,
            reply_to={},
            now=now,
        )
        ticket = await core.tickets.open(
            session,
            NewTicket(
                kind="incident",
                title=title,
                description=f"{title} <img src=x onerror=alert(1)>",
                service=core.catalog.services.get(service) if service else None,
            ),
            requester=person,
            conversation=conversation,
            now=now,
        )
        return ticket.number, conversation.id


@pytest.fixture
async def logged_in(web: WebDesk) -> AsyncIterator[Callable[..., Awaitable[AgentClient]]]:
    """Creates an agent and returns a client logged into the console as them."""
    async with contextlib.AsyncExitStack() as stack:

        async def login(username: str, **kwargs: Any) -> AgentClient:
            await web.core.agents.add_agent(username, password="pw-" + username, **kwargs)
            http = httpx.AsyncClient(base_url=web.base, timeout=10, trust_env=False)
            await stack.enter_async_context(http)
            client = AgentClient(desk=web, http=http)
            assert (await client.login(username, "pw-" + username)).status_code == 200
            return client

        yield login


async def test_api_without_a_session_is_401_on_every_path(web: WebDesk) -> None:
    spec = (await web.http.get("/api/openapi.json")).json()
    paths = [p for p in spec["paths"] if p.startswith("/api/")]
    assert {"/api/tickets", "/api/tickets/{number}", "/api/alerts"} <= set(paths)
    assert "agentSession" in spec["components"]["securitySchemes"]
    concrete = [
        p.replace("{number}", "INC-000001").replace("{conversation_id}", "1") for p in paths
    ]
    for path in concrete:
        params = {"q": "vpn"} if path.endswith("/search") else {}
        for headers in ({}, {"Cookie": "deskbot_agent=forged.value.here"}):
            response = await web.http.get(path, params=params, headers=headers)
            assert response.status_code == 401, (path, response.status_code, response.text)
            assert response.json() == {"detail": "not logged in"}


async def test_agent_sees_own_groups_tickets_and_nothing_of_the_others(
    web: WebDesk, logged_in: Any
) -> None:
    vpn_number, vpn_conversation = await _open_ticket(web, "vpn", "Vpn drops hourly")
    mail_number, mail_conversation = await _open_ticket(web, "email", "Mail stuck outbox")
    nina = await logged_in("nina", groups=["network"])
    lead = await logged_in("lena", is_lead=True)
    listed = (await nina.http.get("/api/tickets")).json()["tickets"]
    assert [t["number"] for t in listed] == [vpn_number]
    assert listed[0]["agent_group"] == "network"
    everything = (await lead.http.get("/api/tickets")).json()["tickets"]
    assert {t["number"] for t in everything} == {vpn_number, mail_number}
    resolved = await lead.http.get("/api/tickets", params={"status": "resolved"})
    assert resolved.json() == {"tickets": []}
    assert (await lead.http.get("/api/tickets", params={"status": "bogus"})).status_code == 422

    own = await nina.http.get(f"/api/tickets/{vpn_number.lower()}")
    assert own.status_code == 200
    detail = own.json()
    assert detail["number"] == vpn_number
    assert [e["action"] for e in detail["events"]] == ["opened"]
    assert "onerror" in detail["description"]  # JSON carries text; the console escapes

    other = await nina.http.get(f"/api/tickets/{mail_number}")
    missing = await nina.http.get("/api/tickets/INC-999999")
    assert other.status_code == missing.status_code == 404
    assert other.json() == missing.json()  # no hint that the other ticket exists

    card = await nina.http.get(f"/api/conversations/{vpn_conversation}")
    assert card.status_code == 200
    assert card.json()["ticket"]["number"] == vpn_number
    hidden = await nina.http.get(f"/api/conversations/{mail_conversation}")
    nowhere = await nina.http.get("/api/conversations/987654")
    assert hidden.status_code == nowhere.status_code == 404
    assert hidden.json() == nowhere.json()


async def test_knowledge_search_ranks_and_decides(web: WebDesk, logged_in: Any) -> None:
    agent = await logged_in("kim")
    found = await agent.http.get(
        "/api/knowledge/search", params={"q": "how do I connect to the vpn"}
    )
    assert found.status_code == 200
    body = found.json()
    assert body["decision"] == "answer"
    assert "vpn" in (body["matches"][0]["title"] + body["matches"][0]["excerpt"]).lower()
    scores = [m["score"] for m in body["matches"]]
    assert scores == sorted(scores, reverse=True)
    empty = await agent.http.get("/api/knowledge/search", params={"q": ""})
    assert empty.status_code == 422


async def test_alerts_are_for_leads_only(web: WebDesk, logged_in: Any) -> None:
    async with web.core.db.transaction() as session:
        await Alerts(session).raise_alert("abuse", "abusive messages", now=web.core.clock.now())
    agent = await logged_in("pat", groups=["service-desk"])
    lead = await logged_in("lou", is_lead=True)
    assert (await agent.http.get("/api/alerts")).status_code == 403
    alerts = (await lead.http.get("/api/alerts")).json()["alerts"]
    assert [(a["kind"], a["summary"]) for a in alerts] == [("abuse", "abusive messages")]


async def test_api_session_ends_with_the_agents_deactivation(web: WebDesk, logged_in: Any) -> None:
    agent = await logged_in("dan")
    assert (await agent.http.get("/api/tickets")).status_code == 200
    me = (await agent.http.get("/agent/api/me")).json()["agent"]
    await web.core.agents.deactivate(me["id"])
    assert (await agent.http.get("/api/tickets")).status_code == 401
