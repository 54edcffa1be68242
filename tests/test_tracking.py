"""Tracking: exact assignment, stable ids through crossings and gaps."""

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment as scipy_lsa

from dpose_core.tracking import Tracker, box_iou, linear_sum_assignment


@pytest.mark.parametrize("shape", [(1, 1), (3, 3), (5, 8), (8, 5), (12, 12), (2, 7)])
def test_assignment_matches_scipy(shape):
    rng = np.random.default_rng(sum(shape))
    for trial in range(20):
        cost = rng.random(shape) * 10
        if trial % 3 == 0:
            cost = np.round(cost)  # ties
        rows, cols = linear_sum_assignment(cost)
        srows, scols = scipy_lsa(cost)
        assert len(rows) == min(shape)
        assert len(set(cols.tolist())) == len(cols)
        assert cost[rows, cols].sum() == pytest.approx(cost[srows, scols].sum())
        np.testing.assert_array_equal(rows, np.sort(rows))


def test_assignment_empty_and_bad_input():
    rows, cols = linear_sum_assignment(np.zeros((0, 3)))
    assert rows.size == 0 and cols.size == 0
    with pytest.raises(ValueError):
        linear_sum_assignment(np.array([[np.inf]]))


def test_box_iou():
    a = np.array([[0, 0, 10, 10]])
    b = np.array([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30]])
    np.testing.assert_allclose(box_iou(a, b), [[1.0, 1 / 3, 0.0]])


def _box(cx, cy, w=40.0, h=100.0):
    return [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]


def _run(tracker, frames):
    """frames: list of lists of (true_person, box); returns {true_person: set(track ids)}."""
    seen: dict[int, set] = {}
    for f, dets in enumerate(frames):
        order = np.random.default_rng(f).permutation(len(dets))  # detector order is arbitrary
        dets = [dets[i] for i in order]
        ids = tracker.update(f, np.array([b for _, b in dets]).reshape(-1, 4))
        for (person, _), tid in zip(dets, ids, strict=True):
            seen.setdefault(person, set()).add(tid)
    return seen


def test_crossing_paths_keep_ids():
    frames = []
    for f in range(60):
        a = _box(50 + 6 * f, 200 + 0.5 * f)  # walks right
        b = _box(410 - 6 * f, 205 - 0.5 * f)  # walks left, crosses at f = 30
        frames.append([(0, a), (1, b)])
    seen = _run(Tracker(), frames)
    assert len(seen[0]) == 1 and len(seen[1]) == 1 and seen[0] != seen[1]


def test_crossing_with_occlusion_gap_keeps_ids():
    """Person 1 is hidden behind person 0 for 10 frames while they cross."""
    frames = []
    for f in range(60):
        a = _box(50 + 6 * f, 200)
        b = _box(410 - 6 * f, 210)
        dets = [(0, a)]
        if not 25 <= f < 35:
            dets.append((1, b))
        frames.append(dets)
    seen = _run(Tracker(max_gap=15), frames)
    assert len(seen[0]) == 1 and len(seen[1]) == 1 and seen[0] != seen[1]


def test_gap_longer_than_max_gap_starts_new_track():
    # last seen at frame 4, back at frame 19: a 15-frame gap
    frames = [[(0, _box(100 + 2 * f, 100))] if not 5 <= f < 19 else [] for f in range(30)]
    seen = _run(Tracker(max_gap=10), frames)
    assert len(seen[0]) == 2
    seen = _run(Tracker(max_gap=15), frames)
    assert len(seen[0]) == 1


def test_far_detection_is_a_new_person():
    tracker = Tracker()
    assert tracker.update(0, np.array([_box(100, 100)])) == [0]
    assert tracker.update(1, np.array([_box(400, 100)])) == [1]
    assert tracker.predicted_boxes(2).keys() == {0, 1}
    assert [t.track_id for t in tracker.all_tracks()] == [0, 1]
