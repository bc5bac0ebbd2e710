"""Pure converters between Slack payloads and deskbot's channel-neutral values.

Inbound: Events API events (``message.im``, ``app_mention``, thread replies), block
actions, the report-an-issue modal submission and the ``/desk`` slash command become one
:class:`~bot.types.Inbound` each. Outbound: an :class:`~bot.types.Outbound` becomes the
keyword arguments of ``chat.postMessage`` (Block Kit sections in mrkdwn, buttons, and
metadata that carries the outbox id so an ambiguous post can be found again).

Also here: the escalation card for the triage channel, the App Home view and the
report-an-issue modal, as functions of plain values.

Escaping (R15): Slack reads ``<...>`` as a control sequence (``<!channel>`` pings a whole
channel, ``<https://evil|bank>`` disguises a link), so every piece of text that did not
come from the bot itself is escaped (``& < >``); only links the bot wrote in Markdown
become Slack links.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bot.types import Button, Inbound, Outbound, Sender

CHANNEL = "slack"

SECTION_TEXT_LIMIT = 3000
"""Slack rejects a section whose text is longer than this."""
MESSAGE_BLOCK_LIMIT = 50
HOME_BLOCK_LIMIT = 100
FALLBACK_TEXT_LIMIT = 3000
BUTTON_LABEL_LIMIT = 75
BUTTON_VALUE_LIMIT = 2000
ACTIONS_ELEMENT_LIMIT = 25

OUTBOX_EVENT_TYPE = "deskbot_outbox"
BUTTON_ACTION_PREFIX = "deskbot_button_"
QUICK_REPLY_ACTION_PREFIX = "deskbot_reply_"
CLAIM_ACTION = "deskbot_claim"
HAND_BACK_ACTION = "deskbot_hand_back"
RESOLVE_ACTION = "deskbot_resolve"
REPORT_ISSUE_ACTION = "deskbot_report_issue"
REPORT_ISSUE_CALLBACK = "deskbot_report_issue"

TRUSTED_AUTHORS = frozenset({"bot", "system", "agent"})
"""Authors whose Markdown links are rendered as Slack links; anyone else's are text."""

# Message subtypes that carry something a person said; every other subtype (edits,
# deletions, joins, topic changes, bot posts...) is not a new message to answer.
PERSON_SUBTYPES = frozenset({None, "file_share", "thread_broadcast"})

IMPACT_CHOICES: tuple[tuple[str, str], ...] = (
    ("low", "Just me"),
    ("medium", "My team or several people"),
    ("high", "Many people or the whole company"),
)
URGENCY_CHOICES: tuple[tuple[str, str], ...] = (
    ("low", "It can wait, I have a workaround"),
    ("medium", "It slows me down"),
    ("high", "I cannot work"),
)


# --------------------------------------------------------------------------------------
# Slack markup → plain text


_USER_REF = re.compile(r"<@([UW][A-Z0-9]+)(?:\|([^>]*))?>")
_CHANNEL_REF = re.compile(r"<#([CGD][A-Z0-9]+)(?:\|([^>]*))?>")
_SPECIAL_REF = re.compile(r"<!([^>|]+)(?:\|([^>]*))?>")
_LINK_REF = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^>|]*)(?:\|([^>]*))?>")


def unescape_slack(text: str) -> str:
    """Slack's three entities back to characters (``&amp;`` last)."""
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


def slack_to_plain(text: str, *, user_names: Mapping[str, str] | None = None) -> str:
    """Slack's message markup as a person would read it.

    ``<@U123>`` becomes ``@name`` (from ``user_names`` or the label Slack sent, else the
    id), ``<#C123|general>`` ``#general``, ``<!here>`` ``@here``, ``<!subteam^S1|@desk>``
    ``@desk``, ``<https://x|label>`` ``label (https://x)`` (just the label when it is the
    address itself), and the entities ``&amp; &lt; &gt;`` their characters.
    """
    names = user_names or {}

    def user(match: re.Match[str]) -> str:
        user_id, label = match.group(1), match.group(2)
        return "@" + (names.get(user_id) or label or user_id)

    def channel(match: re.Match[str]) -> str:
        return "#" + (match.group(2) or match.group(1))

    def special(match: re.Match[str]) -> str:
        command, label = match.group(1), match.group(2)
        if label:
            return label
        if command.startswith("subteam^"):
            return "@" + command.removeprefix("subteam^")
        if command.startswith("date^"):
            return command
        return "@" + command

    def link(match: re.Match[str]) -> str:
        url, label = unescape_slack(match.group(1)), match.group(2)
        if not label:
            return url.removeprefix("mailto:")
        label = unescape_slack(label)
        bare = re.sub(r"^(https?://|mailto:)", "", url)
        if label in (url, bare) or label.rstrip("/") == bare.rstrip("/"):
            return label
        return f"{label} ({url})"

    text = _USER_REF.sub(user, text)
    text = _CHANNEL_REF.sub(channel, text)
    text = _SPECIAL_REF.sub(special, text)
    text = _LINK_REF.sub(link, text)
    return unescape_slack(text)


