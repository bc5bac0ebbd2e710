from __future__ import annotations

import os
from pathlib import Path

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
