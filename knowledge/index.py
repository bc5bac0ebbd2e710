"""The search index: sparse TF-IDF postings, a small trained linear layer, rapidfuzz.

A query goes through four scorers, all over the same normalised features (words,
word bigrams and character 4-grams of words, see :func:`featurise`):

- **knn**: cosine to every phrasing (postings → ``numpy.bincount``), per article the
  mean of its best three phrasings, and its single best one;
- **centroid**: cosine to each article's mean phrasing vector;
- **linear**: a softmax layer trained at build time on the articles' own phrasings,
  which learns which terms tell near-duplicate articles apart (only while the weight
  matrix fits :data:`LINEAR_BUDGET`; larger KBs use a softmax over centroid scores);
- **fuzz**: rapidfuzz ``token_set_ratio`` and ``ratio`` between the normalised query
  and the best phrasings found by knn (``process.cdist``), per article the best one.

The candidates are the union of each scorer's top few articles; a weighted sum ranks
them and a logistic model over the top candidate's scores (rank score, its margin over
the runner-up, coverage of the query's words by the article...) turns that into a
confidence in [0, 1]. :mod:`knowledge.calibration` holds the weights.
"""

from __future__ import annotations

import gc
import logging
import math
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from rapidfuzz import fuzz, process

from .article import Article
from .text import STOP_WORDS, normalise, stem

__all__ = ["LINEAR_BUDGET", "Candidate", "SearchIndex", "featurise"]

logger = logging.getLogger(__name__)

LINEAR_BUDGET = 24_000_000
"""Largest vocabulary × articles weight matrix the linear layer trains (float32, ~96 MB)."""

_TOP_PHRASINGS = 32
_FUZZ_PHRASINGS = 16
_PER_SCORER = 8
_KNN_PRUNE_ABOVE = 50_000
_CHAR_N = 4

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int32]


@lru_cache(maxsize=65536)
def _char_grams(word: str) -> tuple[str, ...]:
    padded = f"<{word}>"
    if len(padded) <= _CHAR_N:
        return ("#" + padded,)
    return tuple("#" + padded[i : i + _CHAR_N] for i in range(len(padded) - _CHAR_N + 1))


def featurise(words: Sequence[str]) -> list[str]:
    """Features of a stemmed token list: words, bigrams and character 4-grams."""
    feats = list(words)
    feats.extend(f"{a} {b}" for a, b in zip(words, words[1:], strict=False))
    for w in words:
        feats.extend(_char_grams(w))
    return feats


def _top(scores: npt.NDArray[Any], k: int) -> list[int]:
    """Indices of the ``k`` largest positive scores, best first (ties: lower index)."""
    if len(scores) <= 1024:  # small: one sort beats three numpy calls
        order = np.argsort(-scores, kind="stable")[:k]
        return [int(i) for i in order if scores[i] > 0]
    positive = np.flatnonzero(scores > 0)  # partitioning many zeros is the slow part
    if len(positive) > k:
        part = np.argpartition(scores[positive], len(positive) - k)[-k:]
        positive = positive[part]
    order = np.lexsort((positive, -scores[positive]))
    return positive[order].tolist()  # type: ignore[no-any-return]


@dataclass(frozen=True, slots=True)
class Candidate:
    """One scored article: its rank score and the per-scorer features behind it."""

    article: int
    score: float
    features: tuple[float, ...]


@dataclass(frozen=True, slots=True)
class _Query:
    words: tuple[str, ...]
    normalised: str
    ids: IntArray
    weights: FloatArray
    word_ids: IntArray
    word_idf: FloatArray
    unknown_idf: float


