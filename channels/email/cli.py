"""``deskbot email inspect``: what deskbot makes of raw mail files, and why."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from channels.email.classify import classify
from channels.email.convert import new_text
from channels.email.parse import parse_mail

app = typer.Typer(help="Email channel tools.", no_args_is_help=True)


@app.callback()
def email_tools() -> None:
    """Email channel tools (mounted by the core as ``deskbot email``)."""


def inspect_file(path: Path, *, desk_addresses: list[str]) -> dict[str, Any]:
    """The verdict for one raw mail file; reports unreadable files instead of raising."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return {
            "file": str(path),
            "kind": "error",
            "creates_ticket": False,
            "sender": None,
            "subject": None,
            "text": f"cannot read file: {exc.strerror or exc}",
        }
    mail = parse_mail(raw)
    verdict = classify(mail, own_addresses=desk_addresses)
    return {
        "file": str(path),
        "kind": verdict.kind,
        "creates_ticket": verdict.creates_ticket,
        "sender": mail.from_address,
        "subject": mail.subject,
        "text": new_text(mail),
        "reason": verdict.reason,
    }


@app.command("inspect")
def inspect(
    files: Annotated[list[Path], typer.Argument(help="Raw RFC 822 message files.")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    desk_address: Annotated[
        list[str] | None,
        typer.Option(
            "--desk-address",
            envvar="DESKBOT_EMAIL_ADDRESS",
            help="The desk's own address (mail from it is classified 'own').",
        ),
    ] = None,
) -> None:
    """Show, for each raw message, its kind, whether it opens a ticket, and its new text."""
    addresses = [a for value in desk_address or [] for a in value.split(",") if a.strip()]
    results = [inspect_file(path, desk_addresses=addresses) for path in files]
    if as_json:
        for result in results:
            typer.echo(json.dumps(result, ensure_ascii=False))
        return
    table = Table(show_lines=True)
    for column in ("file", "kind", "ticket", "sender", "subject", "text", "why"):
        table.add_column(column, overflow="fold")
    for r in results:
        text = r["text"] or ""
        table.add_row(
            r["file"],
            r["kind"],
            "yes" if r["creates_ticket"] else "no",
            r["sender"] or "-",
            r["subject"] or "-",
            text if len(text) <= 300 else text[:300] + "…",
            r.get("reason", ""),
        )
    Console().print(table)
