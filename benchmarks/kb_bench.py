"""Knowledge-base matcher benchmark: ours beside two baselines, same queries, same run.

    .venv/bin/python benchmarks/kb_bench.py            # CLINC150 + Banking77 tables
    .venv/bin/python benchmarks/kb_bench.py --scaling  # also 1k/10k/100k articles

Thresholds (ours and the baselines') are fitted on the validation split only; the
tables report the test split. See docs/benchmarks.md for the figures.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from benchmarks.kb_baselines import (  # noqa: E402
    Bm25Baseline,
    ExtractOneBaseline,
    fit_threshold,
    metrics,
    run,
)
from knowledge import KnowledgeBase  # noqa: E402
from knowledge.calibration import CALIBRATION_FILE  # noqa: E402
from knowledge.converters import import_banking77, import_clinc150  # noqa: E402
from knowledge.evaluation import calibrate, evaluate, read_queries  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "kb"
COLUMNS = ("top1", "top3", "answered_correct", "answered_wrong", "oos_refused", "p50_ms", "p99_ms")


def _fmt(value: float | int | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def bench(
    name: str, kb_dir: Path, val_file: Path, test_file: Path, console: Console
) -> dict[str, dict]:
    val = read_queries(val_file)
    test = read_queries(test_file)
    results: dict[str, dict] = {}

    started = time.perf_counter()
    kb = KnowledgeBase.load(kb_dir)
    build_s = time.perf_counter() - started
    fitted = calibrate(kb, val)
    (kb_dir / CALIBRATION_FILE).write_text(fitted.to_json(), encoding="utf-8")
    kb = kb.with_calibration(fitted)
    report = evaluate(kb, test).to_dict()
    report["build_s"] = build_s
    results["deskbot (ours)"] = report

    phrasings = {a.id: list(a.phrasings) for a in kb.articles.values()}
    for method in (ExtractOneBaseline(phrasings), Bm25Baseline(phrasings)):
        val_run = run(method, val, one=False)
        threshold = fit_threshold(val_run.ranked, val)
        test_run = run(method, test, one=False)
        latency = run(method, test[:1000], one=True).latencies_ms
        results[method.name] = metrics(test_run.ranked, test, threshold, latency)

    table = Table(
        title=f"{name}: test split (n={len(test)}), thresholds fitted on val (n={len(val)})"
    )
    table.add_column("method")
    for key in COLUMNS:
        table.add_column(key, justify="right")
    for method_name, row in results.items():
        table.add_row(method_name, *(_fmt(row.get(k)) for k in COLUMNS))
    console.print(table)
    return results


def scaling(console: Console) -> list[dict]:
    rows = []
    for size in (1_000, 10_000, 100_000):
        out = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "kb_scaling.py"), str(size)],
            check=True,
            capture_output=True,
            text=True,
        )
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    table = Table(title="scaling: synthetic KBs from CLINC150 + Banking77 phrasings")
    for key in (
        "articles",
        "phrasings",
        "build_s",
        "p50_ms",
        "p99_ms",
        "peak_rss_mb",
        "index_mb",
        "linear",
    ):
        table.add_column(key, justify="right")
    for row in rows:
        table.add_row(
            *(
                str(row[k])
                for k in (
                    "articles",
                    "phrasings",
                    "build_s",
                    "p50_ms",
                    "p99_ms",
                    "peak_rss_mb",
                    "index_mb",
                    "linear",
                )
            )
        )
    console.print(table)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--scaling", action="store_true", help="also run the 1k/10k/100k scaling")
    parser.add_argument("--json", type=Path, help="write every figure to this JSON file")
    args = parser.parse_args()
    console = Console(width=160)
    figures: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        clinc = Path(tmp) / "clinc150"
        import_clinc150(DATA / "clinc150_oos_eval", clinc)
        figures["clinc150"] = bench(
            "CLINC150", clinc, Path(f"{clinc}.val.jsonl"), Path(f"{clinc}.test.jsonl"), console
        )
        banking = Path(tmp) / "banking77"
        import_banking77(DATA / "banking77", banking)
        figures["banking77"] = bench(
            "Banking77",
            banking,
            Path(f"{banking}.val.jsonl"),
            Path(f"{banking}.test.jsonl"),
            console,
        )
    if args.scaling:
        figures["scaling"] = scaling(console)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
