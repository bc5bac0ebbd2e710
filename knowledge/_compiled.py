"""The numba versions of :mod:`knowledge.kernels` (imported only when numba is installed).

Same arguments, same results as the numpy versions there, in one compiled pass each.
They compile on first use and cache the machine code beside this file (or in numba's
user cache when the package directory is read-only), so only the first process on a
machine pays the compile time; :class:`~knowledge.index.SearchIndex` runs them once
when it is built, so that this happens at start-up, not on someone's first question.
"""

from __future__ import annotations

import numpy as np
from numba import njit

__all__ = ["dense_scores", "knn_top"]


@njit(cache=True, nogil=True, inline="always")
def _worse(score_a: float, row_a: int, score_b: float, row_b: int) -> bool:
    """Does (score_a, row_a) rank below (score_b, row_b)? Higher score first; among equal
    scores, the lower row first."""
    return score_a < score_b or (score_a == score_b and row_a > row_b)


@njit(cache=True, nogil=True)
def _sift_down(scores, rows, size, i):
    """Restore the heap property below ``i`` (the root holds the worst kept entry)."""
    while True:
        left = 2 * i + 1
        if left >= size:
            return
        worst = left
        right = left + 1
        if right < size and _worse(scores[right], rows[right], scores[left], rows[left]):
            worst = right
        if _worse(scores[worst], rows[worst], scores[i], rows[i]):
            scores[i], scores[worst] = scores[worst], scores[i]
            rows[i], rows[worst] = rows[worst], rows[i]
            i = worst
        else:
            return


@njit(cache=True, nogil=True)
def _keep(scores, rows, size, score, row):
    """Offer ``(score, row)`` to the bounded min-heap ``scores``/``rows`` holding ``size``
    entries (capacity ``len(scores)``); returns the new size."""
    k = scores.shape[0]
    if size < k:
        c = size
        scores[c] = score
        rows[c] = row
        while c > 0:
            parent = (c - 1) // 2
            if not _worse(scores[c], rows[c], scores[parent], rows[parent]):
                break
            scores[c], scores[parent] = scores[parent], scores[c]
            rows[c], rows[parent] = rows[parent], rows[c]
            c = parent
        return size + 1
    if k and _worse(scores[0], rows[0], score, row):
        scores[0] = score
        rows[0] = row
        _sift_down(scores, rows, size, 0)
    return size


@njit(cache=True, nogil=True)
def _best_first(scores, rows, size):
    """Empty the heap: its rows and scores, best first."""
    out_scores = np.empty(size, dtype=np.float64)
    out_rows = np.empty(size, dtype=np.int64)
    for i in range(size - 1, -1, -1):
        out_scores[i] = scores[0]
        out_rows[i] = rows[0]
        scores[0] = scores[i]  # the last entry moves to the root; i entries are left
        rows[0] = rows[i]
        _sift_down(scores, rows, i, 0)
    return out_rows, out_scores


@njit(cache=True, nogil=True)
def knn_top(indptr, post_rows, post_weights, ids, tf, acc, touched, k):
    """See :func:`knowledge.kernels.knn_top_numpy`. ``acc`` (float64, all zero on entry
    and again on return) and ``touched`` (int32) are scratch arrays of one entry per row;
    a row's sum is zero exactly until its first posting (the weights are positive)."""
    n_touched = 0
    use_tf = tf.shape[0] > 0
    for j in range(ids.shape[0]):
        f = ids[j]
        start = indptr[f]
        end = indptr[f + 1]
        t = tf[j] if use_tf else np.float32(1.0)
        for p in range(start, end):
            r = post_rows[p]
            value = post_weights[p] * t if use_tf else post_weights[p]
            if acc[r] == 0.0:
                touched[n_touched] = r
                n_touched += 1
            acc[r] += value
    size = 0
    heap_scores = np.empty(k, dtype=np.float64)
    heap_rows = np.empty(k, dtype=np.int64)
    for i in range(n_touched):
        r = touched[i]
        size = _keep(heap_scores, heap_rows, size, acc[r], r)
        acc[r] = 0.0
    return _best_first(heap_scores, heap_rows, size)


@njit(cache=True, nogil=True)
def dense_scores(dense, rows, weights, coverage, out, w_lin, w_cent, k):
    """See :func:`knowledge.kernels.dense_scores_numpy`."""
    n = out.shape[1]
    cent = out[0]
    logit = out[1]
    cov = out[2]
    cent[:] = 0.0
    logit[:] = 0.0
    cov[:] = 0.0
    for j in range(rows.shape[0]):
        line = dense[rows[j]]
        w = weights[j]
        for a in range(n):
            cent[a] += w * line[a]
            logit[a] += w * line[n + a]
        c = coverage[j]
        if c != 0.0:
            for a in range(2 * n, 3 * n):
                cov[a - 2 * n] += c * line[a]
    top = logit.max() if n else 0.0
    total = 0.0
    for a in range(n):
        total += np.exp(logit[a] - top)
    energy = top + np.log(total) if n else 0.0
    by_logit = w_cent == 0.0 and w_lin > 0.0
    size = 0
    heap_scores = np.empty(k, dtype=np.float64)
    heap_rows = np.empty(k, dtype=np.int64)
    for a in range(n):
        if by_logit:
            size = _keep(heap_scores, heap_rows, size, logit[a], a)
        else:
            s = w_lin * np.exp(logit[a] - energy) + w_cent * cent[a]
            if s > 0.0:
                size = _keep(heap_scores, heap_rows, size, s, a)
    return energy, _best_first(heap_scores, heap_rows, size)[0]
