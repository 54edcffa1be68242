"""The bpy-free retargeting engine: limb directions, twist, rest-pose differences, root motion,
planted feet, presets and bad input."""

import json

import numpy as np
import pytest

from dpose_core import bone_maps
from dpose_core.body_model import BodyModel
from dpose_core.coords import OPENCV_TO_BLENDER, SMPLX_TO_BLENDER
from dpose_core.errors import DPoseError
from dpose_core.retarget import (
    TargetSkeleton,
    bone_matrix_from_direction,
    minimal_rotation,
    retarget,
    rigid_inverse,
    smplx_world_pose,
)
from dpose_core.rotations import axis_angle_to_matrix, quaternion_to_matrix
from dpose_core.skeleton import JOINT_NAMES
from tests.retarget_rigs import rig_layout

UPRIGHT_IN_CAMERA = OPENCV_TO_BLENDER.T @ SMPLX_TO_BLENDER  # root rotation of a standing person
# Joint pairs (joint, child along the limb) whose world direction is compared.
LIMBS = [("pelvis", "spine1"), ("spine1", "spine2"), ("spine2", "spine3"), ("spine3", "neck"),
         ("neck", "head")] + [
    (f"{s}_{a}", f"{s}_{b}") for s in ("left", "right")
    for a, b in (("collar", "shoulder"), ("shoulder", "elbow"), ("elbow", "wrist"),
                 ("hip", "knee"), ("knee", "ankle"), ("ankle", "foot"))]


@pytest.fixture(scope="module")
def rest_joints(body_model_npz) -> np.ndarray:
    model = BodyModel.load(body_model_npz)
    return model.rest_joints(np.random.default_rng(1).normal(0, 1, 11))


def large_motion(n: int = 20, seed: int = 0):
    """Every joint swings up to ~70 degrees about all axes; the body turns and travels."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0, 1, n)[:, None, None]
    aa = rng.uniform(0.4, 1.2, (55, 3)) / np.sqrt(3) * np.sin(
        2 * np.pi * t + rng.uniform(0, 2 * np.pi, (55, 3)))
    rotmats = axis_angle_to_matrix(aa)
    heading = axis_angle_to_matrix(np.stack([0.3 * np.sin(3 * t[:, 0, 0]), 5.0 * t[:, 0, 0],
                                             0.2 * np.cos(2 * t[:, 0, 0])], axis=1))
    rotmats[:, 0] = UPRIGHT_IN_CAMERA @ heading
    transl = np.concatenate([2 * t[:, 0] - 1, 0.05 * np.sin(7 * t[:, 0]), 4 + t[:, 0]], axis=1)
    return rotmats, transl


def skeleton(layout, world=None, name="target") -> TargetSkeleton:
    return TargetSkeleton.from_head_tail_roll(layout["names"], layout["parents"],
                                              layout["heads"], layout["tails"],
                                              layout["rolls"], world, name)


def bone_map_of(layout) -> dict:
    return {b: j for b, j in zip(layout["names"], layout["joints"], strict=True) if j}


def pose_from_basis(target: TargetSkeleton, result) -> np.ndarray:
    """Blender's rule, independently: M_b = M_parent (C_parent^-1 C_b) Basis_b."""
    n = result.rotations.shape[0]
    basis = np.tile(np.eye(4), (n, len(target.names), 1, 1))
    for i, name in enumerate(result.rotated):
        basis[:, target.index(name), :3, :3] = quaternion_to_matrix(result.rotations[:, i])
    for i, name in enumerate(result.located):
        basis[:, target.index(name), :3, 3] = result.locations[:, i]
    pose = np.zeros_like(basis)
    for b in target.order():
        p = target.parents[b]
        rel = target.rest[b] if p < 0 else pose[:, p] @ rigid_inverse(target.rest[p]) @ \
            target.rest[b]
        pose[:, b] = rel @ basis[:, b]
    return pose


def assert_keys_reproduce_pose(target, result) -> None:
    """The keys, composed as Blender composes them, give the engine's pose of every keyed
    bone."""
    assert set(result.pose) == set(result.rotated)
    composed = pose_from_basis(target, result)
    for name, matrices in result.pose.items():
        np.testing.assert_allclose(composed[:, target.index(name), :3, :], matrices[:, :3, :],
                                   atol=1e-9)


def world_points(target, pose, bone: str) -> np.ndarray:
    return pose[bone][:, :3, 3] @ target.world[:3, :3].T + target.world[:3, 3]


def angle_deg(a, b) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.degrees(np.arccos(np.clip(np.sum(a * b, axis=-1), -1, 1)))