class _Postings:
    """Feature → (row, weight) lists in CSR form, summed with one ``bincount``."""

    __slots__ = ("indptr", "rows", "weights", "n_rows")

    def __init__(
        self, feat: IntArray, row: IntArray, weight: FloatArray, n_feats: int, n_rows: int
    ):
        order = np.argsort(feat, kind="stable")
        self.rows: IntArray = row[order].astype(np.int32)
        self.weights: FloatArray = weight[order].astype(np.float32)
        counts = np.bincount(feat, minlength=n_feats)
        self.indptr = np.zeros(n_feats + 1, dtype=np.int64)
        np.cumsum(counts, out=self.indptr[1:])
        self.n_rows = n_rows

    def dot(self, ids: IntArray, weights: FloatArray) -> npt.NDArray[np.float64]:
        starts = self.indptr[ids]
        ends = self.indptr[ids + 1]
        lengths = ends - starts
        if lengths.sum() == 0:
            return np.zeros(self.n_rows)
        rows = np.concatenate([self.rows[s:e] for s, e in zip(starts, ends, strict=True)])
        vals = np.concatenate([self.weights[s:e] for s, e in zip(starts, ends, strict=True)])
        vals = vals * np.repeat(weights, lengths)
        summed = np.bincount(rows, weights=vals, minlength=self.n_rows)
        return summed.astype(np.float64, copy=False)

    @property
    def nbytes(self) -> int:
        return int(self.rows.nbytes + self.weights.nbytes + self.indptr.nbytes)


