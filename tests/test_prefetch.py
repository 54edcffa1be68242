"""prefetch: same items in the same order, errors where they happened, no thread left behind."""

import threading
import time

import numpy as np
import pytest

from dpose_core.prefetch import prefetch


def _workers() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "dpose-prefetch"]


def test_items_come_out_in_order_with_work_applied():
    assert list(prefetch(range(50))) == list(range(50))
    assert list(prefetch(range(20), ahead=3, work=lambda x: x * x)) == [x * x for x in range(20)]
    assert list(prefetch([])) == []
    assert not _workers()


def test_the_next_item_is_produced_while_the_caller_works():
    """While the caller holds item k, the worker produces item k+1 (no clock involved: the
    caller waits for the worker's signal, which a sequential loop would never give)."""
    produced = [threading.Event() for _ in range(4)]

    def source():
        for i in range(4):
            produced[i].set()
            yield i

    for item in prefetch(source()):
        if item < 3:
            assert produced[item + 1].wait(10), f"item {item + 1} was not read ahead"


def test_an_error_comes_out_at_its_position_and_stops_the_worker():
    def source():
        yield 1
        yield 2
        raise OSError("frame 3 unreadable")

    got = []
    with pytest.raises(OSError, match="frame 3"):
        for item in prefetch(source()):
            got.append(item)
    assert got == [1, 2]

    def bad_work(x):
        if x == 2:
            raise ValueError("bad crop")
        return x

    got = []
    with pytest.raises(ValueError, match="bad crop"):
        for item in prefetch(range(5), work=bad_work):
            got.append(item)
    assert got == [0, 1]
    assert not _workers()


def test_leaving_the_loop_early_closes_the_source_and_the_worker():
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield np.zeros(1000) + i
                i += 1
        finally:
            closed.set()

    for item in prefetch(endless(), ahead=2):
        if item[0] == 3:
            break
    assert closed.wait(5)
    deadline = time.monotonic() + 5
    while _workers() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _workers()


def test_ahead_must_be_positive():
    with pytest.raises(ValueError, match="ahead"):
        next(prefetch(range(3), ahead=0))