def limb_errors(target, bone_map, pose, source_positions) -> dict:
    """Worst angle (degrees) between target and source limb directions, per limb."""
    by_joint = {j: b for b, j in bone_map.items()}
    out = {}
    for a, c in LIMBS:
        if a in by_joint and c in by_joint:
            got = world_points(target, pose, by_joint[c]) - world_points(target, pose,
                                                                          by_joint[a])
            want = source_positions[:, JOINT_NAMES.index(c)] - source_positions[
                :, JOINT_NAMES.index(a)]
            out[a] = float(angle_deg(got, want).max())
    return out


@pytest.mark.parametrize(("style", "arm_down"), [("mixamo", 0.0), ("ue5", 40.0), ("vrm", 45.0)])
def test_mapped_limbs_follow_the_source_direction_and_twist(rest_joints, style, arm_down):
    layout = rig_layout(style, rest_joints, leg_scale=1.15, arm_down_deg=arm_down, roll_seed=3)
    target = skeleton(layout)
    bone_map = bone_map_of(layout)
    rotmats, transl = large_motion()
    result = retarget(rotmats, transl, rest_joints, target, bone_map)
    _, positions = smplx_world_pose(rotmats, transl, rest_joints, "opencv_camera")
    errors = limb_errors(target, bone_map, result.pose, positions)
    assert len(errors) == len(LIMBS)
    assert max(errors.values()) < 1e-4  # degrees (arccos noise)
    assert_keys_reproduce_pose(target, result)
    # Twist: each bone's X axis turns exactly like its joint's, after the rest directions
    # are aligned by the smallest swing (so A-pose arms carry no extra twist).
    g, _ = smplx_world_pose(rotmats, transl, rest_joints, "opencv_camera")
    by_joint = {j: target.index(b) for b, j in bone_map.items()}
    source_rest = rest_joints @ SMPLX_TO_BLENDER.T
    for a, c in LIMBS:
        b = by_joint[a]
        v = target.rest[by_joint[c], :3, 3] - target.rest[b, :3, 3]
        u = source_rest[JOINT_NAMES.index(c)] - source_rest[JOINT_NAMES.index(a)]
        expected = g[:, JOINT_NAMES.index(a)] @ SMPLX_TO_BLENDER.T @ minimal_rotation(v, u) @ \
            target.rest[b, :3, 0]
        got = result.pose[target.names[b]][:, :3, 0]
        assert angle_deg(got, expected).max() < 1e-4, a


def test_unmapped_bones_keep_their_rest_pose_relative_to_the_parent(rest_joints):
    layout = rig_layout("ue5", rest_joints)
    target = skeleton(layout)
    result = retarget(*large_motion(5), rest_joints, target, bone_map_of(layout))
    for name in ("spine_02", "upperarm_twist_01_l", "calf_twist_01_r", "neck_02"):
        assert name not in result.rotated
    composed = pose_from_basis(target, result)
    for name, parent in (("spine_02", "spine_01"), ("neck_02", "neck_01")):
        b, p = target.index(name), target.index(parent)
        rest_offset = rigid_inverse(target.rest[p]) @ target.rest[b]
        np.testing.assert_allclose(composed[:, b], composed[:, p] @ rest_offset, atol=1e-12)
    assert "22 of 34 bones driven; 12 follow their parent" in result.report


def test_a_rig_modelled_facing_plus_y_and_rotated_on_its_object_still_matches(rest_joints):
    layout = rig_layout("vrm", rest_joints, arm_down_deg=30.0)
    half_turn = np.diag([-1.0, -1.0, 1.0])  # modelled facing +Y
    layout["heads"] = layout["heads"] @ half_turn.T
    layout["tails"] = layout["tails"] @ half_turn.T
    world = np.eye(4)
    world[:3, :3] = axis_angle_to_matrix(np.array([0.0, 0.0, 0.7])) * 0.5  # uniform scale
    world[:3, 3] = [3.0, -2.0, 0.5]
    target = skeleton(layout, world)
    rotmats, transl = large_motion(8, seed=4)
    result = retarget(rotmats, transl, rest_joints, target, bone_map_of(layout))
    _, positions = smplx_world_pose(rotmats, transl, rest_joints, "opencv_camera")
    errors = limb_errors(target, bone_map_of(layout), result.pose, positions)
    assert max(errors.values()) < 1e-4


