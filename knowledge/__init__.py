"""Knowledge base: articles, the rapidfuzz matcher, evaluation and the sample KB.

The core uses exactly this surface::

    kb = KnowledgeBase.load(path)
    result = kb.search("vpn keeps disconnecting")
    if result.decision == "answer": ...      # result.best.article.body
    kb.refresh_if_changed()                   # on a short interval
"""

from __future__ import annotations

from pathlib import Path

from .article import Article, ArticleError, KnowledgeError
from .base import KnowledgeBase, Match, SearchResult
from .render import render

__all__ = [
    "SAMPLE_KB_DIR",
    "Article",
    "ArticleError",
    "KnowledgeBase",
    "KnowledgeError",
    "Match",
    "SearchResult",
    "render",
]

SAMPLE_KB_DIR = Path(__file__).resolve().parent / "sample"
"""The shipped sample IT knowledge base, the default for ``DESKBOT_KB_DIR``."""
