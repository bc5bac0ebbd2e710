"""The numeric inner loops of a query: numba-compiled when numba is installed, numpy
otherwise.

A query touches a few thousand postings and a few hundred scores. In numpy each step
(gather, sum, threshold, partition, sort) is a separate call whose fixed cost, several
microseconds on a small machine, outweighs the arithmetic; the compiled versions
(:mod:`knowledge._compiled`) do each kernel in one pass, about a third less CPU per
search on CLINC150, for about 130 MB more memory per process (numba and LLVM). Both
versions take the same arguments and give the same results: the knn sums bit for bit
(float32 products, float64 sums, in the same order), the dense scores to within float
rounding (float64 sums), the same selection (best first, ties to the lower index).
numba is the ``fast`` extra (``pip install 'deskbot[fast]'``);
:data:`COMPILED` says which one runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

import numpy as np
import numpy.typing as npt

__all__ = ["COMPILED", "dense_scores", "dense_scores_numpy", "knn_top", "knn_top_numpy"]

logger = logging.getLogger(__name__)

Array = npt.NDArray[Any]


def _best(keys: Array, candidates: Array, k: int) -> npt.NDArray[np.int64]:
    """The (at most) ``k`` of ``candidates`` (ascending indices) with the largest
    ``keys``, best first, ties to the lower index."""
    if len(candidates) > k:
        values = keys[candidates]
        cut = len(candidates) - k
        part = np.argpartition(values, cut)
        kth = values[part[cut]]
        if np.count_nonzero(values == kth) == 1:  # nearly always: the cut is clean
            candidates = candidates[part[cut:]]
        else:  # rows tied with the k-th value may lie on both sides: the lowest win
            above = candidates[values > kth]
            tied = candidates[values == kth][: k - len(above)]
            candidates = np.concatenate((above, tied))
    order = np.lexsort((candidates, -keys[candidates]))
    return candidates[order].astype(np.int64)


def knn_top_numpy(
    indptr: Array,
    post_rows: Array,
    post_weights: Array,
    ids: Array,
    tf: Array,
    acc: Array,
    touched: Array,
    k: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The ``k`` rows with the largest sums of ``tf[i] × weight`` over the postings of
    ``ids[i]`` (``tf`` empty: all 1), best first (ties: lower row first), as
    ``(rows, sums)``. Postings weights are positive, so only rows with a posting count.

    ``acc`` and ``touched`` are the compiled version's scratch arrays (unused here).
    """
    bounds = indptr.data  # Python ints without a numpy call per feature
    lengths: list[int] = []
    row_parts: list[Array] = []
    value_parts: list[Array] = []
    for f in ids.tolist():
        start, end = bounds[f], bounds[f + 1]
        lengths.append(end - start)
        row_parts.append(post_rows[start:end])
        value_parts.append(post_weights[start:end])
    if not any(lengths):
        return np.zeros(0, np.int64), np.zeros(0)
    values = np.concatenate(value_parts)
    if len(tf):
        values *= np.repeat(tf, lengths)  # float32 products, as the compiled loop
    sums = cast(
        "npt.NDArray[np.float64]",  # float64: bincount with weights
        np.bincount(np.concatenate(row_parts), weights=values, minlength=len(acc)),
    )
    best = _best(sums, np.flatnonzero(sums > 0), k)
    return best, sums[best]


def dense_scores_numpy(
    dense: Array,
    rows: Array,
    weights: Array,
    coverage: Array,
    out: Array,
    w_lin: float,
    w_cent: float,
    k: int,
) -> tuple[float, npt.NDArray[np.int64]]:
    """Score every article from the dense matrix (centroids | linear | presence blocks of
    ``n`` columns each, see :class:`knowledge.index.SearchIndex`) and pick the best few on
    the part of the fused score that needs no knn.

    ``out`` (float64, ``3 × n``) receives, per article, the centroid cosine (the query
    ``weights`` · the rows' centroid block), the linear logit (the same with the linear
    block; the bias row comes with weight 1) and the coverage mass (``coverage`` · the
    presence block). Returns ``(energy, best)``: the log-sum-exp of the logits and the
    ``k`` articles ranking highest on ``w_lin · softmax + w_cent · cosine`` (only positive
    values), or on the logits alone when ``w_cent`` is 0 and ``w_lin`` positive (the same
    order), best first, ties to the lower article.
    """
    n = out.shape[1]
    # one product gives, side by side, the weights' and the coverage's sums of every
    # block; rows 0, 1 and 5 are the ones wanted (2-4 are cross terms)
    scored = (np.array((weights, coverage), np.float64) @ dense[rows]).reshape(6, n)
    out[0] = scored[0]
    out[1] = scored[1]
    out[2] = scored[5]
    logits = out[1]
    top = float(logits.max())
    energy = top + float(np.log(np.exp(logits - top).sum()))
    if w_cent == 0.0 and w_lin > 0.0:
        return energy, _best(logits, np.arange(n), k)
    keys = w_lin * np.exp(logits - energy) + w_cent * out[0]
    return energy, _best(keys, np.flatnonzero(keys > 0), k)


knn_top: Callable[..., tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]]
dense_scores: Callable[..., tuple[float, npt.NDArray[np.int64]]]
try:
    from knowledge import _compiled
except ImportError:  # numba is the optional "fast" extra
    knn_top, dense_scores = knn_top_numpy, dense_scores_numpy
    COMPILED = False
    logger.debug("knowledge.kernels.numpy (install deskbot[fast] for the compiled ones)")
else:
    knn_top, dense_scores = _compiled.knn_top, _compiled.dense_scores
    COMPILED = True