def test_root_motion_modes(rest_joints):
    layout = rig_layout("ue5", rest_joints, leg_scale=1.15)
    target = skeleton(layout)
    bone_map = bone_map_of(layout)
    rotmats, transl = large_motion(10, seed=2)
    on_bone = retarget(rotmats, transl, rest_joints, target, bone_map, root_motion="bone")
    on_object = retarget(rotmats, transl, rest_joints, target, bone_map, root_motion="object")
    in_place = retarget(rotmats, transl, rest_joints, target, bone_map, root_motion="in_place")
    pelvis = "pelvis"
    assert on_bone.located == ("root", "pelvis") and on_object.located == ("pelvis",)
    # Travel: the pelvis goes where the source pelvis goes, scaled by the leg ratio.
    _, positions = smplx_world_pose(rotmats, transl, rest_joints, "opencv_camera")
    travel_source = positions[-1, 0, :2] - positions[0, 0, :2]
    travel_bone = world_points(target, on_bone.pose, pelvis)
    np.testing.assert_allclose(travel_bone[-1, :2] - travel_bone[0, :2],
                               on_bone.leg_scale * travel_source, atol=1e-9)
    assert on_bone.leg_scale == pytest.approx(1.15, rel=1e-9)
    # "object": the same travel on the object's location; the bones stay over the origin.
    np.testing.assert_allclose(on_object.object_location[:, :2] - on_object.object_location[0, :2],
                               travel_bone[:, :2] - travel_bone[0, :2], atol=1e-9)
    np.testing.assert_allclose(world_points(target, on_object.pose, pelvis)[:, :2],
                               np.broadcast_to(target.rest[target.index(pelvis), :3, 3][:2],
                                               (10, 2)),
                               atol=1e-9)
    # "in place": no horizontal travel at all, the vertical motion is kept.
    here = world_points(target, in_place.pose, pelvis)
    np.testing.assert_allclose(here[:, :2], here[:1, :2].repeat(10, 0), atol=1e-9)
    np.testing.assert_allclose(here[:, 2], travel_bone[:, 2], atol=1e-9)
    assert in_place.object_location is None


