"""The intent matcher's shortcuts give exactly what the plain scoring rule gives."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rapidfuzz import fuzz, utils

from bot.intents import (
    DEFAULT_THRESHOLD,
    EXAMPLES,
    THRESHOLDS,
    IntentMatch,
    IntentMatcher,
    find_ticket_number,
)

DATA = Path(__file__).with_name("data")
SAMPLE_QUERIES = Path(__file__).parents[1] / "knowledge" / "sample_queries.jsonl"


def plain_match(text: str) -> IntentMatch | None:
    """The rule of bot/intents.py written out, one example at a time, without cutoffs,
    word-sorting or skipped examples."""
    query = utils.default_process(text)
    if not query:
        return None
    best: tuple[float, str, str] | None = None
    for intent, phrases in EXAMPLES.items():
        for phrase in phrases:
            example = utils.default_process(phrase)
            score = max(fuzz.ratio(query, example), fuzz.token_sort_ratio(query, example))
            query_words, example_words = len(query.split()), len(example.split())
            if example_words >= 2 and query_words <= example_words + 5:
                contained = fuzz.token_set_ratio(query, example) - 3 * max(
                    0, query_words - example_words - 2
                )
                score = max(score, contained)
            if best is None or score > best[0]:  # the first of equal scores wins
                best = (score, intent, example)
    assert best is not None
    score, intent, example = best
    if score < THRESHOLDS.get(intent, DEFAULT_THRESHOLD):
        return None
    return IntentMatch(intent, float(np.float64(score)), example, find_ticket_number(text))


def _texts() -> list[str]:
    texts = [json.loads(line)["text"] for line in (DATA / "routing_cases.jsonl").open()]
    texts += [json.loads(line)["query"] for line in SAMPLE_QUERIES.open()]
    for phrases in EXAMPLES.values():
        for phrase in phrases:
            texts += [phrase, f"{phrase} please", f"hey {phrase}", f"{phrase} for the vpn again"]
    return texts


def test_the_matcher_agrees_with_the_plain_rule_on_real_messages() -> None:
    matcher = IntentMatcher()
    texts = _texts()
    assert len(texts) > 700
    differ = [t for t in texts if matcher.match(t) != plain_match(t)]
    assert differ == []


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            sorted({w for p in EXAMPLES.values() for e in p for w in e.split()})
            + ["vpn", "printer", "broken", "since", "monday", "INC-000123", "¿", "ünïcode"]
        ),
        min_size=1,
        max_size=14,
    )
)
def test_the_matcher_agrees_with_the_plain_rule_on_word_salad(words: list[str]) -> None:
    text = " ".join(words)
    assert IntentMatcher().match(text) == plain_match(text)


def test_repeated_texts_come_from_the_bounded_cache_with_the_same_outcome(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("bot.intents._RECENT_SIZE", 50)
    matcher = IntentMatcher()
    texts = _texts()[:200]
    first = [matcher.match(t) for t in texts]
    assert len(matcher._recent) <= 50
    # a second pass: the last texts from the cache, the rest computed again; all agree
    assert [matcher.match(t) for t in texts] == first == [plain_match(t) for t in texts]
    found = next(m for m in first if m is not None)
    text = texts[first.index(found)]
    assert matcher.match(text) is matcher.match(text)
