"""The knowledge base: a folder of articles, its index, and the answer/suggest/refuse rule."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Literal

from .article import Article, ArticleError, KnowledgeError, parse_article
from .calibration import CALIBRATION_FILE, DEFAULT, Calibration
from .index import SearchIndex

__all__ = ["Decision", "KnowledgeBase", "Match", "SearchResult"]

logger = logging.getLogger(__name__)

Decision = Literal["answer", "suggest", "refuse"]
_MAX_SUGGESTIONS = 3
_RESULT_CACHE_SIZE = 4096

# (relative path, mtime_ns, size) of every file the KB depends on.
_Signature = tuple[tuple[str, int, int], ...]


@dataclass(frozen=True, slots=True)
class Match:
    """One ranked article: ``score`` orders matches, ``confidence`` is P(right answer)."""

    article: Article
    score: float
    confidence: float


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Ranked matches and what to do with them.

    ``decision`` is the whole rule: *answer* with ``matches[0]``, *suggest* the
    :attr:`suggestions` and let the person pick, or *refuse* (open a ticket). ``matches``
    is always the ranked list, also when refused, for logging and the eval.
    """

    query: str
    decision: Decision
    matches: tuple[Match, ...]

    @property
    def best(self) -> Match | None:
        """The top-ranked match whatever the decision, or ``None`` when nothing matched."""
        return self.matches[0] if self.matches else None

    @property
    def answer(self) -> Match | None:
        """The match to answer with, only when ``decision == "answer"``."""
        return self.matches[0] if self.decision == "answer" and self.matches else None

    @property
    def suggestions(self) -> list[Match]:
        """The candidates to offer when ``decision == "suggest"`` (empty otherwise)."""
        return list(self.matches[:_MAX_SUGGESTIONS]) if self.decision == "suggest" else []


@dataclass(frozen=True, slots=True)
class _State:
    articles: Mapping[str, Article]
    index: SearchIndex
    calibration: Calibration
    errors: tuple[str, ...]
    signature: _Signature
    # Recent results by (query, limit): a search is a pure function of the text and this
    # state, and a desk hears the same words from many people at once (an outage, a
    # broken update). Lives and dies with the state, so a reload or a new calibration
    # starts empty.
    results: dict[tuple[str, int], SearchResult] = field(
        default_factory=dict, compare=False, repr=False
    )


def _scan(root: Path) -> _Signature:
    entries: list[tuple[str, int, int]] = []
    for path in root.rglob("*"):
        if path.suffix != ".md" and path.name != CALIBRATION_FILE:
            continue
        rel = path.relative_to(root)
        if path.suffix == ".md" and any(part.startswith(".") for part in rel.parts):
            continue
        if path.name.lower() == "readme.md":
            continue
        try:
            st = path.stat()
        except OSError:
            continue  # deleted between listing and stat; the next scan settles it
        entries.append((rel.as_posix(), st.st_mtime_ns, st.st_size))
    entries.sort()
    return tuple(entries)


