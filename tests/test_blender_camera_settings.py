"""Blender's lens, sensor fit and shift for the network's pinhole camera, without Blender."""

import pytest

from dpose_core.camera import blender_camera_settings


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
