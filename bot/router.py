"""How the bot answers a turn, in the order of shared/ARCHITECTURE.md:

1. explicit commands and button answers;
2. an active flow waiting for an answer (slot filling);
3. simple transactions recognised from free text (bot.intents);
4. an active outage on a service the message names;
5. a confident knowledge-base answer, ending with "did this help?" (one message);
6. a conversation that gathers what is needed and opens a ticket.

Care signals (abuse, frustration) are checked first on every turn. Each handler records
``turn.routed(route, reason)`` so every decision can be explained.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from bot import care
from bot.catalog import Catalog
from bot.intents import IntentMatcher, find_ticket_number
from bot.tickets import OPEN_STATUSES, NewTicket, TicketDesk, describe
from bot.turn import Turn
from bot.types import Button
from storage.models import Ticket
from storage.repositories import Alerts, Conversations, KnowledgeFeedback, Subscriptions, Tickets

logger = logging.getLogger(__name__)

CANCEL_RE = re.compile(r"^\s*(cancel|stop|never ?mind|forget it|abort|quit)\b", re.I)
YES_RE = re.compile(r"^\s*(y|yes|yep|yeah|yup|it did|that helped|helpful|solved|perfect)\b", re.I)
NO_RE = re.compile(r"^\s*(n|no|nope|nah|didn'?t help|not really|it didn'?t|that didn'?t)\b", re.I)
STATUS_WORDS_RE = re.compile(r"\b(status|update|news|progress|what'?s happening|where is)\b", re.I)
CLOSE_WORDS_RE = re.compile(r"\b(close|cancel|withdraw|resolve)\b", re.I)

IMPACT_RULES = [
    (
        1,
        re.compile(
            r"\b(every(one|body)|whole (company|office|site|building|floor)|"
            r"all (staff|users|of us)|entire (company|office)|nobody can|no one can)\b",
            re.I,
        ),
    ),
    (
        2,
        re.compile(
            r"\b(my team|our team|the team|department|several|colleagues|a few of us|"
            r"others too|we all|some of us|whole team|team)\b",
            re.I,
        ),
    ),
    (3, re.compile(r"\b(just me|only me|only mine|i'?m the only|only my|myself)\b", re.I)),
]
URGENCY_RULES = [
    (
        1,
        re.compile(
            r"\b(can'?t work|cannot work|unable to work|(nobody|no one) can work|blocked|"
            r"urgent|asap|"
            r"critical|emergency|right now|customer (call|meeting)|deadline)\b",
            re.I,
        ),
    ),
    (
        3,
        re.compile(
            r"\b(not urgent|no rush|can wait|whenever|low priority|workaround|"
            r"work around it|minor)\b",
            re.I,
        ),
    ),
    (
        2,
        re.compile(
            r"\b(slow|hampered|annoying|intermittent|sometimes|some features|partly|"
            r"degraded)\b",
            re.I,
        ),
    ),
]
BUTTON_RE = re.compile(r"^(?P<ns>[a-z_]+):(?P<arg>.*)$")


def _request_title(title: str, slots: dict[str, str]) -> str:
    subject = slots.get("resource") or slots.get("system")
    return f"{title}: {subject}" if subject else title


class KnowledgeSearch(Protocol):
    """What the router needs of the knowledge base (knowledge.KnowledgeBase)."""

    def search(self, query: str, *, limit: int = 5) -> Any: ...

    def get(self, article_id: str) -> Any: ...


@dataclass(frozen=True, slots=True)
class RouterConfig:
    flow_timeout: timedelta = timedelta(minutes=30)
    queue_priority_at_or_above: int = 2  # P1/P2 go to an agent straight away


def level_from(text: str, rules: list[tuple[int, re.Pattern[str]]]) -> int | None:
    stripped = text.strip()
    if stripped in {"1", "2", "3"}:
        return int(stripped)
    for level, pattern in rules:
        if pattern.search(text):
            return level
    return None


class DeskRouter:
    """The routing chain; one instance serves every conversation."""

    def __init__(
        self,
        *,
        catalog: Catalog,
        tickets: TicketDesk,
        knowledge: KnowledgeSearch | None,
        intents: IntentMatcher | None = None,
        config: RouterConfig | None = None,
    ) -> None:
        self.catalog = catalog
        self.tickets = tickets
        self.kb = knowledge
        self.intents = intents or IntentMatcher()
        self.config = config or RouterConfig()

    async def route(self, turn: Turn) -> None:
        notes = dict(turn.conversation.notes or {})
        abuse = care.abuse_reason(turn.text)
        if abuse:
            await self._abuse(turn, abuse)
            return
        frustration = care.frustration_reason(
            turn.text, rejected_answers=len(notes.get("rejected_articles", []))
        )
        if frustration and not turn.inbound.button:
            turn.say(
                "I'm sorry this has been so frustrating. I can bring in a person from the "
                "service desk right away.",
                buttons=[
                    Button("Talk to a human", "human"),
                    Button("Keep going with me", "continue"),
                ],
            )
            notes["frustration"] = frustration
            turn.conversation.notes = notes
            turn.routed("care.frustration", f"offered a human: the person {frustration}")
            if turn.text.strip() and not self._is_short_noise(turn.text):
                await self._route_content(turn, keep_route=True)
            return
        await self._route_content(turn)

    @staticmethod
    def _is_short_noise(text: str) -> bool:
        return len(re.sub(r"[^a-z]", "", text.lower())) < 3

    async def _route_content(self, turn: Turn, *, keep_route: bool = False) -> None:
        saved = (turn.route, turn.reason)
        for step in (
            self._buttons_and_commands,
            self._active_flow,
            self._intents,
            self._reopen,
            self._outage,
            self._knowledge,
        ):
            if await step(turn):
                break
        else:
            await self._start_incident(turn)
        if keep_route:
            turn.routed(saved[0], f"{saved[1]}; then {turn.route}: {turn.reason}")

    # 1. commands and buttons ---------------------------------------------------------

    async def _buttons_and_commands(self, turn: Turn) -> bool:
        value = turn.inbound.button
        if value:
            match = BUTTON_RE.match(value)
            ns, arg = (match.group("ns"), match.group("arg")) if match else (value, "")
            handled = await self._button(turn, ns, arg)
            if handled:
                return True
        text = turn.text.strip()
        number = find_ticket_number(text)
        if number and (STATUS_WORDS_RE.search(text) or text.upper() == number or len(text) <= 20):
            if CLOSE_WORDS_RE.search(text):
                await self._close(turn, number)
            else:
                await self._status(turn, number)
            return True
        if number and CLOSE_WORDS_RE.search(text):
            await self._close(turn, number)
            return True
        lowered = text.lower()
        if lowered in {"help", "/help", "?"}:
            self._help(turn)
            return True
        if lowered in {"my tickets", "tickets", "/tickets"}:
            await self._my_tickets(turn)
            return True
        if lowered in {"human", "agent", "talk to a human"}:
            await self.escalate(turn, "the person asked for a human")
            return True
        return False

    async def _button(self, turn: Turn, ns: str, arg: str) -> bool:
        if ns == "human":
            await self.escalate(turn, "the person asked for a human")
            return True
        if ns == "continue":
            turn.say("Sure, let's carry on. Tell me more about the problem.")
            turn.routed("button.continue", "the person chose to keep going with the bot")
            return True
        if ns == "kb":
            action, _, article_id = arg.partition(":")
            if action == "yes":
                await self._kb_helped(turn, article_id)
            elif action == "no":
                await self._kb_not_helped(turn, article_id)
            elif action == "pick":
                await self._kb_answer(
                    turn, article_id, query=(turn.conversation.flow or {}).get("query", "")
                )
            else:  # none of these
                await self._kb_not_helped(turn, None)
            return True
        if ns == "status":
            await self._status(turn, arg)
            return True
        if ns == "close":
            await self._close(turn, arg)
            return True
        if ns in {"impact", "urgency", "service"}:
            flow = turn.conversation.flow
            if flow and flow.get("name") == "incident":
                slots = dict(flow.get("slots") or {})
                slots[ns] = int(arg) if ns != "service" else arg
                await self._continue_incident(turn, slots, changed=[ns])
                return True
        if ns == "cancel":
            self._cancel_flow(turn)
            return True
        return False

    # 2. active flow --------------------------------------------------------------------

    async def _active_flow(self, turn: Turn) -> bool:
        conversation = turn.conversation
        flow = conversation.flow
        if not flow:
            return False
        if conversation.flow_expires_at is not None and conversation.flow_expires_at <= turn.now:
            self._clear_flow(turn)
            turn.say(
                "The report we started earlier timed out, so I've set it aside. "
                "Let's look at your new message."
            )
            return False
        if CANCEL_RE.match(turn.text):
            self._cancel_flow(turn)
            return True
        name = flow.get("name")
        if name == "kb_feedback":
            if YES_RE.match(turn.text):
                await self._kb_helped(turn, flow.get("article"))
                return True
            if NO_RE.match(turn.text):
                await self._kb_not_helped(turn, flow.get("article"))
                return True
            self._clear_flow(turn)  # a new question: answer it afresh
            return False
        if name == "kb_pick":
            self._clear_flow(turn)
            return False
        if name == "incident":
            slots = dict(flow.get("slots") or {})
            changed = self._extract_slots(turn.text, slots, asking=flow.get("asking"))
            await self._continue_incident(turn, slots, changed=changed)
            return True
        if name == "request":
            await self._continue_request(turn, flow)
            return True
        self._clear_flow(turn)
        return False

    def _set_flow(self, turn: Turn, flow: dict[str, Any]) -> None:
        turn.conversation.flow = flow
        turn.conversation.flow_expires_at = turn.now + self.config.flow_timeout

    def _clear_flow(self, turn: Turn) -> None:
        turn.conversation.flow = None
        turn.conversation.flow_expires_at = None

    def _cancel_flow(self, turn: Turn) -> None:
        had = bool(turn.conversation.flow)
        self._clear_flow(turn)
        turn.say(
            "OK, I've cancelled that. Nothing was opened."
            if had
            else "There's nothing in progress to cancel. How can I help?"
        )
        turn.routed("flow.cancel", "the person cancelled" if had else "cancel with no flow")

    # 3. simple transactions ---------------------------------------------------------

    async def _intents(self, turn: Turn) -> bool:
        match = self.intents.match(turn.text)
        if match is None:
            return False
        intent = match.intent
        reason = f"intent {intent} (score {match.score:.0f} against {match.example!r})"
        if intent == "help":
            self._help(turn)
        elif intent == "greeting":
            name = turn.person.display_name or "there"
            turn.say(
                f"Hi {name}! Tell me what's wrong, or ask me something. "
                "Type *help* to see what I can do."
            )
        elif intent == "thanks":
            turn.say("You're welcome! Anything else I can help with?")
        elif intent == "goodbye":
            self._clear_flow(turn)
            turn.say("Bye for now. Message me any time.")
        elif intent == "ticket_status":
            await self._status(turn, match.ticket_number)
        elif intent == "my_tickets":
            await self._my_tickets(turn)
        elif intent == "password_reset":
            await self._start_request(turn, "password_reset")
        elif intent == "access_request":
            await self._start_request(turn, "access_request")
        elif intent in {"subscribe", "unsubscribe"}:
            await self._subscription(turn, subscribe=intent == "subscribe")
        elif intent == "human":
            await self.escalate(turn, "the person asked for a human")
        elif intent == "close_ticket":
            await self._close(turn, match.ticket_number)
        elif intent == "outage_check":
            if not await self._outage(turn, explicit=True):
                service = self.catalog.find_service(turn.text)
                what = service.name if service else "any service"
                turn.say(
                    f"There is no known outage on {what} right now. If something isn't "
                    "working for you, describe it and I'll open a ticket."
                )
        else:
            return False
        if not turn.route.startswith(("intent", "flow", "escalate", "outage", "request")):
            turn.routed(f"intent.{intent}", reason)
        return True

    def _help(self, turn: Turn) -> None:
        turn.say(
            "I'm the IT service desk bot. I can:\n"
            "- answer IT questions from our knowledge base (just ask)\n"
            "- open a ticket when something is broken (describe the problem)\n"
            "- tell you the status of a ticket (*status INC-000123*) or list *my tickets*\n"
            "- request a password reset or access to a system\n"
            "- subscribe you to a service's notices (*subscribe vpn*)\n"
            "- put you through to a person (*talk to a human*)",
            quick_replies=("my tickets", "talk to a human", "reset my password"),
        )
        turn.routed("command.help", "help requested")

    async def _status(self, turn: Turn, number: str | None) -> None:
        repo = Tickets(turn.session)
        if number:
            ticket = await repo.by_number(number)
            if ticket is None or ticket.requester_id != turn.person.id:
                # the same answer whether it does not exist or is someone else's
                turn.say(f"I can't find a ticket {number} of yours.")
                turn.routed("command.status", f"{number} not found for this person")
                return
            tickets = [ticket]
        else:
            tickets = await repo.of_requester(turn.person.id, statuses=OPEN_STATUSES)
            if not tickets:
                turn.say("You have no open tickets right now.")
                turn.routed("command.status", "no open tickets")
                return
            if len(tickets) > 1:
                turn.say(
                    "Which one? You have these open tickets:",
                    buttons=[Button(t.number, f"status:{t.number}") for t in tickets[:5]],
                )
                turn.routed("command.status", "several open tickets, asked which")
                return
        ticket = tickets[0]
        events = await repo.events(ticket.id)
        public = [e for e in events if e.public]
        last = public[-1] if public else None
        lines = [describe(ticket, self.catalog)]
        if last is not None:
            lines.append(
                f"Last change: {last.action.replace('status:', 'status → ')} on "
                f"{last.at:%a %d %b %H:%M} UTC."
            )
        if ticket.first_response_due and ticket.first_response_at is None:
            lines.append(f"First response due by {ticket.first_response_due:%a %d %b %H:%M} UTC.")
        turn.say("\n".join(lines), ticket_number=ticket.number)
        turn.routed("command.status", f"status of {ticket.number}")

    async def _my_tickets(self, turn: Turn) -> None:
        tickets = await Tickets(turn.session).of_requester(turn.person.id, statuses=OPEN_STATUSES)
        if not tickets:
            turn.say("You have no open tickets. Describe a problem and I'll open one.")
        else:
            listing = "\n".join(f"- {describe(t, self.catalog)}" for t in tickets[:10])
            turn.say(f"Your open tickets:\n{listing}")
        turn.routed("command.my_tickets", f"{len(tickets)} open tickets")

    async def _close(self, turn: Turn, number: str | None) -> None:
        repo = Tickets(turn.session)
        ticket: Ticket | None = None
        if number:
            ticket = await repo.by_number(number)
            if ticket is not None and ticket.requester_id != turn.person.id:
                ticket = None
        else:
            open_tickets = await repo.of_requester(turn.person.id, statuses=OPEN_STATUSES)
            current = turn.conversation.ticket_id
            ticket = next((t for t in open_tickets if t.id == current), None)
            if ticket is None and len(open_tickets) == 1:
                ticket = open_tickets[0]
            elif ticket is None and open_tickets:
                turn.say(
                    "Which ticket should I close?",
                    buttons=[
                        Button(f"Close {t.number}", f"close:{t.number}") for t in open_tickets[:5]
                    ],
                )
                turn.routed("command.close", "several open tickets, asked which")
                return
        if ticket is None:
            turn.say(
                f"I can't find an open ticket {number or ''} of yours to close.".replace("  ", " ")
            )
            turn.routed("command.close", "nothing to close")
            return
        if ticket.status not in OPEN_STATUSES:
            turn.say(f"{ticket.number} is already {ticket.status}.")
            turn.routed("command.close", f"{ticket.number} already {ticket.status}")
            return
        await self.tickets.set_status(
            turn.session,
            ticket,
            "resolved",
            now=turn.now,
            actor_kind="person",
            actor_id=turn.person.id,
            note="closed at the requester's request",
        )
        if turn.conversation.state in ("queued", "agent"):
            turn.conversation.state = "bot"
        turn.say(
            f"Done: {ticket.number} is closed at your request. Reply here if it comes back.",
            ticket_number=ticket.number,
        )
        turn.routed("command.close", f"closed {ticket.number} at the requester's request")

    async def _subscription(self, turn: Turn, *, subscribe: bool) -> None:
        service = self.catalog.find_service(turn.text)
        subs = Subscriptions(turn.session)
        if service is None:
            current = await subs.of_person(turn.person.id)
            names = ", ".join(sorted(self.catalog.services)) or "none"
            mine = ", ".join(current) or "none"
            turn.say(
                f"Which service? I know: {names}. You're subscribed to: {mine}. "
                f"Say e.g. *{'subscribe' if subscribe else 'unsubscribe'} vpn*."
            )
            turn.routed("intent.subscribe", "no service named")
            return
        if subscribe:
            added = await subs.add(turn.person.id, service.id, now=turn.now)
            turn.say(
                f"You'll get notices about {service.name}."
                if added
                else f"You're already subscribed to {service.name} notices."
            )
        else:
            removed = await subs.remove(turn.person.id, service.id)
            turn.say(
                f"You won't get {service.name} notices any more."
                if removed
                else f"You weren't subscribed to {service.name} notices."
            )
        turn.routed(
            f"intent.{'subscribe' if subscribe else 'unsubscribe'}", f"service {service.id}"
        )

    # service requests ---------------------------------------------------------------

    REQUESTS: dict[str, dict[str, Any]] = {
        "password_reset": {
            "title": "Password reset",
            "service": "identity",
            "slots": [
                (
                    "system",
                    "Which account needs the reset: your Example Corp sign-in (SSO), or "
                    "another system? Name it.",
                ),
                (
                    "contact",
                    "How can the desk reach you to hand over the temporary password, "
                    "since you may be locked out? (a phone number, or *here*)",
                ),
            ],
        },
        "access_request": {
            "title": "Access request",
            "service": "access",
            "slots": [
                ("resource", "What do you need access to (system, folder, group or app)?"),
                ("reason", "What do you need it for?"),
                ("approver", "Who approves it (usually your manager)? Name or email."),
            ],
        },
    }

    async def _start_request(self, turn: Turn, kind: str) -> None:
        slots: dict[str, str] = {}
        if kind == "access_request":
            found = re.search(r"access to (?:the )?(.+)$", turn.text, re.I)
            if found:
                slots["resource"] = found.group(1).strip(" .?!")
        flow = {"name": "request", "kind": kind, "slots": slots}
        await self._continue_request(turn, flow, first=True)

    async def _continue_request(
        self, turn: Turn, flow: dict[str, Any], *, first: bool = False
    ) -> None:
        spec = self.REQUESTS[flow["kind"]]
        slots = dict(flow.get("slots") or {})
        asking = flow.get("asking")
        if asking and not first and turn.text.strip():
            slots[asking] = turn.text.strip()[:500]
        for slot, question in spec["slots"]:
            if slot not in slots:
                self._set_flow(turn, {**flow, "slots": slots, "asking": slot})
                turn.say(question + " (or *cancel*)")
                turn.routed(f"request.{flow['kind']}", f"asking for {slot}")
                return
        self._clear_flow(turn)
        service = self.catalog.services.get(spec["service"])
        description = "\n".join(f"{k}: {v}" for k, v in slots.items())
        ticket = await self.tickets.open(
            turn.session,
            NewTicket(
                kind="request",
                title=_request_title(spec["title"], slots),
                description=description,
                service=service,
                impact=3,
                urgency=2 if flow["kind"] == "password_reset" else 3,
                fields=slots,
            ),
            requester=turn.person,
            conversation=turn.conversation,
            now=turn.now,
            flush=False,  # written with the round; the reply needs only its number
        )
        turn.say(
            f"I've opened service request **{ticket.number}** ({spec['title'].lower()}). "
            f"The {self._group_name(ticket.agent_group)} team will pick it up; "
            f"ask me for *status {ticket.number}* any time.",
            ticket_number=ticket.number,
        )
        turn.routed(f"request.{flow['kind']}", f"opened {ticket.number}")

    # 4. outages -----------------------------------------------------------------------

    async def _outage(self, turn: Turn, *, explicit: bool = False) -> bool:
        service = self.catalog.find_service(turn.text)
        if service is None:
            return False
        outage = await Subscriptions(turn.session).active_outage(service.id)
        if outage is None:
            return False
        await Subscriptions(turn.session).add(turn.person.id, service.id, now=turn.now)
        notes = dict(turn.conversation.notes or {})
        notes["outage_id"] = outage.id
        turn.conversation.notes = notes
        update = f"\n\n{outage.message}" if outage.message else ""
        turn.say(
            f"**Known outage: {outage.title}** (since {outage.started_at:%H:%M} UTC). "
            f"The team is on it; you don't need to report it again.{update}\n\n"
            f"I've subscribed you to updates on {service.name}.",
        )
        turn.routed("outage", f"active outage {outage.id} on {service.id}")
        return True

    # reopen --------------------------------------------------------------------------

    async def _reopen(self, turn: Turn) -> bool:
        ticket_id = turn.conversation.ticket_id
        if ticket_id is None:
            return False
        ticket = await Tickets(turn.session).get(ticket_id)
        if ticket is None or ticket.status in OPEN_STATUSES:
            return False
        if self.tickets.within_grace(ticket, turn.now):
            await self.tickets.set_status(
                turn.session,
                ticket,
                "open",
                now=turn.now,
                actor_kind="person",
                actor_id=turn.person.id,
                note="requester replied after resolution",
            )
            turn.say(
                f"I've reopened **{ticket.number}** and added your message; the team will "
                "follow up.",
                ticket_number=ticket.number,
            )
            turn.routed("ticket.reopen", f"{ticket.number} reopened within the grace window")
            return True
        new = await self.tickets.open(
            turn.session,
            NewTicket(
                kind=ticket.kind,
                title=f"Follow-up to {ticket.number}: {ticket.title}"[:300],
                description=turn.text,
                service=self.catalog.services.get(ticket.service or ""),
                impact=ticket.impact or 3,
                urgency=ticket.urgency or 3,
            ),
            requester=turn.person,
            conversation=turn.conversation,
            now=turn.now,
            reopened_from=ticket,
            flush=False,
        )
        turn.say(
            f"{ticket.number} was closed a while ago, so I've opened **{new.number}** as a "
            "follow-up and linked the two.",
            ticket_number=new.number,
        )
        turn.routed("ticket.follow_up", f"{ticket.number} past the grace window → {new.number}")
        return True

    # 5. knowledge ----------------------------------------------------------------------

    async def _knowledge(self, turn: Turn) -> bool:
        if self.kb is None or len(turn.text.strip()) < 3:
            return False
        if level_from(turn.text, IMPACT_RULES) == 1:
            # "everyone is down" is an incident, not a how-to question
            return False
        result = self.kb.search(turn.text, limit=3)
        best = result.best
        if result.decision == "answer" and best is not None:
            await self._kb_answer(
                turn, best.article.id, query=turn.text, confidence=best.confidence
            )
            return True
        if result.decision == "suggest" and result.matches:
            options = [m.article for m in result.matches[:3]]
            for article in options:
                turn.article_feedback(article.id, "offered")
            self._set_flow(
                turn, {"name": "kb_pick", "options": [a.id for a in options], "query": turn.text}
            )
            turn.say(
                "I found a few articles that might help. Which one fits?",
                buttons=[Button(a.title, f"kb:pick:{a.id}") for a in options]
                + [Button("None of these", "kb:none")],
            )
            turn.routed("kb.suggest", "several close matches: " + ", ".join(a.id for a in options))
            return True
        KnowledgeFeedback(turn.session).refused(
            turn.text,
            now=turn.now,
            conversation_id=turn.conversation.id,
            best_article_id=best.article.id if best else None,
            best_confidence=best.confidence if best else None,
        )
        return False

    async def _kb_answer(
        self, turn: Turn, article_id: str, *, query: str, confidence: float | None = None
    ) -> None:
        article = self.kb.get(article_id) if self.kb is not None else None
        if article is None:
            await self._start_incident(turn)
            return
        turn.article_feedback(article.id, "offered")
        self._set_flow(turn, {"name": "kb_feedback", "article": article.id, "query": query})
        notes = dict(turn.conversation.notes or {})
        notes.setdefault("offered_articles", []).append(article.id)
        turn.conversation.notes = notes
        # one message: the article, then the question with its buttons beneath it (one
        # notification in Slack, one email, one bubble; docs/conversations.md)
        turn.say(
            f"**{article.title}**\n\n{article.body.strip()}\n\nDid this help?",
            buttons=[
                Button("Yes, that helped", f"kb:yes:{article.id}", "primary"),
                Button("No", f"kb:no:{article.id}"),
            ],
            kind="kb_answer",
            meta={"article": article.id},
        )
        why = f"article {article.id}" + (f" (confidence {confidence:.2f})" if confidence else "")
        turn.routed("kb.answer", why)

    async def _kb_helped(self, turn: Turn, article_id: str | None) -> None:
        self._clear_flow(turn)
        if article_id:
            turn.article_feedback(article_id, "accepted")
        notes = dict(turn.conversation.notes or {})
        notes["deflected"] = int(notes.get("deflected", 0)) + 1
        turn.conversation.notes = notes
        turn.say("Great, glad that sorted it! Anything else?")
        turn.routed("kb.helped", f"article {article_id} accepted: deflected")

    async def _kb_not_helped(self, turn: Turn, article_id: str | None) -> None:
        flow = turn.conversation.flow or {}
        query = flow.get("query") or ""
        notes = dict(turn.conversation.notes or {})
        if article_id:
            turn.article_feedback(article_id, "rejected")
            notes.setdefault("rejected_articles", []).append(article_id)
        turn.conversation.notes = notes
        self._clear_flow(turn)
        article = self.kb.get(article_id) if (self.kb is not None and article_id) else None
        service = (
            self.catalog.services.get(article.service)
            if article is not None and article.service
            else None
        )
        slots: dict[str, Any] = {"description": query} if query else {}
        if service is None and query:
            found = self.catalog.find_service(query)
            service = found
        if service is not None:
            slots["service"] = service.id
        self._extract_slots(query, slots, asking=None)
        turn.say("Sorry that didn't help. Let's get a ticket open so a person can look at it.")
        await self._continue_incident(turn, slots, changed=[])
        turn.routed("kb.rejected", f"article {article_id} rejected → {turn.route}")

    # 6. conversations: the incident flow --------------------------------------------

    async def _start_incident(self, turn: Turn) -> None:
        slots: dict[str, Any] = {"description": turn.text.strip()}
        self._extract_slots(turn.text, slots, asking=None)
        await self._continue_incident(turn, slots, changed=[])

    def _extract_slots(self, text: str, slots: dict[str, Any], *, asking: str | None) -> list[str]:
        """Fill what this message says; later answers override earlier ones (corrections)."""
        changed: list[str] = []
        # "actually it's the VPN, not outlook": what follows "not" is being ruled out
        service = self.catalog.find_service(
            re.sub(r"\bnot\s+(the\s+)?[\w-]+", " ", text, flags=re.I)
        )
        if service is not None and slots.get("service") != service.id:
            slots["service"] = service.id
            changed.append("service")
        for slot, rules in (("impact", IMPACT_RULES), ("urgency", URGENCY_RULES)):
            stripped = text.strip()
            if stripped in {"1", "2", "3"} and asking != slot:
                continue
            level = level_from(text, rules)
            if level is not None and slots.get(slot) != level:
                slots[slot] = level
                changed.append(slot)
        if asking == "description" and text.strip():
            slots["description"] = text.strip()
            changed.append("description")
        elif asking in {"service", "impact", "urgency"} and asking not in changed and text.strip():
            # an answer we could not read: keep it in the description, ask again
            slots["description"] = (slots.get("description", "") + "\n" + text.strip()).strip()
        return changed

    async def _continue_incident(
        self, turn: Turn, slots: dict[str, Any], *, changed: list[str]
    ) -> None:
        flow = {"name": "incident", "slots": slots}
        service = self.catalog.services.get(slots.get("service") or "")
        if "service" in changed and turn.conversation.flow and service is not None:
            turn.say(f"Got it, {service.name}.")
        if not slots.get("description"):
            self._set_flow(turn, {**flow, "asking": "description"})
            turn.say("What's happening? Describe the problem in a sentence or two.")
            turn.routed("flow.incident", "asking what happens")
            return
        if service is None:
            self._set_flow(turn, {**flow, "asking": "service"})
            common = ["vpn", "email", "identity", "laptops", "wifi", "printing"]
            turn.say(
                "Which service is this about?",
                buttons=[
                    Button(self.catalog.services[s].name, f"service:{s}")
                    for s in common
                    if s in self.catalog.services
                ]
                + [Button("Something else", "service:other")],
            )
            turn.routed("flow.incident", "asking which service")
            return
        for slot, question, levels in (
            ("impact", "How many people are affected?", self.catalog.impact_levels),
            ("urgency", "How badly does it block your work?", self.catalog.urgency_levels),
        ):
            if slot not in slots:
                self._set_flow(turn, {**flow, "asking": slot})
                turn.say(
                    question,
                    buttons=[
                        Button(label.capitalize(), f"{slot}:{level}")
                        for level, label in sorted(levels.items())
                    ],
                )
                turn.routed("flow.incident", f"asking {slot}")
                return
        self._clear_flow(turn)
        description = str(slots["description"])
        title = description.splitlines()[0][:120]
        ticket = await self.tickets.open(
            turn.session,
            NewTicket(
                kind="incident",
                title=title,
                description=description,
                service=service,
                impact=int(slots["impact"]),
                urgency=int(slots["urgency"]),
            ),
            requester=turn.person,
            conversation=turn.conversation,
            now=turn.now,
            flush=False,  # written with the round; the reply needs only its number
        )
        text = (
            f"I've opened **{ticket.number}** for {service.name if service else 'this'} — "
            f"priority P{ticket.priority} {self.catalog.priority_names.get(ticket.priority, '')} "
            f"because {ticket.priority_reason.split(' → ')[0]}."
        )
        turn.say(text, ticket_number=ticket.number)
        if ticket.priority <= self.config.queue_priority_at_or_above:
            await self.escalate(turn, f"{ticket.number} is P{ticket.priority}", announce=True)
        turn.routed("ticket.opened", f"opened {ticket.number}: {ticket.priority_reason}")

    # takeover -------------------------------------------------------------------------

    async def escalate(self, turn: Turn, why: str, *, announce: bool = True) -> None:
        """Queue the conversation for an agent (bot → queued)."""
        conversation = turn.conversation
        self._clear_flow(turn)
        moved = await Conversations(turn.session).transition(
            conversation.id, from_states=("bot",), to_state="queued", now=turn.now
        )
        if moved:
            await turn.session.refresh(conversation)
            notes = dict(conversation.notes or {})
            notes["escalation_reason"] = why
            conversation.notes = notes
            turn.escalation = why
            from bot.events import ConversationEvent

            turn.after_commit.append(
                ConversationEvent("queue", conversation.id, {"state": "queued", "reason": why})
            )
        group = self._group_name(conversation.agent_group or "service-desk")
        if announce:
            turn.say(
                f"I've asked the {group} team to join. An agent will reply right here; "
                "meanwhile, add anything that might help."
            )
        turn.routed("escalate", why)

    async def _abuse(self, turn: Turn, reason: str) -> None:
        conversation = turn.conversation
        conversation.flagged = "abuse"
        await Alerts(turn.session).raise_alert(
            "abuse",
            f"Abusive message in conversation {conversation.id}: {reason}. "
            "Team lead: please follow up.",
            now=turn.now,
            conversation_id=conversation.id,
            detail={"person_id": turn.person.id},
        )
        from bot.events import ConversationEvent

        turn.after_commit.append(ConversationEvent("alert", conversation.id, {"kind": "abuse"}))
        turn.say(
            "I understand you're frustrated, and I want to get this fixed. Please keep it "
            "respectful towards our staff. I've passed this conversation to a team lead."
        )
        turn.routed("care.abuse", reason)

    def _group_name(self, group_id: str | None) -> str:
        group = self.catalog.groups.get(group_id or "")
        return group.name if group else "service desk"
