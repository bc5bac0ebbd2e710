"""Render an article body (Markdown) for a channel: plain text, Slack mrkdwn or safe HTML.

Pure functions, no I/O. HTML never passes raw HTML through (it is escaped) and links are
kept only for ``http``, ``https`` and ``mailto`` (and relative) targets, so an article
cannot smuggle a ``javascript:`` URL or a ``<script>`` into the web chat.
"""

from __future__ import annotations

from typing import Literal

from markdown_it import MarkdownIt
from markdown_it.token import Token

__all__ = ["Format", "render", "to_html", "to_plain", "to_slack"]

Format = Literal["plain", "slack", "html"]

_SAFE_SCHEMES = ("http:", "https:", "mailto:")


def _validate_link(url: str) -> bool:
    target = url.strip().lower()
    if ":" not in target.split("/", 1)[0]:
        return True  # relative link or fragment
    return target.startswith(_SAFE_SCHEMES)


def _parser() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False})
    md.validateLink = _validate_link  # type: ignore[method-assign]
    return md


_MD = _parser()


def to_html(body: str) -> str:
    """Safe HTML: raw HTML escaped, unsafe link schemes left as text."""
    return _MD.render(body)


def _slack_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _inline(children: list[Token] | None, slack: bool) -> str:
    out: list[str] = []
    link_stack: list[tuple[str, int]] = []
    for tok in children or []:
        kind = tok.type
        if kind == "text":
            out.append(_slack_escape(tok.content) if slack else tok.content)
        elif kind == "code_inline":
            out.append(f"`{tok.content}`")
        elif kind in ("softbreak", "hardbreak"):
            out.append("\n")
        elif kind in ("strong_open", "strong_close"):
            out.append("*" if slack else "")
        elif kind in ("em_open", "em_close"):
            out.append("_" if slack else "")
        elif kind == "link_open":
            link_stack.append((str(tok.attrs.get("href", "")), len(out)))
        elif kind == "link_close" and link_stack:
            href, start = link_stack.pop()
            label = "".join(out[start:])
            del out[start:]
            if slack:
                out.append(f"<{href}|{label}>" if label and label != href else f"<{href}>")
            else:
                out.append(f"{label} ({href})" if label and label != href else href)
        elif kind == "image":
            src = str(tok.attrs.get("src", ""))
            alt = tok.content or "image"
            out.append(f"<{src}|{alt}>" if slack else f"{alt} ({src})")
        elif tok.children:
            out.append(_inline(tok.children, slack))
    return "".join(out)


def _blocks(body: str, slack: bool) -> str:
    tokens = _MD.parse(body)
    blocks: list[str] = []
    in_list: list[bool] = []  # per block: is it inside a list (joined by one newline)
    lists: list[list[int]] = []  # per open list: [next number] or [-1] for bullets
    quote = 0
    pending_item = ""
    for tok in tokens:
        kind = tok.type
        if kind == "bullet_list_open":
            lists.append([-1])
        elif kind == "ordered_list_open":
            lists.append([int(tok.attrs.get("start", 1) or 1)])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            lists.pop()
        elif kind == "list_item_open":
            counter = lists[-1]
            indent = "  " * (len(lists) - 1)
            if counter[0] < 0:
                pending_item = f"{indent}• "
            else:
                pending_item = f"{indent}{counter[0]}. "
                counter[0] += 1
        elif kind == "blockquote_open":
            quote += 1
        elif kind == "blockquote_close":
            quote -= 1
        elif kind == "inline":
            text = _inline(tok.children, slack)
            if pending_item:
                text = pending_item + text
                pending_item = ""
            elif lists:
                text = "  " * len(lists) + text
            if quote:
                text = "\n".join("> " + line for line in text.split("\n"))
            blocks.append(text)
            in_list.append(bool(lists))
        elif kind in ("fence", "code_block"):
            code = tok.content.rstrip("\n")
            if slack:
                blocks.append(f"```\n{code}\n```")
            else:
                blocks.append("\n".join("    " + line for line in code.split("\n")))
            in_list.append(False)
        elif kind == "heading_close" and slack and blocks:
            blocks[-1] = f"*{blocks[-1]}*"
        elif kind == "hr":
            blocks.append("―" * 10)
            in_list.append(False)
    # List items sit on consecutive lines; other blocks are separated by a blank line.
    parts: list[str] = []
    for i, block in enumerate(blocks):
        if i:
            parts.append("\n" if in_list[i] and in_list[i - 1] else "\n\n")
        parts.append(block)
    return "".join(parts).strip()


def to_plain(body: str) -> str:
    """Plain text for email and the terminal: no markup, links as ``label (url)``."""
    return _blocks(body, slack=False)


def to_slack(body: str) -> str:
    """Slack mrkdwn: ``*bold*``, ``_italic_``, ``<url|label>``, ``&<>`` escaped."""
    return _blocks(body, slack=True)


def render(body: str, fmt: Format) -> str:
    """Render ``body`` for a channel format: ``"plain"``, ``"slack"`` or ``"html"``."""
    if fmt == "html":
        return to_html(body)
    if fmt == "slack":
        return to_slack(body)
    if fmt == "plain":
        return to_plain(body)
    raise ValueError(f"unknown format {fmt!r}")
