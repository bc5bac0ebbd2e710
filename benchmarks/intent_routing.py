"""Intent-recognition table: the share of realistic employee messages routed to the right
transaction, knowledge-base answer or conversation, with the confusion.

    .venv/bin/python benchmarks/intent_routing.py [--cases tests/bot/data/routing_cases.jsonl]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from pathlib import Path

from bot.routing_eval import evaluate, load_cases
from bot.settings import SAMPLE_CATALOG, SAMPLE_KB_DIR, Settings

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--cases", type=Path, default=ROOT / "tests/bot/data/routing_cases.jsonl")
    args = parser.parse_args()
    cases = load_cases(args.cases)
    settings = Settings(  # type: ignore[call-arg]
        _env_file=None, kb_dir=SAMPLE_KB_DIR, catalog=SAMPLE_CATALOG, secret_key="bench"
    )
    started = time.perf_counter()
    report = asyncio.run(evaluate(cases, settings))
    elapsed = time.perf_counter() - started
    print(f"cases: {report.n}   routed correctly: {report.correct} ({report.accuracy:.1%})")
    print(f"time: {elapsed:.1f} s for {report.n} first messages through the real manager")
    print()
    print("| expected | n | correct | share |")
    print("| --- | ---: | ---: | ---: |")
    for expected in sorted(report.per_expected):
        n = report.per_expected[expected]
        ok = report.per_expected_correct[expected]
        print(f"| {expected} | {n} | {ok} | {ok / n:.0%} |")
    print()
    print("confusion (expected → routed: count):")
    for (expected, got), count in report.confusion.most_common():
        print(f"- {expected} → {got}: {count}")
    print()
    print("misses:")
    for text, expected, got in report.misses:
        print(f"- {text!r}: expected {expected}, routed {got}")


if __name__ == "__main__":
    main()