def strip_leading_mention(text: str, bot_user_id: str | None) -> str:
    """``<@UBOT> vpn is down`` → ``vpn is down`` (only the bot's own leading mention)."""
    if not bot_user_id:
        return text
    return re.sub(rf"^\s*<@{re.escape(bot_user_id)}(?:\|[^>]*)?>[\s,:]*", "", text)


def mentions_user(text: str, user_id: str | None) -> bool:
    return (
        bool(user_id) and re.search(rf"<@{re.escape(user_id or '')}(?:\|[^>]*)?>", text) is not None
    )


# --------------------------------------------------------------------------------------
# Inbound


def is_from_bot(event: Mapping[str, Any], *, bot_user_id: str | None) -> bool:
    """True for our own messages and for any other bot's (R13).

    bolt's ``ignoring_self_events`` drops our own events; this predicate also drops
    other bots (integrations, workflows), which must never open tickets or get answers.
    """
    if event.get("bot_id") or event.get("subtype") == "bot_message":
        return True
    if event.get("bot_profile"):
        return True
    return bool(bot_user_id) and event.get("user") == bot_user_id


def thread_key_for(channel: str, *, ts: str | None, thread_ts: str | None = None) -> str:
    """``dm:{channel}`` for a direct message, ``thread:{channel}:{root ts}`` otherwise."""
    if channel.startswith("D"):
        return f"dm:{channel}"
    root = thread_ts or ts
    if not root:
        raise ValueError("a channel thread needs a ts")
    return f"thread:{channel}:{root}"


def message_alt_id(channel: str, ts: str) -> str:
    """Names one Slack message whatever event delivered it (message and app_mention)."""
    return f"ts:{channel}:{ts}"


def ts_to_datetime(ts: str | None) -> datetime | None:
    if not ts:
        return None
    try:
        return datetime.fromtimestamp(float(ts), tz=UTC)
    except ValueError:
        return None


def inbound_from_event(body: Mapping[str, Any], *, bot_user_id: str | None) -> Inbound | None:
    """An Events API ``event_callback`` body → an :class:`Inbound`, or ``None`` to ignore.

    Answered: direct messages, mentions of the app, and replies in a channel thread
    (the triage channel's card threads, threads the app was mentioned in). Ignored:
    bots (R13), edits, deletions and other subtypes, top-level channel chatter, and a
    channel ``message`` that mentions the app (its ``app_mention`` twin carries it).
    """
    event = body.get("event") or {}
    event_type = event.get("type")
    if event_type not in ("message", "app_mention"):
        return None
    if is_from_bot(event, bot_user_id=bot_user_id):
        return None
    if event.get("subtype") not in PERSON_SUBTYPES:
        return None
    user = event.get("user")
    channel = event.get("channel")
    ts = event.get("ts")
    event_id = body.get("event_id")
    if not (user and channel and ts and event_id):
        return None
    raw_text = event.get("text") or ""
    thread_ts = event.get("thread_ts")
    is_dm = event.get("channel_type") == "im" or str(channel).startswith("D")

    if event_type == "message" and not is_dm:
        if not thread_ts or thread_ts == ts:
            return None
        if mentions_user(raw_text, bot_user_id):
            return None
    if event_type == "app_mention" or not is_dm:
        raw_text = strip_leading_mention(raw_text, bot_user_id)

    if is_dm:
        thread_key = thread_key_for(channel, ts=ts)
        reply_to: dict[str, Any] = {"channel": channel}
        if thread_ts and thread_ts != ts:
            reply_to["thread_ts"] = thread_ts
    else:
        thread_key = thread_key_for(channel, ts=ts, thread_ts=thread_ts)
        reply_to = {"channel": channel, "thread_ts": thread_ts or ts}

    profile = event.get("user_profile") or {}
    display_name = profile.get("display_name") or profile.get("real_name") or None
    files = tuple(str(f.get("name") or f.get("title") or "file") for f in event.get("files") or ())
    return Inbound(
        channel=CHANNEL,
        external_id=str(event_id),
        sender=Sender(external_id=str(user), display_name=display_name),
        text=slack_to_plain(raw_text).strip(),
        thread_key=thread_key,
        received_at=ts_to_datetime(ts),
        reply_to=reply_to,
        alt_ids=(message_alt_id(channel, ts),),
        meta={
            "event_type": event_type,
            "channel": channel,
            "channel_type": event.get("channel_type") or ("im" if is_dm else "channel"),
            "ts": ts,
            "thread_ts": thread_ts,
            "team_id": body.get("team_id") or event.get("team"),
            "files": files,
        },
        raw=dict(body),
    )


