"""Email heart on the shared corpora: kinds per corpus, reply-stripping match, timing.

Run: .venv/bin/python benchmarks/email_corpus.py
"""

from __future__ import annotations

import json
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from channels.email.classify import classify  # noqa: E402
from channels.email.parse import parse_mail  # noqa: E402
from channels.email.strip import strip_reply  # noqa: E402

DATA = ROOT / ".." / "shared" / "data" / "email"
OWN = ("accounts@chatwoot.com", "redmine@example.net", "reply@bar.com")
SKIP = {"EXPECTED.json", "LICENSE", "LICENSE.txt", "NOTICE.txt"}


def main() -> int:
    if not DATA.is_dir():
        print(f"corpus not found at {DATA.resolve()}")
        return 1
    total = 0
    elapsed = 0.0
    slowest = (0.0, "")
    for corpus in sorted(p for p in DATA.iterdir() if p.is_dir()):
        kinds: Counter[str] = Counter()
        for path in sorted(p for p in corpus.rglob("*") if p.is_file() and p.name not in SKIP):
            raw = path.read_bytes()
            started = time.perf_counter()
            kinds[classify(parse_mail(raw), own_addresses=OWN).kind] += 1
            took = time.perf_counter() - started
            elapsed += took
            slowest = max(slowest, (took, str(path.relative_to(DATA))))
            total += 1
        print(
            f"{corpus.name:32} {sum(kinds.values()):4}  "
            + ", ".join(f"{k}={v}" for k, v in sorted(kinds.items()))
        )
    print(
        f"parsed+classified {total} files in {elapsed:.2f}s ({total / elapsed:.0f}/s); "
        f"slowest {slowest[0] * 1000:.0f} ms ({slowest[1]})"
    )

    trimmer = DATA / "discourse_email_reply_trimmer"
    hits = n = 0
    for path in sorted((trimmer / "emails").iterdir()):
        got = strip_reply(path.read_text(encoding="utf-8").strip())
        want = (trimmer / "trimmed" / path.name).read_text(encoding="utf-8").strip()
        norm = lambda s: "\n".join(x.rstrip() for x in s.split("\n")).strip()  # noqa: E731
        hits += norm(got) == norm(want)
        n += 1
    print(f"discourse_email_reply_trimmer: {hits}/{n} exact matches ({hits / n:.0%})")

    github = DATA / "github_email_reply_parser"
    expected = json.loads((github / "EXPECTED.json").read_text(encoding="utf-8"))
    hits = n = 0
    worst = 0.0
    for section in ("emails", "zapier_extra_emails"):
        for name, item in expected[section].items():
            body = (github / section / name).read_text(encoding="utf-8")
            started = time.perf_counter()
            got = strip_reply(body)
            worst = max(worst, time.perf_counter() - started)
            ok = True
            if "visible_reply" in item:
                ok &= got == item["visible_reply"].strip()
            if "visible_reply_starts" in item:
                ok &= got.startswith(item["visible_reply_starts"])
            ok &= all(f in got for f in item.get("visible_reply_contains", []))
            ok &= all(f not in got for f in item.get("visible_reply_not_contains", []))
            hits += ok
            n += 1
    print(
        f"github_email_reply_parser: {hits}/{n} expectations met ({hits / n:.0%}); "
        f"slowest strip {worst * 1000:.1f} ms"
    )

    talon = DATA / "mailgun_talon" / "inline_plain_cases.json"
    cases = json.loads(talon.read_text(encoding="utf-8"))
    hits = sum(strip_reply(c["input_body"]) == c["expected_reply"].strip() for c in cases)
    print(f"mailgun_talon inline cases (extra, not a target): {hits}/{len(cases)}")

    flufl = json.loads((DATA / "flufl_bounce" / "EXPECTED.json").read_text(encoding="utf-8"))
    hits = n = 0
    for name, item in flufl["messages"].items():
        wanted = {
            a.lower() for d in item.get("detections", []) for a in d["expected_failed_addresses"]
        }
        if not wanted:
            continue
        raw = (DATA / "flufl_bounce" / "data" / name).read_bytes()
        found = set(classify(parse_mail(raw)).failed_recipients)
        hits += wanted <= found
        n += 1
    print(f"flufl_bounce failed recipients found: {hits}/{n} ({hits / n:.0%})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
