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
  and the 8 best phrasings found by knn, per article the best one.

The candidates are the articles of the knn phrasings plus the best few by the part of
the fused score that needs no knn (linear probability, centroid cosine); a weighted sum
ranks them and a logistic model over the top candidate's scores (rank score, its margin
over the runner-up, coverage of the query's words by the article...) turns that into a
confidence in [0, 1]. :mod:`knowledge.calibration` holds the weights.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from array import array
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from typing import Any, NamedTuple, cast

import numpy as np
import numpy.typing as npt
from rapidfuzz import fuzz

from .article import Article
from .kernels import dense_scores, knn_top
from .text import STOP_WORDS, normalise, stem

__all__ = ["LINEAR_BUDGET", "Candidate", "SearchIndex", "featurise"]

logger = logging.getLogger(__name__)

LINEAR_BUDGET = 24_000_000
"""Largest vocabulary × articles weight matrix the linear layer trains (float32, ~96 MB)."""

_TOP_PHRASINGS = 32
_FUZZ_PHRASINGS = 8
_PER_SCORER = 8
_KNN_PRUNE_ABOVE = 50_000
_CHAR_N = 4
_WORD_CACHE_SIZE = 200_000

FloatArray = npt.NDArray[np.float32]
IntArray = npt.NDArray[np.int32]
_NO_WEIGHTS = np.zeros(0, dtype=np.float32)


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
    """Indices of the ``k`` largest positive scores (in no particular order)."""
    n = len(scores)
    if n > 1024:  # large: partitioning many zeros is the slow part
        positive = np.flatnonzero(scores > 0)
        if len(positive) > k:
            part = np.argpartition(scores[positive], len(positive) - k)[-k:]
            positive = positive[part]
        return positive.tolist()  # type: ignore[no-any-return]
    picked = np.argpartition(scores, n - k)[-k:] if n > k else np.arange(n)
    return [i for i, v in zip(picked.tolist(), scores[picked].tolist(), strict=True) if v > 0]


def _log_sum_exp(logits: npt.NDArray[Any]) -> float:
    """``log Σ exp(logits)``; shifted by the largest logit only when the plain sum is
    far from 1 (trained logits stay well inside float64's range: one call fewer)."""
    total = float(np.exp(logits, dtype=np.float64).sum())
    if 1e-30 < total < 1e30:
        return math.log(total)
    top = float(logits.max())
    return top + math.log(float(np.exp(logits - top).sum()))


def _top_fused(
    cent: npt.NDArray[Any], logits: npt.NDArray[Any], energy: float, fusion: Sequence[float]
) -> list[int]:
    """The articles that rank best on the part of the fused score that needs no knn.

    An article outside the knn phrasings scores ``w_lin · probability + w_cent · cosine``
    exactly, so its best few by that sum are the only ones that can reach the top of
    the ranking (or be the runner-up for the margin): one selection instead of one per
    scorer. Only positive sums count (probabilities always are).
    """
    w_lin, w_cent = fusion[0], fusion[3]
    if w_cent == 0.0 and w_lin > 0.0:  # ranks as the probabilities, i.e. the logits
        n = len(logits)
        if n <= _PER_SCORER:
            return list(range(n))
        return np.argpartition(logits, n - _PER_SCORER)[n - _PER_SCORER :].tolist()  # type: ignore[no-any-return]
    if w_lin == 0.0 and w_cent > 0.0:
        partial = cent
    else:
        partial = w_lin * np.exp(logits - energy) + w_cent * cent
    return _top(partial, _PER_SCORER)


class Candidate(NamedTuple):
    """One scored article: its rank score and the per-scorer features behind it."""

    article: int
    score: float
    features: tuple[float, ...]


_WordFeatures = tuple[tuple[int, ...], tuple[float, ...], int, int]
"""A stemmed word's feature ids and their IDFs, its knn feature id and its own id."""


