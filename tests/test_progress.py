"""Progress reporting (``cctr.seg.progress``, used by every trainer of the application) when stderr is not a terminal: plain
lines with step, values, rate and ETA on a schedule; nothing when disabled."""
from __future__ import annotations

import io

import pytest

import cctr.seg.progress


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("progress", [cctr.seg.progress])
def test_plain_lines_at_the_first_step_every_interval_and_at_the_end(progress, monkeypatch):
    monkeypatch.delenv("CCTR_PROGRESS_SECONDS", raising=False)
    out, clock = io.StringIO(), Clock()
    bar = progress.Progress(600, "train cct", every_s=30.0, stream=out, clock=clock)
    for step in range(1, 601):
        clock.now += 0.5  # 2 steps per second
        bar.update(1, loss=1.0 / step)
        if step == 200:
            bar.note("val dice 0.812")
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("train cct: step 1/600 loss 1 ")
    assert "train cct: step 200/600 val dice 0.812" in lines
    assert "train cct: step 61/600 loss 0.01639 2 it/s ETA 4m30s" in lines
    assert lines[-1].startswith("train cct: step 600/600 ") and "ETA" not in lines[-1]
    assert len(lines) == 1 + 600 * 0.5 // 30 + 1  # first, every 30 s, the validation note


def test_every_n_steps_and_the_env_interval(monkeypatch):
    monkeypatch.setenv("CCTR_PROGRESS_SECONDS", "1000")
    out, clock = io.StringIO(), Clock()
    with cctr.seg.progress.Progress(10, "predict", unit="volume", every_n=5, initial=2, stream=out, clock=clock) as bar:
        for _ in range(8):
            clock.now += 2.0
            bar.update()
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ["3/10", "5/10", "10/10"]
    assert lines[1] == "predict: volume 5/10 0.5 it/s ETA 10s"


def test_disabled_prints_nothing():
    out = io.StringIO()
    bar = cctr.seg.progress.Progress(3, "x", enabled=False, stream=out)
    bar.update()
    bar.note("hi")
    bar.close()
    assert out.getvalue() == ""


def test_durations():
    assert [cctr.seg.progress.format_duration(s) for s in (4.4, 130, 3720)] == ["4s", "2m10s", "1h02m"]
