"""Confidence model and decision thresholds, with a default and a fit on labelled queries.

The index gives each candidate a feature vector (see
:meth:`knowledge.index.SearchIndex.candidates`). A logistic model over those features
estimates the probability that the top candidate is the right answer; two thresholds
split that probability into *answer*, *suggest* and *refuse*.

:data:`DEFAULT` was fitted on the CLINC150 validation split (never its test split) and is
what a KB nobody calibrated gets. ``deskbot kb calibrate`` refits it on a KB's own
labelled queries and writes :data:`CALIBRATION_FILE` beside the articles.
"""

from __future__ import annotations

import json
import logging
import math
import operator
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .article import KnowledgeError

__all__ = [
    "CALIBRATION_FILE",
    "DEFAULT",
    "DEFAULT_FUSION",
    "Calibration",
    "LabelledCandidates",
    "fit_calibration",
]

logger = logging.getLogger(__name__)

CALIBRATION_FILE = ".deskbot-calibration.json"
N_FEATURES = 11
DEFAULT_FUSION: tuple[float, float, float, float, float] = (1.0, 0.25, 0.25, 0.0, 0.5)
"""Rank-score weights: linear probability, best phrasing, top-3 phrasings, centroid, fuzz."""


@dataclass(frozen=True, slots=True)
class Calibration:
    """Everything that turns candidate features into a confidence and a decision."""

    mean: tuple[float, ...]
    scale: tuple[float, ...]
    coef: tuple[float, ...]
    intercept: float
    answer_threshold: float
    suggest_threshold: float
    fusion: tuple[float, ...] = DEFAULT_FUSION
    source: str = "default"
    fitted_on: dict[str, Any] = field(default_factory=dict)
    # The model folded to ``z = z0 + Σ slope·x``, computed once (not part of the file).
    _slopes: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _z0: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        slopes = tuple(c / s for c, s in zip(self.coef, self.scale, strict=False))
        z0 = self.intercept - sum(k * m for k, m in zip(slopes, self.mean, strict=False))
        object.__setattr__(self, "_slopes", slopes)
        object.__setattr__(self, "_z0", z0)

    def confidence(self, features: Sequence[float]) -> float:
        """Probability in [0, 1] that the candidate with these features is the right answer."""
        z = self.intercept
        for x, m, s, c in zip(features, self.mean, self.scale, self.coef, strict=True):
            z += c * (x - m) / s
        if z >= 0:
            return 1.0 / (1.0 + math.exp(-z))
        e = math.exp(z)
        return e / (1.0 + e)

    def confidences(self, rows: Sequence[Sequence[float]]) -> list[float]:
        """:meth:`confidence` for several candidates at once (plain Python: a query has a
        handful of candidates, too few for numpy's per-call cost to pay off)."""
        if not rows:
            return []
        slopes, z0 = self._slopes, self._z0
        out: list[float] = []
        for row in rows:
            if len(row) != len(slopes):
                raise ValueError(f"expected {len(slopes)} features, got {len(row)}")
            z = z0 + sum(map(operator.mul, slopes, row))
            z = min(max(z, -500.0), 500.0)
            out.append(1.0 / (1.0 + math.exp(-z)))
        return out

    def to_json(self) -> str:
        data = asdict(self)
        for name in ("source", "_slopes", "_z0"):
            data.pop(name)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_file(cls, path: Path) -> Calibration:
        """Read a calibration file; raise :class:`KnowledgeError` naming it when invalid."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            calibration = cls(
                mean=tuple(float(x) for x in data["mean"]),
                scale=tuple(float(x) for x in data["scale"]),
                coef=tuple(float(x) for x in data["coef"]),
                intercept=float(data["intercept"]),
                answer_threshold=float(data["answer_threshold"]),
                suggest_threshold=float(data["suggest_threshold"]),
                fusion=tuple(float(x) for x in data.get("fusion", DEFAULT_FUSION)),
                source=str(path),
                fitted_on=dict(data.get("fitted_on", {})),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise KnowledgeError(f"{path}: invalid calibration file: {exc}") from exc
        lengths = {len(calibration.mean), len(calibration.scale), len(calibration.coef)}
        if lengths != {N_FEATURES} or len(calibration.fusion) != len(DEFAULT_FUSION):
            raise KnowledgeError(f"{path}: calibration file has the wrong number of weights")
        if not 0.0 <= calibration.suggest_threshold <= calibration.answer_threshold <= 1.0:
            raise KnowledgeError(f"{path}: thresholds must satisfy 0 <= suggest <= answer <= 1")
        return calibration


TRANSFERABLE = (1, 2, 3, 6, 7)
"""Features whose scale does not depend on the KB's size: margin, linear probability,
best phrasing cosine, fuzz, coverage (raw logits and energy grow with the phrasing count)."""

# Printed by benchmarks/kb_default_calibration.py: CLINC150 val only, on the full
# 150-intent KB and on each domain as a 15-intent KB (other domains out of scope), with
# the size-independent features only. See docs/knowledge.md.
DEFAULT = Calibration(
    mean=(0, 0.821348, 0.681086, 0.499752, 0, 0, 0.729939, 0.634281, 0, 0, 0),
    scale=(1, 0.547648, 0.332348, 0.211825, 1, 1, 0.180336, 0.344574, 1, 1, 1),
    coef=(0, 1.02842, 1.12048, -0.512192, 0, 0, 0.656214, 1.31447, 0, 0, 0),
    intercept=1.95619,
    answer_threshold=0.612688,
    suggest_threshold=0.252437,
    fusion=(1, 0.25, 0.25, 0, 0.5),
    source="default",
    fitted_on={"queries": 8100, "in_scope": 6000, "out_of_scope": 2100},
)


@dataclass(frozen=True, slots=True)
class LabelledCandidates:
    """One labelled query's top candidates: (article id, features) best first."""

    expected: str | None
    candidates: tuple[tuple[str, tuple[float, ...]], ...]


