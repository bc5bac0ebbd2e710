"""The two ways a newcomer meets deskbot: `deskbot run` and `deskbot chat` (real processes)."""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import typer

from bot.main import _setup_logging, event_loop_factory
from tests.conftest import REPO_ROOT


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DESKBOT_")}
    env.update(
        {
            "DESKBOT_VAR_DIR": str(tmp_path / "var"),
            "DESKBOT_HTTP_PORT": "0",
            "PYTHONPATH": str(REPO_ROOT),
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra)
    return env


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_run_serves_healthz_and_stops_cleanly_on_sigterm(tmp_path: Path, loop: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "bot.main", "run"],
        cwd=tmp_path,
        env=_env(tmp_path, DESKBOT_EVENT_LOOP=loop),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"listening on (http://127\.0\.0\.1:\d+)", line)
        assert match, line + (proc.stderr.read() if proc.stderr else "")
        health = httpx.get(f"{match.group(1)}/healthz", timeout=10)
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        assert (tmp_path / "var" / "secret_key").exists()
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "deskbot stopped." in out
    secret = (tmp_path / "var" / "secret_key").read_text()
    assert secret not in out + err  # never logged
    assert f"loop={loop}" in err


def test_event_loop_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvloop

    assert event_loop_factory("asyncio") is None
    assert event_loop_factory("auto") is uvloop.new_event_loop
    assert event_loop_factory("uvloop") is uvloop.new_event_loop
    monkeypatch.setitem(sys.modules, "uvloop", None)  # as if it were not installed
    assert event_loop_factory("auto") is None
    with pytest.raises(typer.BadParameter, match="not installed"):
        event_loop_factory("uvloop")


def test_chat_reads_piped_lines_and_prints_the_transcript(tmp_path: Path) -> None:
    script = "hi\nmy tickets\nI forgot my password\ncancel\n"
    proc = subprocess.run(
        [sys.executable, "-m", "bot.main", "chat", "--user", "erin"],
        cwd=tmp_path,
        env=_env(tmp_path),
        input=script,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "you> hi" in out and "deskbot> Hi erin!" in out
    assert "You have no open tickets" in out
    assert "Which account needs the reset" in out
    assert "cancelled" in out
    assert out.index("you> my tickets") < out.index("You have no open tickets")


def test_scheduler_job_runs_are_quiet_at_info_and_shown_when_debugging() -> None:
    """APScheduler's two INFO lines per job run (the KB sync runs every few seconds) do not
    flood the log; its warnings still show, and DEBUG shows everything."""
    executors = logging.getLogger("apscheduler.executors")
    before = executors.level
    try:
        _setup_logging("INFO")
        assert not executors.isEnabledFor(logging.INFO)
        assert executors.isEnabledFor(logging.WARNING)
        _setup_logging("DEBUG")
        assert executors.isEnabledFor(logging.DEBUG)
    finally:
        executors.setLevel(before)


def test_serving_freezes_what_start_up_made_and_collects_young_objects_less_often() -> None:
    import gc

    from bot.main import GC_YOUNG_THRESHOLD, settle_garbage_collector

    before = gc.get_threshold()
    try:
        settle_garbage_collector()
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