class SearchIndex:
    """An immutable index over a list of articles; build once, search from any thread."""

    def __init__(self, articles: Sequence[Article], *, train_linear: bool = True) -> None:
        # The build allocates millions of small objects and frees none of them in
        # cycles; pausing the cyclic GC keeps it from rescanning them over and over.
        gc_enabled = gc.isenabled()
        gc.disable()
        try:
            self._build(articles, train_linear=train_linear)
        finally:
            if gc_enabled:
                gc.enable()

    def _build(self, articles: Sequence[Article], *, train_linear: bool) -> None:
        started = time.perf_counter()
        self.articles = tuple(articles)
        phrasing_article: list[int] = []
        phrasing_text: list[str] = []
        vocab: dict[str, int] = {}
        # Flat (feature, tf) entries in typed arrays, phrasing by phrasing: Python lists
        # of a 100k-article KB's ~30 M entries would take gigabytes.
        feat_a = array("i")
        tf_a = array("f")
        lengths = array("i")
        for a, article in enumerate(self.articles):
            texts = list(article.phrasings)
            if article.keywords:
                texts.append(" ".join(article.keywords))
            for text in texts:
                words = [stem(w) for w in normalise(text).split()]
                if not words:
                    continue
                phrasing_article.append(a)
                phrasing_text.append(" ".join(words))
                counts = Counter(featurise(words))
                feat_a.extend([vocab.setdefault(f, len(vocab)) for f in counts])
                tf_a.extend([1.0 if c == 1 else 1.0 + math.log(c) for c in counts.values()])
                lengths.append(len(counts))
        self.n_articles = len(self.articles)
        self.n_phrasings = len(phrasing_text)
        self.phrasing_article = np.asarray(phrasing_article, dtype=np.int32)
        self.phrasing_text = phrasing_text
        self.vocab = vocab
        n = max(self.n_phrasings, 1)
        feat = np.frombuffer(feat_a, dtype=np.int32).copy()
        row = np.repeat(
            np.arange(self.n_phrasings, dtype=np.int32), np.frombuffer(lengths, dtype=np.int32)
        )
        df = np.bincount(feat, minlength=len(vocab))  # features are unique per phrasing
        self.idf = (np.log((n + 1) / (df.astype(np.float64) + 1)) + 1).astype(np.float32)
        self.max_idf = float(math.log(n + 1) + 1)
        w = np.frombuffer(tf_a, dtype=np.float32) * self.idf[feat]
        del feat_a, tf_a, lengths
        norms = np.sqrt(np.bincount(row, weights=w * w, minlength=self.n_phrasings))
        w = (w / norms[row]).astype(np.float32)
        n_feats = len(vocab)
        # knn uses only content words and bigrams: character grams and stop words have
        # long postings that cost latency, and the linear layer already has them.
        self.knn_feature = np.fromiter(
            (f[0] != "#" and f not in STOP_WORDS for f in vocab), bool, n_feats
        )
        if self.n_phrasings > _KNN_PRUNE_ABOVE:
            # Large KBs: a content word in more than 1 % of all phrasings says little
            # about which one is nearest and its postings dominate the query time.
            self.knn_feature &= df <= self.n_phrasings // 100
        keep = self.knn_feature[feat]
        k_w = w[keep]
        k_row = row[keep]
        k_norm = np.sqrt(np.bincount(k_row, weights=k_w * k_w, minlength=self.n_phrasings))
        k_w = (k_w / np.maximum(k_norm[k_row], 1e-12)).astype(np.float32)
        self.phrasings = _Postings(feat[keep], k_row, k_w, n_feats, self.n_phrasings)

        # Centroids: the mean of an article's unit phrasing vectors, renormalised. Large
        # KBs (no dense matrices) use the knn features only: the postings of character
        # grams and stop words span nearly every article and would dominate the query.
        dense_ok = 1 < self.n_articles and n_feats * self.n_articles <= LINEAR_BUDGET
        c_src_feat, c_src_row, c_src_w = (feat, row, w) if dense_ok else (feat[keep], k_row, k_w)
        art = self.phrasing_article[c_src_row].astype(np.int64)
        key = art * n_feats + c_src_feat
        uniq, inverse = np.unique(key, return_inverse=True)
        cw = np.bincount(inverse, weights=c_src_w).astype(np.float32)
        c_art = (uniq // n_feats).astype(np.int32)
        c_feat = (uniq % n_feats).astype(np.int32)
        c_norm = np.sqrt(np.bincount(c_art, weights=cw * cw, minlength=self.n_articles))
        cw = (cw / np.maximum(c_norm[c_art], 1e-12)).astype(np.float32)
        self.centroids = _Postings(c_feat, c_art, cw, n_feats, self.n_articles)
        # Word presence per article (for coverage): weight 1 where the word occurs.
        self.is_word = np.fromiter((" " not in f and f[0] != "#" for f in vocab), bool, n_feats)
        presence = self.is_word[c_feat]
        self.presence = _Postings(
            c_feat[presence],
            c_art[presence],
            np.ones(int(presence.sum()), dtype=np.float32),
            n_feats,
            self.n_articles,
        )

        self.linear_w: FloatArray | None = None
        self.linear_b: FloatArray | None = None
        self.dense_centroids: FloatArray | None = None
        self.dense_presence: FloatArray | None = None
        if dense_ok:
            # Small enough for dense feature × article matrices: one gather per query.
            dense = np.zeros((n_feats, self.n_articles), dtype=np.float32)
            dense[c_feat, c_art] = cw
            self.dense_centroids = dense
            flags = np.zeros((n_feats, self.n_articles), dtype=np.float32)
            flags[c_feat[presence], c_art[presence]] = 1.0
            self.dense_presence = flags
            if train_linear:
                self._train_linear(feat, row, w)
        self.build_seconds = time.perf_counter() - started
        logger.debug(
            "knowledge.index.built articles=%d phrasings=%d features=%d linear=%s seconds=%.2f",
            self.n_articles,
            self.n_phrasings,
            n_feats,
            self.linear_w is not None,
            self.build_seconds,
        )

    # -- training ---------------------------------------------------------------------

    def _train_linear(self, feat: IntArray, row: IntArray, w: FloatArray) -> None:
        """Softmax regression on the phrasings (mini-batch SGD, vectorised over CSR).

        At least ten epochs and at least ~300 mini-batch updates: a small KB (a few
        hundred phrasings) gets more passes, so that its probabilities are as sharp as a
        large KB's and one calibration transfers between them.
        """
        n_feats, n_art = len(self.vocab), self.n_articles
        weights = np.zeros((n_feats, n_art), dtype=np.float32)
        bias = np.zeros(n_art, dtype=np.float32)
        order = np.argsort(row, kind="stable")
        feat, row, w = feat[order], row[order], w[order]
        indptr = np.zeros(self.n_phrasings + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=self.n_phrasings), out=indptr[1:])
        labels = self.phrasing_article
        rng = np.random.default_rng(0)
        batch = 64
        epochs = min(200, max(10, math.ceil(20_000 / max(self.n_phrasings, 1))))
        for epoch in range(epochs):
            lr = 0.6 / (1.0 + 0.5 * epoch)
            perm = rng.permutation(self.n_phrasings)
            for start in range(0, self.n_phrasings, batch):
                rows = perm[start : start + batch]
                lengths = indptr[rows + 1] - indptr[rows]
                offsets = np.repeat(indptr[rows] - np.cumsum(lengths) + lengths, lengths)
                entries = offsets + np.arange(int(lengths.sum()))
                cols = feat[entries]
                vals = w[entries]
                local = np.repeat(np.arange(len(rows)), lengths)
                contrib = weights[cols] * vals[:, None]
                starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
                logits = np.add.reduceat(contrib, starts, axis=0) + bias
                logits -= logits.max(axis=1, keepdims=True)
                probs = np.exp(logits)
                probs /= probs.sum(axis=1, keepdims=True)
                probs[np.arange(len(rows)), labels[rows]] -= 1.0
                grad = probs[local] * vals[:, None]
                col_order = np.argsort(cols, kind="stable")
                sorted_cols = cols[col_order]
                uniq, first = np.unique(sorted_cols, return_index=True)
                summed = np.add.reduceat(grad[col_order], first, axis=0)
                weights[uniq] -= lr * summed
                bias -= 0.1 * lr * probs.sum(axis=0)
        self.linear_w = weights
        self.linear_b = bias

    # -- query ------------------------------------------------------------------------

    def _query(self, text: str) -> _Query:
        normalised = normalise(text)
        words = tuple(stem(w) for w in normalised.split())
        counts = Counter(featurise(words))
        ids: list[int] = []
        tfs: list[float] = []
        for f, c in counts.items():
            fid = self.vocab.get(f)
            if fid is not None:
                ids.append(fid)
                tfs.append(1.0 + math.log(c))
        id_arr = np.asarray(ids, dtype=np.int32)
        weights = np.asarray(tfs, dtype=np.float32) * self.idf[id_arr]
        norm = float(np.sqrt(weights @ weights)) if len(ids) else 1.0
        weights = weights / norm
        content = {w for w in words if w not in STOP_WORDS} or set(words)
        word_ids: list[int] = []
        unknown = 0.0
        for word in content:
            fid = self.vocab.get(word)
            if fid is None:
                unknown += self.max_idf
            else:
                word_ids.append(fid)
        wid = np.asarray(word_ids, dtype=np.int32)
        return _Query(
            words=words,
            normalised=" ".join(words),
            ids=id_arr,
            weights=weights.astype(np.float32),
            word_ids=wid,
            word_idf=self.idf[wid],
            unknown_idf=unknown,
        )

    def candidates(self, text: str, fusion: Sequence[float], *, limit: int = 5) -> list[Candidate]:
        """The best articles for ``text`` by fused score, best first, with their features.

        Each candidate's eleven features are, in order: rank score, margin over the best
        other candidate, linear probability, best phrasing cosine, mean of the top-3
        phrasing cosines, centroid cosine, fuzz score, coverage of the query's content
        words, raw linear logit, log(1 + query length in words), and the log-sum-exp of
        the linear logits (the same for every candidate of a query).
        """
        if self.n_articles == 0:
            return []
        q = self._query(text)
        if len(q.ids) == 0:
            return []
        if self.dense_centroids is not None:
            cent = q.weights @ self.dense_centroids[q.ids]
        else:
            cent = self.centroids.dot(q.ids, q.weights)
        total_idf = float(q.word_idf.sum()) + q.unknown_idf
        coverage: npt.NDArray[np.floating[Any]]
        if not len(q.word_ids) or total_idf <= 0:
            coverage = np.zeros(self.n_articles)
        elif self.dense_presence is not None:
            coverage = (q.word_idf @ self.dense_presence[q.word_ids]) / total_idf
        else:
            coverage = self.presence.dot(q.word_ids, q.word_idf) / total_idf
        if self.linear_w is not None and self.linear_b is not None:
            logits = q.weights @ self.linear_w[q.ids] + self.linear_b
        else:
            logits = cent * 20.0
        top_logit = float(logits.max())
        probs = np.exp(logits - top_logit)
        total = float(probs.sum())
        probs /= total
        energy = top_logit + math.log(total)

        knn_mask = self.knn_feature[q.ids]
        knn_w = q.weights[knn_mask]
        knn_norm = float(np.sqrt(knn_w @ knn_w))
        if knn_norm > 0:
            phr = self.phrasings.dot(q.ids[knn_mask], knn_w / knn_norm)
        else:
            phr = np.zeros(self.n_phrasings)
        top_p = np.asarray(_top(phr, _TOP_PHRASINGS), dtype=np.int64)
        top_list = top_p.tolist()
        top_scores = phr[top_p].tolist()
        top_articles = self.phrasing_article[top_p].tolist()
        best1: dict[int, float] = {}
        top3: dict[int, list[float]] = {}
        for a, s in zip(top_articles, top_scores, strict=True):
            if s <= 0.0:
                break
            if a not in best1:
                best1[a] = s
                top3[a] = [s]
            elif len(top3[a]) < 3:
                top3[a].append(s)
        n_fuzz = min(_FUZZ_PHRASINGS, len(top_list))
        texts = [self.phrasing_text[p] for p in top_list[:n_fuzz]]
        set_scores = process.cdist([q.normalised], texts, scorer=fuzz.token_set_ratio)[0]
        ratio_scores = process.cdist([q.normalised], texts, scorer=fuzz.ratio)[0]
        best_fuzz: dict[int, float] = {}
        for a, fs, rs in zip(
            top_articles[:n_fuzz], set_scores.tolist(), ratio_scores.tolist(), strict=True
        ):
            value = (fs + rs) / 200.0
            if value > best_fuzz.get(a, 0.0):
                best_fuzz[a] = value

        pool: set[int] = set(best1)
        pool.update(_top(cent, _PER_SCORER))
        if self.linear_w is not None:  # else probs rank exactly as cent
            pool.update(_top(probs, _PER_SCORER))
        w_lin, w_knn, w_top3, w_cent, w_fuzz = fusion
        rows: list[tuple[int, float, float, float, float, float, float, float, float]] = []
        for a in pool:
            t3 = top3.get(a)
            f_top3 = sum(t3) / 3.0 if t3 else 0.0
            f_best = best1.get(a, 0.0)
            f_fuzz = best_fuzz.get(a, 0.0)
            f_lin = float(probs[a])
            f_cent = float(cent[a])
            score = w_lin * f_lin + w_knn * f_best + w_top3 * f_top3 + w_cent * f_cent
            score += w_fuzz * f_fuzz
            row = (
                a,
                score,
                f_lin,
                f_best,
                f_top3,
                f_cent,
                f_fuzz,
                float(coverage[a]),
                float(logits[a]),
            )
            rows.append(row)
        rows.sort(key=lambda r: (-r[1], r[0]))
        log_len = math.log(1 + len(q.words))
        out: list[Candidate] = []
        for i, r in enumerate(rows[: max(limit, 1)]):
            other = rows[1][1] if i == 0 and len(rows) > 1 else (rows[0][1] if i else 0.0)
            out.append(Candidate(r[0], r[1], (r[1], r[1] - other, *r[2:], log_len, energy)))
        return out

    @property
    def nbytes(self) -> int:
        """Approximate memory held by the numeric arrays of the index."""
        total = self.phrasings.nbytes + self.centroids.nbytes + self.presence.nbytes
        total += self.idf.nbytes + self.phrasing_article.nbytes
        for dense in (self.linear_w, self.dense_centroids, self.dense_presence):
            if dense is not None:
                total += dense.nbytes
        return int(total)
