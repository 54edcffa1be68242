"""The Blender camera reproduces the network's pinhole camera pixel for pixel."""

import math

import numpy as np
import pytest

from tests.blender_support import import_blender_module

pytestmark = pytest.mark.blender


def _opencv_project(points_cam, f, pp):
    return np.stack(
        [f * points_cam[:, 0] / points_cam[:, 2] + pp[0], f * points_cam[:, 1] / points_cam[:, 2]
         + pp[1]], axis=1
    )


@pytest.mark.parametrize(
    "size, focal, pp",
    [
        ((640, 480), None, None),  # landscape, diagonal focal (the network default)
        ((480, 854), None, None),  # portrait: the sensor fits the height
        ((512, 512), 700.0, None),  # square, user focal
        ((1920, 1080), 1500.0, (1000.0, 500.0)),  # principal point off centre -> lens shift
    ],
)
def test_camera_projection_matches_opencv(size, focal, pp):
    import bpy

    scene_camera = import_blender_module("scene_camera")
    from dpose_core import coords

    f = focal or float(np.hypot(*size))  # the network's default: the image diagonal
    pp_used = pp or (size[0] / 2, size[1] / 2)
    scene = bpy.context.scene
    cam = scene_camera.ensure_camera(scene, image_size=size, focal_px=f, principal_point=pp)
    bpy.context.view_layer.update()

    rng = np.random.default_rng(0)
    pts_cam = np.stack(
        [rng.uniform(-1, 1, 50), rng.uniform(-1, 1, 50), rng.uniform(2, 8, 50)], axis=1
    )
    expected = _opencv_project(pts_cam, f, pp_used)
    got = scene_camera.project_to_pixels(scene, cam, coords.camera_points_to_blender(pts_cam))
    assert np.abs(got - expected).max() < 1e-3
    assert (scene.render.resolution_x, scene.render.resolution_y) == size
    assert cam.data.sensor_fit == ("HORIZONTAL" if size[0] >= size[1] else "VERTICAL")
    assert cam.data.lens_unit == "MILLIMETERS"
    assert scene.camera == cam
    np.testing.assert_allclose(tuple(cam.rotation_euler), (math.pi / 2, 0, 0), atol=1e-6)


def test_background_image_on_camera(tmp_path):
    import bpy

    scene_camera = import_blender_module("scene_camera")
    img = bpy.data.images.new("footage", 32, 24)
    img.filepath_raw = str(tmp_path / "footage.png")
    img.file_format = "PNG"
    img.save()
    loaded = scene_camera.load_footage(tmp_path / "footage.png")
    cam = scene_camera.ensure_camera(bpy.context.scene, image_size=(32, 24), focal_px=40.0)
    scene_camera.set_camera_background(cam, loaded)
    assert cam.data.show_background_images
    assert len(cam.data.background_images) == 1
    assert cam.data.background_images[0].image == loaded


def test_sequence_background_plays_source_frames_from_frame_start(tmp_path):
    import bpy

    scene_camera = import_blender_module("scene_camera")
    for n in (5, 6, 7):
        img = bpy.data.images.new(f"f{n}", 8, 6)
        img.filepath_raw = str(tmp_path / f"shot_{n:04d}.png")
        img.file_format = "PNG"
        img.save()
    seq = scene_camera.load_footage(tmp_path / "shot_0005.png", sequence_length=3)
    assert seq.source == "SEQUENCE"
    cam = scene_camera.ensure_camera(bpy.context.scene, image_size=(8, 6), focal_px=10.0)
    scene_camera.set_camera_background(cam, seq, frame_start=10, frame_duration=3)
    user = cam.data.background_images[0].image_user
    # Blender shows file number scene_frame - frame_start + offset + 1: frame 10 -> 0005.
    assert 10 - user.frame_start + user.frame_offset + 1 == 5
    assert user.frame_duration == 3
    # A job that started at source frame 1 keys it at its start frame: 0006 shows there.
    scene_camera.set_camera_background(cam, seq, frame_start=4, first_source_frame=1,
                                       frame_duration=2)
    user = cam.data.background_images[0].image_user
    assert 4 - user.frame_start + user.frame_offset + 1 == 6 and user.frame_duration == 2
