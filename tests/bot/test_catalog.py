"""Finding the service a message names (outage notices, ticket routing)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from rapidfuzz import fuzz, process, utils

from bot.catalog import Catalog, Service
from bot.intents import EXAMPLES
from bot.settings import SAMPLE_CATALOG

QUERIES = Path(__file__).parents[1] / "knowledge" / "sample_queries.jsonl"


@pytest.fixture(scope="module")
def catalog() -> Catalog:
    return Catalog.load(SAMPLE_CATALOG)


def plain_find(catalog: Catalog, text: str, threshold: float) -> Service | None:
    """The rule written out plainly: every label scored against every window of the text
    of its own number of words, with no early cut-off."""
    processed = utils.default_process(text.replace("-", " "))
    if not processed:
        return None
    words = processed.split()
    best: tuple[float, str] | None = None
    for label, sid in catalog._choices.items():
        n = len(label.split())
        windows = [" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))]
        hit = float(process.cdist([label], windows, scorer=fuzz.ratio, dtype=np.float64).max())
        score = hit - (0 if len(label) > 4 else max(0, 100 - hit) * 2)
        if len(label) <= 3 and hit < 100:
            continue
        if best is None or score > best[0]:
            best = (score, sid)
    if best is not None and best[0] >= threshold:
        return catalog.services[best[1]]
    return None


@pytest.mark.parametrize(
    ("text", "service"),
    [
        ("is the vpn down?", "vpn"),
        ("GlobalProtect keeps dropping", "vpn"),
        ("outlook won't open", "email"),
        ("my mailbx is full", "email"),  # a typo still names it
        ("wi-fi in building 2 is gone", "wifi"),
        ("how do I order a new chair", None),
        ("", None),
    ],
)
def test_a_message_names_its_service(catalog: Catalog, text: str, service: str | None) -> None:
    found = catalog.find_service(text)
    assert (found.id if found else None) == service


def test_the_fast_search_agrees_with_the_plain_rule(catalog: Catalog) -> None:
    labels = list(catalog._choices)
    queries = [json.loads(line)["query"] for line in QUERIES.read_text().splitlines()]
    examples = [e for phrases in EXAMPLES.values() for e in phrases]
    rng = random.Random(5)
    typos = []
    for label in labels:  # labels with a letter dropped or doubled, inside a sentence
        i = rng.randrange(len(label))
        typos.append(f"problem with {label[:i] + label[i + 1 :]} today")
        typos.append(f"{label[:i] + label[i] + label[i:]} is broken again")
    texts = queries + examples + typos + labels
    assert len(texts) > 700
    for threshold in (80.0, 90.0, 95.0):
        differ = [
            t
            for t in texts
            if catalog._find_service(t, threshold) != plain_find(catalog, t, threshold)
        ]
        assert differ == [], threshold
