"""Camera maths: CLIFF box features, crop camera -> translation, projection (docs/camera.md)."""

import numpy as np
import pytest

from dpose_core import camera
from dpose_core.errors import DPoseError


def _reference_tiled_focal(image_size: np.ndarray) -> np.ndarray:
    """What the reference computes: f.repeat(2).view(B, 2) tiles the batch (docs/camera.md)."""
    f = np.sqrt(image_size[:, 0] ** 2 + image_size[:, 1] ** 2)
    return np.tile(f, 2).reshape(len(f), 2)


def test_focal_is_image_diagonal():
    assert camera.focal_from_image_size(640, 480) == pytest.approx(800.0)
    np.testing.assert_allclose(
        camera.default_focal_px(np.array([[640, 480], [300, 400]])), [[800, 800], [500, 500]]
    )
    with pytest.raises(DPoseError):
        camera.focal_from_image_size(0, 480)


def test_bbox_info_and_translation_hand_computed():
    # 640x480 image: f = 800. Box centre (400, 300), scale 1 -> 200 px side.
    center, scale = np.array([[400.0, 300.0]]), np.array([1.0])
    size, focal = np.array([[640.0, 480.0]]), np.array([[800.0, 750.0]])
    # All three CLIFF terms divide by fx (fy = 750 must not appear).
    np.testing.assert_allclose(
        camera.bbox_info(center, scale, size, focal), [[80 / 800, 60 / 800, 200 / 800]]
    )
    # s*b = 0.8*200 = 160: tz = 2*800/160, tx = 0.1 + 2*80/160, ty = -0.2 + 2*60/160.
    t = camera.crop_cam_to_full_translation(
        np.array([[0.8, 0.1, -0.2]]), center, scale, size, focal
    )
    np.testing.assert_allclose(t, [[1.1, 0.55, 10.0]])


def test_intrinsics_principal_point_is_image_centre():
    k = camera.intrinsics(
        np.array([[800.0, 750.0], [500.0, 500.0]]), np.array([[640, 480], [301, 400]])
    )
    np.testing.assert_allclose(k[0], [[800, 0, 320], [0, 750, 240], [0, 0, 1]])
    np.testing.assert_allclose(k[1], [[500, 0, 150.5], [0, 500, 200], [0, 0, 1]])


def test_projection_with_translation_matches_formula():
    rng = np.random.default_rng(0)
    b, n = 3, 127
    size = np.array([[640.0, 480.0], [1920.0, 1080.0], [1080.0, 1920.0]])
    focal = camera.default_focal_px(size)
    center = size / 2 + rng.uniform(-100, 100, (b, 2))
    scale = rng.uniform(0.5, 3.0, b)
    cam_crop = np.column_stack([rng.uniform(0.5, 1.2, b), rng.normal(0, 0.1, (b, 2))])
    joints = rng.normal(0, 0.4, (b, n, 3))

    t = camera.crop_cam_to_full_translation(cam_crop, center, scale, size, focal)
    uv = camera.project(joints, t, focal, camera.principal_point(size))

    k = camera.intrinsics(focal, size)
    for i in range(b):
        p = joints[i] + t[i]
        homog = p @ k[i].T
        np.testing.assert_allclose(uv[i], homog[:, :2] / homog[:, 2:], rtol=1e-10)
        np.testing.assert_allclose(uv[i, :, 0], focal[i, 0] * p[:, 0] / p[:, 2] + size[i, 0] / 2)
        np.testing.assert_allclose(uv[i, :, 1], focal[i, 1] * p[:, 1] / p[:, 2] + size[i, 1] / 2)


def test_translation_reproduces_weak_perspective_crop_camera():
    """Points on the body's z=0 plane land in the crop where (s, tx, ty) says they do."""
    rng = np.random.default_rng(1)
    size = np.array([[1280.0, 720.0], [500.0, 900.0]])
    focal = camera.default_focal_px(size)
    center = np.array([[900.0, 300.0], [120.0, 700.0]])
    scale = np.array([2.1, 0.7])
    cam_crop = np.array([[0.9, 0.05, -0.1], [1.1, -0.2, 0.3]])
    pts = np.concatenate([rng.normal(0, 0.5, (2, 10, 2)), np.zeros((2, 10, 1))], axis=2)

    t = camera.crop_cam_to_full_translation(cam_crop, center, scale, size, focal)
    uv = camera.project(pts, t, focal, camera.principal_point(size))
    side = 200.0 * scale[:, None, None]
    crop_norm = (uv - (center[:, None, :] - side / 2)) / side * 2 - 1  # [-1, 1] over the crop
    expected = cam_crop[:, None, :1] * (pts[..., :2] + cam_crop[:, None, 1:])
    np.testing.assert_allclose(crop_norm, expected, atol=1e-12)


def test_mixed_image_sizes_keep_their_own_focal():
    size = np.array([[640.0, 480.0], [1920.0, 1080.0], [300.0, 400.0]])
    center = np.array([[100.0, 200.0], [1500.0, 600.0], [150.0, 180.0]])
    scale = np.array([1.0, 2.5, 0.8])
    focal = camera.default_focal_px(size)
    diag = np.hypot(size[:, 0], size[:, 1])
    np.testing.assert_allclose(focal, np.column_stack([diag, diag]))

    batch = camera.bbox_info(center, scale, size, focal)
    for i in range(3):  # each sample alone gives the same row
        alone = camera.bbox_info(
            center[i : i + 1], scale[i : i + 1], size[i : i + 1], focal[i : i + 1]
        )
        np.testing.assert_allclose(batch[i], alone[0])

    # The reference's tiling gives fx = [f0, f2, f1]: samples 1 and 2 swap focal lengths.
    tiled = _reference_tiled_focal(size)
    np.testing.assert_allclose(tiled[:, 0], diag[[0, 2, 1]])
    ref_info = camera.bbox_info(center, scale, size, tiled)
    np.testing.assert_allclose(ref_info[0], batch[0])
    assert not np.allclose(ref_info[1], batch[1])
    assert not np.allclose(ref_info[2], batch[2])


def test_same_diagonal_batch_matches_reference_tiling():
    size = np.array([[1920.0, 1080.0], [1080.0, 1920.0]])  # 3DPW: equal diagonals
    np.testing.assert_allclose(_reference_tiled_focal(size), camera.default_focal_px(size))


def test_bad_shapes_raise_typed_error():
    with pytest.raises(DPoseError, match="center"):
        camera.bbox_info(np.zeros(2), np.ones(1), np.ones((1, 2)), np.ones((1, 2)))
    with pytest.raises(DPoseError, match="scale"):
        camera.bbox_info(np.zeros((2, 2)), np.ones(3), np.ones((2, 2)), np.ones((2, 2)))
    with pytest.raises(DPoseError, match="points"):
        camera.project(np.zeros((1, 4, 2)), np.zeros((1, 3)), np.ones((1, 2)), np.zeros((1, 2)))
