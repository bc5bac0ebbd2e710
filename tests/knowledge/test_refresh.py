from __future__ import annotations

import os
from pathlib import Path

import pytest

from knowledge import KnowledgeBase

from .conftest import write_article


def test_refresh_picks_up_added_changed_and_deleted_articles(kb_dir: Path) -> None:
    kb = KnowledgeBase.load(kb_dir)
    assert kb.refresh_if_changed() is False
    old_index = kb.index

    write_article(
        kb_dir, "laptop-slow", "My laptop is slow", ["laptop very slow", "computer sluggish"]
    )
    assert kb.refresh_if_changed() is True
    assert kb.index is not old_index
    assert kb.get("laptop-slow") is not None
    assert kb.search("my laptop is really slow").best.article.id == "laptop-slow"  # type: ignore[union-attr]
    assert kb.refresh_if_changed() is False

    path = kb_dir / "printer-jam.md"
    path.write_text(path.read_text().replace("Clear a printer jam", "Clear a paper jam"))
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert kb.refresh_if_changed() is True
    assert kb.articles["printer-jam"].title == "Clear a paper jam"

    (kb_dir / "wifi-guest.md").unlink()
    assert kb.refresh_if_changed() is True
    assert "wifi-guest" not in kb.articles


def test_a_broken_edit_keeps_the_other_articles(kb_dir: Path) -> None:
    kb = KnowledgeBase.load(kb_dir)
    (kb_dir / "vpn-connect.md").write_text("---\ntitle: [broken\n---\n")
    assert kb.refresh_if_changed() is True
    assert "vpn-connect" not in kb.articles
    assert len(kb.articles) == 5
    assert kb.errors and kb.errors[0].startswith(str(kb_dir / "vpn-connect.md"))


def test_in_memory_kb_never_refreshes(kb_dir: Path) -> None:
    loaded = KnowledgeBase.load(kb_dir)
    kb = KnowledgeBase.from_articles(list(loaded.articles.values()))
    assert kb.refresh_if_changed() is False
    assert len(kb) == 6


def test_repeated_text_is_answered_from_the_cache_until_the_articles_change(
    kb_dir: Path,
) -> None:
    kb = KnowledgeBase.load(kb_dir)
    first = kb.search("the printer is jammed again")
    assert kb.search("the printer is jammed again") is first
    assert kb.search("the printer is jammed again", limit=1) is not first  # limit is keyed
    assert first.best is not None and first.best.article.id == "printer-jam"

    # The article moves: the next search of the same text sees the new index, not the
    # cached result of the old one.
    (kb_dir / "printer-jam.md").unlink()
    write_article(kb_dir, "printer-broken", "The printer jams", ["the printer is jammed again"])
    assert kb.refresh_if_changed() is True
    again = kb.search("the printer is jammed again")
    assert again is not first
    assert again.best is not None and again.best.article.id == "printer-broken"


def test_the_result_cache_is_bounded(kb_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("knowledge.base._RESULT_CACHE_SIZE", 3)
    kb = KnowledgeBase.load(kb_dir)
    texts = [f"vpn will not connect {n}" for n in range(7)]
    for text in texts:
        kb.search(text)
        assert len(kb._state.results) <= 3
    # Whatever was dropped is computed again to the same outcome.
    fresh = KnowledgeBase.load(kb_dir)
    for text in texts:
        assert kb.search(text) == fresh.search(text)
