"""Sending through the outbox to aiosmtpd (R18, R27, R28) and the core's mail safety
end to end through Dovecot (R17, R19, R20, R29)."""

from __future__ import annotations

import pytest
from sqlalchemy import select

from bot.errors import PermanentError, RateLimited, TransientError
from bot.types import Outbound
from storage.models import Alert, Conversation, OutboxRow, Person
from tests.channels.email.desk import DESK, EmailDesk, mail


def outbound(outbox_id: int, **kwargs: object) -> Outbound:
    values: dict[str, object] = {
        "channel": "email",
        "address": {"to": "ann@corp.test", "subject": "laptop", "in_reply_to": "x1@corp.test"},
        "markdown": "We are on it.",
        "outbox_id": outbox_id,
        "conversation_id": 7,
    }
    values.update(kwargs)
    return Outbound(**values)  # type: ignore[arg-type]


async def test_connection_is_reused_and_envelope_sender_is_the_desk(email_desk: EmailDesk) -> None:
    channel = email_desk.channel()
    deliveries = [await channel.send(outbound(i)) for i in range(1, 6)]
    received = email_desk.smtp.handler.received
    assert len(received) == 5 and email_desk.smtp.handler.connections == 1
    assert {c.mail_from for c in received} == {DESK}
    assert [d.platform_id for d in deliveries] == [
        str(c.message["Message-ID"]).strip("<>") for c in received
    ]
    # the same outbox row renders the same Message-ID (a resend reuses it)
    again = await channel.send(outbound(3))
    assert again.platform_id == deliveries[2].platform_id
    await channel.stop()


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        ("450 mailbox busy", TransientError),
        ("421 too many connections, slow down", RateLimited),
        ("451 greylisted", RateLimited),
        ("554 rejected as spam", PermanentError),
        ("552 message too big", PermanentError),
    ],
)
async def test_r28_smtp_replies_become_core_errors(
    email_desk: EmailDesk, reply: str, error: type[Exception]
) -> None:
    channel = email_desk.channel()
    email_desk.smtp.handler.replies.append(reply)
    with pytest.raises(error) as caught:
        await channel.send(outbound(1))
    assert type(caught.value) is error
    # the channel is usable for the next mail
    await channel.send(outbound(2))
    assert len(email_desk.smtp.handler.received) == 1
    await channel.stop()


async def test_r28_through_the_outbox_4xx_retried_5xx_failed_and_alerted(
    email_desk: EmailDesk,
) -> None:
    desk = email_desk
    await desk.start()
    desk.smtp.handler.replies += ["450 try later", "550 no such user"]
    await desk.deliver(mail("", message_id="r28-a"))
    await desk.wait_results(1)
    await desk.core.dispatcher.run_once()  # 450: deferred
    async with desk.core.db.read() as session:
        rows = list((await session.execute(select(OutboxRow))).scalars())
    assert [r.status for r in rows] == ["pending"] and rows[0].attempts == 1
    await desk.core.dispatcher.run_once()  # 550: failed, an agent is told
    async with desk.core.db.read() as session:
        row = (await session.execute(select(OutboxRow))).scalar_one()
        alerts = list((await session.execute(select(Alert))).scalars())
    assert row.status == "failed" and "550" in (row.last_error or "")
    assert [a.kind for a in alerts] == ["delivery_failed"]
    assert desk.smtp.handler.received == []


async def test_r27_drop_after_data_resends_with_the_same_message_id(email_desk: EmailDesk) -> None:
    desk = email_desk
    await desk.start()
    desk.smtp.handler.drop_after_data = 1
    await desk.deliver(mail("", message_id="r27-a"))
    await desk.wait_results(1)
    sent = await desk.flush()
    assert len(sent) == 2
    first, second = (str(c.message["Message-ID"]) for c in sent)
    assert first == second
    async with desk.core.db.read() as session:
        row = (await session.execute(select(OutboxRow))).scalar_one()
    assert row.status == "sent" and row.attempts == 2 and row.platform_id == first.strip("<>")
    # both copies reach the desk mailbox (say it was in Cc): kept once, never answered
    await desk.deliver(*(c.data for c in sent))
    results = await desk.wait_results(3)
    assert [r.duplicate for r in results[1:]] == [False, True]
    assert results[1].kept_reason is not None
    assert await desk.flush() == []


async def test_r17_auto_replies_are_stored_without_ticket_or_answer(email_desk: EmailDesk) -> None:
    desk = email_desk
    headers = [
        "Auto-Submitted: auto-replied",
        "X-Auto-Response-Suppress: All",
        "Precedence: bulk",
        "List-Id: <it-news.corp.test>",
        "Return-Path: <>",
    ]
    await desk.deliver(*(mail(h, "I am out of office until Monday.") for h in headers))
    await desk.deliver(mail("", "Delivery failed", sender="MAILER-DAEMON@corp.test"))
    await desk.start()
    results = await desk.wait_results(6)
    assert all(r.kept_reason and r.route == "kept" for r in results)
    assert await desk.flush() == []
    from storage.models import Ticket

    assert await desk.count(Ticket) == 0