def standing_motion(n: int = 40):
    """Knees bent, hips swaying 6 cm and bobbing 4 cm: the feet of the source slide a little."""
    rotmats = np.tile(np.eye(3), (n, 55, 1, 1))
    rotmats[:, 0] = UPRIGHT_IN_CAMERA
    t = np.linspace(0, 2 * np.pi, n)
    for side in ("left", "right"):
        rotmats[:, JOINT_NAMES.index(f"{side}_hip")] = axis_angle_to_matrix(
            np.stack([-0.4 + 0.1 * np.sin(t), 0 * t, 0 * t], 1))
        rotmats[:, JOINT_NAMES.index(f"{side}_knee")] = axis_angle_to_matrix(
            np.stack([0.7 + 0.1 * np.sin(t), 0 * t, 0 * t], 1))
    transl = np.stack([0.06 * np.sin(t), 0.04 * np.cos(2 * t), 4 + 0.05 * np.sin(t)], 1)
    contacts = np.zeros((n, 4))
    contacts[: 3 * n // 4, 0:2] = 1.0  # left heel and toe down for the first three quarters
    contacts[n // 4:, 3] = 1.0  # right toe only from the first quarter on
    return rotmats, transl, contacts


@pytest.mark.parametrize("root_motion", ["bone", "object"])
def test_contacting_feet_stay_planted_with_longer_legs(rest_joints, root_motion):
    layout = rig_layout("mixamo", rest_joints, leg_scale=1.15)
    target = skeleton(layout)
    bone_map = bone_map_of(layout)
    rotmats, transl, contacts = standing_motion()
    free = retarget(rotmats, transl, rest_joints, target, bone_map, root_motion=root_motion)
    planted = retarget(rotmats, transl, rest_joints, target, bone_map, contacts=contacts,
                       root_motion=root_motion)

    def points(result, bone):
        p = world_points(target, result.pose, bone)
        if result.object_location is not None:
            p = p + result.object_location - result.object_location[:1]
        return p

    left = contacts[:, 0] > 0.5
    right = contacts[:, 3] > 0.5
    for result, limit_ok in ((free, False), (planted, True)):
        heel = points(result, "mixamorig:LeftFoot")[left]
        toe = points(result, "mixamorig:RightToeBase")[right]
        drift = max(np.linalg.norm(heel - heel.mean(0), axis=1).max(),
                    np.linalg.norm(toe - toe.mean(0), axis=1).max())
        assert (drift <= 0.01) == limit_ok, drift
    assert_keys_reproduce_pose(target, planted)


def test_bad_input_is_one_line_dpose_error(rest_joints):
    layout = rig_layout("mixamo", rest_joints)
    target = skeleton(layout)
    bone_map = bone_map_of(layout)
    rotmats, transl = large_motion(3)
    cases = [
        (lambda: retarget(rotmats, transl, rest_joints, target,
                          {b: j for b, j in bone_map.items() if j != "left_knee"}),
         "not humanoid"),
        (lambda: retarget(rotmats, transl, rest_joints, target, {**bone_map, "Tail": "jaw"}),
         "lacks: Tail"),
        (lambda: retarget(rotmats, transl[:2], rest_joints, target, bone_map), "3 frames"),
        (lambda: retarget(rotmats[:0], transl[:0], rest_joints, target, bone_map), "no frames"),
        (lambda: retarget(rotmats, transl, rest_joints, target, bone_map,
                          contacts=np.zeros((3, 2))), "heel/toe"),
        (lambda: retarget(rotmats, transl, rest_joints, target, bone_map, root_motion="fly"),
         "root_motion"),
        (lambda: TargetSkeleton(["a", "b"], [-1], np.tile(np.eye(4), (2, 1, 1))),
         "counts must match"),
        (lambda: TargetSkeleton(["a"], [-1], np.diag([1.2, 1, 1, 1])[None]), "scale or shear"),
        (lambda: TargetSkeleton(["a"], [-1], np.eye(4)[None], np.diag([1, 2, 1, 1.0])),
         "non-uniform scale"),
        (lambda: retarget(rotmats, transl, rest_joints, target,
                          {**bone_map, "mixamorig:Neck": "head"}), "mapped to two bones"),
    ]
    for call, words in cases:
        with pytest.raises(DPoseError, match=words) as info:
            call()
        assert "\n" not in str(info.value)


def test_blender_bone_matrix_convention():
    m = bone_matrix_from_direction(np.array([0.0, 0.0, 1.0]), 0.0)
    np.testing.assert_allclose(m, [[1, 0, 0], [0, 0, -1], [0, 1, 0]], atol=1e-12)
    rolled = bone_matrix_from_direction(np.array([0.0, 0.0, 1.0]), np.pi / 2)
    np.testing.assert_allclose(rolled[:, 1], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(rolled[:, 0], [0, 1, 0], atol=1e-12)


@pytest.mark.parametrize(("style", "preset"), [("mixamo", "mixamo"), ("ue5", "ue5"),
                                               ("vrm", "vrm")])
def test_presets_are_detected_from_bone_names(rest_joints, style, preset):
    layout = rig_layout(style, rest_joints)
    found, mapping = bone_maps.detect_preset(layout["names"])
    assert found == preset
    assert mapping == bone_map_of(layout)


def test_mixamo_prefix_variants_and_smplx_and_unknown_rigs():
    names = [b.replace("mixamorig:", "mixamorig7:") for b in bone_maps.PRESETS["mixamo"].values()]
    preset, mapping = bone_maps.detect_preset(names)
    assert preset == "mixamo" and mapping["mixamorig7:LeftForeArm"] == "left_elbow"
    assert bone_maps.detect_preset(JOINT_NAMES)[0] == "smplx"
    with pytest.raises(DPoseError, match="No bone map preset fits"):
        bone_maps.detect_preset(["Bone", "Bone.001", "Tail"])


def test_bone_map_json_round_trip_and_bad_files(tmp_path):
    mapping = bone_maps.preset_map("ue5")
    path = bone_maps.save_bone_map(tmp_path / "map.json", mapping)
    assert bone_maps.load_bone_map(path) == mapping
    assert json.loads(path.read_text())["format"] == "dpose-bone-map"
    assert [p.name for p in tmp_path.iterdir()] == ["map.json"]
    (tmp_path / "plain.json").write_text(json.dumps({"hips": "pelvis"}))
    assert bone_maps.load_bone_map(tmp_path / "plain.json") == {"hips": "pelvis"}
    for text, words in (("{not json", "Cannot read"), ("[1, 2]", "expected an object"),
                        ('{"format": "other", "bones": {}}', "not a D-PoSE bone map")):
        (tmp_path / "bad.json").write_text(text)
        with pytest.raises(DPoseError, match=words):
            bone_maps.load_bone_map(tmp_path / "bad.json")
    with pytest.raises(DPoseError, match="does not exist"):
        bone_maps.load_bone_map(tmp_path / "missing.json")


def test_unmapped_report_names_what_is_left_out():
    mapping = {b: j for b, j in bone_maps.preset_map("vrm").items() if j[:-1] != "left_index"}
    text = bone_maps.unmapped_report(mapping, list(mapping) + ["tail", "cape"])
    assert text.startswith(f"{len(mapping)} bones mapped") and "2 rig bones follow" in text
    assert "left_index1" in text
