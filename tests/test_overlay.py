"""The part-segmentation overlay: alignment with the crop, colours, skeleton, safe PNG writes."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from dpose_core.errors import DPoseError, FrameError
from dpose_core.overlay import (
    PART_COLOURS,
    legend,
    overlay_estimate,
    render_overlay,
    write_png,
)
from dpose_core.part_labels import CLASS_NAMES

ROOT = Path(__file__).resolve().parents[1]


def _grey(h=380, w=400, value=90):
    return np.full((h, w, 3), value, np.uint8)


def _transitions(line: np.ndarray) -> np.ndarray:
    """Continuous coordinates of the pixel borders where an RGB line changes colour."""
    changed = np.any(line[1:] != line[:-1], axis=1)
    return np.flatnonzero(changed) + 1.0  # border between pixel k-1 and k sits at k


@pytest.mark.parametrize("crop_box", [(37.0, 21.0, 326.0, 310.0), (-60.0, -45.0, 410.0, 425.0)])
def test_label_boundaries_sit_on_the_crops_pixels(crop_box):
    # Stripes: every 7th crop column and every 9th crop row starts a new class.
    cols, rows = np.meshgrid(np.arange(224), np.arange(224))
    labels = (2 + (cols // 7 + rows // 9) % 21).astype(np.uint8)
    out = render_overlay(_grey(), labels, crop_box, alpha=1.0, legend=False)
    x0, y0, x1, y1 = crop_box
    h, w = out.shape[:2]
    # Crop borders in the image: every stripe start plus the crop's own edges.
    x_borders = x0 + np.r_[np.arange(0, 224, 7), 224] * (x1 - x0) / 224
    y_borders = y0 + np.r_[np.arange(0, 224, 9), 224] * (y1 - y0) / 224
    for found, borders, n in (
        *((_transitions(out[row]), x_borders, w) for row in (50, 200, 300)),
        *((_transitions(out[:, col]), y_borders, h) for col in (60, 250)),
    ):
        borders = borders[(borders > 0.5) & (borders < n - 0.5)]
        assert np.abs(found[:, None] - borders[None]).min(axis=1).max() <= 0.5
        assert np.abs(borders[:, None] - found[None]).min(axis=1).max() <= 0.5


def test_overlay_blends_part_colours_and_keeps_the_background():
    image = np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8)
    labels = np.zeros((224, 224), np.uint8)
    labels[:, 112:] = 4  # head colour on the right half of the crop
    out = render_overlay(image, labels, (0, 0, 300, 300), alpha=0.25, legend=False)
    left, right = slice(0, 149), slice(151, 300)  # 112/224 of 300 px = 150
    np.testing.assert_array_equal(out[:, left], image[:, left])
    expected = np.rint(0.75 * image[:, right].astype(np.float32) + 0.25 * PART_COLOURS[4])
    np.testing.assert_array_equal(out[:, right], expected.astype(np.uint8))
    assert out is not image and np.array_equal(image, image.copy())


def test_skeleton_joints_are_drawn_where_they_project():
    image = _grey(200, 220, value=0)
    joints = np.full((127, 2), (123.3, 77.8))  # every joint at one point: a dot
    out = render_overlay(image, np.zeros((224, 224), np.uint8), (0, 0, 220, 200), joints,
                         legend=False)  # fmt: skip
    weight = out.astype(float).sum(axis=2)
    ys, xs = np.mgrid[0:200, 0:220]
    centre = ((xs + 0.5) * weight).sum() / weight.sum(), ((ys + 0.5) * weight).sum() / weight.sum()
    np.testing.assert_allclose(centre, (123.3, 77.8), atol=0.5)


def test_nonsense_joints_draw_no_bones_and_many_people_paint_in_order():
    labels = np.stack([np.full((224, 224), 3, np.uint8), np.full((224, 224), 9, np.uint8)])
    boxes = np.array([[0, 0, 100, 100], [50, 50, 150, 150]], float)
    joints = np.full((2, 127, 2), np.nan)
    out = render_overlay(_grey(160, 160), labels, boxes, joints, alpha=1.0, legend=False)
    np.testing.assert_array_equal(out[25, 25], PART_COLOURS[3])
    np.testing.assert_array_equal(out[75, 75], PART_COLOURS[9])  # the later crop on top
    np.testing.assert_array_equal(out[155, 10], (90, 90, 90))


def test_legend_lists_the_classes_shown(tmp_path):
    labels = np.zeros((224, 224), np.uint8)
    labels[20:60, 20:60] = 4
    labels[100:140, 20:60] = 13
    with_legend = render_overlay(_grey(600, 800), labels, (300, 100, 524, 324))
    without = render_overlay(_grey(600, 800), labels, (300, 100, 524, 324), legend=False)
    changed = np.any(with_legend != without, axis=2)
    rows, cols = np.nonzero(changed)
    assert rows.max() < 120 and cols.max() < 300  # a small box in the top-left corner
    entries = legend()
    assert len(entries) == 21 and entries[0] == (2, CLASS_NAMES[2], tuple(PART_COLOURS[2]))
    assert len({colour for _, _, colour in entries}) == 21


def test_overlay_estimate_draws_the_crops_of_one_image():
    from types import SimpleNamespace

    labels = np.stack([np.full((224, 224), 3, np.uint8), np.full((224, 224), 9, np.uint8)])
    estimate = SimpleNamespace(
        image_index=np.array([0, 1]), part_labels=labels,
        crop_box=np.array([[0, 0, 100, 100], [0, 0, 100, 100]], float),
        joints2d=np.full((2, 127, 2), np.nan),
    )  # fmt: skip
    out = overlay_estimate(_grey(100, 100), estimate, image_index=1, alpha=1.0, legend=False)
    np.testing.assert_array_equal(out[50, 50], PART_COLOURS[9])
    nobody = overlay_estimate(_grey(100, 100), estimate, image_index=2)  # no crop: the photo
    np.testing.assert_array_equal(nobody, _grey(100, 100))


def test_write_png_round_trips_and_leaves_no_temp(tmp_path):
    image = np.random.default_rng(1).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    path = write_png(tmp_path / "over.png", image)
    np.testing.assert_array_equal(cv2.imread(str(path))[:, :, ::-1], image)
    assert sorted(os.listdir(tmp_path)) == ["over.png"]


def test_failed_png_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "over.png"
    path.write_bytes(b"the previous overlay")

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(DPoseError, match="No space left"):
        write_png(path, _grey(20, 20))
    assert path.read_bytes() == b"the previous overlay"
    assert sorted(os.listdir(tmp_path)) == ["over.png"]
    with pytest.raises(DPoseError, match="Cannot write"):
        write_png(tmp_path / "missing-folder" / "x.png", _grey(20, 20))


def test_bad_inputs_give_errors_not_native_crashes():
    """Every case runs in one subprocess: a native crash would kill it, not the test run."""
    script = textwrap.dedent(
        """
        import numpy as np
        from dpose_core.errors import DPoseError
        from dpose_core.overlay import render_overlay, write_png
        lab = np.full((224, 224), 5, np.uint8)
        far = np.full((127, 2), 1e30)
        mixed = np.random.default_rng(0).uniform(-5e6, 5e6, (127, 2))
        cases = {
            "empty": lambda: render_overlay(np.zeros((0, 0, 3), np.uint8), lab, (0, 0, 9, 9)),
            "one pixel": lambda: render_overlay(np.zeros((1, 1, 3), np.uint8), lab,
                                                (0, 0, 1, 1), far),
            "strip": lambda: render_overlay(np.zeros((1, 3000, 3), np.uint8), lab,
                                            (-5, -5, 3000, 3000), mixed),
            "box outside": lambda: render_overlay(np.zeros((50, 50, 3), np.uint8), lab,
                                                  (1e12, 1e12, 2e12, 2e12), far),
            "huge box": lambda: render_overlay(np.zeros((50, 50, 3), np.uint8), lab,
                                               (-1e15, -1e15, 1e15, 1e15), mixed),
            "nan box": lambda: render_overlay(np.zeros((50, 50, 3), np.uint8), lab,
                                              (np.nan, 0, 10, 10)),
            "bad labels": lambda: render_overlay(np.zeros((50, 50, 3), np.uint8),
                                                 np.full((224, 224), 99, np.uint8), (0, 0, 9, 9)),
            "tiny legend": lambda: render_overlay(np.zeros((3, 2, 3), np.uint8), lab,
                                                  (0, 0, 2, 3), mixed),
            "grey image": lambda: render_overlay(np.zeros((50, 50), np.uint8), lab, (0, 0, 9, 9)),
            "write empty": lambda: write_png("x.png", np.zeros((0, 4, 3), np.uint8)),
        }
        for name, call in cases.items():
            try:
                out = call()
                print(name, "|ok", out.shape)
            except DPoseError as exc:
                print(name, "|error", type(exc).__name__)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    lines = dict(line.split(" |", 1) for line in done.stdout.strip().splitlines())
    assert lines == {
        "empty": "error FrameError",
        "one pixel": "ok (1, 1, 3)",
        "strip": "ok (1, 3000, 3)",
        "box outside": "ok (50, 50, 3)",
        "huge box": "ok (50, 50, 3)",
        "nan box": "error DPoseError",
        "bad labels": "error DPoseError",
        "tiny legend": "ok (3, 2, 3)",
        "grey image": "error FrameError",
        "write empty": "error FrameError",
    }


def test_overlay_refuses_mismatched_inputs():
    with pytest.raises(DPoseError, match="label maps"):
        render_overlay(_grey(), np.zeros((2, 224, 224), np.uint8), (0, 0, 10, 10))
    with pytest.raises(DPoseError, match="alpha"):
        render_overlay(_grey(), np.zeros((224, 224), np.uint8), (0, 0, 10, 10), alpha=2)
    with pytest.raises(FrameError):
        render_overlay(np.zeros((5, 5, 3), np.float32), np.zeros((224, 224)), (0, 0, 5, 5))
