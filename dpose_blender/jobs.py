"""A worker thread for network work, and the main-thread side that drains its results.

Blender data may only be touched on the main thread, and the network forward takes about a
second per crop on a laptop CPU. So a ``Job`` runs a plain function in a daemon thread; the
function reports progress and hands finished pieces (``post``) to a queue; the main thread calls
``Job.drain()`` from a modal operator's TIMER events (or by hand in tests/benchmarks) and applies
them. ``cancel()`` sets a ``threading.Event`` the work function checks between frames, so a
cancelled job still ends cleanly with what it finished. No bpy import: this module is plain
threading and is unit-tested without Blender.
"""

from __future__ import annotations

import queue
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

PENDING, RUNNING, DONE, CANCELLED, FAILED = "PENDING", "RUNNING", "DONE", "CANCELLED", "FAILED"


@dataclass
class Progress:
    """Frames done out of total, with a rate measured since the job started."""

    done: int = 0
    total: int = 0
    started: float = field(default_factory=time.perf_counter)
    message: str = ""

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total else 0.0

    @property
    def frames_per_second(self) -> float:
        elapsed = time.perf_counter() - self.started
        return self.done / elapsed if elapsed > 0 and self.done else 0.0

    @property
    def eta_seconds(self) -> float | None:
        fps = self.frames_per_second
        if not fps or not self.total:
            return None
        return max(0.0, (self.total - self.done) / fps)

    def text(self) -> str:
        """'3/10 frames, 1.2 frames/s, ETA 6 s' (shown in the panel and printed headless)."""
        parts = [f"{self.done}/{self.total or '?'} frames"]
        if self.frames_per_second:
            parts.append(f"{self.frames_per_second:.2f} frames/s")
        eta = self.eta_seconds
        if eta is not None:
            parts.append(f"ETA {eta:.0f} s")
        if self.message:
            parts.append(self.message)
        return ", ".join(parts)


class JobContext:
    """What the work function sees: the cancel event, progress reporting and ``post``."""

    def __init__(self, job: Job) -> None:
        self._job = job
        self.cancel_event = job.cancel_event

    @property
    def cancelled(self) -> bool:
        return self.cancel_event.is_set()

    def progress(self, done: int, total: int | None = None, message: str | None = None) -> None:
        with self._job._lock:
            p = self._job.progress
            p.done = int(done)
            if total is not None:
                p.total = int(total)
            if message is not None:
                p.message = message

    def post(self, item: Any) -> None:
        """Hand a finished piece to the main thread (applied by ``Job.drain``)."""
        self._job._queue.put(("item", item))

    def warn(self, text: str) -> None:
        """A non-fatal problem (e.g. a corrupt frame skipped) to report to the user."""
        self._job._queue.put(("warning", text))


class Job:
    """Run ``work(ctx) -> result`` in a thread; the main thread drains posted items.

    ``on_item(item)``, ``on_warning(text)`` and ``on_finish(job)`` are called on the thread
    that calls ``drain()`` (Blender's main thread), never on the worker.
    """

    def __init__(
        self,
        work: Callable[[JobContext], Any],
        *,
        label: str = "D-PoSE",
        on_item: Callable[[Any], None] | None = None,
        on_warning: Callable[[str], None] | None = None,
        on_finish: Callable[[Job], None] | None = None,
    ) -> None:
        self.label = label
        self.state = PENDING
        self.result: Any = None
        self.error: BaseException | None = None
        self.error_text = ""
        self.warnings: list[str] = []
        self.progress = Progress()
        self.cancel_event = threading.Event()
        self._work = work
        self._on_item = on_item
        self._on_warning = on_warning
        self._on_finish = on_finish
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._finished_handled = False

    # ------------------------------------------------------------------ worker side
    def start(self) -> Job:
        self.state = RUNNING
        self.progress.started = time.perf_counter()
        self._thread = threading.Thread(target=self._run, name=f"dpose-{self.label}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        ctx = JobContext(self)
        try:
            result = self._work(ctx)
            self._queue.put(("done", result))
        except BaseException as exc:  # reported on the main thread, never lost
            self._queue.put(("error", (exc, traceback.format_exc())))

    # ------------------------------------------------------------------ main-thread side
    def cancel(self) -> None:
        self.cancel_event.set()

    def abandon(self) -> None:
        """Cancel and drop the main-thread callbacks: the scene they would build into is gone
        (another .blend was opened while the job ran)."""
        self.cancel_event.set()
        self._on_item = self._on_finish = None

    @property
    def finished(self) -> bool:
        return self.state in (DONE, CANCELLED, FAILED)

    def drain(self, max_items: int | None = None) -> bool:
        """Apply queued items on the calling thread; returns True once the job has finished."""
        handled = 0
        while max_items is None or handled < max_items:
            try:
                kind, payload = self._queue.get_nowait()
            except queue.Empty:
                break
            handled += 1
            if kind == "item":
                if self._on_item is not None:
                    self._on_item(payload)
            elif kind == "warning":
                self.warnings.append(payload)
                if self._on_warning is not None:
                    self._on_warning(payload)
            elif kind == "done":
                self.result = payload
                self.state = CANCELLED if self.cancel_event.is_set() else DONE
            elif kind == "error":
                exc, text = payload
                self.error, self.error_text = exc, text
                self.state = CANCELLED if _is_cancel(exc) else FAILED
        if self.finished and not self._finished_handled:
            self._finished_handled = True
            if self._on_finish is not None:
                self._on_finish(self)
        return self.finished

    def wait(self, timeout: float | None = None, poll_s: float = 0.02) -> bool:
        """Block (draining) until finished; for headless use and tests."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while not self.drain():
            if deadline is not None and time.perf_counter() > deadline:
                return False
            time.sleep(poll_s)
        return True

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)


def _is_cancel(exc: BaseException) -> bool:
    from ..dpose_core.errors import CancelledError

    return isinstance(exc, CancelledError)


# One job at a time for the UI: the panel draws its progress, Esc/Cancel stop it.
_ACTIVE: Job | None = None


def active_job() -> Job | None:
    return _ACTIVE


def set_active_job(job: Job | None) -> None:
    global _ACTIVE
    _ACTIVE = job


def cancel_all(timeout: float = 5.0) -> None:
    """Stop the running job (used by unregister): cancel and wait briefly for the thread."""
    job = _ACTIVE
    if job is not None:
        job.cancel()
        job.join(timeout)
    set_active_job(None)
