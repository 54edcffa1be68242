"""The depth relief: vertices project back onto their depth-map pixels; sequences follow frames."""

import numpy as np
import pytest

from dpose_core.relief import relief_geometry, save_relief_cache
from tests.blender_support import import_blender_module

pytestmark = pytest.mark.blender


def _frame(**kwargs):
    from tests.test_relief import relief_frame

    kwargs.setdefault("size", (640, 480))
    frame = relief_frame(**kwargs)
    frame.principal_point = frame.image_size / 2
    return frame


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
    geo = relief_geometry(frame, 0.5)
    assert len(verts) == len(geo.pixels) > 100
    assert len(obj.data.polygons) == len(geo.quads)
    # Through Blender's own projection of the matching camera: on the depth pixel centres.
    projected = scene_camera.project_to_pixels(scene, cam, verts)
    assert np.abs(projected - geo.pixels).max() < 1e-3
    loop_uvs = np.empty(2 * len(obj.data.loops), dtype=np.float32)
    obj.data.uv_layers[0].data.foreach_get("uv", loop_uvs)
    np.testing.assert_allclose(loop_uvs.reshape(-1, 2), geo.uvs[geo.quads.reshape(-1)],
                               atol=1e-6)


def test_sequence_relief_follows_the_current_frame(tmp_path):
    import bpy

    dp = import_blender_module("depth_plane")
    frames = [_frame(seed=0, radius=0.2), _frame(seed=1, radius=0.4, z_ref=6.0)]
    cache = save_relief_cache(tmp_path / "relief.npz", frames, scene_frames=[1, 5])
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
    cache = save_relief_cache(tmp_path / "relief.npz", frames, scene_frames=[1, 5])
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


def test_a_damaged_cache_holds_the_mesh_instead_of_raising_on_frame_change(tmp_path):
    import bpy

    dp = import_blender_module("depth_plane")
    frames = [_frame(seed=0, radius=0.2), _frame(seed=1, radius=0.4)]
    cache = save_relief_cache(tmp_path / "relief.npz", frames, scene_frames=[1, 5])
    obj = dp.create_depth_plane(bpy.context.scene.collection, frames[0])
    obj[dp.CACHE_PROP] = str(cache)
    n_first = len(obj.data.vertices)
    cache.write_bytes(b"PK\x03\x04 truncated by a full disk")
    dp._CACHE.clear()
    assert dp.update_relief_objects(bpy.context.scene) == 0
    assert len(obj.data.vertices) == n_first
