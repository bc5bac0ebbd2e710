"""Periodic sweeps run by the scheduler. All state is in the database; each sweep claims
rows in a transaction, so several nodes can run the same sweep without double-firing."""

from __future__ import annotations

import logging

from bot.clock import Clock
from bot.events import ConversationEvent, EventBus
from bot.outgoing import enqueue_reply
from bot.turn import Reply
from storage.db import Database
from storage.repositories import Conversations

logger = logging.getLogger(__name__)


async def expire_flows(database: Database, clock: Clock, events: EventBus) -> int:
    """A person who went silent mid-flow gets one polite note; the flow is set aside."""
    now = clock.now()
    expired_ids: list[int] = []
    async with database.transaction() as session:
        conversations = await Conversations(session).expired_flows(now)
        for conversation in conversations:
            if conversation.flow_expires_at is None or conversation.flow_expires_at > now:
                continue
            name = (conversation.flow or {}).get("name")
            conversation.flow = None
            conversation.flow_expires_at = None
            if name in {"incident", "request"} and conversation.state == "bot":
                await enqueue_reply(
                    session,
                    conversation,
                    Reply(
                        "I haven't heard back, so I've set this report aside — nothing was "
                        "opened. Message me whenever you're ready to pick it up again."
                    ),
                    now=now,
                )
            expired_ids.append(conversation.id)
    for conversation_id in expired_ids:
        events.publish(ConversationEvent("flow_expired", conversation_id, {}))
    if expired_ids:
        logger.info("sweep.flows.expired count=%d", len(expired_ids))
    return len(expired_ids)
