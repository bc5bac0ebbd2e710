"""``deskbot kb``: search, eval, calibrate and import (mounted by the core's CLI)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from . import SAMPLE_KB_DIR
from .article import KnowledgeError
from .base import KnowledgeBase
from .calibration import CALIBRATION_FILE
from .converters import import_banking77, import_clinc150
from .evaluation import calibrate as fit_on_queries
from .evaluation import evaluate, read_queries

app = typer.Typer(help="Knowledge base: search, evaluate, calibrate, import.", no_args_is_help=True)

KbOption = Annotated[
    Path,
    typer.Option(
        "--kb",
        envvar="DESKBOT_KB_DIR",
        help="Knowledge base folder (default: the shipped sample KB).",
        file_okay=False,
    ),
]


@contextmanager
def _progress(label: str, total: int) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on a terminal; silent when stdout is piped."""
    if not sys.stdout.isatty():
        yield lambda done: None
        return
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, transient=True) as progress:
        task = progress.add_task(label, total=total)
        yield lambda done: progress.update(task, completed=done)


def _load(kb_dir: Path) -> KnowledgeBase:
    try:
        kb = KnowledgeBase.load(kb_dir)
    except KnowledgeError as exc:
        raise typer.BadParameter(str(exc), param_hint="--kb") from exc
    err = Console(stderr=True)
    for error in kb.errors:
        err.print(f"[yellow]skipped[/] {error}", highlight=False)
    return kb


@app.command()
def search(
    query: Annotated[str, typer.Argument(help="What a person would ask.")],
    kb_dir: KbOption = SAMPLE_KB_DIR,
    limit: Annotated[int, typer.Option("--limit", min=1, max=50)] = 5,
) -> None:
    """Print the ranked matches with scores, confidences and the decision."""
    kb = _load(kb_dir)
    result = kb.search(query, limit=limit)
    table = Table(title=f"decision: {result.decision}")
    table.add_column("#", justify="right")
    table.add_column("article")
    table.add_column("title")
    table.add_column("score", justify="right")
    table.add_column("confidence", justify="right")
    for rank, match in enumerate(result.matches, 1):
        table.add_row(
            str(rank),
            match.article.id,
            match.article.title,
            f"{match.score:.3f}",
            f"{match.confidence:.3f}",
        )
    Console().print(table)


@app.command("eval")
def eval_command(
    queries: Annotated[Path, typer.Option("--queries", exists=True, dir_okay=False)],
    kb_dir: KbOption = SAMPLE_KB_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Accuracy, refusal and latency on labelled queries (see docs/knowledge.md)."""
    kb = _load(kb_dir)
    try:
        items = read_queries(queries)
        with _progress("evaluating", len(items)) as tick:
            report = evaluate(kb, items, progress=tick)
    except KnowledgeError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if as_json:
        typer.echo(json.dumps(report.to_dict()))
        return
    table = Table(title=f"{kb_dir} × {queries.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in report.to_dict().items():
        table.add_row(key, "n/a" if value is None else str(value))
    Console().print(table)


@app.command()
def calibrate(
    queries: Annotated[Path, typer.Option("--queries", exists=True, dir_okay=False)],
    kb_dir: KbOption = SAMPLE_KB_DIR,
    min_refused: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.94,
    max_wrong: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.05,
) -> None:
    """Fit the confidence model and thresholds on labelled queries; store them in the KB."""
    kb = _load(kb_dir)
    try:
        items = read_queries(queries)
        with _progress("calibrating", len(items)) as tick:
            fitted = fit_on_queries(
                kb, items, min_refused=min_refused, max_wrong=max_wrong, progress=tick
            )
    except KnowledgeError as exc:
        raise typer.BadParameter(str(exc)) from exc
    target = kb_dir / CALIBRATION_FILE
    target.write_text(fitted.to_json(), encoding="utf-8")
    Console().print(
        f"wrote {target}: answer ≥ {fitted.answer_threshold:.3f}, "
        f"suggest ≥ {fitted.suggest_threshold:.3f} ({len(items)} queries)",
        highlight=False,
    )


class Dataset(StrEnum):
    clinc150 = "clinc150"
    banking77 = "banking77"


@app.command("import")
def import_command(
    dataset: Annotated[Dataset, typer.Argument(help="Which dataset the --data folder holds.")],
    data: Annotated[Path, typer.Option("--data", exists=True, help="The dataset folder.")],
    out: Annotated[Path, typer.Option("--out", file_okay=False, help="KB folder to write.")],
    limit_intents: Annotated[
        int | None, typer.Option(min=1, help="Only the first N intents.")
    ] = None,
) -> None:
    """Convert CLINC150 or Banking77 into a KB folder plus <out>.val/.test.jsonl query files."""
    converter = import_clinc150 if dataset is Dataset.clinc150 else import_banking77
    total = limit_intents or (150 if dataset is Dataset.clinc150 else 77)
    try:
        with _progress(f"importing {dataset.value}", total) as tick:
            summary = converter(data, out, limit_intents=limit_intents, progress=tick)
    except KnowledgeError as exc:
        raise typer.BadParameter(str(exc)) from exc
    console = Console()
    console.print(f"wrote {summary.articles} articles ({summary.questions} questions) to {out}")
    for path, count in summary.query_files.items():
        console.print(f"wrote {count} queries to {path}", highlight=False)
