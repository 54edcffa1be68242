"""Read ahead: produce the next items of an iterator in a worker thread while the caller works.

A video run alternates decoding a frame (OpenCV, GIL released) with running the network on it
(ONNX Runtime, GIL released). Reading the next frame while the network runs on this one hides
the decode, and any per-frame work passed as `work` (e.g. a crop), behind the network where a
core is free. Items come out in order; an exception raised by the iterator or by `work` comes
out at the position where it happened; leaving the loop early (break, an error, cancel) stops
the worker and closes the iterator.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

_END = object()


class _Failure:
    def __init__(self, error: BaseException):
        self.error = error


def prefetch(iterable: Iterable[T], ahead: int = 1,
             work: Callable[[T], Any] | None = None) -> Iterator[Any]:
    """Items of `iterable` (or `work(item)` for each), produced up to `ahead` items early.

    Use it as a plain loop: `for record in prefetch(frames): ...`. The worker thread ends when
    the iterable is exhausted, when it raises, or when the loop is left (the generator's
    close, run by `break`, an exception or garbage collection).
    """
    if ahead < 1:
        raise ValueError(f"ahead must be at least 1, got {ahead}")
    items: queue.Queue = queue.Queue(maxsize=ahead)
    stop = threading.Event()

    def put(value) -> bool:
        """Hand one value over; False once the consumer has gone."""
        while not stop.is_set():
            try:
                items.put(value, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        source = iter(iterable)
        try:
            for item in source:
                if stop.is_set():
                    return
                if not put(item if work is None else work(item)):
                    return
            put(_END)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            put(_Failure(exc))
        finally:
            close = getattr(source, "close", None)
            if close is not None:
                close()

    worker = threading.Thread(target=produce, name="dpose-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            value = items.get()
            if value is _END:
                return
            if isinstance(value, _Failure):
                raise value.error
            yield value
    finally:
        stop.set()
        while worker.is_alive():  # unblock a worker waiting to put, then let it finish
            try:
                items.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()
