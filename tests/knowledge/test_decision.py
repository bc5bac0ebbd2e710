from __future__ import annotations

from pathlib import Path

import pytest

from knowledge import KnowledgeBase
from knowledge.calibration import DEFAULT, N_FEATURES, Calibration


def _constant(answer: float, suggest: float) -> Calibration:
    """Every candidate gets confidence sigmoid(0) = 0.5."""
    return Calibration(
        mean=(0.0,) * N_FEATURES,
        scale=(1.0,) * N_FEATURES,
        coef=(0.0,) * N_FEATURES,
        intercept=0.0,
        answer_threshold=answer,
        suggest_threshold=suggest,
    )


@pytest.mark.parametrize(
    ("answer", "suggest", "decision"),
    [(0.4, 0.2, "answer"), (0.6, 0.4, "suggest"), (0.7, 0.6, "refuse")],
)
def test_thresholds_split_answer_suggest_refuse(
    kb_dir: Path, answer: float, suggest: float, decision: str
) -> None:
    kb = KnowledgeBase.load(kb_dir).with_calibration(_constant(answer, suggest))
    result = kb.search("vpn will not connect", limit=3)
    assert result.decision == decision
    assert result.best is not None and result.best.article.id == "vpn-connect"
    assert all(m.confidence == pytest.approx(0.5) for m in result.matches)
    assert (result.answer is not None) == (decision == "answer")
    assert bool(result.suggestions) == (decision == "suggest")


def test_default_calibration_answers_a_close_question_and_refuses_nonsense(kb_dir: Path) -> None:
    kb = KnowledgeBase.load(kb_dir)
    assert kb.calibration is DEFAULT
    hit = kb.search("I forgot my password")
    assert hit.decision == "answer"
    assert hit.best is not None and hit.best.article.id == "password-reset"
    assert 0.0 <= hit.best.confidence <= 1.0
    miss = kb.search("what is the capital of peru")
    assert miss.decision == "refuse"


def test_matches_are_ranked_and_limited(kb_dir: Path) -> None:
    kb = KnowledgeBase.load(kb_dir)
    result = kb.search("printer paper jam", limit=2)
    assert len(result.matches) == 2
    assert result.matches[0].article.id == "printer-jam"
    assert result.matches[0].score >= result.matches[1].score


@pytest.mark.parametrize("query", ["", "   ", "?!", "zzzqqq xxyyzz"])
def test_empty_or_unknown_query_is_refused(kb_dir: Path, query: str) -> None:
    result = KnowledgeBase.load(kb_dir).search(query)
    assert result.decision == "refuse"


def test_normalisation_folds_it_abbreviations(kb_dir: Path) -> None:
    kb = KnowledgeBase.load(kb_dir)
    result = kb.search("Wi-Fi pw for a visitor??")
    assert result.best is not None and result.best.article.id == "wifi-guest"
