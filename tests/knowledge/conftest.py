from __future__ import annotations

from pathlib import Path

import pytest

from knowledge.article import dump_article

ARTICLES = {
    "password-reset": (
        "Reset your password",
        ["I forgot my password", "how do I reset my password", "password expired"],
    ),
    "vpn-connect": (
        "Connect to the VPN",
        ["vpn will not connect", "how do I connect to the vpn from home", "vpn keeps dropping"],
    ),
    "printer-jam": (
        "Clear a printer jam",
        ["the printer is jammed", "paper stuck in the printer", "printer says paper jam"],
    ),
    "wifi-guest": (
        "Guest Wi-Fi access",
        ["what is the guest wifi password", "wifi for visitors", "connect a guest to wifi"],
    ),
    "mfa-new-phone": (
        "Move MFA to a new phone",
        [
            "I got a new phone and need my authenticator",
            "2fa on new phone",
            "mfa codes on new phone",
        ],
    ),
    "shared-drive": (
        "Access a shared drive",
        ["I need access to the finance share", "map a network drive", "shared drive missing"],
    ),
}


def write_article(root: Path, article_id: str, title: str, questions: list[str]) -> Path:
    path = root / f"{article_id}.md"
    path.write_text(
        dump_article(title=title, questions=questions, body=f"How to: **{title}**."),
        encoding="utf-8",
    )
    return path


@pytest.fixture()
def kb_dir(tmp_path: Path) -> Path:
    root = tmp_path / "kb"
    root.mkdir()
    for article_id, (title, questions) in ARTICLES.items():
        write_article(root, article_id, title, questions)
    return root
