"""Simple transactions recognised from free text: example utterances matched with rapidfuzz.

Each intent has example utterances; a message matches the intent whose best example
scores highest, if that score clears the threshold. Ticket numbers and short command
forms are recognised exactly first (``status INC-000123``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from rapidfuzz import fuzz, process, utils

TICKET_RE = re.compile(r"\b(INC|REQ|PRB)[-\s#]?(\d{1,9})\b", re.IGNORECASE)

EXAMPLES: dict[str, tuple[str, ...]] = {
    "help": (
        "help",
        "what can you do",
        "what can you help with",
        "how does this work",
        "what are my options",
        "menu",
        "commands",
        "how do i use this bot",
        "show me the menu",
        "what can i ask you",
        "what can i do here",
    ),
    "greeting": (
        "hi",
        "hello",
        "hey",
        "good morning",
        "hi there",
        "hello bot",
        "morning",
        "hey there",
        "hiya",
        "hi all",
        "good afternoon",
        "yo",
    ),
    "thanks": (
        "thanks",
        "thank you",
        "thanks a lot",
        "cheers",
        "thank you so much",
        "great thanks",
        "perfect thanks",
        "ok thanks",
        "ty",
        "much appreciated",
        "cheers mate",
        "thx",
    ),
    "goodbye": ("bye", "goodbye", "see you", "that's all", "nothing else", "no that's all"),
    "ticket_status": (
        "status of my ticket",
        "any news",
        "any update on my ticket",
        "what's the status",
        "is there an update",
        "any progress on my issue",
        "when will my ticket be fixed",
        "has anyone looked at my ticket",
        "what is happening with my request",
        "any news on my incident",
        "update please",
        "status update",
    ),
    "my_tickets": (
        "my tickets",
        "list my tickets",
        "show my tickets",
        "my open tickets",
        "what tickets do i have",
        "show my requests",
        "which tickets do i have open",
        "what incidents do i have open",
        "my open requests",
        "list my incidents",
    ),
    "password_reset": (
        "reset my password",
        "i forgot my password",
        "password reset",
        "i need a new password",
        "my password expired",
        "i am locked out of my account",
        "account locked",
        "can you reset my password",
        "change my password",
        "locked out",
    ),
    "access_request": (
        "i need access to",
        "request access",
        "can i get access to",
        "give me access to",
        "i need permission to",
        "add me to the group",
        "access request",
        "i need rights to the folder",
        "grant me access",
    ),
    "subscribe": (
        "subscribe to",
        "notify me about",
        "keep me posted about",
        "send me updates about",
        "subscribe me to outages",
        "tell me when there are outages",
    ),
    "unsubscribe": (
        "unsubscribe from",
        "stop notifying me",
        "stop sending me updates about",
        "no more notices about",
        "unsubscribe me",
    ),
    "human": (
        "talk to a human",
        "speak to a person",
        "i want an agent",
        "real person please",
        "can i talk to someone",
        "connect me to support",
        "human please",
        "agent",
        "let me talk to a human",
        "i need to speak to someone from it",
    ),
    "close_ticket": (
        "close my ticket",
        "cancel my ticket",
        "you can close it",
        "it's fixed now",
        "never mind it works now",
        "cancel my request",
        "please close the ticket",
        "problem solved you can close",
        "it works again",
    ),
    "outage_check": (
        "is vpn down",
        "is email down",
        "is there an outage",
        "is the wifi down",
        "are there any known issues",
        "is something down",
        "is anyone else having problems",
    ),
}

THRESHOLDS: dict[str, float] = {
    "greeting": 90.0,
    "goodbye": 90.0,
    "thanks": 88.0,
    "help": 88.0,
}
DEFAULT_THRESHOLD = 82.0
SCORE_CUTOFF = min(DEFAULT_THRESHOLD, *THRESHOLDS.values())
"""No intent matches below this score, so the scorers may stop early under it."""
_RECENT_SIZE = 4096


@dataclass(frozen=True, slots=True)
class IntentMatch:
    intent: str
    score: float
    example: str
    ticket_number: str | None = None


def _sorted_tokens(text: str) -> str:
    """What ``token_sort_ratio`` compares: the words in sorted order, one space apart."""
    return " ".join(sorted(text.split()))


class _Examples:
    """The example utterances prepared once for scoring (processed, and word-sorted)."""

    def __init__(self, choices: list[str]) -> None:
        self.choices = choices
        self.sorted = [_sorted_tokens(c) for c in choices]
        self.words = np.array([len(c.split()) for c in choices])
        self._containing: dict[int, frozenset[int]] = {}
        self._by_word: dict[str, set[int]] = {}
        for i, choice in enumerate(choices):
            for word in choice.split():
                self._by_word.setdefault(word, set()).add(i)

    def containing(self, query: str) -> list[int]:
        """The examples ``query`` may contain (see _scores) that share a word with it.

        With no word in common, ``token_set_ratio`` is ``token_sort_ratio``, which the
        whole-message score already covers; those examples need no containment score.
        """
        words = query.split()
        allowed = self._containing.get(len(words))
        if allowed is None:
            allowed = frozenset(
                np.nonzero((self.words >= 2) & (len(words) <= self.words + 5))[0].tolist()
            )
            self._containing[len(words)] = allowed
        shared: set[int] = set()
        for word in set(words):
            shared.update(self._by_word.get(word, ()))
        return sorted(shared & allowed)


def _scores(query: str, examples: _Examples) -> np.ndarray:
    """Every example's score for ``query``: whole-message similarity, or containment of a
    multi-word example in a short message.

    Containment (token_set) lets "I need access to the finance share" match "i need
    access to"; it only counts when the message is not much longer than the example, so a
    long problem description that happens to contain "any news" is not a status query.
    Each scorer runs once over the examples in rapidfuzz's C code (``cdist``); only the
    combination is done here, as array arithmetic. ``token_sort_ratio`` is ``ratio`` on
    word-sorted strings, so the examples are sorted once, not on every call, and
    containment is scored only on the examples where it counts and could change the
    result. Scores under
    :data:`SCORE_CUTOFF` come back as 0 (rapidfuzz skips most of their work): they could
    not match any intent, and the best score and its example are the same as without it.
    """

    def each(text: str, choices: list[str], scorer: Any) -> np.ndarray:
        return process.cdist(
            [text], choices, scorer=scorer, dtype=np.float64, score_cutoff=SCORE_CUTOFF
        )[0]

    whole = np.maximum(
        each(query, examples.choices, fuzz.ratio),
        each(_sorted_tokens(query), examples.sorted, fuzz.ratio),
    )
    index = examples.containing(query)
    if not index:
        return whole
    query_words = len(query.split())
    choices = [examples.choices[i] for i in index]
    contained = each(query, choices, fuzz.token_set_ratio) - 3 * np.maximum(
        0, query_words - examples.words[index] - 2
    )
    whole[index] = np.maximum(whole[index], contained)
    return whole


def find_ticket_number(text: str) -> str | None:
    match = TICKET_RE.search(text)
    if match is None:
        return None
    return f"{match.group(1).upper()}-{int(match.group(2)):06d}"


class IntentMatcher:
    """Scores free text against every intent's examples."""

    def __init__(self, examples: dict[str, tuple[str, ...]] | None = None) -> None:
        self.examples = examples or EXAMPLES
        self._choices: list[str] = []
        self._labels: list[str] = []
        for intent, phrases in self.examples.items():
            for phrase in phrases:
                self._choices.append(utils.default_process(phrase))
                self._labels.append(intent)
        self._examples = _Examples(self._choices)
        # Recent outcomes by text (``None`` included): matching is a pure function of
        # the text, and many people send the same few words ("vpn down?", "thanks").
        self._recent: dict[str, IntentMatch | None] = {}

    def match(self, text: str) -> IntentMatch | None:
        recent = self._recent
        if text in recent:
            return recent[text]
        found = self._match(text)
        if len(recent) >= _RECENT_SIZE:
            recent.clear()  # a flood of distinct texts: start over, no LRU upkeep
        recent[text] = found
        return found

    def _match(self, text: str) -> IntentMatch | None:
        processed = utils.default_process(text)
        if not processed:
            return None
        scores = _scores(processed, self._examples)
        index = int(np.argmax(scores))  # the first of equal best scores, as before
        intent, score = self._labels[index], float(scores[index])
        if score < THRESHOLDS.get(intent, DEFAULT_THRESHOLD):
            return None
        return IntentMatch(intent, score, self._choices[index], find_ticket_number(text))
