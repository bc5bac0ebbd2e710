"""Baselines for benchmarks/kb_bench.py: rapidfuzz extractOne and bm25s, same queries."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import bm25s
import numpy as np
from rapidfuzz import fuzz, process, utils

from knowledge.evaluation import LabelledQuery


@dataclass(frozen=True, slots=True)
class Ranked:
    ids: list[str]  # best first, one per article
    score: float  # the top score, compared with the fitted threshold


class ExtractOneBaseline:
    """rapidfuzz ``process.extract`` with ``token_sort_ratio`` over every phrasing."""

    name = "rapidfuzz token_sort_ratio"

    def __init__(self, phrasings: dict[str, list[str]]) -> None:
        self.choices: list[str] = []
        self.owner: list[str] = []
        for article_id, texts in phrasings.items():
            for text in texts:
                self.choices.append(utils.default_process(text))
                self.owner.append(article_id)

    def rank(self, query: str) -> Ranked:
        found = process.extract(
            utils.default_process(query), self.choices, scorer=fuzz.token_sort_ratio, limit=30
        )
        ids: list[str] = []
        for _text, _score, index in found:
            if self.owner[index] not in ids:
                ids.append(self.owner[index])
        return Ranked(ids, float(found[0][1]) if found else 0.0)

    def rank_one(self, query: str) -> Ranked:
        """The plain ``extractOne`` call (what the latency column measures)."""
        best = process.extractOne(
            utils.default_process(query), self.choices, scorer=fuzz.token_sort_ratio
        )
        return Ranked([self.owner[best[2]]] if best else [], float(best[1]) if best else 0.0)


class Bm25Baseline:
    """bm25s with one document per article (its title and all its questions)."""

    name = "bm25s (doc per article)"

    def __init__(self, phrasings: dict[str, list[str]]) -> None:
        self.ids = list(phrasings)
        corpus = [" ".join(texts) for texts in phrasings.values()]
        self.retriever = bm25s.BM25()
        self.retriever.index(
            bm25s.tokenize(corpus, stopwords="en", show_progress=False), show_progress=False
        )

    def rank(self, query: str) -> Ranked:
        tokens = bm25s.tokenize([query], stopwords="en", show_progress=False)
        if not tokens.vocab:
            return Ranked([], 0.0)
        k = min(3, len(self.ids))
        docs, scores = self.retriever.retrieve(tokens, k=k, show_progress=False)
        ids = [self.ids[int(d)] for d in docs[0]]
        return Ranked(ids, float(scores[0][0]))

    rank_one = rank


@dataclass(frozen=True, slots=True)
class Scored:
    ranked: list[Ranked]
    latencies_ms: list[float]


def run(
    method: ExtractOneBaseline | Bm25Baseline, queries: Sequence[LabelledQuery], *, one: bool
) -> Scored:
    ranked: list[Ranked] = []
    latencies: list[float] = []
    for q in queries:
        started = time.perf_counter()
        ranked.append(method.rank_one(q.query) if one else method.rank(q.query))
        latencies.append((time.perf_counter() - started) * 1000)
    return Scored(ranked, latencies)


def fit_threshold(ranked: Sequence[Ranked], queries: Sequence[LabelledQuery]) -> float:
    """Same rule as knowledge.calibration: max answered-correct s.t. refused ≥ .94, wrong ≤ .05."""
    scores = np.array([r.score for r in ranked])
    ok = np.array(
        [bool(r.ids) and r.ids[0] == q.expected for r, q in zip(ranked, queries, strict=True)]
    )
    oos = np.array([q.expected is None for q in queries])
    n_in, n_oos = int((~oos).sum()), int(oos.sum())
    best: tuple[float, float] | None = None
    fallback: tuple[float, float] | None = None
    for t in np.unique(scores):
        answered = scores >= t
        correct = (answered & ok).sum() / max(n_in, 1)
        wrong = (answered & ~ok).sum() / len(scores)
        refused = (~answered & oos).sum() / n_oos if n_oos else 1.0
        if refused >= 0.94 and wrong <= 0.05 and (best is None or correct > best[0]):
            best = (float(correct), float(t))
        score = correct - 2 * wrong + refused
        if fallback is None or score > fallback[0]:
            fallback = (float(score), float(t))
    chosen = best or fallback
    assert chosen is not None
    return chosen[1]


def metrics(
    ranked: Sequence[Ranked],
    queries: Sequence[LabelledQuery],
    threshold: float | None,
    latencies: Sequence[float],
) -> dict[str, float | None]:
    """The same metrics (and denominators) as knowledge.evaluation.evaluate."""
    n_in = sum(q.expected is not None for q in queries)
    n_oos = len(queries) - n_in
    top1 = top3 = correct = wrong = refused = 0
    for r, q in zip(ranked, queries, strict=True):
        answered = threshold is not None and bool(r.ids) and r.score >= threshold
        if q.expected is None:
            refused += not answered
            wrong += answered
            continue
        top1 += r.ids[:1] == [q.expected]
        top3 += q.expected in r.ids[:3]
        if answered:
            correct += r.ids[0] == q.expected
            wrong += r.ids[0] != q.expected
    lat = np.asarray(latencies)
    return {
        "n": len(queries),
        "top1": top1 / n_in if n_in else None,
        "top3": top3 / n_in if n_in else None,
        "answered_correct": correct / n_in if threshold is not None and n_in else None,
        "answered_wrong": wrong / len(queries) if threshold is not None else None,
        "oos_refused": refused / n_oos if threshold is not None and n_oos else None,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }
