"""Refit knowledge.calibration.DEFAULT (the calibration of a KB nobody calibrated).

    .venv/bin/python benchmarks/kb_default_calibration.py

Uses CLINC150 **val** only, in two shapes so that the default transfers to KBs of
other sizes: the full 150-intent KB (its out-of-scope val queries), and each of the 10
domains as a 15-intent KB whose out-of-scope queries are the out-of-scope val queries
plus 100 val queries of the other domains. Only the size-independent features
(calibration.TRANSFERABLE) are used. Prints the Python literal pasted into knowledge/calibration.py.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from knowledge import Article, KnowledgeBase  # noqa: E402
from knowledge.calibration import TRANSFERABLE, LabelledCandidates, fit_calibration  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "kb" / "clinc150_oos_eval"


def _kb(intents: list[str], train: dict[str, list[str]]) -> KnowledgeBase:
    articles = [
        Article(
            id=i,
            title=i.replace("_", " ").capitalize(),
            questions=tuple(train[i]),
            tags=(),
            service=None,
            keywords=(),
            body="-",
        )
        for i in intents
    ]
    return KnowledgeBase.from_articles(articles)


def main() -> None:
    raw = json.loads((DATA / "data_full.json").read_text(encoding="utf-8"))
    domains: dict[str, list[str]] = json.loads((DATA / "domains.json").read_text(encoding="utf-8"))
    train: dict[str, list[str]] = {}
    for text, intent in raw["train"]:
        train.setdefault(intent, []).append(text)
    oos_val = [t for t, _ in raw["oos_val"]]
    labelled: list[LabelledCandidates] = []

    def collect(kb: KnowledgeBase, rows: list[tuple[str, str | None]]) -> None:
        for text, expected in rows:
            labelled.append(LabelledCandidates(expected, kb.candidates_for_calibration(text)))

    full = _kb(sorted(train), train)
    collect(full, [(t, i) for t, i in raw["val"]] + [(t, None) for t in oos_val])
    rng = random.Random(150)
    for domain, intents in sorted(domains.items()):
        kb = _kb(sorted(intents), train)
        inside = [(t, i) for t, i in raw["val"] if i in intents]
        others = rng.sample([t for t, i in raw["val"] if i not in intents], 100)
        collect(kb, inside + [(t, None) for t in oos_val + others])
        print(f"{domain}: {len(inside)} in scope", file=sys.stderr)
    # Suggestions are not wrong answers: up to 15 % of out-of-scope may get them.
    fitted = fit_calibration(labelled, columns=TRANSFERABLE, suggest_refused=0.85)

    def literal(values: tuple[float, ...]) -> str:
        return "(" + ", ".join(f"{v:.6g}" for v in values) + ")"

    print(
        "DEFAULT = Calibration(\n"
        f"    mean={literal(fitted.mean)},\n"
        f"    scale={literal(fitted.scale)},\n"
        f"    coef={literal(fitted.coef)},\n"
        f"    intercept={fitted.intercept:.6g},\n"
        f"    answer_threshold={fitted.answer_threshold},\n"
        f"    suggest_threshold={fitted.suggest_threshold},\n"
        f"    fusion={literal(fitted.fusion)},\n"
        '    source="default",\n'
        f"    fitted_on={fitted.fitted_on!r},\n"
        ")"
    )


if __name__ == "__main__":
    main()
