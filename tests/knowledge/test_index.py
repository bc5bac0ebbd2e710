"""The index's query path: its shortcuts must give what the plain definitions give."""

from __future__ import annotations

import json
import math
import random
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from knowledge import KnowledgeBase, kernels
from knowledge import index as index_module
from knowledge import text as text_module
from knowledge.calibration import DEFAULT, N_FEATURES, Calibration
from knowledge.index import SearchIndex, _log_sum_exp, _Postings, _top
from knowledge.text import normalise
from tests.conftest import need_peer

SAMPLE = Path(__file__).resolve().parents[2] / "knowledge" / "sample"


def test_postings_dot_matches_a_dense_product() -> None:
    rng = np.random.default_rng(3)
    n_feats, n_rows = 40, 25
    dense = rng.random((n_feats, n_rows)).astype(np.float32)
    dense[rng.random((n_feats, n_rows)) < 0.7] = 0.0
    dense[7] = 0.0  # a feature without postings
    feat, row = np.nonzero(dense)
    postings = _Postings(
        feat.astype(np.int32),
        row.astype(np.int32),
        dense[feat, row],
        n_feats,
        n_rows,
    )
    ids = [3, 7, 12, 39]
    weights = [0.5, 2.0, 0.25, 1.5]
    expected = np.asarray(weights, np.float32) @ dense[ids]
    np.testing.assert_allclose(postings.dot(ids, weights), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(postings.dot(ids), dense[ids].sum(axis=0), rtol=1e-5, atol=1e-6)
    assert not postings.dot([7], [1.0]).any()


@pytest.mark.parametrize("n", [5, 8, 300, 3000])
def test_top_returns_the_k_largest_positive_scores(n: int) -> None:
    rng = np.random.default_rng(n)
    scores = rng.normal(size=n)
    got = sorted(_top(scores, 8))
    order = np.argsort(-scores, kind="stable")
    expected = sorted(int(i) for i in order[:8] if scores[i] > 0)
    assert got == expected


def _random_postings(
    rng: np.random.Generator, n_feats: int, n_rows: int, density: float
) -> tuple[_Postings, npt.NDArray[np.float32]]:
    """Postings with positive weights rounded to a coarse grid (so that sums tie)."""
    dense = (np.round(rng.random((n_feats, n_rows)) * 4) / 4 + 0.25).astype(np.float32)
    dense[rng.random((n_feats, n_rows)) > density] = 0.0
    feat, row = np.nonzero(dense)
    postings = _Postings(
        feat.astype(np.int32), row.astype(np.int32), dense[feat, row], n_feats, n_rows
    )
    return postings, dense


NO_NUMBA = "numba is not installed (the 'fast' extra: pip install -e '.[fast]')"
KERNELS = [
    pytest.param((kernels.knn_top_numpy, kernels.dense_scores_numpy), id="numpy"),
    pytest.param(
        (kernels.knn_top, kernels.dense_scores), id="compiled", marks=pytest.mark.compiled
    ),
]


@pytest.fixture(autouse=True)
def _compiled_kernels_present(request: pytest.FixtureRequest) -> None:
    """Tests marked ``compiled`` need numba: skipped without it, failed under CI=true
    (make installs the extra)."""
    if request.node.get_closest_marker("compiled"):
        need_peer(kernels.COMPILED, NO_NUMBA)


@pytest.mark.parametrize(("n_rows", "density"), [(5, 0.5), (40, 0.2), (300, 0.05), (3000, 0.01)])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("impl", KERNELS)
def test_postings_top_is_the_k_best_sums_best_first(
    n_rows: int,
    density: float,
    weighted: bool,
    impl: tuple[Any, Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``top`` ranks exactly as sorting ``dot`` by (-sum, row): ties go to the lower row,
    rows without a posting are never returned, and the scratch is clean afterwards."""
    monkeypatch.setattr(index_module, "knn_top", impl[0])
    rng = np.random.default_rng(n_rows)
    postings, _ = _random_postings(rng, 30, n_rows, density)
    for trial in range(20):
        ids = rng.choice(30, size=int(rng.integers(1, 8)), replace=False).tolist()
        weights = [1.0 + math.log(int(c)) for c in rng.integers(1, 4, len(ids))]
        tf = weights if weighted else None
        sums = postings.dot(ids, tf)
        expected = sorted((-float(v), i) for i, v in enumerate(sums.tolist()) if v > 0)[:32]
        rows, got = postings.top(ids, tf, 32)
        assert rows == [i for _, i in expected], trial
        assert got == [-v for v, _ in expected]  # the same arithmetic: equal, not close
        assert not postings._scratch.acc.any()
    assert postings.top([], None, 32) == ([], [])


def test_postings_top_keeps_a_scratch_per_thread() -> None:
    """Threads searching one index at once each get the answer they would get alone."""
    rng = np.random.default_rng(11)
    postings, _ = _random_postings(rng, 50, 2000, 0.05)
    queries = [rng.choice(50, size=5, replace=False).tolist() for _ in range(200)]
    alone = [postings.top(ids, None, 32) for ids in queries]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(5):
            assert list(pool.map(lambda ids: postings.top(ids, None, 32), queries)) == alone


@pytest.mark.parametrize(
    ("w_lin", "w_cent"), [(1.0, 0.0), (0.0, 1.0), (0.7, 0.3), (1.0, -0.5), (0.0, 0.0)]
)
@pytest.mark.parametrize("impl", KERNELS)
def test_dense_scores_match_the_matrix_definition(
    w_lin: float, w_cent: float, impl: tuple[Any, Any]
) -> None:
    dense_scores = impl[1]
    rng = np.random.default_rng(int(10 * w_lin + 100 * w_cent) % 97)
    n_feats, n_art = 60, 45
    dense = rng.normal(size=(n_feats + 1, 3 * n_art)).astype(np.float32)
    dense[:, :n_art] = np.abs(dense[:, :n_art]) * (rng.random((n_feats + 1, n_art)) < 0.3)
    dense[:, 2 * n_art :] = rng.random((n_feats + 1, n_art)) < 0.2
    dense[:, n_art : 2 * n_art] *= 3.0
    rows = [*rng.choice(n_feats, size=9, replace=False).tolist(), n_feats]
    weights = [*rng.random(9).tolist(), 1.0]
    coverage = [float(rng.random()) if i % 3 == 0 else 0.0 for i in range(9)] + [0.0]
    out = np.zeros((3, n_art))
    energy, best = dense_scores(
        dense,
        np.asarray(rows, np.int64),
        np.asarray(weights, np.float32),
        np.asarray(coverage, np.float32),
        out,
        w_lin,
        w_cent,
        8,
    )
    gathered = dense[rows].astype(np.float64)
    cent = np.asarray(weights, np.float32).astype(np.float64) @ gathered[:, :n_art]
    logits = np.asarray(weights, np.float32).astype(np.float64) @ gathered[:, n_art : 2 * n_art]
    cov = np.asarray(coverage, np.float32).astype(np.float64) @ gathered[:, 2 * n_art :]
    np.testing.assert_allclose(out[0], cent, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[1], logits, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out[2], cov, rtol=1e-5, atol=1e-6)
    assert energy == pytest.approx(math.log(np.exp(out[1]).sum()), rel=1e-9)
    if w_cent == 0.0 and w_lin > 0.0:
        key = out[1]
        eligible = range(n_art)
    else:
        key = w_lin * np.exp(out[1] - energy) + w_cent * out[0]
        eligible = [a for a in range(n_art) if key[a] > 0]
    expected = sorted(eligible, key=lambda a: (-key[a], a))[:8]
    assert best.tolist() == expected
    if w_lin == 0.0 and w_cent == 0.0:
        assert best.tolist() == []


@pytest.mark.parametrize("shift", [0.0, 200.0, -200.0])
def test_log_sum_exp_is_stable_far_from_zero(shift: float) -> None:
    logits = (np.linspace(-5, 7, 40) + shift).astype(np.float32)
    expected = shift + math.log(sum(math.exp(x - shift) for x in logits.tolist()))
    assert _log_sum_exp(logits) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    "text",
    [
        "my wi-fi and e-mail are down",
        "can't log in (sign-on page) since the set up",
        "2FA / two step verification on Microsoft 365 and o365",
        "office 365 vs office365; ms teams; cell-phone; smart phone",
        "signing on to the website; a logon; wifis",
        "the user_name field; café ﬁle",
    ],
)
def test_phrase_prefilter_changes_nothing(text: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """normalise skips the phrase pass when its prefilter finds nothing: same result as
    always running it."""
    filtered = normalise.__wrapped__(text)
    monkeypatch.setattr(text_module, "_PHRASE_HINT", re.compile(""))  # always "found"
    assert normalise.__wrapped__(text) == filtered
    for word in text.lower().split():  # also each word alone, mostly without a phrase
        monkeypatch.undo()
        alone = normalise.__wrapped__(word)
        monkeypatch.setattr(text_module, "_PHRASE_HINT", re.compile(""))
        assert normalise.__wrapped__(word) == alone


def test_confidences_match_confidence_row_by_row() -> None:
    rng = random.Random(5)
    fitted = Calibration(
        mean=tuple(rng.uniform(-1, 1) for _ in range(N_FEATURES)),
        scale=tuple(rng.uniform(0.5, 2) for _ in range(N_FEATURES)),
        coef=tuple(rng.uniform(-2, 2) for _ in range(N_FEATURES)),
        intercept=0.3,
        answer_threshold=0.6,
        suggest_threshold=0.3,
    )
    rows = [tuple(rng.uniform(-3, 3) for _ in range(N_FEATURES)) for _ in range(6)]
    for calibration in (DEFAULT, fitted):
        batch = calibration.confidences(rows)
        for row, conf in zip(rows, batch, strict=True):
            assert conf == pytest.approx(calibration.confidence(row), rel=1e-9, abs=1e-12)
    assert fitted.confidences([]) == []
    with pytest.raises(ValueError):
        fitted.confidences([(1.0, 2.0)])


@pytest.fixture(scope="module")
def sample_kb() -> KnowledgeBase:
    return KnowledgeBase.load(SAMPLE)


@pytest.mark.compiled
def test_numpy_and_compiled_kernels_rank_alike(
    sample_kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fallback without numba gives the same candidates as the compiled kernels, on
    every realistic query of the sample KB's eval set."""
    queries = [
        json.loads(line)["query"]
        for line in (Path(__file__).parent / "sample_queries.jsonl").read_text().splitlines()
        if line.strip()
    ]
    index = sample_kb.index
    compiled = [index.candidates(q, DEFAULT.fusion) for q in queries]
    monkeypatch.setattr(index_module, "knn_top", kernels.knn_top_numpy)
    monkeypatch.setattr(index_module, "dense_scores", kernels.dense_scores_numpy)
    fallback = [index.candidates(q, DEFAULT.fusion) for q in queries]
    assert len(queries) > 200
    for q, a, b in zip(queries, compiled, fallback, strict=True):
        assert [c.article for c in a] == [c.article for c in b], q
        for x, y in zip(a, b, strict=True):
            assert x.features == pytest.approx(y.features, rel=1e-6, abs=1e-7), q


QUERIES = [
    "vpn keeps dropping when I work from home",
    "I forgot my password and I'm locked out",
    "new laptop for a starter",
    "printer printers printing",  # repeated stems: sublinear TF
    "zzzz qqqq",
]


def _naive_query(index: SearchIndex, text: str) -> tuple[dict[int, float], dict[int, float]]:
    """The query's unit TF-IDF vector and content-word IDFs, straight from the definition."""
    words = [index_module.stem(w) for w in index_module.normalise(text).split()]
    counts: dict[int, int] = {}
    for feature in index_module.featurise(words):
        fid = index.vocab.get(feature)
        if fid is not None:
            counts[fid] = counts.get(fid, 0) + 1
    raw = {f: (1.0 + math.log(c)) * float(index.idf[f]) for f, c in counts.items()}
    norm = math.sqrt(sum(v * v for v in raw.values())) or 1.0
    content = {w for w in words if w not in index_module.STOP_WORDS} or set(words)
    word_idf = {
        index.vocab[w]: float(index.idf[index.vocab[w]]) for w in content if w in index.vocab
    }
    return {f: v / norm for f, v in raw.items()}, word_idf


@pytest.mark.parametrize("text", QUERIES)
def test_query_vector_matches_the_definition(sample_kb: KnowledgeBase, text: str) -> None:
    index = sample_kb.index
    vector, word_idf = _naive_query(index, text)
    q = index._query(text)
    if not vector:
        assert q is None
        return
    assert q is not None
    got = dict(zip(q.ids, q.weights, strict=True))
    assert got.keys() == vector.keys()
    for f, v in vector.items():
        assert got[f] == pytest.approx(v, rel=1e-5)
    assert dict(zip(q.word_ids, q.word_idf, strict=True)) == pytest.approx(word_idf)
    for fid, pos in zip(q.word_ids, q.word_pos, strict=True):
        assert q.ids[pos] == fid


@pytest.mark.parametrize("text", QUERIES[:4])
def test_candidate_features_hang_together(sample_kb: KnowledgeBase, text: str) -> None:
    index = sample_kb.index
    found = index.candidates(text, DEFAULT.fusion, limit=5)
    assert found
    scores = [c.score for c in found]
    assert scores == sorted(scores, reverse=True)
    w_lin, w_knn, w_top3, w_cent, w_fuzz = DEFAULT.fusion
    vector, word_idf = _naive_query(index, text)
    words = [index_module.stem(w) for w in index_module.normalise(text).split()]
    content = {w for w in words if w not in index_module.STOP_WORDS} or set(words)
    unknown = sum(w not in index.vocab for w in content)
    total_idf = sum(word_idf.values()) + unknown * index.max_idf
    assert index.dense_centroids is not None
    for rank, c in enumerate(found):
        (score, margin, prob, best, top3, cent, fz, coverage, _logit, log_len, _e) = c.features
        assert score == pytest.approx(
            w_lin * prob + w_knn * best + w_top3 * top3 + w_cent * cent + w_fuzz * fz
        )
        other = scores[1] if rank == 0 else scores[0]
        assert margin == pytest.approx(score - (other if len(scores) > 1 else 0.0))
        assert 0.0 <= prob <= 1.0 and 0.0 <= fz <= 1.0 and top3 <= best + 1e-9
        expected_cent = sum(
            v * float(index.dense_centroids[f, c.article]) for f, v in vector.items()
        )
        assert cent == pytest.approx(expected_cent, rel=1e-4, abs=1e-6)
        assert index.dense_presence is not None
        present = sum(v for f, v in word_idf.items() if index.dense_presence[f, c.article] > 0)
        assert coverage == pytest.approx(present / total_idf, rel=1e-5, abs=1e-7)
        assert log_len == pytest.approx(math.log(1 + len(index_module.normalise(text).split())))


def test_word_cache_is_bounded_and_does_not_change_results(
    sample_kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    index = sample_kb.index
    before = [index.candidates(t, DEFAULT.fusion) for t in QUERIES]
    monkeypatch.setattr(index_module, "_WORD_CACHE_SIZE", 3)
    index._word_cache.clear()
    after = [index.candidates(t, DEFAULT.fusion) for t in QUERIES]
    assert len(index._word_cache) <= 3
    assert after == before


def test_sparse_index_of_a_large_kb_ranks_and_refuses(
    sample_kb: KnowledgeBase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above the dense budget (forced here) the sparse path ranks like the dense one."""
    monkeypatch.setattr(index_module, "LINEAR_BUDGET", 0)
    sparse = KnowledgeBase.from_articles(list(sample_kb.articles.values()))
    assert sparse.index.dense_centroids is None and sparse.index.linear_w is None
    for text in QUERIES[:2]:
        dense_best = sample_kb.search(text).best
        sparse_best = sparse.search(text).best
        assert dense_best is not None and sparse_best is not None
        assert sparse_best.article.id == dense_best.article.id
    # One stop word: only character grams are known, which neither the sparse
    # centroids nor the phrasing postings hold, so nothing is a candidate.
    assert sparse.index._query("the") is not None
    result = sparse.search("the")
    assert result.decision == "refuse" and result.matches == ()
