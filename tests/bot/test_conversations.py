"""Transcripts through the real manager, on SQLite and PostgreSQL (issue 4)."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from bot.sweeps import expire_flows
from storage.models import Alert, Conversation, Ticket
from storage.repositories import Tickets
from tests.conftest import Desk, buttons_of, text_of


async def _ticket(desk: Desk, number: str) -> Ticket:
    async with desk.core.db.read() as session:
        ticket = await Tickets(session).by_number(number)
        assert ticket is not None
        return ticket


async def _open_incident(desk: Desk, user: str = "alice") -> str:
    """Report a VPN problem, declining any article, answering what is asked."""
    replies = await desk.say(
        "the vpn drops every few minutes, only me, I can work around it", user=user
    )
    for _ in range(4):
        numbers = [r.ticket_number for r in replies if r.ticket_number]
        if numbers:
            return numbers[0]
        values = buttons_of(replies)
        choice = next((v for v in values if v.startswith(("kb:no", "kb:none"))), None)
        choice = choice or next((v for v in values if v.startswith("service:vpn")), None)
        choice = choice or next((v for v in values if v.endswith(":3")), None)
        assert choice is not None, text_of(replies)
        replies = await desk.press(choice, user=user)
    raise AssertionError("no ticket opened")


async def test_kb_answer_then_helped_is_deflected(desk: Desk) -> None:
    replies = await desk.say("how do I set up the company email on my iphone")
    # one message: the article, then the question, with its buttons beneath
    [answer] = replies
    assert answer.kind == "kb_answer"
    assert answer.markdown.startswith("**Set up work email on your phone**")
    assert answer.markdown.endswith("Did this help?")
    assert [v.split(":")[:2] for v in buttons_of(replies)] == [["kb", "yes"], ["kb", "no"]]
    replies = await desk.say("yes")
    assert "glad" in text_of(replies).lower()


async def test_kb_rejected_gathers_slots_and_opens_a_ticket(desk: Desk) -> None:
    replies = await desk.say("how do I connect to the vpn from home")
    assert any(r.kind == "kb_answer" for r in replies)
    replies = await desk.press(next(v for v in buttons_of(replies) if v.startswith("kb:no:")))
    assert "How many people are affected?" in text_of(replies)
    replies = await desk.press("impact:3")
    assert "block your work" in text_of(replies)
    replies = await desk.say("I cannot work at all")
    number = next(r.ticket_number for r in replies if r.ticket_number)
    assert number.startswith("INC-")
    ticket = await _ticket(desk, number)
    assert (ticket.service, ticket.impact, ticket.urgency, ticket.priority) == ("vpn", 3, 1, 3)
    assert "impact 3" in ticket.priority_reason and "urgency 1" in ticket.priority_reason


async def test_slots_out_of_order_with_a_correction(desk: Desk) -> None:
    replies = await desk.say("nothing loads since 9 this morning")
    assert "Which service" in text_of(replies)
    replies = await desk.say("outlook")
    assert "How many people" in text_of(replies)
    replies = await desk.say("actually it's the VPN, not outlook")
    assert "Got it, VPN" in text_of(replies)
    # urgency before impact, both in one answer
    replies = await desk.say("I'm blocked, and so is my whole team")
    number = next(r.ticket_number for r in replies if r.ticket_number)
    ticket = await _ticket(desk, number)
    assert ticket.service == "vpn"
    assert (ticket.impact, ticket.urgency, ticket.priority) == (2, 1, 2)


async def test_cancel_leaves_nothing_open(desk: Desk) -> None:
    await desk.say("my monitor flickers and the screen goes black")
    replies = await desk.say("cancel")
    assert "cancelled" in text_of(replies)
    async with desk.core.db.read() as session:
        assert list((await session.execute(select(Ticket))).scalars()) == []


async def test_silence_expires_the_flow_politely(desk: Desk) -> None:
    await desk.say("the scanner on floor 2 makes a weird noise")
    desk.clock.advance(minutes=31)
    assert await expire_flows(desk.core.db, desk.clock, desk.core.events) == 1
    replies = await desk.delivered()
    assert "set this report aside" in text_of(replies)
    async with desk.core.db.read() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
    assert conversation.flow is None


async def test_status_and_my_tickets(desk: Desk) -> None:
    number = await _open_incident(desk)
    replies = await desk.say(f"status {number}")
    assert number in text_of(replies)
    replies = await desk.say("any news?")
    assert number in text_of(replies)
    replies = await desk.say("my tickets")
    assert number in text_of(replies)
    # someone else's ticket looks exactly like a missing one
    replies = await desk.say(f"status {number}", user="mallory")
    assert "can't find" in text_of(replies)


async def test_password_reset_is_a_service_request(desk: Desk) -> None:
    replies = await desk.say("I forgot my password")
    assert "Which account" in text_of(replies)
    await desk.say("my normal SSO login")
    replies = await desk.say("call me on +44 20 7946 0000")
    number = next(r.ticket_number for r in replies if r.ticket_number)
    assert number.startswith("REQ-")
    ticket = await _ticket(desk, number)
    assert ticket.kind == "request" and ticket.fields["system"] == "my normal SSO login"


async def test_access_request_takes_the_resource_from_the_first_message(desk: Desk) -> None:
    replies = await desk.say("I need access to the finance share")
    assert "What do you need it for?" in text_of(replies)
    await desk.say("quarter-end reporting")
    replies = await desk.say("my manager jo@example.com")
    number = next(r.ticket_number for r in replies if r.ticket_number)
    ticket = await _ticket(desk, number)
    assert ticket.fields["resource"] == "finance share"


async def test_subscribe_and_unsubscribe(desk: Desk) -> None:
    assert "notices about VPN" in text_of(await desk.say("subscribe me to vpn notices"))
    assert "already subscribed" in text_of(await desk.say("subscribe to vpn"))
    assert "won't get VPN" in text_of(await desk.say("unsubscribe from vpn"))


async def test_close_my_ticket(desk: Desk) -> None:
    number = await _open_incident(desk)
    replies = await desk.say("you can close it, it works again")
    assert f"{number} is closed" in text_of(replies)
    assert (await _ticket(desk, number)).status == "resolved"


async def test_message_after_resolution_reopens_within_grace_then_follows_up(desk: Desk) -> None:
    number = await _open_incident(desk)
    await desk.say(f"close {number}")
    desk.clock.advance(days=2)
    replies = await desk.say("it started dropping again after lunch")
    assert f"reopened **{number}**" in text_of(replies)
    assert (await _ticket(desk, number)).status == "open"
    await desk.say(f"close {number}")
    desk.clock.advance(days=30)
    replies = await desk.say("and now it is broken again, same problem")
    follow_up = next(r.ticket_number for r in replies if r.ticket_number)
    assert follow_up != number
    new = await _ticket(desk, follow_up)
    old = await _ticket(desk, number)
    assert new.reopened_from_id == old.id and old.status == "resolved"


async def test_frustration_offers_a_human_at_once(desk: Desk) -> None:
    replies = await desk.say("THIS IS THE THIRD TIME I ASK, MY LAPTOP WILL NOT CHARGE")
    assert "human" in buttons_of(replies)
    assert "frustrating" in text_of(replies)


async def test_abuse_is_answered_calmly_flagged_and_raised(desk: Desk) -> None:
    replies = await desk.say("you useless idiots never fix anything")
    assert "respectful" in text_of(replies)
    async with desk.core.db.read() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
        alerts = list((await session.execute(select(Alert))).scalars())
    assert conversation.flagged == "abuse"
    assert [a.kind for a in alerts] == ["abuse"]


async def test_takeover_the_bot_stays_silent_and_claims_are_atomic(desk: Desk) -> None:
    replies = await desk.say("talk to a human")
    assert "An agent will reply" in text_of(replies)
    first = await desk.core.agents.add_agent("sam", password="pw-sam-123")
    second = await desk.core.agents.add_agent("kim", password="pw-kim-123")
    async with desk.core.db.read() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
    wins = await asyncio.gather(
        desk.core.agents.claim(conversation.id, first),
        desk.core.agents.claim(conversation.id, second),
    )
    assert sorted(wins) == [False, True]
    winner = first if wins[0] else second
    joined = await desk.delivered()
    assert "has joined" in text_of(joined)
    # while the agent owns it, the bot says nothing, whatever the person writes
    assert await desk.say("how do I connect to the vpn") == []
    assert await desk.say("help") == []
    await desk.core.agents.reply(conversation.id, winner, "Hi, I'm looking at it now")
    # the same platform event (a Slack retry) twice, even at once: one message
    await asyncio.gather(
        desk.core.agents.reply(conversation.id, winner, "On it", external_id="slack:Ev1"),
        desk.core.agents.reply(conversation.id, winner, "On it", external_id="slack:Ev1"),
    )
    await desk.core.agents.reply(conversation.id, winner, "checked the logs", private=True)
    delivered = await desk.delivered()
    assert text_of(delivered) == "Hi, I'm looking at it now\nOn it"
    context = await desk.core.agents.context(conversation.id, winner)
    assert [m.text for m in context.transcript if m.private] == ["checked the logs"]
    await desk.core.agents.hand_back(conversation.id, winner)
    await desk.delivered()
    replies = await desk.say("help")
    assert "I'm the IT service desk bot" in text_of(replies)


async def test_high_priority_goes_to_the_queue(desk: Desk) -> None:
    await desk.say("email is down for everyone in the whole company, nobody can work")
    async with desk.core.db.read() as session:
        conversation = (await session.execute(select(Conversation))).scalar_one()
        ticket = (await session.execute(select(Ticket))).scalar_one()
    assert ticket.priority == 1
    assert conversation.state == "queued"


async def test_vip_uplift_is_recorded(desk: Desk) -> None:
    replies = await desk.say(
        "my laptop will not start, just me, I cannot work", user="ceo", email="ceo@example.com"
    )
    no = [v for v in buttons_of(replies) if v.startswith("kb:no")]
    if no:
        await desk.press(no[0], user="ceo")
    async with desk.core.db.read() as session:
        ticket = (await session.execute(select(Ticket))).scalar_one()
    assert ticket.vip_uplift and ticket.priority == 2
    assert "VIP" in ticket.priority_reason


async def test_incidents_link_to_a_problem_with_a_logged_event(desk: Desk) -> None:
    from bot.tickets import NewTicket
    from storage.models import Person

    number = await _open_incident(desk)
    async with desk.core.db.transaction() as session:
        incident = await Tickets(session).by_number(number)
        assert incident is not None
        requester = await session.get(Person, incident.requester_id)
        assert requester is not None
        problem = await desk.core.tickets.open(
            session,
            NewTicket(kind="problem", title="VPN gateway drops long sessions", description=""),
            requester=requester,
            conversation=None,
            now=desk.clock.now(),
            actor_kind="agent",
        )
        problem.known_error = True
        await desk.core.tickets.link_to_problem(
            session, incident, problem, now=desk.clock.now(), actor_id=None
        )
        problem_number, problem_id = problem.number, problem.id
    assert problem_number.startswith("PRB-")
    incident = await _ticket(desk, number)
    assert incident.problem_id == problem_id
    async with desk.core.db.read() as session:
        events = await Tickets(session).events(incident.id)
    linked = [e for e in events if e.action == "linked_to_problem"]
    assert linked and linked[0].detail == {"problem": problem_number, "known_error": True}
    assert not linked[0].public


async def test_an_active_outage_answers_and_subscribes(desk: Desk) -> None:
    from storage.models import Outage

    async with desk.core.db.transaction() as session:
        session.add(
            Outage(
                service="vpn",
                title="VPN gateway down in Europe",
                status="active",
                message="Next update by 11:00.",
                started_at=desk.clock.now(),
            )
        )
    replies = await desk.say("my vpn does not connect at all")
    text = text_of(replies)
    assert "Known outage: VPN gateway down in Europe" in text and "Next update" in text
    assert "already subscribed" in text_of(await desk.say("subscribe me to vpn notices"))


async def test_small_transactions_finish_in_one_turn(desk: Desk) -> None:
    assert "I'm the IT service desk bot" in text_of(await desk.say("what can you do?"))
    assert "Hi Alice" in text_of(await desk.say("good morning"))
    assert "You're welcome" in text_of(await desk.say("thanks a lot"))
    assert "Bye for now" in text_of(await desk.say("that's all"))
    assert "no known outage on VPN" in text_of(await desk.say("is vpn down?"))
    assert "An agent will reply" in text_of(await desk.say("can I speak to a person"))
