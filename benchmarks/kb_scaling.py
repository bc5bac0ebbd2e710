"""One scaling point (run in its own process so peak RSS is this size's alone).

    .venv/bin/python benchmarks/kb_scaling.py 10000   # prints one JSON line

Articles are synthesised from CLINC150 and Banking77 train phrasings: article i takes
five phrasings of one intent plus two words drawn from the pooled vocabulary, so that
articles of the same intent differ. Queries are 1,000 CLINC150 test phrasings.
"""

from __future__ import annotations

import csv
import json
import random
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from knowledge import Article, KnowledgeBase  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "kb"


def synthesise(size: int) -> tuple[list[Article], list[str]]:
    clinc = json.loads((DATA / "clinc150_oos_eval" / "data_full.json").read_text(encoding="utf-8"))
    by_intent: dict[str, list[str]] = {}
    for text, intent in clinc["train"]:
        by_intent.setdefault(intent, []).append(text)
    with (DATA / "banking77" / "train.csv").open(encoding="utf-8", newline="") as fh:
        for row in csv.DictReader(fh):
            by_intent.setdefault("b77_" + row["category"], []).append(row["text"])
    intents = sorted(by_intent)
    words = sorted({w for texts in by_intent.values() for t in texts for w in t.lower().split()})
    rng = random.Random(size)
    articles = []
    for i in range(size):
        intent = intents[i % len(intents)]
        extra = " ".join(rng.sample(words, 2))
        questions = tuple(f"{q} {extra}" for q in rng.sample(by_intent[intent], 5))
        articles.append(
            Article(
                id=f"a{i:06d}",
                title=f"{intent.replace('_', ' ')} {extra}",
                questions=questions,
                tags=(),
                service=None,
                keywords=(),
                body="synthetic",
            )
        )
    queries = [t for t, _ in clinc["test"][:: max(1, len(clinc["test"]) // 1000)]][:1000]
    return articles, queries


def main() -> None:
    size = int(sys.argv[1])
    articles, queries = synthesise(size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.perf_counter()
    kb = KnowledgeBase.from_articles(articles)
    build_s = time.perf_counter() - started
    for q in queries[:20]:
        kb.search(q)
    latencies = []
    for q in queries:
        t0 = time.perf_counter()
        kb.search(q)
        latencies.append((time.perf_counter() - t0) * 1000)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    lat = np.asarray(latencies)
    print(
        json.dumps(
            {
                "articles": size,
                "phrasings": kb.index.n_phrasings,
                "build_s": round(build_s, 2),
                "p50_ms": round(float(np.percentile(lat, 50)), 3),
                "p99_ms": round(float(np.percentile(lat, 99)), 3),
                "peak_rss_mb": round(peak / 1024, 1),
                "build_rss_mb": round((peak - before) / 1024, 1),
                "index_mb": round(kb.index.nbytes / 2**20, 1),
                "linear": kb.index.linear_w is not None,
            }
        )
    )


if __name__ == "__main__":
    main()
