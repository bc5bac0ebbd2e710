"""Turning bytes of a declared (or wrong, or unknown) charset into text, never raising.

Mail lies about its charset all the time: "utf-8" bodies with a stray Latin-1 byte, Korean
``ks_c_5601-1987``, Japanese ISO-2022-JP using Microsoft's extensions, ``unknown-8bit``.
:func:`decode_bytes` tries the declared charset, then UTF-8, then falls back to a lossy
decode, so a person always gets readable text and the poller never stops on a charset.
"""

from __future__ import annotations

import codecs
import re

# Labels seen in real mail that Python does not know, or knows as a stricter sibling.
_ALIASES = {
    "ks_c_5601-1987": "cp949",
    "ks_c_5601": "cp949",
    "ks_c_5601-1989": "cp949",
    "euc-kr": "cp949",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "x-gbk": "gb18030",
    "shift_jis": "cp932",
    "shift-jis": "cp932",
    "sjis": "cp932",
    "x-sjis": "cp932",
    "windows-31j": "cp932",
    "iso-2022-jp-ms": "iso-2022-jp",
    "cp50220": "iso-2022-jp",
    "cp50221": "iso-2022-jp",
    "big5": "big5hkscs",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "latin-1": "cp1252",
    "us-ascii": "utf-8",
    "ascii": "utf-8",
    "ansi_x3.4-1968": "utf-8",
    "unknown-8bit": "utf-8",
    "x-unknown": "utf-8",
    "utf8": "utf-8",
    "x-user-defined": "cp1252",
}

_CHARSET_CLEAN = re.compile(r"[^a-z0-9_.:\-]")


def normalise_charset(label: str | None) -> str | None:
    """A Python codec name for a MIME charset label, or None when it is unknown."""
    if not label:
        return None
    cleaned = _CHARSET_CLEAN.sub("", label.strip().strip("\"'").lower())[:40]
    if not cleaned:
        return None
    cleaned = _ALIASES.get(cleaned, cleaned)
    try:
        return codecs.lookup(cleaned).name
    except LookupError:
        return None


def _iso2022jp_via_cp932(data: bytes) -> str:
    """Decode ISO-2022-JP including Microsoft's extensions (circled digits, NEC rows).

    The JIS X 0208 rows are moved to Shift_JIS arithmetically and decoded as cp932, whose
    table carries the vendor characters Python's strict ISO-2022-JP codecs reject.
    """
    out = bytearray()
    mode = "ascii"
    i = 0
    n = len(data)
    while i < n:
        byte = data[i]
        if byte == 0x1B and i + 2 < n:
            seq = data[i + 1 : i + 3]
            if seq in (b"$B", b"$@"):
                mode = "jis"
                i += 3
                continue
            if seq in (b"(B", b"(J"):
                mode = "ascii"
                i += 3
                continue
            if seq == b"(I":
                mode = "kana"
                i += 3
                continue
        if byte in (0x0A, 0x0D):
            mode = "ascii"
            out.append(byte)
            i += 1
            continue
        if mode == "jis" and i + 1 < n:
            j1, j2 = data[i], data[i + 1]
            if 0x21 <= j1 <= 0x7E and 0x21 <= j2 <= 0x7E:
                s1 = ((j1 + 1) >> 1) + (0x70 if j1 <= 0x5E else 0xB0)
                s2 = j2 + (0x1F if j1 & 1 else 0x7E)
                if j1 & 1 and s2 >= 0x7F:
                    s2 += 1
                out += bytes((s1, s2))
            else:
                out += b"?"
            i += 2
            continue
        if mode == "kana" and 0x21 <= byte <= 0x5F:
            out.append(byte + 0x80)
        else:
            out.append(byte)
        i += 1
    return out.decode("cp932", errors="replace")


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Decode ``data`` declared as ``charset``; fall back instead of raising."""
    codec = normalise_charset(charset)
    if codec is not None:
        try:
            return data.decode(codec)
        except (UnicodeDecodeError, LookupError):
            pass
        if codec.startswith("iso2022_jp"):
            return _iso2022jp_via_cp932(data)
    if codec != "utf-8":
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            pass
    if codec is not None:
        # The declared charset is right for most of the text; replace the odd byte.
        return data.decode(codec, errors="replace")
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")