def action_external_id(user_id: str, action_ts: str) -> str:
    """One click: Slack gives every action its own ``action_ts``."""
    return f"action:{user_id}:{action_ts}"


def inbound_from_block_action(payload: Mapping[str, Any]) -> Inbound | None:
    """A ``block_actions`` button click → an :class:`Inbound`.

    A button the bot offered gives ``button`` = its value; a quick reply reads as if the
    person had typed it. Triage card buttons (claim, hand back, resolve) come through
    the same way; the caller checks the clicker is an agent (R14).
    """
    if payload.get("type") != "block_actions":
        return None
    actions = payload.get("actions") or ()
    if not actions:
        return None
    action = actions[0]
    if action.get("type") != "button":
        return None
    user = payload.get("user") or {}
    user_id = user.get("id")
    action_ts = action.get("action_ts")
    if not user_id or not action_ts:
        return None
    container = payload.get("container") or {}
    channel = container.get("channel_id") or (payload.get("channel") or {}).get("id")
    message = payload.get("message") or {}
    message_ts = container.get("message_ts") or message.get("ts")
    thread_ts = container.get("thread_ts") or message.get("thread_ts")

    if channel and message_ts:
        thread_key = thread_key_for(channel, ts=message_ts, thread_ts=thread_ts)
        reply_to: dict[str, Any] = {"channel": channel}
        if not channel.startswith("D"):
            reply_to["thread_ts"] = thread_ts or message_ts
        elif thread_ts:
            reply_to["thread_ts"] = thread_ts
    else:
        # A button in a view (the App Home): no conversation yet, answer in the DM.
        thread_key = f"home:{user_id}"
        reply_to = {"user": user_id}

    value = str(action.get("value") or "")
    action_id = str(action.get("action_id") or "")
    label = str((action.get("text") or {}).get("text") or value)
    is_quick_reply = action_id.startswith(QUICK_REPLY_ACTION_PREFIX)
    return Inbound(
        channel=CHANNEL,
        external_id=action_external_id(user_id, str(action_ts)),
        sender=Sender(
            external_id=str(user_id), display_name=user.get("name") or user.get("username")
        ),
        text=value if is_quick_reply else label,
        thread_key=thread_key,
        received_at=ts_to_datetime(str(action_ts)),
        reply_to=reply_to,
        button=None if is_quick_reply else value,
        meta={
            "interaction": "block_actions",
            "action_id": action_id,
            "block_id": action.get("block_id"),
            "channel": channel,
            "message_ts": message_ts,
            "trigger_id": payload.get("trigger_id"),
            "response_url": payload.get("response_url"),
            "team_id": (payload.get("team") or {}).get("id"),
        },
        raw=dict(payload),
    )


@dataclass(frozen=True, slots=True)
class ReportIssueForm:
    """What the person entered in the report-an-issue modal."""

    service: str | None
    description: str
    impact: str | None
    urgency: str | None


def report_form_values(view: Mapping[str, Any]) -> ReportIssueForm:
    """Read the modal's fields out of ``view.state.values``."""
    values = (view.get("state") or {}).get("values") or {}

    def field_value(block_id: str) -> str | None:
        element = (values.get(block_id) or {}).get(block_id) or {}
        selected = element.get("selected_option")
        if selected:
            return str(selected.get("value"))
        value = element.get("value")
        return str(value) if value not in (None, "") else None

    return ReportIssueForm(
        service=field_value("service"),
        description=(field_value("description") or "").strip(),
        impact=field_value("impact"),
        urgency=field_value("urgency"),
    )


def inbound_from_view_submission(payload: Mapping[str, Any]) -> Inbound | None:
    """The report-an-issue modal, submitted → an :class:`Inbound` with the form in meta.

    The modal's ``private_metadata`` carries where it was opened (a DM channel), so the
    answer lands there; opened from the App Home, the answer goes to the person's DM.
    """
    if payload.get("type") != "view_submission":
        return None
    view = payload.get("view") or {}
    if view.get("callback_id") != REPORT_ISSUE_CALLBACK:
        return None
    user = payload.get("user") or {}
    user_id = user.get("id")
    view_id = view.get("id")
    if not user_id or not view_id:
        return None
    origin = _private_metadata(view.get("private_metadata"))
    channel = origin.get("channel")
    if isinstance(channel, str) and channel.startswith("D"):
        thread_key = thread_key_for(channel, ts=None)
        reply_to: dict[str, Any] = {"channel": channel}
    else:
        thread_key = f"home:{user_id}"
        reply_to = {"user": user_id}
    form = report_form_values(view)
    return Inbound(
        channel=CHANNEL,
        # A view is submitted once; Slack does not redeliver interactions.
        external_id=f"view:{view_id}",
        sender=Sender(external_id=str(user_id), display_name=user.get("name")),
        text=form.description,
        thread_key=thread_key,
        reply_to=reply_to,
        meta={
            "interaction": "view_submission",
            "form": "report_issue",
            "service": form.service,
            "description": form.description,
            "impact": form.impact,
            "urgency": form.urgency,
            "team_id": (payload.get("team") or {}).get("id"),
        },
        raw=dict(payload),
    )


