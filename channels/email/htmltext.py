"""Readable plain text from the HTML of a mail, with the standard library's parser only.

Paragraphs and block elements become blank-line separated blocks, ``<br>`` a line break,
list items ``- item``, links ``text (url)``; script, style and head content is dropped.
Quoted HTML (``<blockquote>``, Gmail's ``gmail_quote``, Yahoo's ``yahoo_quoted``) is
prefixed with ``> `` so the reply stripper removes it like a quoted plain-text reply.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_SKIP = frozenset({"script", "style", "head", "title", "noscript", "template", "xml", "svg"})
_BLOCK = frozenset(
    {
        "address", "article", "aside", "center", "dd", "div", "dl", "dt", "fieldset",
        "figcaption", "figure", "footer", "form", "header", "main", "nav", "section",
        "table", "tbody", "thead", "tfoot", "tr", "ul", "ol", "body", "html",
    }
)  # fmt: skip
_PARAGRAPH = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "hr"})
_QUOTE_CLASSES = ("gmail_quote", "yahoo_quoted", "moz-cite-prefix", "protonmail_quote")
_VOID = frozenset(
    {"br", "hr", "img", "meta", "link", "input", "area", "base", "col", "wbr", "source"}
)
_SPACES = re.compile(r"[ \t\r\n\f\v\u00a0\u200b]+")


class _TextBuilder(HTMLParser):
    def __init__(self, *, max_chars: int) -> None:
        super().__init__(convert_charrefs=True)
        self._max_chars = max_chars
        self._lines: list[str] = []
        self._line: list[str] = []
        self._size = 0
        self._skip_depth = 0
        self._pre_depth = 0
        self._quote_depth = 0
        self._stack: list[tuple[str, bool]] = []  # (tag, opened a quote)
        self._links: list[tuple[str, int]] = []  # (href, size of text before the link)
        self._link_text: list[str] = []
        self._pending_blank = False
        self.truncated = False

    # --- output -----------------------------------------------------------------------
    def _write(self, text: str) -> None:
        if not text or self.truncated:
            return
        if self._size + len(text) > self._max_chars:
            text = text[: max(0, self._max_chars - self._size)]
            self.truncated = True
        if not self._line:
            if self._pending_blank and self._lines and self._lines[-1].strip(" >"):
                self._lines.append(self._prefix())
            self._pending_blank = False
            prefix = self._prefix()
            if prefix:
                self._line.append(prefix)
        self._line.append(text)
        self._size += len(text)
        if self._links:
            self._link_text.append(text)

    def _prefix(self) -> str:
        return "> " * self._quote_depth

    def _break(self) -> None:
        if self._line:
            self._lines.append("".join(self._line).rstrip())
            self._line = []

    def _paragraph(self) -> None:
        self._break()
        self._pending_blank = True

    def text(self) -> str:
        self._break()
        return "\n".join(self._lines).strip("\n")

    # --- parser callbacks ---------------------------------------------------------------
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIP:
            if tag not in _VOID:
                self._skip_depth += 1
                self._stack.append((tag, False))
            return
        if self._skip_depth:
            if tag not in _VOID:
                self._stack.append((tag, False))
            return
        attributes = {name: value or "" for name, value in attrs}
        if tag == "br":
            if not self._line and self._quote_depth:
                self._line.append(self._prefix())
            self._break()
            return
        if tag == "hr":
            self._paragraph()
            return
        if tag == "img":
            alt = attributes.get("alt", "").strip()
            if alt:
                self._write(_SPACES.sub(" ", alt))
            return
        if tag in _VOID:
            return
        opened_quote = False
        css = attributes.get("class", "")
        if tag == "blockquote" or any(name in css for name in _QUOTE_CLASSES):
            opened_quote = True
            self._paragraph()
            self._quote_depth += 1
        self._stack.append((tag, opened_quote))
        if tag in _PARAGRAPH:
            self._paragraph()
            if tag == "pre":
                self._pre_depth += 1
        elif tag == "li":
            self._break()
            self._write("- ")
        elif tag in _BLOCK:
            self._break()
        elif tag in ("td", "th"):
            if self._line:
                self._write(" ")
        elif tag == "a":
            self._links.append((attributes.get("href", "").strip(), self._size))
            self._link_text = []

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        # Pop to the matching open tag; stray end tags are ignored.
        for index in range(len(self._stack) - 1, -1, -1):
            if self._stack[index][0] == tag:
                break
        else:
            return
        while len(self._stack) > index:
            open_tag, opened_quote = self._stack.pop()
            self._close(open_tag, opened_quote)

    def _close(self, tag: str, opened_quote: bool) -> None:
        if tag in _SKIP:
            self._skip_depth = max(0, self._skip_depth - 1)
            return
        if self._skip_depth:
            return
        if tag == "a" and self._links:
            href, _ = self._links.pop()
            shown = "".join(self._link_text).strip()
            self._link_text = []
            if href.lower().startswith(("http://", "https://")) and href not in shown:
                self._write(f" ({href})")
        elif tag in _PARAGRAPH:
            if tag == "pre":
                self._pre_depth = max(0, self._pre_depth - 1)
            self._paragraph()
        elif tag in _BLOCK or tag == "li":
            self._break()
        if opened_quote:
            self._break()
            self._quote_depth = max(0, self._quote_depth - 1)
            self._pending_blank = True

    def handle_data(self, data: str) -> None:
        if self._skip_depth or self.truncated:
            return
        if self._pre_depth:
            lines = data.split("\n")
            for index, line in enumerate(lines):
                if index:
                    self._break()
                self._write(line)
            return
        collapsed = _SPACES.sub(" ", data)
        if not self._line or "".join(self._line).endswith((" ", "> ")):
            collapsed = collapsed.lstrip(" ")
        self._write(collapsed)


def html_to_text(html: str, *, max_chars: int = 200_000) -> tuple[str, bool]:
    """Convert HTML to readable text; returns ``(text, truncated)``. Never raises."""
    builder = _TextBuilder(max_chars=max_chars)
    try:
        builder.feed(html)
        builder.close()
    except Exception:  # html.parser is lenient; if it still gives up, keep what was built
        builder.truncated = True
    return builder.text(), builder.truncated
