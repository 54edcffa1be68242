"""Motion -> keyframes: bulk writing, continuity, range replacement, marks, read-back, import."""

import numpy as np
import pytest

from dpose_core.body_model import BodyModel
from dpose_core.errors import MotionFileError
from dpose_core.motion import FLAG_INTERPOLATED, Motion
from dpose_core.motion_io import save_motion_npz
from dpose_core.rotations import axis_angle_to_matrix, matrix_to_axis_angle, rotation_about_axis
from dpose_core.skeleton import JOINT_NAMES
from tests.blender_support import import_blender_module, smplx_reference

bpy = pytest.importorskip("bpy")  # collected (and skipped) without Blender
pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")  # collected, and skipped, where bpy is missing

anim_compat = import_blender_module("anim_compat")
rig = import_blender_module("rig")
keyframes = import_blender_module("keyframes")
motion_import = import_blender_module("motion_import")


@pytest.fixture(scope="module")
def model(body_model_npz) -> BodyModel:
    return BodyModel.load(body_model_npz)


def _random_motion(seed: int, n: int = 12, **extra) -> Motion:
    rng = np.random.default_rng(seed)
    fields = dict(
        rotmats=axis_angle_to_matrix(rng.normal(0, 0.8, (n, 55, 3))),
        transl=rng.normal(0, 1.0, (n, 3)) + [0.0, 0.0, 4.0],
        betas=rng.normal(0, 1.0, 11),
        fps=30.0,
        confidence=rng.uniform(0.6, 1.0, n),
    )
    fields.update(extra)
    return Motion(**fields)


def _keys(armature, path: str, index: int) -> np.ndarray:
    """(frame, value) rows of one F-curve."""
    fcurve = anim_compat.find_fcurve(armature, path, index)
    co = np.empty(2 * len(fcurve.keyframe_points), dtype=np.float32)
    fcurve.keyframe_points.foreach_get("co", co)
    return co.reshape(-1, 2)


def _bone_quaternions(armature, bone: str) -> np.ndarray:
    """Keyed (frames, 4) quaternion values of one bone."""
    return np.stack([_keys(armature, keyframes.rotation_path(bone), i)[:, 1] for i in range(4)],
                    axis=1)


def test_action_layout_matches_this_blender_version(model):
    armature = rig.build_armature(model, np.zeros(11))
    keyframes.write_motion_keys(armature, _random_motion(0, n=3))
    action = armature.animation_data.action
    slotted = bpy.app.version >= (4, 4, 0)
    assert anim_compat.has_slotted_actions() == slotted
    has_slot = getattr(armature.animation_data, "action_slot", None) is not None
    assert has_slot == slotted
    assert ("fcurves" in action.bl_rna.properties) == (bpy.app.version < (5, 0, 0))
    curves = list(anim_compat.iter_fcurves(armature))
    # 55 bones x 4 quaternion channels + root location + confidence + flags.
    assert len(curves) == 55 * 4 + 3 + 2
    assert {c.group.name for c in curves if c.data_path.startswith("pose.bones")} == set(
        JOINT_NAMES
    )


