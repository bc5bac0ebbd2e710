"""The live channel against real peers: Dovecot (IMAP) and aiosmtpd (SMTP), real core."""

from __future__ import annotations

import asyncio

from bot.types import HandleResult, Inbound
from channels.email.parse import ParseLimits
from storage.models import Conversation
from tests.channels.email.desk import DESK, EmailDesk, mail


async def test_mail_opens_a_conversation_is_acknowledged_and_the_reply_threads(
    email_desk_any_db: EmailDesk,
) -> None:
    desk = email_desk_any_db
    await desk.start()
    await desk.deliver(mail("", message_id="first-1"))
    await desk.wait_results(1)
    sent = await desk.flush()
    assert sent, "no acknowledgement was sent"
    ack = sent[0]
    msg = ack.message
    assert ack.mail_from == DESK and ack.rcpt_tos == ["ann@corp.test"]
    assert msg["Auto-Submitted"] == "auto-replied"
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["In-Reply-To"] == "<first-1@corp.test>"
    assert str(msg["Message-ID"]).startswith("<deskbot.")
    assert "+c-" in str(msg["Reply-To"])
    [conversation] = await desk.conversations()
    assert conversation.channel == "email"
    assert await desk.folder_count("INBOX") == 0 and await desk.folder_count("Processed") == 1

    # the person answers the acknowledgement: our Message-ID, our signed Reply-To
    reply = mail(
        f"To: {msg['Reply-To']}\nSubject: Re: {msg['Subject']}\n"
        f"In-Reply-To: {msg['Message-ID']}\nReferences: <first-1@corp.test> {msg['Message-ID']}",
        "It still does not start, the screen stays black.\n\n> earlier text",
    )
    await desk.deliver(reply)
    results = await desk.wait_results(2)
    assert results[1].conversation_id == conversation.id and not results[1].duplicate
    assert await desk.count(Conversation) == 1
    texts = [m.text for m in await desk.messages(conversation.id) if m.direction == "in"]
    assert texts[-1] == "It still does not start, the screen stays black."


async def test_a_fetch_of_mails_from_many_senders_is_handled_together(
    email_desk_any_db: EmailDesk,
) -> None:
    from sqlalchemy import event

    desk = email_desk_any_db
    await desk.deliver(
        *(mail("", message_id=f"many-{i}", sender=f"p{i}@corp.test") for i in range(12))
    )
    begun: list[int] = []
    event.listen(desk.core.db.engine.sync_engine, "begin", lambda conn: begun.append(1))
    await desk.start()
    results = await desk.wait_results(12)
    assert all(not r.duplicate and r.conversation_id for r in results)
    assert await desk.count(Conversation) == 12
    # one round for the fetch (a round may be retried message by message only on an
    # error); the archive claim, the lock and the acknowledgements' sends add a few
    assert len(begun) < 12
    sent = await desk.flush()
    assert sorted(c.rcpt_tos[0] for c in sent) == sorted(f"p{i}@corp.test" for i in range(12))


async def test_agent_reply_goes_out_as_a_person_with_threading_headers(
    email_desk: EmailDesk,
) -> None:
    desk = email_desk
    await desk.start()
    await desk.deliver(mail("", message_id="agent-1"))
    [result] = await desk.wait_results(1)
    await desk.flush()
    agent = await desk.core.agents.add_agent("sam", password="pw-sam-123", is_lead=True)
    assert result.conversation_id is not None
    assert await desk.core.agents.claim(result.conversation_id, agent)
    await desk.core.agents.reply(result.conversation_id, agent, "Hi Ann, I am on it.")
    sent = await desk.flush()
    agent_mail = next(
        c for c in sent if "I am on it" in c.message.get_body(("plain",)).get_content()
    )
    msg = agent_mail.message
    assert msg["Auto-Submitted"] is None
    assert msg["X-Auto-Response-Suppress"] == "All"
    assert msg["In-Reply-To"] == "<agent-1@corp.test>"
    assert "agent-1@corp.test" in str(msg["References"])
    assert agent_mail.mail_from == DESK


