from __future__ import annotations

from pathlib import Path

import pytest

from knowledge import KnowledgeBase, KnowledgeError
from knowledge.calibration import (
    CALIBRATION_FILE,
    N_FEATURES,
    Calibration,
    LabelledCandidates,
    fit_calibration,
)
from knowledge.evaluation import LabelledQuery, calibrate, evaluate


def _item(expected: str | None, top: str, strength: float) -> LabelledCandidates:
    features = (strength,) * N_FEATURES
    return LabelledCandidates(expected, ((top, features), ("other", (0.0,) * N_FEATURES)))


def test_fit_separates_and_respects_the_constraints() -> None:
    labelled = [_item("a", "a", 0.6 + i / 100) for i in range(40)]
    labelled += [_item("a", "b", 0.3 + i / 100) for i in range(5)]  # wrong top match
    labelled += [_item(None, "a", i / 100) for i in range(20)]  # out of scope
    fitted = fit_calibration(labelled)
    assert 0.0 <= fitted.suggest_threshold <= fitted.answer_threshold <= 1.0
    confs = [fitted.confidence(item.candidates[0][1]) for item in labelled]
    answered = [c >= fitted.answer_threshold for c in confs]
    correct = sum(
        a
        for a, item in zip(answered, labelled, strict=True)
        if item.expected == "a" and item.candidates[0][0] == "a"
    )
    oos_answered = sum(
        a for a, item in zip(answered, labelled, strict=True) if item.expected is None
    )
    assert correct >= 38
    assert oos_answered <= 1  # refuses >= 94 % of 20


def test_fit_needs_both_outcomes() -> None:
    with pytest.raises(KnowledgeError):
        fit_calibration([_item("a", "a", 0.9)])


def test_calibration_file_round_trip_and_loader_reads_it(kb_dir: Path) -> None:
    kb = KnowledgeBase.load(kb_dir)
    queries = [
        LabelledQuery("forgot my password", "password-reset"),
        LabelledQuery("paper stuck in printer", "printer-jam"),
        LabelledQuery("vpn drops all the time", "vpn-connect"),
        LabelledQuery("guest wifi", "wifi-guest"),
        LabelledQuery("authenticator on my new phone", "mfa-new-phone"),
        LabelledQuery("map the finance drive", "shared-drive"),
        LabelledQuery("book a meeting room", None),
        LabelledQuery("what's for lunch in the canteen", None),
        LabelledQuery("how tall is mount everest", None),
    ]
    fitted = calibrate(kb, queries)
    (kb_dir / CALIBRATION_FILE).write_text(fitted.to_json())
    assert Calibration.from_file(kb_dir / CALIBRATION_FILE).coef == pytest.approx(fitted.coef)
    assert kb.refresh_if_changed() is True  # the calibration file is watched too
    assert kb.calibration.source == str(kb_dir / CALIBRATION_FILE)
    report = evaluate(kb, queries)
    assert report.oos_refused == 1.0
    assert report.answered_wrong == 0.0


def test_invalid_calibration_file_is_reported_and_default_used(kb_dir: Path) -> None:
    (kb_dir / CALIBRATION_FILE).write_text('{"mean": [1]}')
    kb = KnowledgeBase.load(kb_dir)
    assert kb.calibration.source.startswith("default")
    assert any(CALIBRATION_FILE in e for e in kb.errors)
