"""Care signals: frustration (offer a human at once) and abuse towards staff (flag, notify).

Deliberately plain rules, each returning the reason it fired, so that every escalation
can be explained to the agent who picks it up.
"""

from __future__ import annotations

import re

FRUSTRATION_PATTERNS = [
    (
        re.compile(r"\b(third|3rd|fourth|4th|fifth|umpteenth)\s+time\b", re.I),
        "says it is the nth time",
    ),
    (
        re.compile(r"\b(again and again|over and over|still (not|doesn'?t|isn'?t|broken))\b", re.I),
        "says the problem keeps coming back",
    ),
    (
        re.compile(
            r"\b(this is (ridiculous|unacceptable|a joke)|fed up|sick of|waste of (my )?time)\b",
            re.I,
        ),
        "expresses frustration",
    ),
    (
        re.compile(r"\b(already (asked|told|tried|said)|how many times)\b", re.I),
        "says they already asked",
    ),
    (re.compile(r"[!?]{3,}"), "uses repeated punctuation"),
]

ABUSE_PATTERNS = [
    re.compile(
        r"\b(idiots?|morons?|stupid|incompetent|useless)\s+(it|people|team|staff|agents?|bot|lot|"
        r"helpdesk|desk|support)\b",
        re.I,
    ),
    re.compile(
        r"\byou(\s+are|'re|\s+r)\s+(an?\s+)?(idiots?|morons?|stupid|incompetent|useless)\b", re.I
    ),
    re.compile(
        r"\byou\s+((useless|stupid|incompetent|lazy|bloody)\s+)*(idiots?|morons?|clowns?|"
        r"imbeciles?)\b",
        re.I,
    ),
    re.compile(r"\b(f+u+c+k+|f\*+k|screw)\s+(you|off|this)\b", re.I),
    re.compile(r"\b(shut up|go to hell|piss off)\b", re.I),
]


def frustration_reason(text: str, *, rejected_answers: int = 0) -> str | None:
    """Why this message reads as frustrated, or None."""
    for pattern, reason in FRUSTRATION_PATTERNS:
        if pattern.search(text):
            return reason
    letters = [c for c in text if c.isalpha()]
    if len(letters) >= 12 and sum(c.isupper() for c in letters) / len(letters) > 0.7:
        return "writes in capitals"
    if rejected_answers >= 2:
        return f"{rejected_answers} suggested answers did not help"
    return None


def abuse_reason(text: str) -> str | None:
    """Why this message reads as abuse towards staff, or None."""
    for pattern in ABUSE_PATTERNS:
        match = pattern.search(text)
        if match:
            return f"abusive language towards staff ({match.group(0)!r})"
    return None
