"""Quoted-reply and signature stripping: keep only what a reply adds.

One pass over the lines, each classified by anchored patterns with bounded repetition (no
nested quantifiers, so no catastrophic backtracking; a 766 KB quote takes milliseconds):

- a *reply header* ("On … wrote:" in many languages and client formats, joined over up
  to four wrapped lines), an *original-message delimiter* ("-----Original Message-----",
  Outlook's underscore rule, "Begin forwarded message:"), or an Outlook/Apple *header
  block* ("From: … Sent: … To: … Subject: …", also localised and in ``*bold*``) cuts
  the reply there;
- a *signature* ("-- ", "--", a "-Name" line, punctuation-only rules, "Sent from my
  iPhone" and its siblings in other languages) cuts the reply there;
- ``>``-quoted lines are kept when the sender answers between them (an inline reply)
  and dropped when they trail;
- a header followed by quoted lines and then more text is an interleaved reply: the
  header and the quote go, the answers stay;
- a forwarded message at the very top keeps its body: the forward *is* the new content.

Code fences (```) are never classified, so code in a reply survives.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_I = re.IGNORECASE

_WROTE_VERBS = (
    r"wrote|writes|escribió|escribio|escreveu|a écrit|a ecrit|schrieb|schreef|skrev|"
    r"ha scritto|scrisse|napisał|napisała|napisal|написал|написала|написав|пишет|"
    r"пише|kirjoitti|geschreven|đã viết|írta|yazdı|napsal|napísal|έγραψε|写道|寫道|"
    r"wrote\s+the\s+following"
)
_WROTE = re.compile(rf"(?:{_WROTE_VERBS})", _I)
_REPLY_HEADER = [
    # "On <date>, <name> <addr> wrote:" and its translations, ending the line.
    re.compile(rf"^.{{0,400}}\b(?:{_WROTE_VERBS})\b.{{0,120}}[:：]\s*$", _I),
    re.compile(rf"^.{{0,400}}(?:{_WROTE_VERBS})\s*[:：]?\s*$", _I),
    re.compile(
        r"^(?:on|le|am|op|el|em|il|den|på|w dniu|dnia)\b.{0,300}<?[^\s<>@]+@[^\s<>@]+>?\s*:\s*$", _I
    ),
    re.compile(r"^在.{0,200}(?:写道|寫道)[:：]?\s*$"),
    re.compile(r"^.{0,200}(?:のメッセージ|書きました)[:：]?\s*$"),
    # "2014-10-17 11:28 GMT+03:00 Postmaster <postmaster@…>:" (Gmail in some locales).
    re.compile(r"^\d{1,4}[-/.]\d{1,2}[-/.]\d{1,4}.{0,200}@.{0,200}:\s*$"),
    # "From: Jane Doe <jane@example.com>" alone as a Yahoo/Samsung header ending in ':'.
    re.compile(r"^sent from .{0,80}<?[^\s<>@]+@[^\s<>@]+>?\s+wrote:\s*$", _I),
]
# The first line of a header that a client wrapped over several lines.
_REPLY_HEADER_START = re.compile(
    r"^(?:on|le|am|op|el|em|il|den|på|w dniu|dnia|в|у|在)\s.{0,300}$", _I
)
_ORIGINAL_DELIMITER = [
    re.compile(r"^\s*[-_=*~]{2,}\s*[^\W\d_][^-_=*~]{1,60}?\s*[-_=*~]{2,}\s*$"),
    re.compile(
        r"^\s*(?:begin forwarded message|anfang der weitergeleiteten nachricht|"
        r"début du message réexpédié|inicio del mensaje reenviado|"
        r"forwarded message|original message|mensaje original|message d'origine)\s*:?\s*$",
        _I,
    ),
    re.compile(r"^\s*_{10,}\s*$"),
]
_FORWARD_MARKER = re.compile(
    r"^\s*(?:[-_=*~]{2,}\s*)?(?:forwarded message|weitergeleitete nachricht|"
    r"message transféré|mensaje reenviado|messaggio inoltrato|doorgestuurd bericht|"
    r"begin forwarded message|anfang der weitergeleiteten nachricht|"
    r"début du message réexpédié|inicio del mensaje reenviado)\s*:?\s*(?:[-_=*~]{2,})?\s*$",
    _I,
)
_HEADER_FROM = re.compile(
    r"^\s*\*{0,2}(?:from|de|von|van|da|från|fra|od|от|lähettäjä|feladó|kimden|"
    r"发件人|寄件者|差出人|보낸 사람)\s?\*{0,2}\s?[:：]\s?\*{0,2}\s*\S",
    _I,
)
_HEADER_OTHER = re.compile(
    r"^\s*\*{0,2}(?:sent|date|datum|envoyé|enviado|enviada|gesendet|inviato|verzonden|"
    r"skickat|sendt|wysłano|отправлено|дата|data|fecha|to|an|à|a|aan|till|til|do|para|"
    r"кому|cc|subject|objet|betreff|asunto|oggetto|onderwerp|ämne|emne|temat|тема|"
    r"assunto|reply-to|发送时间|收件人|主题|日付|件名|宛先)\s?\*{0,2}\s?[:：]",
    _I,
)
_HEADER_DATE = re.compile(
    r"^\s*\*{0,2}(?:date|sent|datum|gesendet|envoyé)\s?\*{0,2}\s?:\s?\*{0,2}\s*\S", _I
)
_SIGNATURE_DELIMITER = re.compile(
    r"^(?:--|__+|-- .{0,200}|-[^\W\d_][\w.]{0,30}(?: [\w.]{1,30}){0,3})\s*$"
)
_PUNCTUATION_ONLY = re.compile(r"^\s*[^\w\s>`]{2,}\s*$|^\s*ᐧ\s*$")
_SENT_FROM_MY = re.compile(
    r"^\s*sent from my [^,.;:!?]{1,60}"
    r"(?:[,.;]\s*(?:please\s+)?(?:excuse|pardon|sorry|forgive|apologi).{0,100})?[.!]?\s*$",
    _I,
)
_MOBILE_SIGNATURES = [
    re.compile(p, _I)
    for p in (
        r"^\s*sent (?:from|via|with|using|by) (?!my\b).{1,100}$",
        r"^\s*(?:get|download) outlook for .{1,80}$",
        r"^\s*(?:envoyé|envoye) (?:de|depuis|avec) .{1,80}$",
        r"^\s*von meinem .{1,80} gesendet\.?\s*$",
        r"^\s*gesendet (?:von|mit|vom) .{1,80}$",
        r"^\s*diese nachricht wurde von meinem .{1,120} gesendet\.?\s*$",
        r"^\s*verzonden (?:met|vanaf|van|via) .{1,80}$",
        r"^\s*enviad[oa] (?:desde|de|do|com) .{1,80}$",
        r"^\s*inviato (?:da|dal|con) .{1,80}$",
        r"^\s*skickat från .{1,80}$",
        r"^\s*sendt fra .{1,80}$",
        r"^\s*wysłane (?:z|ze) .{1,80}$",
        r"^\s*отправлено (?:с|из) .{1,80}$",
        r"^\s*<<\s*sent (?:by|from|via) .{1,60}>>\s*$",
        r"^\s*\(\s*sent (?:from|via|by) .{1,60}\)\s*$",
        r"^\s*from my (?:iphone|ipad|ipod|android|mobile|phone|smartphone|blackberry).{0,40}$",
        r"^\s*(?:從我的|从我的).{1,40}(?:傳送|发送)\s*$",
        r"^\s*.{1,30}から送信\s*$",
    )
]
_QUOTE = re.compile(r"^\s{0,3}(?:[A-Za-z]{1,3})?>")
_FENCE = re.compile(r"^\s{0,3}(?:```|~~~)")
_LOOKAHEAD = 7
_HEADER_EVIDENCE = re.compile(r"\d|@")
# Gmail's "2016-03-03 17:21 GMT+01:00 Some One" and "2013/7/20 sam <sam@example.com>".
_DATE_LINE = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\s+\d{1,2}:\d{2}\b.{0,250}$")
_DATED_ADDRESS = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}\s.{0,200}<[^<>\s@]+@[^<>\s]+>\s*:?$")


@dataclass(frozen=True, slots=True)
class ReplySplit:
    """The new part of a reply and what was taken away (quotes, signature)."""

    reply: str
    elided: str


def _is_reply_header(line: str) -> bool:
    if len(line) > 600 or _QUOTE.match(line):
        return False
    core = line.strip().strip("-_=*~ ").strip()
    if not core:
        return False
    if _DATE_LINE.match(core) or _DATED_ADDRESS.match(core):
        return True
    if not any(p.match(core) for p in _REPLY_HEADER):
        return False
    # "I wrote one of my own:" is prose; a header names a date, an address or starts
    # with the client's lead-in word.
    return bool(_HEADER_EVIDENCE.search(core) or _REPLY_HEADER_START.match(core))


def _reply_header_span(lines: list[str], index: int) -> int:
    """How many lines the reply header starting at ``index`` spans (0 when none)."""
    line = lines[index].strip()
    if not line or _QUOTE.match(line) or len(line) > 400:
        return 0
    if _is_reply_header(line):
        return 1
    if _ends_sentence(line) or not (
        _HEADER_EVIDENCE.search(line) or _REPLY_HEADER_START.match(line)
    ):
        return 0
    joined = line
    for extra in range(1, _LOOKAHEAD):
        if index + extra >= len(lines):
            break
        nxt = lines[index + extra].strip()
        if not nxt:
            continue
        if _QUOTE.match(nxt) and not nxt.lstrip("> ").strip():
            break
        if _REPLY_HEADER_START.match(nxt) or _DATE_LINE.match(nxt):
            break  # a header starts on that line, not on this one
        joined = f"{joined} {nxt}".strip()
        if _is_reply_header(joined):
            return extra + 1
        if len(joined) > 500 or _ends_sentence(nxt):
            break
    return 0


def _ends_sentence(line: str) -> bool:
    """Prose ends with a full stop; a wrapped header line ("schrieb am Fr., 28.") may too."""
    return line.endswith(("!", "?", "...")) or (line.endswith(".") and not _WROTE.search(line))


def _header_block_span(lines: list[str], index: int) -> int:
    """Length of an Outlook-style ``From:/Sent:/To:/Subject:`` block starting here."""
    if not (_HEADER_FROM.match(lines[index]) or _HEADER_DATE.match(lines[index])):
        return 0
    end = index + 1
    others = 0
    while end < len(lines) and end - index <= 8:
        line = lines[end]
        if _HEADER_OTHER.match(line):
            others += 1
        elif line.strip() and others and not line.startswith((" ", "\t")):
            break
        elif not line.strip() and others:
            break
        end += 1
    return end - index if others >= 1 else 0


def _is_signature_start(line: str) -> bool:
    stripped = line.rstrip()
    if _SIGNATURE_DELIMITER.match(stripped) or _PUNCTUATION_ONLY.match(stripped):
        return True
    if len(stripped) > 200:
        return False
    return bool(_SENT_FROM_MY.match(stripped)) or any(p.match(stripped) for p in _MOBILE_SIGNATURES)


def _is_quote_block_then_text(lines: list[str], start: int) -> int:
    """After a header at ``start``: index of text that answers a quote, else -1."""
    index = start
    seen_quote = False
    while index < len(lines):
        line = lines[index]
        if _QUOTE.match(line):
            seen_quote = True
        elif line.strip():
            return index if seen_quote else -1
        index += 1
    return -1


def split_reply(text: str) -> ReplySplit:
    """Split a plain-text body into the new reply and the elided quote/signature."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    keep: list[str] = []
    fenced = False
    has_text = False  # non-blank, non-quote content kept so far
    index = 0
    cut: int | None = None
    while index < len(lines):
        line = lines[index]
        if _FENCE.match(line):
            fenced = not fenced
            keep.append(line)
            has_text = True
            index += 1
            continue
        if fenced:
            keep.append(line)
            index += 1
            continue
        if _FORWARD_MARKER.match(line) and not has_text:
            # A forwarded message is itself the new content: drop only its marker and
            # its header block (which ends at the first blank line).
            index += 1
            while index < len(lines) and not lines[index].strip():
                index += 1
            if index < len(lines) and (
                _HEADER_FROM.match(lines[index]) or _HEADER_OTHER.match(lines[index])
            ):
                while index < len(lines) and lines[index].strip():
                    index += 1
            continue
        span = _reply_header_span(lines, index)
        if not span and (
            any(p.match(line) for p in _ORIGINAL_DELIMITER) or _header_block_span(lines, index)
        ):
            span = -1
        if span:
            if not any(k.strip() for k in keep):
                # A header at the very top: what follows the quoted part is the new text.
                index += max(span, 1) if span > 0 else _top_block_span(lines, index)
                while index < len(lines) and (
                    not lines[index].strip() or _QUOTE.match(lines[index])
                ):
                    index += 1
                continue
            if span > 0 and has_text:
                answer = _is_quote_block_then_text(lines, index + span)
                if answer > 0 and not _is_signature_start(lines[answer]):
                    index += span  # interleaved reply: drop the header, keep quote and answer
                    continue
            cut = index
            break
        if has_text and _is_signature_start(line):
            cut = index
            break
        keep.append(line)
        if line.strip() and not _QUOTE.match(line):
            has_text = True
        index += 1

    # Quoted lines that trail the new text are what was answered, not what is new.
    if has_text:
        end = len(keep)
        while end and (not keep[end - 1].strip() or _QUOTE.match(keep[end - 1])):
            end -= 1
        keep = keep[:end]
    elif keep and _quote_of_a_quote(keep):
        keep = []  # only a quoted conversation, nothing new at all
    if cut == 0 or (not has_text and cut is not None and not any(k.strip() for k in keep)):
        keep = []

    reply = "\n".join(keep).strip("\n")
    reply = "\n".join(line.rstrip() for line in reply.split("\n")).strip()
    elided_lines = lines[len(keep) :] if cut is None else lines[cut:]
    return ReplySplit(reply=reply, elided="\n".join(elided_lines).strip())


def _top_block_span(lines: list[str], index: int) -> int:
    """Lines of a delimiter or header block at the top of a body (up to a blank line)."""
    end = index + 1
    while end < len(lines) and lines[end].strip() and end - index < 12:
        end += 1
    return end - index


def _quote_of_a_quote(lines: list[str]) -> bool:
    """True when an all-quoted body starts with a quoted reply header."""
    for line in lines:
        inner = line.lstrip().lstrip(">").strip()
        if inner:
            return _is_reply_header(inner)
    return False


def strip_reply(text: str) -> str:
    """Only the new text of a plain-text reply (quotes and signature removed)."""
    return split_reply(text).reply