class _Query(NamedTuple):
    words: tuple[str, ...]
    normalised: str
    ids: list[int]
    weights: list[float]
    knn_ids: list[int]
    knn_tf: list[float] | None  # sublinear TF of each knn feature; None: all 1
    knn_norm: float
    word_ids: list[int]
    word_pos: list[int]
    word_idf: list[float]
    unknown_idf: float


class _Postings:
    """Feature → (row, weight) lists in CSR form, summed with one ``bincount`` (or, for
    the best few rows only, one compiled pass: :meth:`top`)."""

    __slots__ = ("indptr", "indptr_view", "rows", "weights", "n_rows", "_scratch")

    def __init__(
        self, feat: IntArray, row: IntArray, weight: FloatArray, n_feats: int, n_rows: int
    ):
        order = np.argsort(feat, kind="stable")
        self.rows: IntArray = row[order].astype(np.int32)
        self.weights: FloatArray = weight[order].astype(np.float32)
        counts = np.bincount(feat, minlength=n_feats)
        self.indptr = np.zeros(n_feats + 1, dtype=np.int64)
        np.cumsum(counts, out=self.indptr[1:])
        self.indptr_view: Sequence[int] = self.indptr.data  # Python ints, no numpy call
        self.n_rows = n_rows
        # top()'s scratch arrays, one pair per thread: an index is searched from any.
        self._scratch = threading.local()

    def dot(
        self, ids: Sequence[int], weights: Sequence[float] | None = None
    ) -> npt.NDArray[np.float64]:
        """Sum of ``weights[i]`` (1 when ``None``) × row weights over the postings of
        ``ids[i]``, per row."""
        indptr, rows, vals = self.indptr_view, self.rows, self.weights
        lengths: list[int] = []
        row_parts: list[IntArray] = []
        val_parts: list[FloatArray] = []
        for f in ids:
            s, e = indptr[f], indptr[f + 1]
            if e > s:
                lengths.append(e - s)
                row_parts.append(rows[s:e])
                val_parts.append(vals[s:e])
            else:
                lengths.append(0)
        if not row_parts:
            return np.zeros(self.n_rows)
        scaled = np.concatenate(val_parts)
        if weights is not None:
            scaled *= np.repeat(np.asarray(weights, np.float32), lengths)
        summed = np.bincount(np.concatenate(row_parts), weights=scaled, minlength=self.n_rows)
        return cast("npt.NDArray[np.float64]", summed)  # float64: bincount with weights

    def top(
        self, ids: Sequence[int], weights: Sequence[float] | None, k: int
    ) -> tuple[list[int], list[float]]:
        """The ``k`` rows with the largest positive :meth:`dot`, best first (ties: the
        lower row first), and their sums; the same arithmetic as :meth:`dot` in one
        compiled pass (:func:`knowledge.kernels.knn_top`). Row weights must be positive."""
        scratch = self._scratch
        acc: npt.NDArray[np.float64] | None = getattr(scratch, "acc", None)
        if acc is None:
            acc = scratch.acc = np.zeros(self.n_rows)
            scratch.touched = np.empty(self.n_rows, dtype=np.int32)
        tf = _NO_WEIGHTS if weights is None else np.asarray(weights, np.float32)
        rows, sums = knn_top(
            self.indptr,
            self.rows,
            self.weights,
            np.asarray(ids, np.int64),
            tf,
            acc,
            scratch.touched,
            k,
        )
        return rows.tolist(), sums.tolist()

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
        # The knn postings carry the feature's IDF too: a query's knn weight is its IDF
        # (times sublinear TF when a feature repeats) over one norm, so the sum of the
        # gathered postings, scaled once, is the cosine with no per-posting product.
        k_feat = feat[keep]
        self.phrasings = _Postings(k_feat, k_row, k_w * self.idf[k_feat], n_feats, self.n_phrasings)
        del k_feat

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
        self._dense: FloatArray | None = None
        if dense_ok:
            # Small enough for dense feature × article matrices. They sit side by side
            # in one matrix (centroids | linear weights | word presence) so that a query
            # gathers its rows once and scores all three with one matrix product. One
            # more row, after the features', holds the linear bias: a query gathers it
            # with weight 1, so the product gives the logits with their bias added.
            n_art = self.n_articles
            dense = np.zeros((n_feats + 1, 3 * n_art), dtype=np.float32)
            dense[c_feat, c_art] = cw
            dense[c_feat[presence], 2 * n_art + c_art[presence]] = 1.0
            self.dense_centroids = dense[:n_feats, :n_art]
            self.dense_presence = dense[:n_feats, 2 * n_art :]
            self._dense = dense
            if train_linear:
                linear_w, self.linear_b = self._train_linear(feat, row, w)
                dense[:n_feats, n_art : 2 * n_art] = linear_w
                dense[n_feats, n_art : 2 * n_art] = self.linear_b
                del linear_w
                self.linear_w = dense[:n_feats, n_art : 2 * n_art]
            else:  # no linear layer: logits are 20 × the centroid cosines
                dense[:n_feats, n_art : 2 * n_art] = 20.0 * self.dense_centroids
        # Per stemmed word: its own feature id (-1 if unknown) and its character grams'
        # ids; filled lazily by queries (bounded, see _word_features).
        self._word_cache: dict[str, _WordFeatures] = {}
        self._bias_row = n_feats  # the dense matrix's row of linear biases
        self._scratch = threading.local()  # per-thread query buffers (_dense_scratch)
        # Element access from Python without numpy's per-call cost (no copies).
        # (memoryview items are floats / bools / ints at run time; typeshed says int.)
        self._idf_view: Sequence[float] = self.idf.data  # type: ignore[assignment]
        self._knn_view: Sequence[bool] = self.knn_feature.data  # type: ignore[assignment]
        self._article_view: Sequence[int] = self.phrasing_article.data
        # Compile (or load from numba's cache) the query kernels now, not on the first
        # question someone asks: an empty query runs both through every type they see.
        self.phrasings.top([], None, _TOP_PHRASINGS)
        if self._dense is not None:
            scored, _ = self._dense_scratch()
            dense_scores(
                self._dense,
                np.zeros(0, np.int64),
                np.zeros(0, np.float32),
                np.zeros(0, np.float32),
                scored,
                1.0,
                0.0,
                _PER_SCORER,
            )
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

    def _train_linear(
        self, feat: IntArray, row: IntArray, w: FloatArray
    ) -> tuple[FloatArray, FloatArray]:
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
        return weights, bias

    # -- query ------------------------------------------------------------------------

    def _word_features(self, word: str) -> _WordFeatures:
        """A stemmed word's known features (its own id first, then its character grams'),
        their IDFs, and its own id for knn (-1: unknown, or not a knn feature)."""
        cached = self._word_cache.get(word)
        if cached is None:
            vocab = self.vocab
            ids = [g for g in map(vocab.get, _char_grams(word)) if g is not None]
            wid = vocab.get(word)
            knn_id = -1
            if wid is not None:
                ids.insert(0, wid)
                if self._knn_view[wid]:
                    knn_id = wid
            idf = self._idf_view
            cached = (tuple(ids), tuple([idf[f] for f in ids]), knn_id, -1 if wid is None else wid)
            if len(self._word_cache) >= _WORD_CACHE_SIZE:
                self._word_cache.clear()  # rare: a flood of unseen words; start over
            self._word_cache[word] = cached
        return cached

    def _query(self, text: str) -> _Query | None:
        """The query's words, unit TF-IDF vector and knn features (``None``: no known
        feature).

        Plain Python over the few dozen features of a query (the arrays are read through
        memoryviews, each word's features and IDFs are cached): numpy's per-call cost
        would outweigh the arithmetic here.
        """
        words = tuple(map(stem, normalise(text).split()))
        cache_get, word_features = self._word_cache.get, self._word_features
        ids: list[int] = []
        raw: list[float] = []
        knn_ids: list[int] = []
        knn_raw: list[float] = []
        for w in words:
            w_ids, w_idf, knn_id, _ = cache_get(w) or word_features(w)
            ids.extend(w_ids)
            raw.extend(w_idf)
            if knn_id >= 0:
                knn_ids.append(knn_id)
                knn_raw.append(w_idf[0])
        if len(words) > 1:
            get, idf, knn_view = self.vocab.get, self._idf_view, self._knn_view
            for a, b in zip(words, words[1:], strict=False):
                bid = get(f"{a} {b}")
                if bid is not None:
                    ids.append(bid)
                    raw.append(idf[bid])
                    if knn_view[bid]:
                        knn_ids.append(bid)
                        knn_raw.append(raw[-1])
        if not ids:
            return None
        knn_tf: list[float] | None = None
        if len(set(ids)) != len(ids):  # some feature repeats: sublinear TF, each once
            counts = Counter(ids)
            ids = list(counts)
            idf = self._idf_view
            raw = [idf[f] * (1.0 + math.log(c)) for f, c in counts.items()]
            knn_ids = list(dict.fromkeys(knn_ids))
            tf = [1.0 + math.log(counts[f]) for f in knn_ids]
            knn_raw = [idf[f] * t for f, t in zip(knn_ids, tf, strict=True)]
            if any(c > 1 for c in map(counts.__getitem__, knn_ids)):
                knn_tf = tf
        norm = math.hypot(*raw)
        # Coverage: the content words (all words when there are none), each once.
        content = [w for w in words if w not in STOP_WORDS] or words
        word_ids: list[int] = []
        word_pos: list[int] = []
        word_idf: list[float] = []
        unknown = 0.0
        for w in set(content):
            w_ids, w_idf, _, wid = cache_get(w) or word_features(w)
            if wid < 0:
                unknown += self.max_idf
            else:
                word_ids.append(wid)
                word_pos.append(ids.index(wid))
                word_idf.append(w_idf[0])
        return _Query(
            words,
            " ".join(words),
            ids,
            [x / norm for x in raw],
            knn_ids,
            knn_tf,
            math.hypot(*knn_raw),
            word_ids,
            word_pos,
            word_idf,
            unknown,
        )

    def _dense_scratch(self) -> tuple[npt.NDArray[np.float64], tuple[Sequence[float], ...]]:
        """This thread's ``3 × articles`` output of :func:`~knowledge.kernels.dense_scores`
        and a memoryview of each row."""
        scratch = self._scratch
        scored: npt.NDArray[np.float64] | None = getattr(scratch, "scored", None)
        if scored is None:
            scored = scratch.scored = np.zeros((3, self.n_articles))
            scratch.views = tuple(row.data for row in scored)
        return scored, scratch.views

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
        if q is None:
            return []
        n_art = self.n_articles
        total_idf = sum(q.word_idf) + q.unknown_idf
        if self._dense is not None:
            # One gather of the query's rows (and the bias row) and one product give,
            # side by side, the centroid cosines, the linear logits and (second row) the
            # IDF mass of the query's content words present in each article.
            cov_row = [0.0] * (len(q.ids) + 1)
            for pos, value in zip(q.word_pos, q.word_idf, strict=True):
                cov_row[pos] = value
            scored, views = self._dense_scratch()
            energy, best = dense_scores(
                self._dense,
                np.asarray(q.ids + [self._bias_row], np.int64),
                np.asarray(q.weights + [1.0], np.float32),
                np.asarray(cov_row, np.float32),
                scored,
                fusion[0],
                fusion[3],
                _PER_SCORER,
            )
            by_scorers = best.tolist()
        else:
            cent = self.centroids.dot(q.ids, q.weights)
            if q.word_ids and total_idf > 0:
                coverage = self.presence.dot(q.word_ids, q.word_idf)
            else:
                coverage = np.zeros(n_art)
            logits = cent * 20.0
            energy = _log_sum_exp(logits)
            if fusion[0] >= 0.0 and fusion[3] >= 0.0:
                # The softmax ranks exactly as the cosine here (no linear layer), and
                # only the few articles sharing a word with the query have one > 0.
                by_scorers = _top(cent, _PER_SCORER)
            else:
                by_scorers = _top_fused(cent, logits, energy, fusion)

        # knn over the phrasings: content words and bigrams, renormalised (the postings
        # hold the IDF, so one scale turns the sums into cosines). Per article: the best
        # phrasing's cosine and the sum of its (up to) three best among the top ones.
        best1: dict[int, float] = {}
        top3: dict[int, list[float]] = {}
        best_fuzz: dict[int, float] = {}
        if q.knn_ids:
            ranked, sums = self.phrasings.top(q.knn_ids, q.knn_tf, _TOP_PHRASINGS)
            scale = 1.0 / q.knn_norm
            article_of = self._article_view
            for p, total in zip(ranked, sums, strict=True):
                a = article_of[p]
                t3 = top3.get(a)
                if t3 is None:
                    best1[a] = total * scale
                    top3[a] = [total * scale]
                elif len(t3) < 3:
                    t3.append(total * scale)
            query_text = q.normalised
            texts = self.phrasing_text
            set_ratio, ratio = fuzz.token_set_ratio, fuzz.ratio
            for p in ranked[:_FUZZ_PHRASINGS]:
                t = texts[p]
                value = (set_ratio(query_text, t) + ratio(query_text, t)) / 200.0
                a = article_of[p]
                if value > best_fuzz.get(a, 0.0):
                    best_fuzz[a] = value

        pool = set(by_scorers)
        pool.update(best1)
        if not pool:  # nothing shares a scored feature with the query
            return []
        members = list(pool)
        if self._dense is not None:
            # scored rows: centroid cosine, logit, coverage mass (read without numpy calls)
            f_cents, f_logits, f_covs = ([view[a] for a in members] for view in views)
        else:  # large KB: gather only the pooled articles, no full-size copies
            f_cents = cent[members].tolist()
            f_logits = logits[members].tolist()
            f_covs = coverage[members].tolist()
        exp = math.exp
        f_probs = [exp(x - energy) for x in f_logits]
        w_lin, w_knn, w_top3, w_cent, w_fuzz = fusion
        mean3 = {a: sum(t3) / 3.0 for a, t3 in top3.items()}
        knn_part = {
            a: w_knn * b1 + w_top3 * mean3[a] + w_fuzz * best_fuzz.get(a, 0.0)
            for a, b1 in best1.items()
        }
        get_knn = knn_part.get
        rows_out = sorted(
            [
                (-(w_lin * p + w_cent * c + get_knn(a, 0.0)), a, i)
                for i, (a, p, c) in enumerate(zip(members, f_probs, f_cents, strict=True))
            ]
        )
        log_len = math.log(1 + len(q.words))
        cov_scale = 1.0 / total_idf if q.word_ids and total_idf > 0 else 0.0
        out: list[Candidate] = []
        first = -rows_out[0][0]
        second = -rows_out[1][0] if len(rows_out) > 1 else 0.0
        for rank, (neg, a, i) in enumerate(rows_out[: max(limit, 1)]):
            score = -neg
            features = (
                score,
                score - (second if rank == 0 else first),
                f_probs[i],
                best1.get(a, 0.0),
                mean3.get(a, 0.0),
                f_cents[i],
                best_fuzz.get(a, 0.0),
                f_covs[i] * cov_scale,
                f_logits[i],
                log_len,
                energy,
            )
            out.append(Candidate(a, score, features))
        return out

    @property
    def nbytes(self) -> int:
        """Approximate memory held by the numeric arrays of the index."""
        total = self.phrasings.nbytes + self.centroids.nbytes + self.presence.nbytes
        total += self.idf.nbytes + self.phrasing_article.nbytes
        if self._dense is not None:  # linear_w and the dense_* matrices are views of it
            total += self._dense.nbytes
        return int(total)