def _fit_logistic(
    x: np.ndarray, y: np.ndarray, weights: np.ndarray, *, l2: float = 1e-3
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale < 1e-9] = 1.0
    z = np.c_[(x - mean) / scale, np.ones(len(x))]
    w = np.zeros(z.shape[1])
    total = weights.sum()
    for _ in range(100):
        p = 1.0 / (1.0 + np.exp(-np.clip(z @ w, -30, 30)))
        grad = z.T @ ((p - y) * weights) / total + l2 * w
        hess = (z * (weights * p * (1 - p))[:, None]).T @ z / total + l2 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return mean, scale, w[:-1], float(w[-1])


def fit_calibration(
    labelled: Sequence[LabelledCandidates],
    *,
    fusion: Sequence[float] = DEFAULT_FUSION,
    min_refused: float = 0.94,
    max_wrong: float = 0.05,
    oos_weight: float = 0.33,
    columns: Sequence[int] | None = None,
    suggest_refused: float | None = None,
) -> Calibration:
    """Fit the confidence model and thresholds on labelled queries.

    The answer threshold maximises the share of in-scope queries answered correctly
    subject to (a) answering wrongly at most ``max_wrong`` of all queries and (b) when
    out-of-scope queries (``expected is None``) are present, refusing at least
    ``min_refused`` of them. The suggest threshold is the lowest value that still
    refuses ``suggest_refused`` (default ``min_refused``) of out-of-scope queries (half
    the answer threshold without any). Out-of-scope queries are up-weighted in the fit
    (``oos_weight`` of the in-scope weight in total) because they decide the threshold.
    ``columns`` restricts the model to some features (the others get weight 0):
    :data:`DEFAULT` uses only the ones whose scale does not depend on the KB's size.
    """
    if not labelled:
        raise KnowledgeError("calibration needs at least one labelled query")
    rows: list[tuple[float, ...]] = []
    correct: list[bool] = []
    oos: list[bool] = []
    for item in labelled:
        if item.candidates:
            top_id, feats = item.candidates[0]
        else:
            top_id, feats = "", (0.0,) * N_FEATURES
        rows.append(feats)
        correct.append(item.expected is not None and top_id == item.expected)
        oos.append(item.expected is None)
    x = np.asarray(rows, dtype=np.float64)
    if columns is not None:
        unused = [c for c in range(N_FEATURES) if c not in set(columns)]
        x[:, unused] = 0.0
    y = np.asarray(correct, dtype=np.float64)
    is_oos = np.asarray(oos)
    n_in, n_oos = int((~is_oos).sum()), int(is_oos.sum())
    weights = np.ones(len(y))
    if n_oos and n_in:
        weights[is_oos] = oos_weight * n_in / n_oos
    if y.min() == y.max():
        raise KnowledgeError("calibration needs both correctly and wrongly matched queries")
    mean, scale, coef, intercept = _fit_logistic(x, y, weights)
    z = ((x - mean) / scale) @ coef + intercept
    conf = 1.0 / (1.0 + np.exp(-np.clip(z, -30, 30)))

    ok = y.astype(bool)
    best: tuple[float, float] | None = None
    fallback: tuple[float, float] | None = None
    for t in np.unique(np.round(conf, 6)):
        answered = conf >= t
        share_correct = (answered & ok).sum() / max(n_in, 1)
        share_wrong = (answered & ~ok).sum() / len(y)
        refused = (~answered & is_oos).sum() / n_oos if n_oos else 1.0
        if refused >= min_refused and share_wrong <= max_wrong:
            if best is None or share_correct > best[0]:
                best = (float(share_correct), float(t))
        score = share_correct - 2 * share_wrong + refused
        if fallback is None or score > fallback[0]:
            fallback = (float(score), float(t))
    if best is None:
        assert fallback is not None
        logger.warning(
            "knowledge.calibration.infeasible min_refused=%s max_wrong=%s", min_refused, max_wrong
        )
    answer_threshold = (best or fallback or (0.0, 0.5))[1]
    if n_oos:
        oos_conf = np.sort(conf[is_oos])
        k = math.ceil((min_refused if suggest_refused is None else suggest_refused) * n_oos)
        suggest_threshold = float(oos_conf[k - 1]) + 1e-6 if k <= n_oos else answer_threshold
        suggest_threshold = min(suggest_threshold, answer_threshold)
    else:
        suggest_threshold = answer_threshold / 2
    return Calibration(
        mean=tuple(float(v) for v in mean),
        scale=tuple(float(v) for v in scale),
        coef=tuple(float(v) for v in coef),
        intercept=intercept,
        answer_threshold=round(answer_threshold, 6),
        suggest_threshold=round(suggest_threshold, 6),
        fusion=tuple(float(f) for f in fusion),
        source="fitted",
        fitted_on={"queries": len(y), "in_scope": n_in, "out_of_scope": n_oos},
    )