def test_round_trip_motion_keys_read_back_equal(model):
    motion = _random_motion(1, n=20, frame_indices=np.arange(20) * 2 + 5,
                            flags=np.where(np.arange(20) % 7 == 3, FLAG_INTERPOLATED, 0))
    armature = rig.build_armature(model, motion.betas)
    keyframes.write_motion_keys(armature, motion, frame_offset=1)
    back = keyframes.read_motion_keys(armature)
    np.testing.assert_allclose(back.rotmats, motion.rotmats, rtol=0, atol=1e-6)
    np.testing.assert_allclose(back.transl, motion.transl, rtol=0, atol=1e-6)
    np.testing.assert_allclose(back.confidence, motion.confidence, rtol=0, atol=1e-6)
    np.testing.assert_allclose(back.betas, motion.betas, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(back.frame_indices, motion.frame_indices)
    np.testing.assert_array_equal(back.flags, motion.flags)
    assert back.fps == motion.fps and back.coordinate_frame == motion.coordinate_frame


def test_turn_of_180_degrees_never_flips_a_quaternion(model):
    n = 9  # a full turn and a bit in 45-degree steps: passes 180 where w changes sign
    rotmats = np.broadcast_to(np.eye(3), (n, 55, 3, 3)).copy()
    for i, angle in enumerate(np.linspace(0.0, 2.0 * np.pi, n)):
        turn = rotation_about_axis("y", angle)
        rotmats[i, 0] = turn @ np.diag([1.0, -1.0, -1.0])  # person turning on the spot
        rotmats[i, 1:22] = turn  # and every body joint turning too (worst case)
    motion = Motion(rotmats=rotmats, transl=np.tile([0.0, 0.0, 3.0], (n, 1)),
                    betas=np.zeros(11), fps=30)
    armature = rig.build_armature(model, motion.betas)
    keyframes.write_motion_keys(armature, motion)
    for bone in JOINT_NAMES:
        q = _bone_quaternions(armature, bone)
        assert np.all(np.sum(q[1:] * q[:-1], axis=1) >= 0), bone
    root = _bone_quaternions(armature, "pelvis")
    assert root[0, 0] > 0.99 and root[-1, 0] < -0.99  # it really went round once


def test_rerunning_a_range_replaces_its_keys(model):
    motion = _random_motion(2, n=10)
    armature = rig.build_armature(model, motion.betas)
    keyframes.write_motion_keys(armature, motion)
    # Source frames 3 and 6 again: Blender frames 4..7 are replaced, 5 and 6 vanish.
    redo = _random_motion(3, n=2, frame_indices=[3, 6], betas=motion.betas)
    result = keyframes.write_motion_keys(armature, redo)
    assert (result.first_frame, result.last_frame) == (4, 7)
    assert keyframes.keyed_ranges(armature) == [(1, 10)]
    keyframes.write_motion_keys(armature, redo.replace(frame_indices=[20, 22]))
    assert keyframes.keyed_ranges(armature) == [(1, 10), (21, 23)]
    keyframes.write_motion_keys(armature, redo.replace(frame_indices=[20, 22]))  # again: same
    assert keyframes.keyed_ranges(armature) == [(1, 10), (21, 23)]
    expected_frames = [1, 2, 3, 4, 7, 8, 9, 10, 21, 23]
    for bone in ("pelvis", "left_wrist"):
        frames = _keys(armature, keyframes.rotation_path(bone), 0)[:, 0]
        np.testing.assert_array_equal(frames, expected_frames)  # no duplicates, no leftovers
    back = keyframes.read_motion_keys(armature)
    np.testing.assert_array_equal(back.frame_indices, np.array(expected_frames) - 1)
    expected = np.concatenate([motion.rotmats[[0, 1, 2, 3, 6, 7, 8, 9]], redo.rotmats])
    expected[[3, 4]] = redo.rotmats
    np.testing.assert_allclose(back.rotmats, expected, atol=1e-6)
    np.testing.assert_allclose(back.transl[[3, 4]], redo.transl, atol=1e-6)
    np.testing.assert_allclose(back.transl[:3], motion.transl[:3], atol=1e-6)


def test_key_pose_at_the_current_frame_replaces_and_stays_continuous(model):
    motion = _random_motion(4, n=6)
    armature = rig.build_armature(model, motion.betas)
    keyframes.write_motion_keys(armature, motion)
    bpy.context.scene.frame_set(3)
    pose = axis_angle_to_matrix(np.random.default_rng(5).normal(0, 0.8, (55, 3)))
    keyframes.key_pose(armature, pose, [0.1, 0.2, 3.0])
    keyframes.key_pose(armature, pose, [0.1, 0.2, 3.0])  # twice: still one key
    back = keyframes.read_motion_keys(armature)
    assert len(back) == 6
    np.testing.assert_allclose(back.rotmats[2], pose, atol=1e-6)
    np.testing.assert_allclose(back.transl[2], [0.1, 0.2, 3.0], atol=1e-6)
    np.testing.assert_allclose(back.rotmats[[0, 1, 3, 4, 5]], motion.rotmats[[0, 1, 3, 4, 5]],
                               atol=1e-6)
    for bone in JOINT_NAMES:
        q = _bone_quaternions(armature, bone)
        assert np.all(np.sum(q[1:] * q[:-1], axis=1) >= 0), bone


def test_low_confidence_and_interpolated_frames_are_marked(model):
    confidence = np.array([0.9, 0.2, 0.1, 0.9, 0.9, 0.3, 0.9, 0.9])
    flags = np.array([0, 0, 0, 0, FLAG_INTERPOLATED, 0, 0, 0])
    motion = _random_motion(6, n=8, confidence=confidence, flags=flags)
    armature = rig.build_armature(model, motion.betas)
    scene = bpy.context.scene
    result = keyframes.write_motion_keys(armature, motion, confidence_threshold=0.5)
    assert result.num_marked == 4
    fcurve = anim_compat.find_fcurve(armature, keyframes.rotation_path("left_knee"), 2)
    types = [kp.type for kp in fcurve.keyframe_points]
    assert types == ["KEYFRAME", "JITTER", "JITTER", "KEYFRAME", "BREAKDOWN", "JITTER",
                     "KEYFRAME", "KEYFRAME"]
    markers = sorted((m.frame, m.name) for m in scene.timeline_markers)
    prefix = keyframes.MARKER_PREFIX
    assert markers == [(2, prefix + "low confidence"), (5, prefix + "interpolated"),
                       (6, prefix + "low confidence")]
    keyframes.write_motion_keys(armature, motion.replace(confidence=np.ones(8),
                                                         flags=np.zeros(8)))
    assert len(scene.timeline_markers) == 0  # re-keying the range replaced the marks too


@pytest.mark.parametrize(("fps", "rate"), [(25.0, 25), (29.97, 30), (30000 / 1001, 30)])
def test_scene_fps_and_frame_range_follow_the_motion(model, fps, rate):
    motion = _random_motion(7, n=5, fps=fps, frame_indices=[10, 11, 12, 14, 15])
    armature = rig.build_armature(model, motion.betas)
    keyframes.write_motion_keys(armature, motion, frame_offset=1)
    scene = bpy.context.scene
    assert scene.render.fps == rate
    assert scene.render.fps / scene.render.fps_base == pytest.approx(fps, rel=1e-6)
    assert (scene.frame_start, scene.frame_end) == (11, 16)
    assert keyframes.read_motion_keys(armature).fps == fps


def test_motion_file_imports_onto_a_new_rig(model, tmp_path):
    motion = _random_motion(8, n=6, fps=24.0)
    path = save_motion_npz(tmp_path / "walk.npz", motion)
    armature, mesh = motion_import.import_motion_file(path, model, with_mesh=True)
    assert armature.name == "walk" and bpy.context.scene.render.fps == 24
    assert mesh.type == "MESH" and '"kind": "import"' in armature["dpose_provenance"]
    assert any(o.type == "MESH" and o.parent == armature for o in bpy.data.objects)
    back = keyframes.read_motion_keys(armature)
    np.testing.assert_allclose(back.rotmats, motion.rotmats, atol=1e-6)
    np.testing.assert_allclose(back.transl, motion.transl, atol=1e-6)


def test_amass_convention_file_imports_z_up(model, body_model_npz, tmp_path):
    """A file with only the AMASS/SMPL-X keys: Z-up world, 16 betas, mocap_framerate."""
    rng = np.random.default_rng(9)
    n = 4
    rotmats = axis_angle_to_matrix(rng.normal(0, 0.5, (n, 55, 3)))
    rotmats[:, 0] = rotation_about_axis("x", np.pi / 2) @ rotmats[:, 0]  # y-up body to Z-up
    trans = rng.normal(0, 1.0, (n, 3))
    betas16 = np.concatenate([rng.normal(0, 1.0, 11), np.zeros(5)])
    np.savez(tmp_path / "amass_poses.npz", poses=matrix_to_axis_angle(rotmats).reshape(n, 165),
             trans=trans, betas=betas16, gender=np.array("female"),
             mocap_frame_rate=np.array(120.0), surface_model_type=np.array("smplx"))
    (armature,) = motion_import.import_motion_file(tmp_path / "amass_poses.npz", model)
    assert bpy.context.scene.render.fps == 120
    np.testing.assert_allclose(np.array(armature.matrix_world), np.eye(4), atol=1e-7)
    _, joints = smplx_reference(body_model_npz, rotmats, betas16[:11], trans)
    for i in range(n):
        bpy.context.scene.frame_set(1 + i)
        evaluated = armature.evaluated_get(bpy.context.evaluated_depsgraph_get())
        heads = np.array([evaluated.pose.bones[name].head for name in JOINT_NAMES])
        np.testing.assert_allclose(heads, joints[i], atol=1e-5)


def test_unreadable_motion_file_raises_motion_file_error(model, tmp_path):
    bad = tmp_path / "not_motion.npz"
    np.savez(bad, something=np.zeros(3))
    with pytest.raises(MotionFileError, match="no SMPL-X pose found"):
        motion_import.import_motion_file(bad, model)


@pytest.mark.parametrize("content, what", [
    (b"frame,x,y\n0,1,2\n", "is a text file, not a motion .npz archive"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00", "is a PNG image, not a motion .npz"),
])
def test_a_text_file_or_png_named_npz_is_named_for_what_it_is(model, tmp_path, content, what):
    path = tmp_path / "walk.npz"
    path.write_bytes(content)
    with pytest.raises(MotionFileError, match=what):
        motion_import.import_motion_file(path, model)
    assert not bpy.data.objects


def test_huge_frame_numbers_are_refused_before_anything_is_built(model, tmp_path):
    motion = _random_motion(12, n=2, frame_indices=[0, 2**40])
    path = save_motion_npz(tmp_path / "damaged.npz", motion)
    with pytest.raises(MotionFileError, match=r"outside Blender's 0\.\.1048574"):
        motion_import.import_motion_file(path, model, with_mesh=True)
    assert not (bpy.data.objects or bpy.data.armatures or bpy.data.actions or bpy.data.meshes)


def test_a_failure_while_building_leaves_the_scene_as_it_was(model, tmp_path, monkeypatch):
    path = save_motion_npz(tmp_path / "walk.npz", _random_motion(13, n=3))
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 4, 9

    def refuse(*args, **kwargs):
        raise RuntimeError("keying refused")

    monkeypatch.setattr(keyframes, "_write", refuse)
    with pytest.raises(RuntimeError, match="keying refused"):
        motion_import.import_motion_file(path, model, with_mesh=True)
    assert not (bpy.data.objects or bpy.data.armatures or bpy.data.meshes)
    assert (scene.frame_start, scene.frame_end) == (4, 9)


def test_keys_outside_the_range_survive_with_their_settings(model):
    motion = _random_motion(10, n=5)
    armature = rig.build_armature(model, motion.betas)
    # The artist's own key, made the usual way, after the motion's range.
    bone = armature.pose.bones["left_elbow"]
    bone.rotation_quaternion = (0.0, 1.0, 0.0, 0.0)  # 180 degrees: other sign than the motion's
    bone.keyframe_insert("rotation_quaternion", frame=50)
    fcurve = anim_compat.find_fcurve(armature, keyframes.rotation_path("left_elbow"), 1)
    fcurve.keyframe_points[0].type = "EXTREME"
    fcurve.keyframe_points[0].interpolation = "CONSTANT"
    keyframes.write_motion_keys(armature, motion)
    keyframes.write_motion_keys(armature, motion)  # twice: still one copy of everything
    points = anim_compat.find_fcurve(armature, keyframes.rotation_path("left_elbow"), 1)
    points = points.keyframe_points
    assert [p.co[0] for p in points] == [1, 2, 3, 4, 5, 50]
    assert (points[5].type, points[5].interpolation) == ("EXTREME", "CONSTANT")
    q = _bone_quaternions(armature, "left_elbow")
    np.testing.assert_allclose(np.abs(q[5]), [0, 1, 0, 0], atol=1e-7)  # same rotation kept
    assert np.all(np.sum(q[1:] * q[:-1], axis=1) >= 0)  # ... with the sign that continues


def test_an_action_assigned_without_a_slot_is_keyed(model):
    motion = _random_motion(11, n=3)
    armature = rig.build_armature(model, motion.betas)
    armature.animation_data_create()
    armature.animation_data.action = bpy.data.actions.new("artist action")
    keyframes.write_motion_keys(armature, motion)
    assert armature.animation_data.action.name == "artist action"
    back = keyframes.read_motion_keys(armature)
    np.testing.assert_allclose(back.rotmats, motion.rotmats, atol=1e-6)


def test_an_empty_motion_is_refused_with_a_typed_error(model):
    armature = rig.build_armature(model, np.zeros(11))
    empty = Motion(rotmats=np.zeros((0, 55, 3, 3)), transl=np.zeros((0, 3)),
                   betas=np.zeros(11), fps=30)
    with pytest.raises(MotionFileError, match="no frames"):
        keyframes.write_motion_keys(armature, empty)