class KnowledgeBase:
    """Articles loaded from a folder, searchable, reloaded when the folder changes.

    Build one with :meth:`load`. :meth:`search` is safe from any thread; a reload builds
    a new index beside the old one and swaps it in with one assignment.
    """

    def __init__(self, root: Path | None, state: _State) -> None:
        self.root = root
        self._state = state
        self._reload_lock = threading.Lock()

    @classmethod
    def load(cls, path: Path) -> KnowledgeBase:
        """Load every ``*.md`` article under ``path`` (README.md and dot-folders skipped).

        Invalid articles are logged and listed in :attr:`errors`; the rest load. A
        missing folder raises :class:`KnowledgeError`.
        """
        root = Path(path)
        if not root.is_dir():
            raise KnowledgeError(f"{root}: knowledge base folder not found")
        return cls(root, cls._build(root, _scan(root)))

    @classmethod
    def from_articles(
        cls, articles: list[Article], *, calibration: Calibration = DEFAULT
    ) -> KnowledgeBase:
        """An in-memory KB (benchmarks, tests); :meth:`refresh_if_changed` is a no-op."""
        state = _State(
            articles=MappingProxyType({a.id: a for a in articles}),
            index=SearchIndex(articles),
            calibration=calibration,
            errors=(),
            signature=(),
        )
        return cls(None, state)

    @staticmethod
    def _build(root: Path, signature: _Signature) -> _State:
        errors: list[str] = []
        articles: dict[str, Article] = {}
        for rel, _mtime, _size in signature:
            if not rel.endswith(".md"):
                continue
            path = root / rel
            try:
                article = parse_article(path, path.read_text(encoding="utf-8"))
            except ArticleError as exc:
                errors.append(str(exc))
                continue
            except (OSError, UnicodeDecodeError) as exc:
                errors.append(f"{path}: cannot read: {exc}")
                continue
            if article.id in articles:
                other = articles[article.id].path
                errors.append(f"{path}: duplicate id {article.id!r} (also in {other})")
                continue
            articles[article.id] = article
        calibration = DEFAULT
        calibration_path = root / CALIBRATION_FILE
        if calibration_path.exists():
            try:
                calibration = Calibration.from_file(calibration_path)
            except KnowledgeError as exc:
                errors.append(str(exc))
        for error in errors:
            logger.error("knowledge.article.invalid %s", error)
        ordered = sorted(articles.values(), key=lambda a: a.id)
        logger.info(
            "knowledge.loaded root=%s articles=%d errors=%d calibration=%s",
            root,
            len(ordered),
            len(errors),
            calibration.source,
        )
        return _State(
            articles=MappingProxyType({a.id: a for a in ordered}),
            index=SearchIndex(ordered),
            calibration=calibration,
            errors=tuple(errors),
            signature=signature,
        )

    # -- reading ------------------------------------------------------------------------

    @property
    def articles(self) -> Mapping[str, Article]:
        return self._state.articles

    @property
    def errors(self) -> list[str]:
        """One message per file that did not load, each starting with the file's path."""
        return list(self._state.errors)

    @property
    def calibration(self) -> Calibration:
        return self._state.calibration

    @property
    def index(self) -> SearchIndex:
        return self._state.index

    def get(self, article_id: str) -> Article | None:
        return self._state.articles.get(article_id)

    def __len__(self) -> int:
        return len(self._state.articles)

    # -- reload -------------------------------------------------------------------------

    def refresh_if_changed(self) -> bool:
        """Rescan the folder (names, mtimes, sizes); rebuild and swap if anything changed.

        Cheap enough to call every few seconds. Returns whether a new index is in use.
        """
        root = self.root
        if root is None:
            return False
        with self._reload_lock:
            if not root.is_dir():
                logger.error("knowledge.refresh.missing root=%s", root)
                return False
            signature = _scan(root)
            if signature == self._state.signature:
                return False
            self._state = self._build(root, signature)
            logger.info("knowledge.refresh.swapped root=%s", root)
            return True

    def with_calibration(self, calibration: Calibration) -> KnowledgeBase:
        """The same articles and index judged by another calibration (for calibrate/eval)."""
        s = self._state
        state = _State(s.articles, s.index, calibration, s.errors, s.signature)
        return KnowledgeBase(self.root, state)

    # -- search -------------------------------------------------------------------------

    def search(self, query: str, *, limit: int = 5) -> SearchResult:
        """Rank articles for ``query`` and decide: answer, suggest or refuse.

        The same text asked again of the same articles and calibration gets the same
        result object back from a bounded cache (treat it as read-only).
        """
        state = self._state  # one read: a concurrent refresh cannot mix two indexes
        key = (query, limit)
        cached = state.results.get(key)
        if cached is not None:
            return cached
        result = self._search(state, query, limit)
        if len(state.results) >= _RESULT_CACHE_SIZE:
            state.results.clear()  # a flood of distinct texts: start over, no LRU upkeep
        state.results[key] = result
        return result

    @staticmethod
    def _search(state: _State, query: str, limit: int) -> SearchResult:
        calibration = state.calibration
        candidates = state.index.candidates(query, calibration.fusion, limit=limit)
        articles = state.index.articles
        confidences = calibration.confidences([c.features for c in candidates])
        matches = tuple(
            Match(article=articles[c.article], score=round(c.score, 6), confidence=conf)
            for c, conf in zip(candidates, confidences, strict=True)
        )
        if not matches:
            decision: Decision = "refuse"
        elif matches[0].confidence >= calibration.answer_threshold:
            decision = "answer"
        elif matches[0].confidence >= calibration.suggest_threshold:
            decision = "suggest"
        else:
            decision = "refuse"
        return SearchResult(query=query, decision=decision, matches=matches)

    def candidates_for_calibration(
        self, query: str, *, limit: int = 5
    ) -> tuple[tuple[str, tuple[float, ...]], ...]:
        """Top candidates with their raw features, for :func:`fit_calibration`."""
        state = self._state
        found = state.index.candidates(query, state.calibration.fusion, limit=limit)
        return tuple((state.index.articles[c.article].id, c.features) for c in found)