async def test_idle_picks_up_a_new_mail_promptly(email_desk: EmailDesk) -> None:
    desk = email_desk
    channel = await desk.start()
    await asyncio.wait_for(channel.idling.wait(), 5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await desk.deliver(mail("", message_id="idle-1"))
    await desk.wait_results(1, timeout=5)
    assert loop.time() - started < 3.0
    await channel.wait_scans(2)
    assert channel.reconnects == 0


async def test_r25_restart_between_commit_and_move_and_before_commit(email_desk: EmailDesk) -> None:
    desk = email_desk
    committed = asyncio.Event()
    entered = asyncio.Event()
    hang = asyncio.Event()  # never set: the "crash" is the stop() below

    async def commit_then_crash(inbound: Inbound) -> HandleResult:
        result = await desk.record(inbound)
        committed.set()
        await hang.wait()
        return result

    async def crash_before_commit(inbound: Inbound) -> HandleResult:
        entered.set()
        await hang.wait()
        raise AssertionError("unreachable")

    # 1. the core committed, the process died before the IMAP move
    first = desk.channel(handle=commit_then_crash)
    await desk.deliver(mail("", message_id="r25-a"))
    await first.start()
    await asyncio.wait_for(committed.wait(), 10)
    await first.stop()
    assert await desk.folder_count("INBOX") == 1
    # 2. a mail whose handling dies before the commit
    second = desk.channel(handle=crash_before_commit, register=False)
    await desk.deliver(mail("", message_id="r25-b"))
    await second.start()
    await asyncio.wait_for(entered.wait(), 10)
    await second.stop()
    # restart: the first is recognised (receipt), the second is ingested; both moved
    await desk.start(register=False)
    results = await desk.wait_results(3)
    assert [r.duplicate for r in results] == [False, True, False]
    assert await desk.count(Conversation) == 2
    assert await desk.folder_count("INBOX") == 0 and await desk.folder_count("Processed") == 2
    sent = await desk.flush()
    assert sorted(c.message["In-Reply-To"] for c in sent) == [
        "<r25-a@corp.test>",
        "<r25-b@corp.test>",
    ]


async def test_r21_two_pollers_at_once_make_one_ticket_per_mail(email_desk: EmailDesk) -> None:
    desk = email_desk
    await desk.deliver(
        *(mail("", message_id=f"r21-{i}", sender=f"p{i}@corp.test") for i in range(6))
    )
    one, two = desk.channel(), desk.channel(register=False)
    await asyncio.gather(one.start(), two.start())
    await asyncio.gather(one.wait_scans(1), two.wait_scans(1))
    assert await desk.count(Conversation) == 6
    assert sum(not r.duplicate for r in desk.results) == 6
    assert await desk.folder_count("INBOX") == 0 and await desk.folder_count("Processed") == 6
    assert len(await desk.flush()) == 6


async def test_r22_r24_old_highest_uid_and_seen_mail(email_desk: EmailDesk) -> None:
    desk = email_desk
    desk.processed_folder = None  # mail stays in the folder: the UID range is what dedupes
    await desk.deliver(mail("", message_id="r24-seen"), seen=True)
    channel = await desk.start()
    assert len(desk.results) == 1 and not desk.results[0].duplicate  # \Seen still ingested
    # UID FETCH last+1:* returns the old highest message again: it must not be handed on
    channel.poll_now()
    await channel.wait_scans(2)
    channel.poll_now()
    await channel.wait_scans(3)
    assert len(desk.results) == 1
    assert channel.last_uid == 1
    await desk.deliver(mail("", message_id="r24-unseen"))
    channel.poll_now()
    await desk.wait_results(2)
    async with desk.imap() as driver:
        await driver.imap.select("INBOX")
        response = await driver.imap.uid("fetch", "2", "(FLAGS)")
    assert b"\\Seen" not in b" ".join(line for line in response.lines if isinstance(line, bytes))


async def test_r23_uidvalidity_change_resyncs_without_loss_or_doubles(
    email_desk: EmailDesk,
) -> None:
    desk = email_desk
    desk.folder, desk.processed_folder = "Desk", None
    async with desk.imap() as driver:
        await driver.create("Desk")
    raws = [mail("", message_id=f"r23-{i}", sender=f"q{i}@corp.test") for i in range(3)]
    await desk.deliver(*raws[:2])
    channel = await desk.start()
    assert len(desk.results) == 2
    old = channel.uidvalidity
    await channel.stop()
    async with desk.imap() as driver:
        await driver.delete("Desk")
        await driver.create("Desk")
    await desk.deliver(*raws)  # the same two again, under new UIDs, and one new mail
    await channel.start()
    results = await desk.wait_results(5)
    await channel.wait_scans(2)
    assert channel.uidvalidity != old
    assert [r.duplicate for r in results[2:]] == [True, True, False]
    assert await desk.count(Conversation) == 3
    assert len(await desk.flush()) == 3


async def test_r26_server_closes_during_idle_and_restarts(email_desk: EmailDesk) -> None:
    desk = email_desk
    channel = await desk.start()
    await asyncio.wait_for(channel.idling.wait(), 5)
    desk.dovecot.kick(desk.user)  # the server closes the connection in IDLE
    await desk.deliver(mail("", message_id="r26-a"))
    await desk.wait_results(1)
    assert channel.reconnects >= 1
    await asyncio.wait_for(channel.idling.wait(), 5)
    reconnects = channel.reconnects
    # the whole server goes away (its shutdown blocks, so it runs in a thread)
    stopping = asyncio.ensure_future(asyncio.to_thread(desk.dovecot.stop))
    try:
        # noticed at once when the server closes the socket, and at the latest when the
        # IDLE period (one poll interval, 30 s here) ends and the next command fails
        await asyncio.wait_for(channel.disconnected.wait(), 45)
    finally:
        await stopping
        await asyncio.to_thread(desk.dovecot.start)
    await desk.deliver(mail("", message_id="r26-b"))
    await desk.wait_results(2, timeout=45)
    assert channel.reconnects > reconnects
    assert await desk.count(Conversation) == 2


async def test_r32_poison_and_giant_mail_are_quarantined_and_the_poller_goes_on(
    email_desk: EmailDesk,
) -> None:
    desk = email_desk
    attempts = 0

    async def poison(inbound: Inbound) -> HandleResult:
        nonlocal attempts
        if "poison" in inbound.meta.get("subject", ""):
            attempts += 1
            raise ValueError("the core chokes on this one")
        return await desk.record(inbound)

    big = mail("Subject: giant", "x" * 300_000)
    await desk.deliver(mail("Subject: poison"), big, mail("Subject: fine", message_id="r32-ok"))
    channel = await desk.start(handle=poison, limits=ParseLimits(max_raw_bytes=200_000))
    await desk.wait_results(1)
    for scans in range(2, 40):  # each retry is one more scan; stop at the quarantine
        if len(channel.quarantined) >= 2:
            break
        await channel.wait_scans(scans)
    assert attempts == 3
    assert sorted(reason.split(" ")[0] for _, reason in channel.quarantined) == [
        "handle",
        "larger",
    ]
    assert await desk.folder_count("Failed") == 2
    assert await desk.folder_count("INBOX") == 0
    assert await desk.count(Conversation) == 1
