"""The routing table of docs/benchmarks.md, as a regression test (SQLite)."""

from __future__ import annotations

from pathlib import Path

from bot.routing_eval import category_of, evaluate, load_cases
from tests.conftest import make_settings

CASES = Path(__file__).with_name("data") / "routing_cases.jsonl"


def test_the_case_file_is_big_and_covers_every_route() -> None:
    cases = load_cases(CASES)
    assert len(cases) >= 150
    expected = {e for _, e in cases}
    assert {"kb", "conversation", "ticket_status", "password_reset", "human"} <= expected


def test_route_names_map_to_categories() -> None:
    assert category_of("kb.answer") == "kb"
    assert category_of("flow.incident") == "conversation"
    assert category_of("something.new") == "something.new"


async def test_routing_share_stays_high(tmp_path: Path) -> None:
    report = await evaluate(load_cases(CASES), make_settings(tmp_path))
    assert report.accuracy >= 0.92, report.misses
    # simple transactions must never be mistaken for each other
    transactions = {"kb", "conversation"}
    cross = {
        (e, g): n
        for (e, g), n in report.confusion.items()
        if e not in transactions and g not in transactions
    }
    assert cross == {}
