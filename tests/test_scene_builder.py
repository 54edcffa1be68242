"""The one scene builder on its own (no network): timing, footage, relief, refusals, rollback."""

import json

import numpy as np
import pytest

from dpose_core.body_model import BodyModel
from dpose_core.errors import DPoseError
from dpose_core.motion import Motion
from tests.blender_support import import_blender_module
from tests.test_relief import relief_frame

pytestmark = pytest.mark.blender
pytest.importorskip("bpy")  # collected, and skipped, where bpy is missing

scene_builder = import_blender_module("scene_builder")
keyframes = import_blender_module("keyframes")
depth_plane = import_blender_module("depth_plane")


@pytest.fixture(scope="module")
def model(body_model_npz) -> BodyModel:
    return BodyModel.load(body_model_npz)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """Six numbered frames f0000.png .. f0005.png, 64 x 48."""
    import cv2

    folder = tmp_path_factory.mktemp("frames")
    for i in range(6):
        cv2.imwrite(str(folder / f"f{i:04d}.png"), np.full((48, 64, 3), 40 * i, np.uint8))
    return folder


def _take(label, frames, seed):
    rng = np.random.default_rng(seed)
    n = len(frames)
    motion = Motion(rotmats=np.tile(np.eye(3), (n, 55, 1, 1)),
                    transl=rng.normal(0, 0.1, (n, 3)) + [0, 0, 4], betas=np.zeros(11), fps=25.0,
                    frame_indices=frames)
    reliefs = [(3, relief_frame(seed=seed, radius=0.2)), (5, relief_frame(seed=seed, radius=0.4))]
    return scene_builder.Take(label, motion, reliefs)


def _footage(folder, first=3, last=5):
    files = tuple(str(p) for p in sorted(folder.iterdir()))
    return scene_builder.Footage(path=str(folder), kind="folder", image_size=(64, 48),
                                 focal_px=80.0, principal_point=(32.0, 24.0),
                                 first_source_frame=first, last_source_frame=last,
                                 folder_files=files)


def test_source_frames_are_keyed_from_start_frame_with_footage_and_relief_in_step(
        model, folder, tmp_path):
    import bpy

    scene = bpy.context.scene
    takes = [_take("D-PoSE Track 0", [3, 4, 5], 0), _take("D-PoSE Track 2", [3, 4, 5], 1)]
    options = scene_builder.SceneOptions(start_frame=10, add_depth_plane=True,
                                         collection_name="D-PoSE shot",
                                         relief_cache_dir=str(tmp_path))
    created = scene_builder.build_scene(scene, takes, model, options, footage=_footage(folder),
                                        record={"kind": "sequence", "inputs": [str(folder)]})
    rigs = [o for o in created if o.type == "ARMATURE"]
    assert [r.name for r in rigs] == ["D-PoSE Track 0", "D-PoSE Track 2"]
    for rig in rigs:
        back = keyframes.read_motion_keys(rig)
        assert (back.frame_indices + rig[keyframes.PROP_FRAME_OFFSET]).tolist() == [10, 11, 12]
    assert (scene.frame_start, scene.frame_end) == (10, 12)
    # File number shown = scene frame - frame_start + offset + 1: frame 10 shows f0003.
    user = scene.camera.data.background_images[0].image_user
    assert 10 - user.frame_start + user.frame_offset + 1 == 3 and user.frame_duration == 3
    planes = [o for o in created if o.name.startswith("D-PoSE Depth")]
    assert len(planes) == 2 and all(depth_plane.CACHE_PROP in p for p in planes)
    depth_plane.register()
    try:
        scene.frame_set(10)
        first = len(planes[0].data.vertices)
        scene.frame_set(12)  # source frame 5: the larger person mask
        assert len(planes[0].data.vertices) > first
    finally:
        depth_plane.unregister()
    assert all(json.loads(o["dpose_provenance"])["kind"] == "sequence" for o in created)
    assert {c.name for c in bpy.data.collections["D-PoSE shot"].objects} == {
        o.name for o in created}


