"""Articles: one Markdown file with YAML front matter per answer.

::

    ---
    id: vpn-connect            # optional, defaults to the file name without .md
    title: Connect to the VPN
    questions:                 # the phrasings people use; at least one
      - how do I connect to the vpn
      - vpn won't connect from home
    tags: [network, remote]
    service: vpn               # optional: the catalogue service it belongs to
    keywords: [globalprotect]  # optional: extra terms that should find it
    ---
    The answer, in Markdown.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["Article", "ArticleError", "KnowledgeError", "dump_article", "parse_article"]

logger = logging.getLogger(__name__)

try:  # the C loader is ten times faster on the large converted KBs
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover - depends on how PyYAML was built
    _Loader = yaml.SafeLoader

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FRONT_MATTER_RE = re.compile(r"\A---[ \t]*\r?\n(.*?)^---[ \t]*\r?$\n?", re.S | re.M)


class KnowledgeError(Exception):
    """A knowledge base could not be read or used; the message says which file and why."""


class ArticleError(KnowledgeError):
    """One article file is invalid. ``path`` names it; the rest of the KB still loads."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


@dataclass(frozen=True, slots=True)
class Article:
    """One knowledge base answer. ``id`` is stable: feedback counters are keyed by it."""

    id: str
    title: str
    questions: tuple[str, ...]
    tags: tuple[str, ...]
    service: str | None
    keywords: tuple[str, ...]
    body: str
    path: Path | None = None

    @property
    def phrasings(self) -> tuple[str, ...]:
        """Every text that should find this article: the title, then the questions."""
        return (self.title, *self.questions)


def _string_list(path: Path, meta: dict[str, Any], key: str, *, required: bool) -> tuple[str, ...]:
    value = meta.get(key)
    if value is None:
        if required:
            raise ArticleError(path, f"missing required field {key!r}")
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise ArticleError(path, f"field {key!r} must be a list of strings")
    items: list[str] = []
    for item in value:
        if not isinstance(item, str | int | float) or isinstance(item, bool):
            raise ArticleError(path, f"field {key!r} must be a list of strings, got {item!r}")
        text = str(item).strip()
        if text:
            items.append(text)
    if required and not items:
        raise ArticleError(path, f"field {key!r} must not be empty")
    return tuple(items)


def parse_article(path: Path, text: str) -> Article:
    """Parse one article file's text; raise :class:`ArticleError` naming ``path``."""
    match = _FRONT_MATTER_RE.match(text.lstrip("\ufeff"))
    if match is None:
        raise ArticleError(path, "no YAML front matter (the file must start with a '---' line)")
    try:
        meta = yaml.load(match.group(1), Loader=_Loader)  # noqa: S506 - a safe loader
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 2}" if where is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ArticleError(path, f"invalid YAML front matter{line}: {problem}") from exc
    if not isinstance(meta, dict):
        raise ArticleError(path, "front matter must be a YAML mapping")
    article_id = meta.get("id", path.stem)
    if not isinstance(article_id, str | int) or not _ID_RE.match(str(article_id)):
        raise ArticleError(path, f"invalid id {article_id!r} (letters, digits, '_', '-', '.')")
    title = meta.get("title")
    if not isinstance(title, str) or not title.strip():
        raise ArticleError(path, "missing required field 'title'")
    service = meta.get("service")
    if service is not None and not isinstance(service, str):
        raise ArticleError(path, "field 'service' must be a string")
    body = text[match.end() :].strip()
    if not body:
        raise ArticleError(path, "the article has no body (the answer goes below the front matter)")
    return Article(
        id=str(article_id),
        title=title.strip(),
        questions=_string_list(path, meta, "questions", required=True),
        tags=_string_list(path, meta, "tags", required=False),
        service=service.strip() if service else None,
        keywords=_string_list(path, meta, "keywords", required=False),
        body=body,
        path=path,
    )


def dump_article(
    *,
    title: str,
    questions: Iterable[str],
    body: str,
    article_id: str | None = None,
    tags: Iterable[str] = (),
    service: str | None = None,
    keywords: Iterable[str] = (),
) -> str:
    """The file text for an article (used by the converters and tests)."""
    meta: dict[str, Any] = {}
    if article_id is not None:
        meta["id"] = article_id
    meta["title"] = title
    meta["questions"] = list(questions)
    meta["tags"] = list(tags)
    if service:
        meta["service"] = service
    if keywords:
        meta["keywords"] = list(keywords)
    front = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, width=1000)
    return f"---\n{front}---\n{body.strip()}\n"
