"""Progress, status and failure lines in the form a farm manager reads from a task's stdout.

openjd: `openjd_progress: NN` (0-100, printed when the whole percent changes),
`openjd_status: text` and `openjd_fail: reason`, which Open Job Description runtimes (the
Deadline Cloud worker agent, `openjd run`) turn into task progress, status and failure
reason. flamenco: one `Time: MM:SS.ss` line per frame done, which the Flamenco worker counts
as one step of the task's step count (the line Blender prints per rendered frame); status and
failure are plain lines for the task log. See docs/farm.md.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

STYLES = ("openjd", "flamenco")


class FarmProgress:
    """progress(done, total) callable plus status()/fail() lines for one farm style."""

    def __init__(self, style: str, stream: TextIO | None = None):
        if style not in STYLES:
            raise ValueError(f"progress style must be one of {', '.join(STYLES)}, got {style!r}")
        self.style = style
        self.stream = stream or sys.stdout
        self._percent = -1
        self._done = 0
        self._last = time.perf_counter()

    def _line(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()  # the manager reads lines as they come

    def __call__(self, done: int, total: int) -> None:
        if self.style == "openjd":
            if total > 0:
                percent = min(100, int(100 * done / total))
                if percent != self._percent:
                    self._percent = percent
                    self._line(f"openjd_progress: {percent}")
            return
        now = time.perf_counter()
        for _ in range(done - self._done):  # one step per frame done
            minutes, seconds = divmod(now - self._last, 60.0)
            self._line(f"Time: {int(minutes):02d}:{seconds:05.2f}")
            self._last = now
        self._done = done

    def status(self, text: str) -> None:
        self._line(f"openjd_status: {text}" if self.style == "openjd" else text)

    def fail(self, reason: str) -> None:
        self._line(f"openjd_fail: {reason}" if self.style == "openjd" else f"error: {reason}")


def frame_ranges(frames: list[int]) -> str:
    """[3, 4, 5, 9] -> "3-5, 9": frame numbers as a farm operator reads them."""
    parts: list[str] = []
    for f in sorted(frames):
        if parts and f == parts[-1][1] + 1:
            parts[-1][1] = f
        else:
            parts.append([f, f])
    return ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in parts)