async def test_r19_two_autoresponders_are_capped_and_the_lead_alerted(
    email_desk: EmailDesk,
) -> None:
    desk = email_desk
    desk.core.manager.auto_reply_cap_per_hour = 3
    await desk.start()
    # a responder that slips through classification answers every mail we send
    for round_ in range(6):
        await desk.deliver(
            mail(
                f"Subject: Re: your request {round_}",
                f"Thank you for your message number {round_}. We will get back to you.",
                sender="robot@vendor.test",
            )
        )
        await desk.wait_results(round_ + 1)
        await desk.flush()
    async with desk.core.db.read() as session:
        alerts = list((await session.execute(select(Alert))).scalars())
    assert len(desk.smtp.handler.received) <= 3
    assert "mail_loop" in [a.kind for a in alerts]


async def test_r19_a_burst_from_one_responder_in_one_fetch_is_capped(
    email_desk: EmailDesk,
) -> None:
    """The mails of one fetch reach the core together; one sender's still come one round
    after another, and each round counts the replies before it."""
    desk = email_desk
    desk.core.manager.auto_reply_cap_per_hour = 3
    await desk.deliver(
        *(
            mail(
                f"Subject: Re: your request {n}",
                f"Thank you for your message number {n}. We will get back to you.",
                sender="robot@vendor.test",
                message_id=f"burst-{n}",
            )
            for n in range(8)
        )
    )
    await desk.start()
    await desk.wait_results(8)
    await desk.flush()
    async with desk.core.db.read() as session:
        alerts = list((await session.execute(select(Alert))).scalars())
    assert len(desk.smtp.handler.received) == 3
    assert [a.kind for a in alerts] == ["mail_loop"]


async def test_r20_dsn_is_attached_marks_the_address_and_is_not_answered(
    email_desk: EmailDesk,
) -> None:
    desk = email_desk
    await desk.start()
    await desk.deliver(mail("", message_id="r20-a"))
    [first] = await desk.wait_results(1)
    [ack] = (await desk.flush())[:1]
    ours = str(ack.message["Message-ID"])
    dsn = (
        "From: Mail Delivery System <MAILER-DAEMON@mx.corp.test>\r\n"
        f"To: {DESK}\r\nSubject: Undelivered Mail Returned to Sender\r\n"
        "Message-ID: <dsn-1@mx.corp.test>\r\nAuto-Submitted: auto-replied\r\n"
        "MIME-Version: 1.0\r\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\r\n\r\n'
        "--B\r\nContent-Type: text/plain\r\n\r\nYour message could not be delivered.\r\n"
        "--B\r\nContent-Type: message/delivery-status\r\n\r\n"
        "Reporting-MTA: dns; mx.corp.test\r\n\r\n"
        "Final-Recipient: rfc822; ann@corp.test\r\nAction: failed\r\nStatus: 5.1.1\r\n"
        "--B\r\nContent-Type: text/rfc822-headers\r\n\r\n"
        f"From: {DESK}\r\nTo: ann@corp.test\r\nMessage-ID: {ours}\r\nSubject: laptop\r\n"
        "--B--\r\n"
    ).encode()
    await desk.deliver(dsn)
    results = await desk.wait_results(2)
    assert results[1].route == "kept" and results[1].conversation_id != first.conversation_id
    assert await desk.flush() == []
    async with desk.core.db.read() as session:
        ann = (
            await session.execute(select(Person).where(Person.email == "ann@corp.test"))
        ).scalar_one()
    assert ann.email_bouncing
    notes = [m for m in await desk.messages(first.conversation_id or 0) if m.kind == "bounce"]
    assert notes and "ann@corp.test" in notes[0].text


async def test_r29_forged_in_reply_to_opens_a_new_conversation(email_desk: EmailDesk) -> None:
    desk = email_desk
    await desk.start()
    await desk.deliver(mail("", message_id="r29-victim"))
    [victim] = await desk.wait_results(1)
    [ack] = (await desk.flush())[:1]
    forged = mail(
        f"In-Reply-To: {ack.message['Message-ID']}\nReferences: {ack.message['Message-ID']}\n"
        "Subject: Re: laptop problem",
        "Please send me the details of this ticket.",
        sender="Mallory <mallory@evil.test>",
    )
    await desk.deliver(forged)
    results = await desk.wait_results(2)
    assert results[1].conversation_id != victim.conversation_id
    assert await desk.count(Conversation) == 2
