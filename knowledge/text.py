"""Text normalisation shared by the index and the query path.

Both sides of a comparison go through the same steps, so that "Can't log in to the
VPN!!" and "cannot login vpn" meet in the middle:

1. Unicode NFKC, lower case, apostrophes folded, contractions expanded;
2. IT phrases and abbreviations rewritten to one canonical token (``wi-fi`` → ``wifi``,
   ``2fa`` → ``mfa``, ``log in`` → ``login``);
3. punctuation becomes space, words are split;
4. a light suffix stemmer (plural, ``-ing``, ``-ed``) folds inflections.

Stop words are not removed here: the index weights terms by IDF, and question words
("when", "how much") often carry the intent. :data:`STOP_WORDS` is exposed for the
callers that want content words only.
"""

from __future__ import annotations

import re
import unicodedata
from functools import lru_cache

__all__ = ["STOP_WORDS", "content_tokens", "normalise", "stem", "tokens"]

# Multi-word phrases first (applied on the lower-cased, apostrophe-folded text). Each
# pattern is ``\b`` and then a literal character (see _PHRASE_HINT).
_PHRASES: tuple[tuple[str, str], ...] = (
    (r"\bwi[\s-]?fi\b", "wifi"),
    (r"\be[\s-]mail", "email"),
    (r"\blog[\s-]?(?:in|on)\b", "login"),
    (r"\bsign[\s-]?(?:in|on)\b", "login"),
    (r"\blog[\s-]?(?:out|off)\b", "logout"),
    (r"\bsign[\s-]?(?:out|off)\b", "logout"),
    (r"\bset[\s-]up\b", "setup"),
    (r"\bmulti[\s-]?factor(?:\s+auth\w*)?\b", "mfa"),
    (r"\btwo[\s-]?(?:factor|step)(?:\s+(?:auth\w*|verification))?\b", "mfa"),
    (r"\b2[\s-]?(?:fa|sv|step)\b", "mfa"),
    (r"\bpass[\s-]word\b", "password"),
    (r"\bup[\s-]to[\s-]date\b", "uptodate"),
    (r"\bout[\s-]of[\s-]office\b", "outofoffice"),
    (r"\bmicrosoft\s+(?:365|office)\b", "office365"),
    (r"\bo365\b", "office365"),
    (r"\bm365\b", "office365"),
    (r"\boffice\s?365\b", "office365"),
    (r"\bms\s+teams\b", "teams"),
    (r"\bhard[\s-]?drive\b", "disk"),
    (r"\bcell[\s-]?phone\b", "phone"),
    (r"\bsmart[\s-]?phone\b", "phone"),
)
# One alternation, one pass, tried only at word starts: the matched group's index says
# which rewrite applies.
assert all(p.startswith(r"\b") and p[2].isalnum() for p, _ in _PHRASES)
_PHRASE_RE = re.compile(r"\b(?:" + "|".join(f"({p[2:]})" for p, _ in _PHRASES) + ")")
_PHRASE_REPL = tuple(r for _, r in _PHRASES)
# The same alternatives without the leading \b: a text that has no match for this has
# none for _PHRASE_RE either, and with every alternative starting with a literal the
# regex engine scans for their first characters instead of trying each position (about
# four times faster; most texts contain no phrase at all).
_PHRASE_HINT = re.compile("|".join(p[2:] for p, _ in _PHRASES))


def _phrase(match: re.Match[str]) -> str:
    return _PHRASE_REPL[(match.lastindex or 1) - 1]


# Contractions, applied after apostrophes are folded to "'".
_CONTRACTIONS: tuple[tuple[str, str], ...] = (
    (r"\bcan'?t\b", "can not"),
    (r"\bcannot\b", "can not"),
    (r"\bwon'?t\b", "will not"),
    (r"\b(\w+)n't\b", r"\1 not"),
    (r"'re\b", " are"),
    (r"'ve\b", " have"),
    (r"'ll\b", " will"),
    (r"'d\b", " would"),
    (r"'m\b", " am"),
    (r"\b(what|where|who|how|when|why|it|that|there|here)'s\b", r"\1 is"),
    (r"'s\b", ""),
)
_CONTRACTION_RES = tuple((re.compile(p), r) for p, r in _CONTRACTIONS)

