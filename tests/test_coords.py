"""OpenCV camera frame -> Blender world: the algebra, and a real Blender camera agrees."""

import numpy as np
import pytest

from dpose_core import coords
from dpose_core.rotations import rotation_about_axis


def test_straight_ahead_is_plus_y_and_image_up_is_plus_z():
    np.testing.assert_array_equal(coords.camera_points_to_blender([0, 0, 1.0]), [0, 1, 0])
    np.testing.assert_array_equal(coords.camera_points_to_blender([0, -1.0, 0]), [0, 0, 1])
    np.testing.assert_array_equal(coords.camera_points_to_blender([1.0, 0, 0]), [1, 0, 0])
    pts = np.random.default_rng(0).normal(size=(4, 5, 3))
    np.testing.assert_allclose(
        coords.blender_points_to_camera(coords.camera_points_to_blender(pts)), pts
    )
    assert np.linalg.det(coords.OPENCV_TO_BLENDER) == pytest.approx(1.0)


def test_blender_camera_looks_along_plus_y_with_z_up():
    r = coords.blender_camera_rotation()
    np.testing.assert_allclose(r @ [0, 0, -1.0], [0, 1, 0], atol=1e-15)  # view direction
    np.testing.assert_allclose(r @ [0, 1.0, 0], [0, 0, 1], atol=1e-15)  # image up
    np.testing.assert_allclose(r @ [1.0, 0, 0], [1, 0, 0], atol=1e-15)  # image right
    np.testing.assert_allclose(r, rotation_about_axis("x", coords.BLENDER_CAMERA_EULER[0]),
                               atol=1e-15)
    np.testing.assert_allclose(coords.blender_camera_matrix_world()[:3, :3], r)


def test_smplx_rest_pose_stands_upright_facing_minus_y():
    m = coords.SMPLX_TO_BLENDER
    np.testing.assert_allclose(m @ [0, 1.0, 0], [0, 0, 1], atol=1e-15)  # model up -> Z
    np.testing.assert_allclose(m @ [0, 0, 1.0], [0, -1, 0], atol=1e-15)  # facing -> -Y
    np.testing.assert_allclose(m, rotation_about_axis("x", np.pi / 2), atol=1e-15)


def test_global_orientation_maps_with_points():
    rng = np.random.default_rng(1)
    r_cam = rotation_about_axis("y", 0.7) @ rotation_about_axis("x", -0.3)
    p_model = rng.normal(size=(6, 3))
    p_world = coords.camera_points_to_blender(p_model @ r_cam.T)
    np.testing.assert_allclose(p_model @ coords.camera_rotations_to_blender(r_cam).T, p_world,
                               atol=1e-14)


def test_projection_is_unchanged_by_the_frame_change():
    rng = np.random.default_rng(2)
    cam = rng.normal(size=(10, 3)) + [0, 0, 5]
    f, (w, h), pp = 1200.0, (1920, 1080), (1000.0, 500.0)
    u = f * cam[:, 0] / cam[:, 2] + pp[0]
    v = f * cam[:, 1] / cam[:, 2] + pp[1]
    uv = coords.project_blender_points(coords.camera_points_to_blender(cam), f, (w, h), pp)
    np.testing.assert_allclose(uv, np.stack([u, v], -1))


def test_intrinsics_lens_and_shift():
    d = coords.blender_camera_intrinsics((1000.0, 1000.0), (2000, 1000), (1100.0, 450.0))
    assert d["lens_mm"] == pytest.approx(18.0)
    assert d["shift_x"] == pytest.approx(-0.05)
    assert d["shift_y"] == pytest.approx(-0.025)
    with pytest.raises(ValueError):
        coords.blender_camera_intrinsics(0.0, (10, 10))


@pytest.mark.blender
def test_blender_camera_sees_what_opencv_camera_saw():
    bpy = pytest.importorskip("bpy")
    from bpy_extras.object_utils import world_to_camera_view
    from mathutils import Vector

    w, h, f, pp = 1280, 720, 900.0, (700.0, 330.0)
    scene = bpy.context.scene
    scene.render.resolution_x, scene.render.resolution_y = w, h
    scene.render.resolution_percentage = 100
    data = bpy.data.cameras.new("footage")
    obj = bpy.data.objects.new("footage", data)
    scene.collection.objects.link(obj)
    settings = coords.blender_camera_intrinsics(f, (w, h), pp)
    data.lens, data.sensor_width = settings["lens_mm"], settings["sensor_width_mm"]
    data.sensor_fit = settings["sensor_fit"]
    data.shift_x, data.shift_y = settings["shift_x"], settings["shift_y"]
    obj.rotation_euler = coords.BLENDER_CAMERA_EULER
    bpy.context.view_layer.update()
    np.testing.assert_allclose(np.array(obj.matrix_world)[:3, :3],
                               coords.blender_camera_rotation(), atol=1e-6)

    cam_pts = np.array([[0.3, -0.2, 4.0], [-1.0, 0.5, 6.0], [0.0, 0.0, 3.0]])
    world = coords.camera_points_to_blender(cam_pts)
    for p_cam, p_world in zip(cam_pts, world, strict=True):
        ndc = world_to_camera_view(scene, obj, Vector(p_world.tolist()))
        u, v = ndc.x * w, (1.0 - ndc.y) * h
        assert u == pytest.approx(f * p_cam[0] / p_cam[2] + pp[0], abs=1e-3)
        assert v == pytest.approx(f * p_cam[1] / p_cam[2] + pp[1], abs=1e-3)
        assert ndc.z == pytest.approx(p_cam[2], abs=1e-5)


def test_frame_to_blender_for_each_motion_frame():
    np.testing.assert_array_equal(coords.frame_to_blender("opencv_camera"),
                                  coords.OPENCV_TO_BLENDER)
    np.testing.assert_array_equal(coords.frame_to_blender("world_z_up"), np.eye(3))
    np.testing.assert_array_equal(coords.frame_to_blender("smplx_y_up"), coords.SMPLX_TO_BLENDER)
    with pytest.raises(ValueError, match="opencv_camera"):
        coords.frame_to_blender("unity")
