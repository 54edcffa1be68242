"""Blender's lens, sensor fit and shift for the network's pinhole camera, without Blender."""

import numpy as np
import pytest

from dpose_core.camera import blender_camera_settings, focal_from_fov
from dpose_core.errors import DPoseError


def test_fov_across_the_longer_side_gives_the_focal_length():
    assert focal_from_fov((800, 600), 90.0) == pytest.approx(400.0)
    assert focal_from_fov((600, 800), 90.0) == pytest.approx(400.0)
    assert focal_from_fov((1000, 500), 60.0) == pytest.approx(500.0 / np.tan(np.radians(30)))
    with pytest.raises(DPoseError, match="outside 1-179 degrees"):
        focal_from_fov((800, 600), 0.0)


@pytest.mark.parametrize("size, fit", [((800, 600), "HORIZONTAL"), ((480, 854), "VERTICAL")])
def test_lens_and_shift_are_measured_against_the_longer_side(size, fit):
    w, h = size
    s = blender_camera_settings(size, 400.0, (w / 2 + 8.0, h / 2 - 4.0))
    side = max(size)
    assert s.lens_mm == pytest.approx(400.0 * 36.0 / side)
    assert (s.sensor_mm, s.sensor_fit, s.resolution) == (36.0, fit, size)
    assert s.shift_x == pytest.approx(-8.0 / side) and s.shift_y == pytest.approx(-4.0 / side)
    centred = blender_camera_settings(size, 400.0)
    assert (centred.shift_x, centred.shift_y) == (0.0, 0.0)
