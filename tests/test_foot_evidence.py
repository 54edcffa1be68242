"""The network's own maps as contact evidence: feet seen in the part map, and the depth map's
foot-minus-hips depth, its per-clip scale fit and the points it places (foot_evidence.py)."""

import numpy as np
import pytest

from dpose_core.foot_evidence import (
    MIN_DEPTH_PIXELS,
    depths_along_rays,
    fit_map_scale,
    foot_map_depth,
    weigh_confidence,
)
from dpose_core.part_labels import PART_CLASS


def _maps(size=224):
    labels = np.zeros((size, size), np.uint8)
    depth = np.full((size, size), 0.3, np.float32)
    half = size // 2
    labels[:half, :] = PART_CLASS["hips"]
    depth[:half, :] = np.linspace(0.38, 0.42, size)  # median 0.40 on the hips
    labels[half:, :half // 2] = PART_CLASS["leftFoot"]
    depth[half:, :half // 2] = 0.55
    labels[half:, half // 2:half] = PART_CLASS["leftToeBase"]
    depth[half:, half // 2:half] = 0.35
    return labels, depth


def test_map_depth_is_each_foot_part_minus_the_hips():
    labels, depth = _maps()
    labels[-1, -3:] = PART_CLASS["rightFoot"]  # 3 pixels: too few to say anything
    got = foot_map_depth(depth, labels)
    np.testing.assert_allclose(got[:2], [0.15, -0.05], atol=1e-6)
    assert np.isnan(got[2]) and np.isnan(got[3])
    # A part map at another resolution is sampled onto the depth map's grid.
    small = labels[::4, ::4]
    np.testing.assert_allclose(foot_map_depth(depth, small)[:2], [0.15, -0.05], atol=1e-6)
    # No hips: nothing to measure from.
    labels[labels == PART_CLASS["hips"]] = 0
    assert np.isnan(foot_map_depth(depth, labels)).all()
    assert MIN_DEPTH_PIXELS > 3


@pytest.mark.parametrize("scale", [0.5, -0.8])
def test_map_scale_is_fitted_through_outliers(scale):
    rng = np.random.default_rng(0)
    solve = rng.normal(0.0, 0.15, (60, 4))  # feet in front of / behind the pelvis, metres
    maps = solve / scale + rng.normal(0, 0.01, solve.shape)
    maps[:6, 0] += 2.0  # a few frames where the map is plainly wrong
    maps[10, :] = np.nan  # and one with no feet on the map
    fitted, how = fit_map_scale(maps, solve)
    print(f"\n{how}")
    assert fitted == pytest.approx(scale, rel=0.03)


def test_a_map_that_does_not_follow_the_body_is_refused():
    rng = np.random.default_rng(1)
    solve = rng.normal(0.0, 0.15, (60, 4))
    fitted, how = fit_map_scale(rng.normal(0, 1, solve.shape), solve)
    assert fitted is None and "does not follow" in how
    fitted, how = fit_map_scale(np.full(solve.shape, 0.2), solve)
    assert fitted is None and "flat" in how
    few = np.full(solve.shape, np.nan)
    few[:3] = solve[:3]
    fitted, how = fit_map_scale(few, solve)
    assert fitted is None and "only 12" in how


def test_points_move_along_their_own_rays_to_the_map_depth():
    rng = np.random.default_rng(2)
    points = rng.uniform([-1, -1, 3], [1, 1, 5], (5, 4, 3))
    pelvis = rng.uniform([-1, -1, 3.5], [1, 1, 4.5], (5, 3))
    maps = rng.normal(0, 0.3, (5, 4))
    maps[0, 1] = np.nan
    moved = depths_along_rays(points, pelvis, maps, 0.5)
    np.testing.assert_allclose(moved[..., :2] / moved[..., 2:], points[..., :2] / points[..., 2:])
    want = pelvis[:, None, 2] + 0.5 * maps
    np.testing.assert_allclose(moved[..., 2][np.isfinite(maps)], want[np.isfinite(maps)])
    np.testing.assert_array_equal(moved[0, 1], points[0, 1])  # unknown: stays


def test_a_cue_of_zero_keeps_half_the_confidence():
    conf = np.array([[0.8, 0.4, 1.0, 0.0]])
    np.testing.assert_allclose(weigh_confidence(conf, np.array([[0.0, 1.0, 0.5, 1.0]])),
                               [[0.4, 0.4, 0.75, 0.0]])
