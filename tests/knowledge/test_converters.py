from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from knowledge import KnowledgeBase
from knowledge.cli import app
from knowledge.converters import import_banking77, import_clinc150

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "kb"
if not DATA.is_dir() and os.environ.get("CI", "").lower() == "true":
    raise RuntimeError(f"{DATA} is missing: under CI=true the shared data must be there")
pytestmark = pytest.mark.skipif(
    not DATA.is_dir(), reason="../shared/data is not beside the checkout"
)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_clinc150_slice(tmp_path: Path) -> None:
    out = tmp_path / "clinc"
    summary = import_clinc150(DATA / "clinc150_oos_eval", out, limit_intents=3)
    assert summary.articles == 3 and summary.questions == 300
    kb = KnowledgeBase.load(out)
    assert kb.errors == []
    assert sorted(kb.articles) == ["accept_reservations", "account_blocked", "alarm"]
    article = kb.articles["account_blocked"]
    assert article.title == "Account blocked"
    assert len(article.questions) == 100
    assert "banking" in article.tags
    val = _lines(tmp_path / "clinc.val.jsonl")
    test = _lines(tmp_path / "clinc.test.jsonl")
    assert (
        len([q for q in val if q["expected"]]) == 60
        and len([q for q in val if not q["expected"]]) == 100
    )
    assert (
        len([q for q in test if q["expected"]]) == 90
        and len([q for q in test if not q["expected"]]) == 1000
    )
    assert {q["expected"] for q in test if q["expected"]} == set(kb.articles)


def test_banking77_slice_holds_out_val(tmp_path: Path) -> None:
    out = tmp_path / "bank"
    summary = import_banking77(DATA / "banking77", out, limit_intents=2)
    assert summary.articles == 2
    kb = KnowledgeBase.load(out)
    val = _lines(tmp_path / "bank.val.jsonl")
    questions = {q for a in kb.articles.values() for q in a.questions}
    assert val and all(q["query"] not in questions for q in val)
    test = _lines(tmp_path / "bank.test.jsonl")
    assert (
        {q["expected"] for q in test}
        == set(kb.articles)
        == {"Refund_not_showing_up", "activate_my_card"}
    )


def test_import_command_is_quiet_when_piped(tmp_path: Path) -> None:
    runner = CliRunner()
    out = tmp_path / "c"
    args = [
        "import",
        "clinc150",
        "--data",
        str(DATA / "clinc150_oos_eval"),
        "--out",
        str(out),
        "--limit-intents",
        "2",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "wrote 2 articles (200 questions)" in result.stdout
    assert "━" not in result.stdout  # no progress bar when stdout is not a terminal