def slash_command_opens_report(form: Mapping[str, Any]) -> bool:
    """``/desk`` alone (or ``/desk report``) opens the report-an-issue modal."""
    return str(form.get("text") or "").strip().lower() in ("", "report", "new")


def inbound_from_slash_command(form: Mapping[str, Any]) -> Inbound | None:
    """``/desk status INC-000123``, ``/desk tickets``, ``/desk help`` → an Inbound.

    Answers go to the DM when the command was typed in one, else ephemerally to the
    person in the channel where they typed it (nobody else sees a slash command).
    """
    user_id = form.get("user_id")
    channel = form.get("channel_id")
    trigger_id = form.get("trigger_id")
    text = str(form.get("text") or "").strip()
    if not (user_id and channel and trigger_id) or slash_command_opens_report(form):
        return None
    if str(channel).startswith("D"):
        thread_key = thread_key_for(str(channel), ts=None)
        reply_to: dict[str, Any] = {"channel": channel}
    else:
        thread_key = f"ephemeral:{channel}:{user_id}"
        reply_to = {"channel": channel, "user": user_id, "ephemeral": True}
    return Inbound(
        channel=CHANNEL,
        # trigger_id is unique per invocation of a command.
        external_id=f"command:{trigger_id}",
        sender=Sender(external_id=str(user_id), display_name=form.get("user_name")),
        text=slack_to_plain(text),
        thread_key=thread_key,
        reply_to=reply_to,
        meta={
            "interaction": "slash_command",
            "command": form.get("command"),
            "trigger_id": trigger_id,
            "response_url": form.get("response_url"),
            "team_id": form.get("team_id"),
        },
        raw=dict(form),
    )