# Single-token abbreviations and spellings → canonical token.
SYNONYMS: dict[str, str] = {
    "pw": "password",
    "pwd": "password",
    "passwd": "password",
    "passcode": "password",
    "pword": "password",
    "pin": "pin",
    "mail": "email",
    "emails": "email",
    "mailbox": "email",
    "inbox": "email",
    "outlook": "outlook",
    "laptop": "laptop",
    "notebook": "laptop",
    "pc": "computer",
    "desktop": "computer",
    "mobile": "phone",
    "iphone": "phone",
    "android": "phone",
    "hdd": "disk",
    "ssd": "disk",
    "acct": "account",
    "pls": "please",
    "plz": "please",
    "thx": "thanks",
    "u": "you",
    "ur": "your",
    "r": "are",
    "im": "i am",
    "whats": "what is",
    "hows": "how is",
    "dont": "do not",
    "doesnt": "does not",
    "didnt": "did not",
    "isnt": "is not",
    "wont": "will not",
    "cant": "can not",
    "cannot": "can not",
    "authenticator": "mfa",
    "2fa": "mfa",
    "otp": "mfa",
    "wireless": "wifi",
    "wlan": "wifi",
    "signin": "login",
    "logon": "login",
    "logins": "login",
    "username": "login",
    "userid": "login",
    "sharepoint": "sharepoint",
    "onedrive": "onedrive",
    "msteams": "teams",
    "zoom": "zoom",
    "pdf": "pdf",
    "approx": "approximately",
    "info": "information",
    "config": "configure",
    "configuration": "configure",
    "admin": "administrator",
    "admins": "administrator",
    "it": "it",
}

STOP_WORDS: frozenset[str] = frozenset(
    """a an the to of for in on at by with from into about as and or but so if
    is are am be been being was were do does did done i me my mine myself we us our you
    your yours it its this that these those there here please can could would will shall
    should may might must just also really very some any have has had get got
    hey hi hello thanks thank okay ok tell let know want need like""".split()
)

_WORD = re.compile(r"[^\W_]+")  # runs of word characters; "_" separates words too
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "`": "'", "\u00b4": "'"})
_EXCEPTIONS = frozenset(
    {"this", "is", "was", "has", "does", "its", "yes", "bus", "gas", "plus", "status", "always",
     "news", "series", "species", "various", "previous", "access", "address", "business",
     "process", "wireless", "less", "express", "windows", "mfa", "ios", "macos", "sms", "dns",
     "os", "thing", "ring", "bring", "king", "sing", "string", "spring", "nothing", "something",
     "anything", "everything", "morning", "evening", "ceiling", "need", "speed", "feed",
     "red", "bed", "shed", "seed", "weed"}
)  # fmt: skip


@lru_cache(maxsize=65536)
def stem(word: str) -> str:
    """Fold common English inflections: plurals, -ing, -ed, -ies, -ly.

    Deliberately light: it must never merge two unrelated IT terms, so it strips only
    the endings that cannot change what a word names.
    """
    n = len(word)
    if n <= 3 or word in _EXCEPTIONS or not word.isalpha():
        return word
    if word.endswith("ies") and n > 4:
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith("ing") and n > 5:
        base = word[:-3]
        if len(base) > 2 and base[-1] == base[-2] and base[-1] not in "lsz":
            base = base[:-1]  # running → run
        return base
    if word.endswith("ied") and n > 4:
        return word[:-3] + "y"
    if word.endswith("ed") and n > 4:
        base = word[:-2]
        if len(base) > 2 and base[-1] == base[-2] and base[-1] not in "lsz":
            base = base[:-1]  # stopped → stop
        elif base.endswith(("at", "iz", "us", "bl", "rv", "ov", "iv", "ang", "ag")):
            base = base + "e"  # updated → update, charged → charge
        return base
    if word.endswith("ly") and n > 5:
        return word[:-2]
    if word.endswith("es") and word[-3] in "sxz" and n > 4:
        return word[:-2]
    if word.endswith("ches") or word.endswith("shes"):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


@lru_cache(maxsize=65536)
def normalise(text: str) -> str:
    """Canonical lower-case form with punctuation removed and IT phrases folded."""
    text = unicodedata.normalize("NFKC", text).lower().translate(_APOSTROPHES)
    if "'" in text:
        for pattern, repl in _CONTRACTION_RES:
            text = pattern.sub(repl, text)
    if _PHRASE_HINT.search(text) is not None:
        text = _PHRASE_RE.sub(_phrase, text)
    synonyms = SYNONYMS
    return " ".join([synonyms.get(raw, raw) for raw in _WORD.findall(text)])


def tokens(text: str) -> list[str]:
    """Normalised, stemmed tokens of ``text`` (stop words kept)."""
    return [stem(w) for w in normalise(text).split()]


def content_tokens(text: str) -> list[str]:
    """Like :func:`tokens` without stop words; falls back to all tokens if none are left."""
    all_tokens = tokens(text)
    content = [t for t in all_tokens if t not in STOP_WORDS]
    return content or all_tokens
