from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from knowledge.calibration import CALIBRATION_FILE
from knowledge.cli import app

runner = CliRunner()

QUERIES = [
    {"query": "I forgot my password", "expected": "password-reset"},
    {"query": "paper is stuck in the printer", "expected": "printer-jam"},
    {"query": "vpn keeps dropping", "expected": "vpn-connect"},
    {"query": "what is the capital of peru", "expected": None},
]


def _queries(tmp_path: Path) -> Path:
    path = tmp_path / "queries.jsonl"
    path.write_text("\n".join(json.dumps(q) for q in QUERIES) + "\n")
    return path


def test_eval_json_prints_exactly_the_documented_keys(kb_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["eval", "--kb", str(kb_dir), "--queries", str(_queries(tmp_path)), "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert list(data) == [
        "n", "top1", "top3", "answered_correct", "answered_wrong", "oos_refused", "p50_ms", "p99_ms"
    ]  # fmt: skip
    assert data["n"] == 4
    assert data["top1"] == 1.0
    assert data["oos_refused"] == 1.0
    assert data["answered_wrong"] == 0.0
    assert data["p50_ms"] > 0


def test_eval_table_and_bad_query_file(kb_dir: Path, tmp_path: Path) -> None:
    ok = runner.invoke(app, ["eval", "--kb", str(kb_dir), "--queries", str(_queries(tmp_path))])
    assert ok.exit_code == 0 and "answered_correct" in ok.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "x"}\nnot json\n')
    # a wide terminal, so rich does not wrap the path inside its error box
    failed = runner.invoke(
        app, ["eval", "--kb", str(kb_dir), "--queries", str(bad)], env={"COLUMNS": "400"}
    )
    assert failed.exit_code != 0
    assert "bad.jsonl:2" in failed.output


def test_search_prints_ranked_matches_and_decision(kb_dir: Path) -> None:
    result = runner.invoke(
        app, ["search", "guest wifi password", "--kb", str(kb_dir), "--limit", "2"]
    )
    assert result.exit_code == 0, result.output
    assert "decision:" in result.stdout
    assert "wifi-guest" in result.stdout


def test_search_uses_env_var_for_kb(kb_dir: Path) -> None:
    result = runner.invoke(app, ["search", "printer jam"], env={"DESKBOT_KB_DIR": str(kb_dir)})
    assert result.exit_code == 0, result.output
    assert "printer-jam" in result.stdout


def test_calibrate_writes_the_file_beside_the_kb(kb_dir: Path, tmp_path: Path) -> None:
    result = runner.invoke(
        app, ["calibrate", "--kb", str(kb_dir), "--queries", str(_queries(tmp_path))]
    )
    assert result.exit_code == 0, result.output
    stored = json.loads((kb_dir / CALIBRATION_FILE).read_text())
    assert 0.0 <= stored["suggest_threshold"] <= stored["answer_threshold"] <= 1.0
