"""Temporal clean-up: One-Euro on rotations and translation, gap filling, one body shape."""

import numpy as np
import pytest

from dpose_core.rotations import (
    axis_angle_to_matrix,
    matrix_to_axis_angle,
    matrix_to_quaternion,
    rotation_about_axis,
)
from dpose_core.smoothing import (
    OneEuroParams,
    fill_gaps,
    one_euro_quaternions,
    robust_mean_betas,
    scaled_params,
    smooth_rotations,
    smooth_translation,
)

FPS = 30.0
N = 240


def _rotation_trajectory(seed=0, noise_deg=3.0):
    rng = np.random.default_rng(seed)
    t = np.arange(N) / FPS
    amp = rng.uniform(0.2, 0.8, (22, 3))
    freq = rng.uniform(0.2, 1.0, (22, 3))
    phase = rng.uniform(0, 6, (22, 3))
    clean = axis_angle_to_matrix(amp * np.sin(2 * np.pi * freq * t[:, None, None] + phase))
    noise = axis_angle_to_matrix(rng.normal(0, np.deg2rad(noise_deg), (N, 22, 3)))
    return t, clean, noise @ clean


def _angular_jitter(rotmats):
    """Mean angular acceleration (rad/frame^2) from consecutive relative rotations."""
    rel = np.swapaxes(rotmats[:-1], -1, -2) @ rotmats[1:]
    velocity = matrix_to_axis_angle(rel)
    return float(np.linalg.norm(np.diff(velocity, axis=0), axis=-1).mean())


def _angle_error(a, b):
    return float(np.linalg.norm(matrix_to_axis_angle(np.swapaxes(a, -1, -2) @ b), axis=-1).mean())


def _best_lag(filtered, clean, err, max_lag=6):
    core = slice(max_lag, len(clean) - max_lag)
    errors = {k: err(filtered[core.start + k: core.stop + k], clean[core]) for k in
              range(-max_lag, max_lag + 1)}
    return min(errors, key=errors.get)


def test_rotation_jitter_drops_5x_with_small_lag():
    t, clean, noisy = _rotation_trajectory()
    filtered = smooth_rotations(noisy, t, smooth=1.0)
    assert _angular_jitter(noisy) / _angular_jitter(filtered) >= 5.0
    assert abs(_best_lag(filtered, clean, _angle_error)) <= 2
    assert _angle_error(filtered, clean) < _angle_error(noisy, clean)
    det = np.linalg.det(filtered)
    np.testing.assert_allclose(det, 1.0, atol=1e-9)


def test_strength_orders_smoothing_and_zero_is_off():
    t, _, noisy = _rotation_trajectory(seed=1)
    weak = _angular_jitter(smooth_rotations(noisy, t, smooth=0.5))
    default = _angular_jitter(smooth_rotations(noisy, t, smooth=1.0))
    strong = _angular_jitter(smooth_rotations(noisy, t, smooth=3.0))
    assert weak > default > strong
    np.testing.assert_array_equal(smooth_rotations(noisy, t, smooth=0.0), noisy)
    assert scaled_params(OneEuroParams(2.0, 1.0), 2.0) == OneEuroParams(1.0, 0.5, 1.0)
    with pytest.raises(ValueError):
        scaled_params(OneEuroParams(1.0, 1.0), -1.0)


def test_no_sign_flips_through_half_turn():
    """A full turn passes 180 degrees, where w changes sign; the output stays continuous."""
    t = np.arange(120) / FPS
    angles = np.linspace(0, 2 * np.pi, 120)
    rotmats = np.stack([rotation_about_axis("z", a) for a in angles])[:, None]
    q_raw = matrix_to_quaternion(rotmats)
    assert np.any(np.sum(q_raw[1:] * q_raw[:-1], -1) < 0)  # the raw input does flip
    q = one_euro_quaternions(q_raw, t, OneEuroParams(1.5, 0.3))
    assert np.all(np.sum(q[1:] * q[:-1], -1) > 0.99)
    filtered = smooth_rotations(rotmats, t)
    step = matrix_to_axis_angle(np.swapaxes(filtered[:-1], -1, -2) @ filtered[1:])
    step_angle = np.linalg.norm(step, axis=-1)
    assert step_angle.max() < 2 * (2 * np.pi / 119)  # never spins the long way round


def test_translation_jitter_drops_5x_with_small_lag():
    rng = np.random.default_rng(2)
    t = np.arange(N) / FPS
    clean = np.stack([0.5 * np.sin(2 * np.pi * 0.3 * t), 0.1 * np.sin(2 * np.pi * 0.7 * t),
                      4 + 0.8 * np.sin(2 * np.pi * 0.2 * t)], 1)
    noisy = clean + rng.normal(0, [0.01, 0.01, 0.05], (N, 3))
    filtered = smooth_translation(noisy, t)

    def jitter(x):
        return np.linalg.norm(np.diff(x, 2, axis=0), axis=1).mean()

    def err(a, b):
        return float(np.linalg.norm(a - b, axis=1).mean())

    assert jitter(noisy) / jitter(filtered) >= 5.0
    assert abs(_best_lag(filtered, clean, err)) <= 2
    assert err(filtered, clean) < err(noisy, clean)
    np.testing.assert_array_equal(smooth_translation(noisy, t, smooth=0), noisy)


def test_uneven_frame_times_are_used():
    t = np.array([0.0, 0.1, 0.2, 0.5, 0.6])
    with pytest.raises(ValueError, match="increase"):
        smooth_translation(np.zeros((5, 3)), t[::-1])
    out = smooth_translation(np.linspace(0, 1, 5)[:, None].repeat(3, 1), t)
    assert out.shape == (5, 3) and np.all(np.isfinite(out))


def test_fill_gaps_slerps_and_lerps():
    r0 = rotation_about_axis("x", 0.0)
    r4 = rotation_about_axis("x", 1.0)
    rot = np.stack([r0, np.eye(3) * 7, np.eye(3), np.eye(3), r4, np.eye(3)])[:, None]
    transl = np.array([[0.0, 0, 0], [9, 9, 9], [9, 9, 9], [9, 9, 9], [4, 0, 0], [9, 9, 9]])
    valid = np.array([True, False, False, False, True, False])
    filled_rot, filled_tr = fill_gaps(rot, transl, valid)
    for i in range(1, 4):
        np.testing.assert_allclose(filled_rot[i, 0], rotation_about_axis("x", i / 4), atol=1e-9)
        np.testing.assert_allclose(filled_tr[i], [i, 0, 0])
    np.testing.assert_allclose(filled_rot[5], rot[4])  # held after the last valid frame
    np.testing.assert_allclose(filled_tr[5], transl[4])
    with pytest.raises(ValueError):
        fill_gaps(rot, transl, np.zeros(6, bool))


def test_robust_betas_ignore_outlier_frames():
    rng = np.random.default_rng(3)
    true = rng.normal(0, 1, 11)
    betas = true + rng.normal(0, 0.05, (40, 11))
    betas[:6] += 5.0  # six badly wrong frames
    robust = robust_mean_betas(betas)
    assert np.linalg.norm(robust - true) < 0.1
    assert np.linalg.norm(betas.mean(0) - true) > 0.5
    weights = np.ones(40)
    weights[6:] = 0.0
    assert np.linalg.norm(robust_mean_betas(betas, weights) - (true + 5)) < 0.2
