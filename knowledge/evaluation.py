"""Evaluate a knowledge base against labelled queries, and fit its calibration.

A query file is JSON Lines: ``{"query": "...", "expected": "<article id>"}``, or
``"expected": null`` for a query the KB must refuse. The metrics:

- ``n``: number of queries;
- ``top1`` / ``top3``: share of in-scope queries (expected not null) whose expected
  article ranks first / in the first three, whatever the decision;
- ``answered_correct``: share of in-scope queries answered (decision ``answer``) with the
  expected article;
- ``answered_wrong``: share of **all** queries answered with a wrong article (an
  in-scope query answered with another article, or an out-of-scope query answered at
  all): how often a person gets a wrong answer;
- ``oos_refused``: share of out-of-scope queries refused (decision ``refuse``; a
  suggestion does not count as a refusal); ``null`` when there are none;
- ``p50_ms`` / ``p99_ms``: per-query latency of :meth:`KnowledgeBase.search`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .article import KnowledgeError
from .base import KnowledgeBase
from .calibration import Calibration, LabelledCandidates, fit_calibration

__all__ = ["EvalReport", "LabelledQuery", "calibrate", "evaluate", "read_queries"]

logger = logging.getLogger(__name__)

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class LabelledQuery:
    query: str
    expected: str | None


@dataclass(frozen=True, slots=True)
class EvalReport:
    """The eval metrics; see the module docstring for each denominator."""

    n: int
    top1: float | None
    top3: float | None
    answered_correct: float | None
    answered_wrong: float
    oos_refused: float | None
    p50_ms: float
    p99_ms: float

    def to_dict(self) -> dict[str, float | int | None]:
        return asdict(self)


def read_queries(path: Path) -> list[LabelledQuery]:
    """Read a JSONL query file; raise :class:`KnowledgeError` naming the line on error."""
    queries: list[LabelledQuery] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise KnowledgeError(f"{path}: cannot read: {exc}") from exc
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
            query, expected = item["query"], item.get("expected")
        except (ValueError, KeyError, TypeError) as exc:
            raise KnowledgeError(f"{path}:{number}: invalid query line: {exc}") from exc
        if not isinstance(query, str) or not (expected is None or isinstance(expected, str)):
            raise KnowledgeError(
                f"{path}:{number}: 'query' must be a string, 'expected' a string or null"
            )
        queries.append(LabelledQuery(query, expected))
    return queries


def _share(numerator: int, denominator: int) -> float | None:
    return round(numerator / denominator, 4) if denominator else None


def evaluate(
    kb: KnowledgeBase, queries: Sequence[LabelledQuery], *, progress: Progress | None = None
) -> EvalReport:
    """Search every query once and score the results (see the module docstring)."""
    if not queries:
        raise KnowledgeError("no queries to evaluate")
    unknown = {q.expected for q in queries if q.expected is not None} - set(kb.articles)
    if unknown:
        logger.warning("knowledge.eval.unknown_expected ids=%s", sorted(unknown)[:10])
    latencies: list[float] = []
    top1 = top3 = correct = wrong = refused = n_in = n_oos = 0
    for i, q in enumerate(queries):
        started = time.perf_counter()
        result = kb.search(q.query, limit=5)
        latencies.append((time.perf_counter() - started) * 1000)
        ids = [m.article.id for m in result.matches]
        if q.expected is None:
            n_oos += 1
            refused += result.decision == "refuse"
            wrong += result.decision == "answer"
        else:
            n_in += 1
            top1 += ids[:1] == [q.expected]
            top3 += q.expected in ids[:3]
            if result.decision == "answer":
                if ids[0] == q.expected:
                    correct += 1
                else:
                    wrong += 1
        if progress is not None:
            progress(i + 1)
    lat = np.asarray(latencies)
    return EvalReport(
        n=len(queries),
        top1=_share(top1, n_in),
        top3=_share(top3, n_in),
        answered_correct=_share(correct, n_in),
        answered_wrong=round(wrong / len(queries), 4),
        oos_refused=_share(refused, n_oos),
        p50_ms=round(float(np.percentile(lat, 50)), 4),
        p99_ms=round(float(np.percentile(lat, 99)), 4),
    )


def calibrate(
    kb: KnowledgeBase,
    queries: Iterable[LabelledQuery],
    *,
    min_refused: float = 0.94,
    max_wrong: float = 0.05,
    progress: Progress | None = None,
) -> Calibration:
    """Fit a :class:`Calibration` for ``kb`` on labelled (validation) queries."""
    labelled: list[LabelledCandidates] = []
    for i, q in enumerate(queries):
        labelled.append(LabelledCandidates(q.expected, kb.candidates_for_calibration(q.query)))
        if progress is not None:
            progress(i + 1)
    return fit_calibration(
        labelled, fusion=kb.calibration.fusion, min_refused=min_refused, max_wrong=max_wrong
    )
