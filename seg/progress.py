"""Progress of long loops, visible whoever watches: a tqdm bar on a terminal, and when stderr
is not a terminal (nohup, Slurm, ``&> log``) plain lines such as

    train cct: step 200/600 loss 0.412 3.1 it/s ETA 2m10s

at the first step, every ``every_s`` seconds (``CCTR_PROGRESS_SECONDS`` overrides it), every
``every_n`` steps when given, and at the end. :meth:`Progress.note` prints a line at once
(e.g. a validation Dice) in both modes.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Callable, Optional, TextIO

from tqdm import tqdm


def format_duration(seconds: float) -> str:
    """``45s``, ``2m10s``, ``1h02m``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _value(v: object) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def interval_from_env(default: float) -> float:
    raw = os.environ.get("CCTR_PROGRESS_SECONDS")
    try:
        return max(float(raw), 0.0) if raw else default
    except ValueError:
        return default


class Progress:
    """Counts ``total`` steps from ``initial``; see the module docstring. ``clock`` is
    injectable so the plain-line schedule is testable without sleeping."""

    def __init__(self, total: int, desc: str, *, initial: int = 0, unit: str = "step",
                 every_s: float = 30.0, every_n: Optional[int] = None, enabled: bool = True,
                 stream: Optional[TextIO] = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.total, self.desc, self.unit, self.done = int(total), desc, unit, int(initial)
        self._initial, self._stream, self._clock = int(initial), stream or sys.stderr, clock
        self._every_s, self._every_n = interval_from_env(every_s), every_n
        self._enabled = enabled
        self._values: dict[str, object] = {}
        self._bar: Optional[tqdm] = None
        self._started = clock()
        self._last_line: Optional[float] = None
        self._printed_at = -1
        if enabled and _isatty(self._stream):
            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=self._stream,
                             dynamic_ncols=True)

    def update(self, n: int = 1, **values: object) -> None:
        """``n`` more steps done; ``values`` (e.g. ``loss=0.41``) are shown from now on."""
        self.done += n
        self._values.update(values)
        if not self._enabled:
            return
        if self._bar is not None:
            self._bar.update(n)
            if values:
                self._bar.set_postfix({k: _value(v) for k, v in self._values.items()})
            return
        now = self._clock()
        due = (self._last_line is None or now - self._last_line >= self._every_s
               or (self._every_n is not None and self.done % self._every_n == 0) or self.done >= self.total)
        if due:
            self._line(now)

    def note(self, text: str) -> None:
        """Print ``text`` at once, prefixed with the description and the step."""
        if not self._enabled:
            return
        line = f"{self.desc}: {self.unit} {self.done}/{self.total} {text}"
        if self._bar is not None:
            self._bar.write(line, file=self._stream)
        else:
            print(line, file=self._stream, flush=True)

    def status(self, now: float) -> str:
        """The plain line for the state at time ``now``."""
        parts = [f"{self.desc}: {self.unit} {self.done}/{self.total}"]
        parts += [f"{k} {_value(v)}" for k, v in self._values.items()]
        elapsed, count = now - self._started, self.done - self._initial
        if count > 0 and elapsed > 0:
            rate = count / elapsed
            parts.append(f"{rate:.3g} it/s")
            if self.done < self.total:
                parts.append(f"ETA {format_duration((self.total - self.done) / rate)}")
        return " ".join(parts)

    def _line(self, now: float) -> None:
        print(self.status(now), file=self._stream, flush=True)
        self._last_line, self._printed_at = now, self.done

    def close(self) -> None:
        """Close the bar, or print the final line unless the last step already did."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        elif self._enabled and self._printed_at != self.done and self.done > self._initial:
            self._line(self._clock())
        self._enabled = False

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False