def test_refusals_come_before_anything_is_built(model, folder):
    import bpy

    rig_made = scene_builder.build_scene(
        bpy.context.scene, [_take("D-PoSE Person 0", [0], 0)], model,
        scene_builder.SceneOptions(add_camera=False))
    before = len(bpy.data.objects)
    two = [_take("a", [3, 4, 5], 0), _take("b", [3, 4, 5], 1)]
    with pytest.raises(DPoseError, match="Key Selected Rig keys one person, but 2"):
        scene_builder.build_scene(bpy.context.scene, two, model,
                                  scene_builder.SceneOptions(target_rig=rig_made[0].name),
                                  footage=_footage(folder))
    late = [_take("late", [3, 4, 5], 0)]
    with pytest.raises(DPoseError, match="outside Blender's 0..1048574"):
        scene_builder.build_scene(bpy.context.scene, late, model,
                                  scene_builder.SceneOptions(start_frame=1048574),
                                  footage=_footage(folder))
    with pytest.raises(DPoseError, match="renamed or deleted"):
        scene_builder.build_scene(bpy.context.scene, late, model,
                                  scene_builder.SceneOptions(target_rig="gone"))
    assert len(bpy.data.objects) == before


def test_a_failure_midway_leaves_the_scene_as_it_was(model, folder, monkeypatch, tmp_path):
    import bpy

    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 2, 30

    def refuse(*args, **kwargs):
        raise RuntimeError("relief refused")

    monkeypatch.setattr(depth_plane, "create_depth_plane", refuse)
    with pytest.raises(RuntimeError, match="relief refused"):
        scene_builder.build_scene(
            scene, [_take("D-PoSE Track 0", [3, 4, 5], 0)], model,
            scene_builder.SceneOptions(add_depth_plane=True, collection_name="D-PoSE x",
                                       relief_cache_dir=str(tmp_path)),
            footage=_footage(folder))
    assert not (bpy.data.objects or bpy.data.collections or bpy.data.armatures
                or bpy.data.actions or bpy.data.cameras)
    assert (scene.frame_start, scene.frame_end, scene.camera) == (2, 30, None)


def test_a_failure_while_keying_the_selected_rig_puts_its_keys_back(model, monkeypatch):
    import bpy

    scene = bpy.context.scene
    (rig,) = scene_builder.build_scene(scene, [_take("D-PoSE Person 0", [0, 1], 0)], model,
                                       scene_builder.SceneOptions(add_camera=False))
    action_name = rig.animation_data.action.name
    before = keyframes.read_motion_keys(rig)
    props = {k: rig[k] for k in (keyframes.PROP_KEYED_RANGES, keyframes.PROP_FRAME_OFFSET)}
    props = {k: list(v) if hasattr(v, "to_list") else v for k, v in props.items()}
    n_actions = len(bpy.data.actions)

    def refuse(*args, **kwargs):
        raise RuntimeError("markers refused")

    monkeypatch.setattr(keyframes, "_mark_runs", refuse)  # after every key is written
    with pytest.raises(RuntimeError, match="markers refused"):
        scene_builder.build_scene(scene, [_take("x", [0, 1, 2], 5)], model,
                                  scene_builder.SceneOptions(start_frame=2, add_camera=False,
                                                             target_rig=rig.name))
    assert rig.animation_data.action.name == action_name and len(bpy.data.actions) == n_actions
    after = keyframes.read_motion_keys(rig)
    assert after.frame_indices.tolist() == before.frame_indices.tolist() == [0, 1]
    np.testing.assert_allclose(after.transl, before.transl, atol=1e-7)
    assert list(rig[keyframes.PROP_KEYED_RANGES]) == props[keyframes.PROP_KEYED_RANGES]

    monkeypatch.undo()  # the same call now succeeds and replaces frames 2..4, keeps frame 1
    scene_builder.build_scene(scene, [_take("x", [0, 1, 2], 5)], model,
                              scene_builder.SceneOptions(start_frame=2, add_camera=False,
                                                         target_rig=rig.name))
    assert keyframes.read_motion_keys(rig).frame_indices.tolist() == [0, 1, 2, 3]
    assert len(bpy.data.actions) == n_actions
