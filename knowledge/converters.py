"""Turn public intent datasets into a KB folder plus labelled query files.

One article per intent: title from the intent name (``card_arrival`` → "Card arrival"),
the train phrasings as ``questions``. Query files are JSONL (see
:mod:`knowledge.evaluation`): CLINC150 gives ``val.jsonl`` (calibration) and
``test.jsonl`` (report), each with its out-of-scope queries as ``expected: null``;
Banking77 has no validation split upstream, so ``val.jsonl`` is a fixed 10 % of its
train rows per intent (held out of the articles) and ``test.jsonl`` is its test file.
"""

from __future__ import annotations

import csv
import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from .article import KnowledgeError, dump_article

__all__ = ["ImportSummary", "import_banking77", "import_clinc150", "write_kb"]

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class ImportSummary:
    articles: int
    questions: int
    query_files: dict[str, int]


def article_id(intent: str) -> str:
    """A valid, stable article id for an intent name (Banking77 has ``reverted_card_payment?``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "", intent) or "intent"


def _title(intent: str) -> str:
    words = intent.replace("_", " ").replace("-", " ").split()
    return " ".join(words).capitalize()


def write_kb(
    out: Path,
    phrasings: dict[str, list[str]],
    *,
    tags: Iterable[str] = (),
    domains: dict[str, str] | None = None,
    progress: Progress | None = None,
) -> int:
    """Write one article per intent into ``out``; returns the number of questions."""
    out.mkdir(parents=True, exist_ok=True)
    total = 0
    for i, (intent, questions) in enumerate(sorted(phrasings.items())):
        tag_list = [*tags, *([domains[intent]] if domains and intent in domains else [])]
        text = dump_article(
            article_id=article_id(intent),
            title=_title(intent),
            questions=questions,
            tags=tag_list,
            body=f"Answer for **{_title(intent)}** (intent `{intent}`).",
        )
        (out / f"{article_id(intent)}.md").write_text(text, encoding="utf-8")
        total += len(questions)
        if progress is not None:
            progress(i + 1)
    return total


def _write_queries(path: Path, rows: Iterable[tuple[str, str | None]]) -> int:
    lines = [
        json.dumps({"query": q, "expected": e and article_id(e)}, ensure_ascii=False)
        for q, e in rows
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return len(lines)


def import_clinc150(
    data: Path, out: Path, *, limit_intents: int | None = None, progress: Progress | None = None
) -> ImportSummary:
    """CLINC150 (``data_full.json`` in ``data``) → ``out`` KB + ``out``/../*.jsonl."""
    source = data / "data_full.json" if data.is_dir() else data
    try:
        raw = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise KnowledgeError(f"{source}: cannot read CLINC150 data: {exc}") from exc
    domains: dict[str, str] = {}
    domains_file = source.parent / "domains.json"
    if domains_file.exists():
        for domain, intents in json.loads(domains_file.read_text(encoding="utf-8")).items():
            domains.update({intent: domain for intent in intents})
    phrasings: dict[str, list[str]] = {}
    for text, intent in raw["train"]:
        phrasings.setdefault(intent, []).append(text)
    if limit_intents is not None:
        keep = sorted(phrasings)[:limit_intents]
        phrasings = {k: phrasings[k] for k in keep}
    n_questions = write_kb(out, phrasings, tags=["clinc150"], domains=domains, progress=progress)
    files: dict[str, int] = {}
    for split in ("val", "test"):
        rows: list[tuple[str, str | None]] = [(t, i) for t, i in raw[split] if i in phrasings]
        rows.extend((t, None) for t, _ in raw[f"oos_{split}"])
        path = out.parent / f"{out.name}.{split}.jsonl"
        files[str(path)] = _write_queries(path, rows)
    return ImportSummary(len(phrasings), n_questions, files)


def _read_csv(path: Path) -> list[tuple[str, str]]:
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            return [(row["text"], row["category"]) for row in csv.DictReader(fh)]
    except (OSError, KeyError) as exc:
        raise KnowledgeError(f"{path}: cannot read Banking77 data: {exc}") from exc


def import_banking77(
    data: Path, out: Path, *, limit_intents: int | None = None, progress: Progress | None = None
) -> ImportSummary:
    """Banking77 (``train.csv``/``test.csv`` in ``data``) → ``out`` KB + query files."""
    train = _read_csv(data / "train.csv")
    test = _read_csv(data / "test.csv")
    by_intent: dict[str, list[str]] = {}
    for text, intent in train:
        by_intent.setdefault(intent, []).append(text)
    if limit_intents is not None:
        keep = sorted(by_intent)[:limit_intents]
        by_intent = {k: by_intent[k] for k in keep}
    rng = random.Random(77)
    phrasings: dict[str, list[str]] = {}
    val: list[tuple[str, str | None]] = []
    for intent, texts in sorted(by_intent.items()):
        shuffled = texts[:]
        rng.shuffle(shuffled)
        n_val = max(1, len(shuffled) // 10)
        val.extend((t, intent) for t in shuffled[:n_val])
        phrasings[intent] = [t for t in texts if t not in set(shuffled[:n_val])]
    n_questions = write_kb(out, phrasings, tags=["banking77"], progress=progress)
    files = {
        str(out.parent / f"{out.name}.val.jsonl"): _write_queries(
            out.parent / f"{out.name}.val.jsonl", val
        ),
        str(out.parent / f"{out.name}.test.jsonl"): _write_queries(
            out.parent / f"{out.name}.test.jsonl", [(t, i) for t, i in test if i in phrasings]
        ),
    }
    return ImportSummary(len(phrasings), n_questions, files)
