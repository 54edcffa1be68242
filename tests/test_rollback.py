"""A failed apply step leaves the scene as it was: new data-blocks, markers and changed
frame range / camera / render settings are undone, what existed before is kept."""

import pytest

from tests.blender_support import import_blender_module

pytestmark = pytest.mark.blender


def test_restore_removes_what_was_made_and_keeps_the_rest():
    import bpy

    rollback = import_blender_module("rollback")
    scene = bpy.context.scene
    kept = bpy.data.objects.new("kept", bpy.data.meshes.new("kept"))
    scene.collection.objects.link(kept)
    scene.timeline_markers.new("user marker", frame=2)
    scene.frame_start, scene.frame_end, scene.render.fps = 1, 50, 25

    snapshot = rollback.SceneSnapshot(scene)
    coll = bpy.data.collections.new("D-PoSE half built")
    scene.collection.children.link(coll)
    cam = bpy.data.objects.new("cam", bpy.data.cameras.new("cam"))
    coll.objects.link(cam)
    scene.camera = cam
    rig = bpy.data.objects.new("rig", bpy.data.armatures.new("rig"))
    coll.objects.link(rig)
    bpy.data.actions.new("rig motion")
    scene.timeline_markers.new("D-PoSE: low confidence", frame=60)
    scene.frame_start, scene.frame_end, scene.render.fps = 10, 90, 30
    scene.render.resolution_x = 97
    assert len(snapshot.new_ids()) == 6  # 2 objects, their data, collection, action

    snapshot.restore()
    assert [o.name for o in bpy.data.objects] == ["kept"]
    assert not bpy.data.collections and not bpy.data.actions and not bpy.data.cameras
    assert not bpy.data.armatures and [m.name for m in bpy.data.meshes] == ["kept"]
    assert [m.name for m in scene.timeline_markers] == ["user marker"]
    assert (scene.frame_start, scene.frame_end, scene.render.fps) == (1, 50, 25)
    assert scene.camera is None and scene.render.resolution_x != 97
