from __future__ import annotations

from pathlib import Path

import pytest

from knowledge import Article, KnowledgeBase, KnowledgeError
from knowledge.article import ArticleError, parse_article


def test_parse_defaults_id_to_file_stem() -> None:
    text = "---\ntitle: T\nquestions: [a, b]\ntags: x\nkeywords: [k]\n---\nBody *here*\n"
    article = parse_article(Path("kb/vpn-help.md"), text)
    assert article == Article(
        id="vpn-help",
        title="T",
        questions=("a", "b"),
        tags=("x",),
        service=None,
        keywords=("k",),
        body="Body *here*",
        path=Path("kb/vpn-help.md"),
    )
    assert article.phrasings == ("T", "a", "b")


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("no front matter\n", "no YAML front matter"),
        ("---\nquestions: [a]\n---\nbody\n", "missing required field 'title'"),
        ("---\ntitle: T\n---\nbody\n", "missing required field 'questions'"),
        ("---\ntitle: T\nquestions: []\n---\nbody\n", "'questions' must not be empty"),
        ("---\ntitle: T\nquestions: [a]\n---\n\n", "no body"),
        ("---\ntitle: T\nquestions: {a: 1}\n---\nbody\n", "must be a list"),
        ("---\ntitle: [T\nquestions: [a]\n---\nbody\n", "invalid YAML front matter"),
        ("---\n- a list\n---\nbody\n", "must be a YAML mapping"),
        ("---\nid: 'bad id!'\ntitle: T\nquestions: [a]\n---\nbody\n", "invalid id"),
    ],
)
def test_invalid_article_names_file_and_reason(text: str, reason: str) -> None:
    with pytest.raises(ArticleError) as info:
        parse_article(Path("kb/broken.md"), text)
    assert str(info.value).startswith("kb/broken.md: ")
    assert reason in str(info.value)


def test_bad_files_are_reported_and_the_rest_load(kb_dir: Path) -> None:
    (kb_dir / "bad-yaml.md").write_text("---\ntitle: [oops\nquestions: [a]\n---\nbody\n")
    (kb_dir / "no-title.md").write_text("---\nquestions: [a]\n---\nbody\n")
    (kb_dir / "README.md").write_text("# not an article\n")
    kb = KnowledgeBase.load(kb_dir)
    assert len(kb.articles) == 6
    assert len(kb.errors) == 2
    assert any(e.startswith(str(kb_dir / "bad-yaml.md")) and "YAML" in e for e in kb.errors)
    assert any(e.startswith(str(kb_dir / "no-title.md")) and "title" in e for e in kb.errors)
    assert kb.get("vpn-connect") is not None
    assert kb.get("bad-yaml") is None


def test_duplicate_id_is_an_error(kb_dir: Path) -> None:
    (kb_dir / "sub").mkdir()
    (kb_dir / "sub" / "other.md").write_text(
        "---\nid: vpn-connect\ntitle: T\nquestions: [q]\n---\nb\n"
    )
    kb = KnowledgeBase.load(kb_dir)
    assert len(kb.articles) == 6
    assert len(kb.errors) == 1 and "duplicate id 'vpn-connect'" in kb.errors[0]


def test_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError, match="not found"):
        KnowledgeBase.load(tmp_path / "nope")
