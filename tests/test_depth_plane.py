"""The depth relief: vertices project back onto their depth-map pixels; sequences follow frames."""

import numpy as np
import pytest

from tests.blender_support import import_blender_module

pytestmark = pytest.mark.blender


def _frame(seed=0, radius=0.35, z_ref=4.0, size=(640, 480), step=4):
    dp = import_blender_module("depth_plane")
    rng = np.random.default_rng(seed)
    idx = np.arange(0, 224, step)
    yy, xx = np.meshgrid(idx, idx, indexing="ij")
    mask = (yy - 112) ** 2 + (xx - 112) ** 2 < (radius * 224) ** 2
    w, h = size
    f = float(np.hypot(w, h))
    return dp.DepthReliefFrame(
        depth=rng.uniform(0.2, 0.8, mask.shape).astype(np.float32),
        mask=mask,
        rows=idx,
        cols=idx,
        crop_box=np.array([200.0, 100.0, 440.0, 340.0]),
        focal_px=np.array([f, f]),
        principal_point=np.array([w / 2, h / 2]),
        image_size=np.array([w, h], dtype=float),
        z_ref=z_ref,
    )


def test_relief_vertices_project_onto_depth_pixels():
    import bpy

    dp = import_blender_module("depth_plane")
    scene_camera = import_blender_module("scene_camera")
    frame = _frame()
    scene = bpy.context.scene
    cam = scene_camera.ensure_camera(
        scene, image_size=(640, 480), focal_px=frame.focal_px, principal_point=None
    )
    obj = dp.create_depth_plane(scene.collection, frame, depth_scale=0.5)
    bpy.context.view_layer.update()

    verts = np.array([v.co[:] for v in obj.data.vertices])
    _, quads, _, pixels = dp.relief_geometry(frame, 0.5)
    assert len(verts) == len(pixels) > 100
    assert len(obj.data.polygons) == len(quads)
    projected = scene_camera.project_to_pixels(scene, cam, verts)
    assert np.abs(projected - pixels).max() < 1e-3
    # Every vertex sits on the centre of one sampled crop pixel of the crop box.
    step_px = (440.0 - 200.0) / 224
    col = (pixels[:, 0] - 200.0) / step_px - 0.5
    assert np.allclose(col, np.round(col), atol=1e-6)
    # The person's median relative depth sits at the pelvis distance (z_ref).
    from dpose_core import coords

    z = coords.blender_points_to_camera(verts)[:, 2]
    assert np.median(dp.relief_distance(frame, 0.5)[frame.mask]) == pytest.approx(4.0)
    assert z.min() > 4.0 - 0.5 and z.max() < 4.0 + 0.5
    # Background is cut away: only person pixels became vertices.
    assert len(verts) <= frame.mask.sum()
    assert obj.data.uv_layers


def test_sequence_relief_follows_the_current_frame(tmp_path):
    import bpy

    dp = import_blender_module("depth_plane")
    frames = [_frame(seed=0, radius=0.2), _frame(seed=1, radius=0.4, z_ref=6.0)]
    cache = dp.save_relief_cache(tmp_path / "relief.npz", frames, scene_frames=[1, 5])
    scene = bpy.context.scene
    obj = dp.create_depth_plane(scene.collection, frames[0])
    obj[dp.CACHE_PROP] = str(cache)
    n_first = len(obj.data.vertices)
    dp.register()
    try:
        scene.frame_set(5)
        n_second = len(obj.data.vertices)
        assert n_second > n_first  # the larger person mask of the second frame
        scene.frame_set(3)  # between processed frames: hold the last one at or before
        assert len(obj.data.vertices) == n_first
    finally:
        dp.unregister()
    assert not [h for h in bpy.app.handlers.frame_change_post if dp._is_our_handler(h)]
    scene.frame_set(5)  # no handler any more: the mesh stays as it was
    assert len(obj.data.vertices) == n_first


def test_relief_keeps_following_frames_after_opening_a_file(tmp_path):
    """The handler survives File > Open, so a saved sequence's relief still moves."""
    import bpy

    dp = import_blender_module("depth_plane")
    frames = [_frame(seed=0, radius=0.2), _frame(seed=1, radius=0.4, z_ref=6.0)]
    cache = dp.save_relief_cache(tmp_path / "relief.npz", frames, scene_frames=[1, 5])
    obj = dp.create_depth_plane(bpy.context.scene.collection, frames[0], name="Relief")
    obj[dp.CACHE_PROP] = str(cache)
    n_first = len(obj.data.vertices)
    bpy.ops.wm.save_as_mainfile(filepath=str(tmp_path / "relief.blend"))
    dp.register()
    try:
        bpy.ops.wm.open_mainfile(filepath=str(tmp_path / "relief.blend"))
        assert [h for h in bpy.app.handlers.frame_change_post if dp._is_our_handler(h)]
        bpy.context.scene.frame_set(5)
        assert len(bpy.data.objects["Relief"].data.vertices) > n_first
    finally:
        dp.unregister()