def _private_metadata(value: Any) -> dict[str, Any]:
    if not value:
        return {}
    try:
        decoded = json.loads(value)
    except (TypeError, ValueError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


# --------------------------------------------------------------------------------------
# Markdown → mrkdwn


def escape_mrkdwn(text: str) -> str:
    """Escape Slack's control characters so text is shown literally (R15)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_MD_LINK = re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1")
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_BULLET = re.compile(r"^(\s*)[-*+]\s+(.*)$")
_QUOTE = re.compile(r"^\s{0,3}>\s?(.*)$")
_RULE = re.compile(r"^\s{0,3}([-*_])(\s*\1){2,}\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_SAFE_SCHEMES = ("http://", "https://", "mailto:")
_BOLD = "\x01"


def _inline(text: str, *, links: bool) -> str:
    """One line (outside code blocks) → mrkdwn, escaped."""
    out: list[str] = []
    pos = 0
    for match in _CODE_SPAN.finditer(text):
        out.append(_inline_text(text[pos : match.start()], links=links))
        out.append("`" + escape_mrkdwn(match.group(2)) + "`")
        pos = match.end()
    out.append(_inline_text(text[pos:], links=links))
    return "".join(out)


def _inline_text(text: str, *, links: bool) -> str:
    if not links:
        return _emphasis(escape_mrkdwn(text))
    out: list[str] = []
    pos = 0
    for match in _MD_LINK.finditer(text):
        out.append(_emphasis(escape_mrkdwn(text[pos : match.start()])))
        out.append(slack_link(match.group(2), match.group(1)))
        pos = match.end()
    out.append(_emphasis(escape_mrkdwn(text[pos:])))
    return "".join(out)


def _emphasis(text: str) -> str:
    text = re.sub(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", _BOLD + r"\1" + _BOLD, text)
    text = re.sub(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)", _BOLD + r"\1" + _BOLD, text)
    text = re.sub(r"(?<![*\w])\*(?=\S)([^*]+?)(?<=\S)\*(?![*\w])", r"_\1_", text)
    text = re.sub(r"~~(?=\S)(.+?)(?<=\S)~~", r"~\1~", text)
    return text.replace(_BOLD, "*")


def slack_link(url: str, label: str | None = None) -> str:
    """A Slack link ``<url|label>`` for an address the bot wrote.

    Only http(s) and mailto addresses become links; anything else is shown as text.
    The label is escaped; ``|`` and ``>`` in the address are percent-encoded.
    """
    if not url.lower().startswith(_SAFE_SCHEMES):
        text = f"{label} ({url})" if label else url
        return escape_mrkdwn(text)
    safe_url = escape_mrkdwn(url.replace("|", "%7C")).replace("&gt;", "%3E")
    if not label or label == url:
        return f"<{safe_url}>"
    return f"<{safe_url}|{escape_mrkdwn(label)}>"


def markdown_to_mrkdwn(markdown: str, *, links: bool = True) -> str:
    """deskbot's canonical Markdown → Slack mrkdwn, every text run escaped.

    ``**bold**`` → ``*bold*``, ``*it*`` → ``_it_``, ``~~x~~`` → ``~x~``, ``[label](url)``
    → ``<url|label>`` (only when ``links``), headings → bold lines, ``-``/``*`` list items
    → ``•`` (indentation kept), numbered lists and quotes as they are, code kept verbatim
    (escaped). A thematic break becomes an empty line (see :func:`mrkdwn_sections`).
    """
    lines: list[str] = []
    in_fence = False
    for line in markdown.replace("\r\n", "\n").split("\n"):
        if _FENCE.match(line):
            in_fence = not in_fence
            lines.append("```")
            continue
        if in_fence:
            lines.append(escape_mrkdwn(line))
            continue
        if _RULE.match(line):
            lines.append("")
            continue
        heading = _HEADING.match(line)
        if heading:
            title = _inline(heading.group(1), links=links).replace("*", "")
            lines.append(f"*{title}*" if title else "")
            continue
        bullet = _BULLET.match(line)
        if bullet:
            indent = bullet.group(1).replace("\t", "    ")
            lines.append(f"{indent}• {_inline(bullet.group(2), links=links)}")
            continue
        quote = _QUOTE.match(line)
        if quote:
            lines.append("> " + _inline(quote.group(1), links=links))
            continue
        lines.append(_inline(line, links=links))
    if in_fence:
        lines.append("```")
    return "\n".join(lines).strip("\n")


def split_mrkdwn(text: str, *, limit: int = SECTION_TEXT_LIMIT) -> list[str]:
    """Split mrkdwn into pieces of at most ``limit`` characters.

    Breaks at a paragraph end in the second half of a piece when there is one, else at
    a line end, else at a space; never inside a ``&amp;`` entity or a ``<...>`` link. A
    code block cut in two is closed at the end of one piece and reopened in the next.
    """
    if not text.strip():
        return []
    if len(text) <= limit:
        return [text]
    budget = limit - len("```\n") - len("\n```")
    pieces: list[str] = []
    # (line, inside a code block after this line)
    current: list[tuple[str, bool]] = []
    starts_in_fence = False
    in_fence = False

    def size() -> int:
        return len("\n".join(line for line, _ in current))

    def cut(at: int) -> None:
        nonlocal current, starts_in_fence
        head, current = current[:at], current[at:]
        ends_in_fence = head[-1][1]
        body = "\n".join(line for line, _ in head).strip("\n")
        if starts_in_fence:
            body = "```\n" + body
        if ends_in_fence:
            body += "\n```"
        if body.strip() and body != "```\n```":
            pieces.append(body)
        starts_in_fence = ends_in_fence

    def break_point() -> int:
        for index in range(len(current) - 1, len(current) // 2 - 1, -1):
            line, fenced = current[index]
            if line == "" and not fenced and index > 0:
                return index + 1
        return len(current)

    for line in text.split("\n"):
        is_fence = _FENCE.match(line) is not None
        for chunk in _hard_wrap(line, budget):
            while current and size() + 1 + len(chunk) > budget:
                cut(break_point())
            if is_fence:
                in_fence = not in_fence
            current.append((chunk, in_fence))
    if current:
        cut(len(current))
    return pieces


def _hard_wrap(line: str, limit: int) -> list[str]:
    """Cut one over-long line at spaces, or anywhere outside an entity or link."""
    out: list[str] = []
    while len(line) > limit:
        cut = line.rfind(" ", 0, limit)
        if cut <= 0:
            cut = limit
            # do not cut an entity (&amp;) or a link/mention (<...>) in half
            amp = line.rfind("&", 0, cut)
            if amp != -1 and ";" not in line[amp:cut] and cut - amp <= 5:
                cut = amp
            lt = line.rfind("<", 0, cut)
            if lt > 0 and ">" not in line[lt:cut]:
                cut = lt
        out.append(line[:cut])
        line = line[cut:].lstrip(" ")
    out.append(line)
    return out


def mrkdwn_sections(mrkdwn: str) -> list[dict[str, Any]]:
    """Section blocks holding ``mrkdwn``, each under Slack's 3000-character limit."""
    return [
        {"type": "section", "text": {"type": "mrkdwn", "text": piece}}
        for piece in split_mrkdwn(mrkdwn)
    ]


# --------------------------------------------------------------------------------------
# Outbound


def outbox_metadata(outbox_id: int) -> dict[str, Any]:
    """Message metadata naming the outbox row a post came from (for reconciliation)."""
    return {"event_type": OUTBOX_EVENT_TYPE, "event_payload": {"outbox_id": outbox_id}}


def outbox_id_of(message: Mapping[str, Any]) -> int | None:
    """The outbox id a Slack message carries in its metadata, if it is ours."""
    metadata = message.get("metadata") or {}
    if metadata.get("event_type") != OUTBOX_EVENT_TYPE:
        return None
    value = (metadata.get("event_payload") or {}).get("outbox_id")
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def find_outbox_message(
    messages: Iterable[Mapping[str, Any]], outbox_id: int
) -> Mapping[str, Any] | None:
    """The message in a ``conversations.history``/``replies`` page carrying ``outbox_id``."""
    for message in messages:
        if outbox_id_of(message) == outbox_id:
            return message
    return None


def button_elements(
    buttons: Sequence[Button], *, quick_replies: Sequence[str] = ()
) -> list[dict[str, Any]]:
    """Block Kit buttons: offered choices first, then quick replies."""
    elements: list[dict[str, Any]] = []
    for index, button in enumerate(buttons):
        element: dict[str, Any] = {
            "type": "button",
            "text": _plain(button.label, BUTTON_LABEL_LIMIT),
            "value": button.value[:BUTTON_VALUE_LIMIT],
            "action_id": f"{BUTTON_ACTION_PREFIX}{index}",
        }
        if button.style in ("primary", "danger"):
            element["style"] = button.style
        elements.append(element)
    for index, reply in enumerate(quick_replies):
        elements.append(
            {
                "type": "button",
                "text": _plain(reply, BUTTON_LABEL_LIMIT),
                "value": reply[:BUTTON_VALUE_LIMIT],
                "action_id": f"{QUICK_REPLY_ACTION_PREFIX}{index}",
            }
        )
    return elements


def actions_blocks(
    elements: Sequence[Mapping[str, Any]], *, block_id: str = "deskbot_actions"
) -> list[dict[str, Any]]:
    """``actions`` blocks of at most 25 elements each."""
    blocks = []
    for start in range(0, len(elements), ACTIONS_ELEMENT_LIMIT):
        suffix = "" if start == 0 else f"_{start // ACTIONS_ELEMENT_LIMIT}"
        blocks.append(
            {
                "type": "actions",
                "block_id": block_id + suffix,
                "elements": [dict(e) for e in elements[start : start + ACTIONS_ELEMENT_LIMIT]],
            }
        )
    return blocks


def outbound_blocks(outbound: Outbound) -> list[dict[str, Any]]:
    """Block Kit for one outbound message: mrkdwn sections, then its buttons."""
    mrkdwn = markdown_to_mrkdwn(outbound.markdown, links=outbound.author in TRUSTED_AUTHORS)
    blocks = mrkdwn_sections(mrkdwn)
    buttons = actions_blocks(
        button_elements(outbound.buttons, quick_replies=outbound.quick_replies)
    )
    room = MESSAGE_BLOCK_LIMIT - len(buttons)
    if len(blocks) > room:
        blocks = blocks[: room - 1] + [
            {
                "type": "context",
                "elements": [{"type": "mrkdwn", "text": "_(the rest of this answer was cut)_"}],
            }
        ]
    return blocks + buttons


def fallback_text(outbound: Outbound) -> str:
    """The top-level ``text``: what notifications and old clients show."""
    mrkdwn = markdown_to_mrkdwn(outbound.markdown, links=outbound.author in TRUSTED_AUTHORS)
    if len(mrkdwn) <= FALLBACK_TEXT_LIMIT:
        return mrkdwn or " "
    return split_mrkdwn(mrkdwn, limit=FALLBACK_TEXT_LIMIT - 1)[0] + "…"


def outbound_to_post_kwargs(outbound: Outbound) -> dict[str, Any]:
    """``chat.postMessage`` keyword arguments for one outbound message.

    ``address`` needs ``channel``; ``thread_ts`` threads the reply. The outbox id rides
    in message metadata so a post whose answer was lost can be found again (R12).
    """
    channel = outbound.address.get("channel")
    if not channel:
        raise ValueError("a Slack outbound needs address['channel']")
    kwargs: dict[str, Any] = {
        "channel": str(channel),
        "text": fallback_text(outbound),
        "blocks": outbound_blocks(outbound),
        "unfurl_links": False,
        "unfurl_media": False,
    }
    thread_ts = outbound.address.get("thread_ts")
    if thread_ts:
        kwargs["thread_ts"] = str(thread_ts)
    if outbound.outbox_id is not None:
        kwargs["metadata"] = outbox_metadata(outbound.outbox_id)
    return kwargs


def outbound_to_ephemeral_kwargs(outbound: Outbound) -> dict[str, Any]:
    """``chat.postEphemeral`` keyword arguments (address has ``channel`` and ``user``)."""
    user = outbound.address.get("user")
    if not user:
        raise ValueError("an ephemeral Slack outbound needs address['user']")
    kwargs = outbound_to_post_kwargs(outbound)
    kwargs.pop("metadata", None)
    kwargs.pop("unfurl_links", None)
    kwargs.pop("unfurl_media", None)
    kwargs["user"] = str(user)
    return kwargs


def is_ephemeral(address: Mapping[str, Any]) -> bool:
    return bool(address.get("ephemeral"))


def _plain(text: str, limit: int) -> dict[str, Any]:
    text = text.strip() or "…"
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return {"type": "plain_text", "text": text, "emoji": True}


def _mention(user_id: str | None, fallback: str | None = None) -> str:
    if user_id and re.fullmatch(r"[UW][A-Z0-9]{2,}", user_id):
        return f"<@{user_id}>"
    return escape_mrkdwn(fallback or user_id or "someone")


# --------------------------------------------------------------------------------------
# The escalation card (triage channel)


def escalation_card(
    *,
    conversation_id: int,
    ticket_number: str,
    requester_name: str,
    requester_email: str | None,
    requester_channel: str,
    priority: str,
    priority_reason: str,
    summary: str,
    bot_tried: Sequence[str] = (),
    claimed_by: str | None = None,
    resolved_by: str | None = None,
) -> dict[str, Any]:
    """``text`` and ``blocks`` of the card an escalation posts in the triage channel.

    Buttons carry the conversation id (``claim:42``): a conversation may have no ticket.
    Open: a Claim button. Claimed (``claimed_by`` = a Slack user id): who has it, with
    Hand back and Resolve. Resolved: who resolved it, no buttons. Every value is escaped:
    the summary and the name come from the requester.
    """
    who = escape_mrkdwn(requester_name)
    if requester_email:
        who += f" ({escape_mrkdwn(requester_email)})"
    blocks: list[dict[str, Any]] = [
        {
            "type": "header",
            "text": _plain(f"{ticket_number} · {priority} · {summary}", 150),
        },
        {
            "type": "section",
            "fields": [
                {"type": "mrkdwn", "text": f"*Requester*\n{who}"},
                {"type": "mrkdwn", "text": f"*Asked via*\n{escape_mrkdwn(requester_channel)}"},
                {"type": "mrkdwn", "text": f"*Priority*\n{escape_mrkdwn(priority)}"},
                {"type": "mrkdwn", "text": f"*Why*\n{escape_mrkdwn(priority_reason)[:1900]}"},
            ],
        },
        *mrkdwn_sections("*Summary*\n" + escape_mrkdwn(summary)),
    ]
    if bot_tried:
        tried = "\n".join(f"• {escape_mrkdwn(step)}" for step in bot_tried)
        blocks.extend(mrkdwn_sections("*What the bot tried*\n" + tried))
    if resolved_by is not None:
        status = f":white_check_mark: Resolved by {_mention(resolved_by)}"
    elif claimed_by is not None:
        status = (
            f":raising_hand: Claimed by {_mention(claimed_by)}. Replies in this thread reach "
            "the requester; start a reply with `note:` to keep it internal."
        )
    else:
        status = ":rotating_light: Waiting for an agent"
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": status}]})
    if resolved_by is None:
        if claimed_by is None:
            elements = [
                {
                    "type": "button",
                    "text": _plain("Claim", BUTTON_LABEL_LIMIT),
                    "style": "primary",
                    "value": f"claim:{conversation_id}",
                    "action_id": CLAIM_ACTION,
                }
            ]
        else:
            elements = [
                {
                    "type": "button",
                    "text": _plain("Hand back to the bot", BUTTON_LABEL_LIMIT),
                    "value": f"hand_back:{conversation_id}",
                    "action_id": HAND_BACK_ACTION,
                },
                {
                    "type": "button",
                    "text": _plain("Resolve", BUTTON_LABEL_LIMIT),
                    "style": "primary",
                    "value": f"resolve:{conversation_id}",
                    "action_id": RESOLVE_ACTION,
                    "confirm": {
                        "title": _plain("Resolve this ticket?", 100),
                        "text": _mrkdwn_text(
                            f"{escape_mrkdwn(ticket_number)} will be resolved and the "
                            "requester told."
                        ),
                        "confirm": _plain("Resolve", 30),
                        "deny": _plain("Cancel", 30),
                    },
                },
            ]
        blocks.extend(actions_blocks(elements, block_id=f"deskbot_card_{conversation_id}"))
    text = (
        f"{escape_mrkdwn(ticket_number)} ({escape_mrkdwn(priority)}) from {who}: "
        + (escape_mrkdwn(summary)[:500])
    )
    return {"text": text, "blocks": blocks}


def _mrkdwn_text(text: str) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": text}


# --------------------------------------------------------------------------------------
# App Home and the report-an-issue modal


@dataclass(frozen=True, slots=True)
class HomeTicket:
    """One open ticket as the App Home lists it."""

    number: str
    title: str
    status: str
    priority: str | None = None
    next_update: str | None = None


HOME_TICKET_LIMIT = 40


def app_home_view(
    *, tickets: Sequence[HomeTicket], desk_name: str = "IT service desk"
) -> dict[str, Any]:
    """The App Home tab: a button to report an issue, then the person's open tickets."""
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(desk_name, 150)},
        {
            "type": "section",
            "text": _mrkdwn_text(
                "Ask me anything in a direct message, mention me in a channel, or report "
                "an issue here. Type `/desk help` to see what else I can do."
            ),
            "accessory": {
                "type": "button",
                "text": _plain("Report an issue", BUTTON_LABEL_LIMIT),
                "style": "primary",
                "value": "report_issue",
                "action_id": REPORT_ISSUE_ACTION,
            },
        },
        {"type": "divider"},
        {"type": "header", "text": _plain("Your open tickets", 150)},
    ]
    if not tickets:
        blocks.append({"type": "section", "text": _mrkdwn_text("You have no open tickets.")})
    for ticket in tickets[:HOME_TICKET_LIMIT]:
        details = [escape_mrkdwn(ticket.status)]
        if ticket.priority:
            details.append(f"priority {escape_mrkdwn(ticket.priority)}")
        if ticket.next_update:
            details.append(f"next update by {escape_mrkdwn(ticket.next_update)}")
        blocks.append(
            {
                "type": "section",
                "text": _mrkdwn_text(
                    f"*{escape_mrkdwn(ticket.number)}* · {escape_mrkdwn(ticket.title)[:2500]}\n"
                    + " · ".join(details)
                ),
            }
        )
    if len(tickets) > HOME_TICKET_LIMIT:
        more = len(tickets) - HOME_TICKET_LIMIT
        blocks.append(
            {
                "type": "context",
                "elements": [
                    _mrkdwn_text(f"…and {more} more. Type `/desk tickets` for the full list.")
                ],
            }
        )
    return {"type": "home", "callback_id": "deskbot_home", "blocks": blocks[:HOME_BLOCK_LIMIT]}


def report_issue_modal(
    *,
    services: Sequence[tuple[str, str]],
    origin_channel: str | None = None,
    initial_description: str = "",
) -> dict[str, Any]:
    """The report-an-issue modal: service, description, impact, urgency.

    ``services`` are ``(value, label)`` pairs from the service catalogue (Slack shows at
    most 100; more than that and the person types the service instead).
    ``origin_channel`` (a DM) is kept in ``private_metadata`` so the answer lands there.
    """
    if services and len(services) <= 100:
        service_element: dict[str, Any] = {
            "type": "static_select",
            "action_id": "service",
            "placeholder": _plain("Which service?", 150),
            "options": [_option(value, label) for value, label in services],
        }
    else:
        service_element = {
            "type": "plain_text_input",
            "action_id": "service",
            "placeholder": _plain("e.g. VPN, email, laptop", 150),
            "max_length": 200,
        }
    description: dict[str, Any] = {
        "type": "plain_text_input",
        "action_id": "description",
        "multiline": True,
        "max_length": 3000,
        "placeholder": _plain("What happened, and what did you expect?", 150),
    }
    if initial_description:
        description["initial_value"] = initial_description[:3000]
    return {
        "type": "modal",
        "callback_id": REPORT_ISSUE_CALLBACK,
        "title": _plain("Report an issue", 24),
        "submit": _plain("Submit", 24),
        "close": _plain("Cancel", 24),
        "private_metadata": json.dumps({"channel": origin_channel} if origin_channel else {}),
        "blocks": [
            {
                "type": "input",
                "block_id": "service",
                "label": _plain("Service", 2000),
                "element": service_element,
            },
            {
                "type": "input",
                "block_id": "description",
                "label": _plain("Description", 2000),
                "element": description,
            },
            {
                "type": "input",
                "block_id": "impact",
                "label": _plain("Who is affected?", 2000),
                "element": {
                    "type": "radio_buttons",
                    "action_id": "impact",
                    "options": [_option(v, label) for v, label in IMPACT_CHOICES],
                    "initial_option": _option(*IMPACT_CHOICES[0]),
                },
            },
            {
                "type": "input",
                "block_id": "urgency",
                "label": _plain("How urgent is it?", 2000),
                "element": {
                    "type": "radio_buttons",
                    "action_id": "urgency",
                    "options": [_option(v, label) for v, label in URGENCY_CHOICES],
                    "initial_option": _option(*URGENCY_CHOICES[1]),
                },
            },
        ],
    }


def _option(value: str, label: str) -> dict[str, Any]:
    return {"text": _plain(label, 75), "value": value[:150]}
