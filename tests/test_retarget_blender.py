"""Retargeting in Blender: Rigify (generated in the test), Mixamo-, UE5- and A-posed rigs.

Checked on Blender's own evaluation of both rigs, frame by frame, in world space:
- limb direction: from a mapped bone's head to the head of the bone mapped to the next joint
  down the limb, against the same two joints of the source rig: within 1 degree;
- twist: the bone's X axis against the source joint's world rotation (from its rest) applied
  to the target's rest X axis after the smallest swing that aligns the rest limb directions:
  within 2 degrees;
- planted feet: with legs 15 % longer, a contacting heel (ankle) or toe moves <= 1 cm.
"""

import numpy as np
import pytest

from dpose_core.body_model import BodyModel
from dpose_core.errors import DPoseError
from dpose_core.motion import Motion
from dpose_core.retarget import minimal_rotation
from tests.blender_support import import_blender_module
from tests.retarget_rigs import rig_layout
from tests.test_retarget_core import angle_deg, large_motion, standing_motion

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")  # collected, and skipped, where bpy is missing

rig = import_blender_module("rig")
keyframes = import_blender_module("keyframes")
retarget = import_blender_module("retarget")
anim_compat = import_blender_module("anim_compat")

BETAS = np.random.default_rng(1).normal(0, 1, 11)
LIMBS = [("spine1", "spine2"), ("spine2", "spine3"), ("spine3", "neck"), ("neck", "head")] + [
    (f"{s}_{a}", f"{s}_{b}") for s in ("left", "right")
    for a, b in (("shoulder", "elbow"), ("elbow", "wrist"), ("hip", "knee"), ("knee", "ankle"),
                 ("ankle", "foot"))]


@pytest.fixture(scope="module")
def model(body_model_npz) -> BodyModel:
    return BodyModel.load(body_model_npz)


@pytest.fixture(scope="module")
def rigify_blend(tmp_path_factory):
    """Rigify's human metarig generated once; each test appends the rig from this file."""
    import addon_utils

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("rigify", default_set=True)
    bpy.ops.object.armature_human_metarig_add()
    metarig = bpy.context.object
    bpy.ops.pose.rigify_generate()
    generated = next(o for o in bpy.data.objects if o.type == "ARMATURE" and o != metarig)
    path = tmp_path_factory.mktemp("rigify") / "rigify_rig.blend"
    bpy.data.libraries.write(str(path), {generated}, fake_user=True)
    return path, generated.name


def load_rigify(rigify_blend):
    path, name = rigify_blend
    with bpy.data.libraries.load(str(path)) as (_, loaded):
        loaded.objects = [name]
    obj = loaded.objects[0]
    bpy.context.scene.collection.objects.link(obj)
    return obj


def source_rig(model, rotmats, transl):
    motion = Motion(rotmats=rotmats, transl=transl, betas=BETAS, fps=30.0)
    armature = rig.build_armature(model, BETAS, name="Source")
    keyframes.write_motion_keys(armature, motion)
    return armature


def build_target(layout, name, euler_bones=()):
    data = bpy.data.armatures.new(name)
    obj = bpy.data.objects.new(name, data)
    bpy.context.scene.collection.objects.link(obj)
    bpy.context.view_layer.objects.active = obj
    bpy.ops.object.mode_set(mode="EDIT")
    bones = []
    for i, bone_name in enumerate(layout["names"]):
        bone = data.edit_bones.new(bone_name)
        bone.head, bone.tail = layout["heads"][i].tolist(), layout["tails"][i].tolist()
        bone.roll = float(layout["rolls"][i])
        bones.append(bone)
    for i, parent in enumerate(layout["parents"]):
        if parent >= 0:
            bones[i].parent = bones[parent]
    bpy.ops.object.mode_set(mode="OBJECT")
    for bone_name in euler_bones:
        obj.pose.bones[bone_name].rotation_mode = "YXZ"
    return obj


def evaluated_world(obj, frame):
    """{bone: 4x4 world matrix} of `obj` as Blender evaluates it at `frame`."""
    bpy.context.scene.frame_set(frame)
    ev = obj.evaluated_get(bpy.context.evaluated_depsgraph_get())
    world = np.array(ev.matrix_world)
    return {pb.name: world @ np.array(pb.matrix) for pb in ev.pose.bones}


def rest_world(obj):
    world = np.array(obj.matrix_world)
    return {b.name: world @ np.array(b.matrix_local) for b in obj.data.bones}


def check_accuracy(source, target, bone_map, frames, limbs=LIMBS, measured=None):
    """Worst limb direction and twist errors (degrees) over `frames`."""
    by_joint = {j: b for b, j in bone_map.items()}
    measured = measured or {}
    src_rest, tgt_rest = rest_world(source), rest_world(target)
    worst_dir, worst_twist = 0.0, 0.0
    for frame in frames:
        src, tgt = evaluated_world(source, frame), evaluated_world(target, frame)
        for a, c in limbs:
            ba, bc = measured.get(a, by_joint[a]), measured.get(c, by_joint[c])
            got = tgt[bc][:3, 3] - tgt[ba][:3, 3]
            want = src[c][:3, 3] - src[a][:3, 3]
            worst_dir = max(worst_dir, float(angle_deg(got, want)))
            delta = src[a][:3, :3] @ src_rest[a][:3, :3].T
            swing = minimal_rotation(tgt_rest[bc][:3, 3] - tgt_rest[ba][:3, 3],
                                     src_rest[c][:3, 3] - src_rest[a][:3, 3])
            expected_x = delta @ swing @ tgt_rest[ba][:3, 0]
            worst_twist = max(worst_twist, float(angle_deg(tgt[ba][:3, 0], expected_x)))
    return worst_dir, worst_twist


@pytest.mark.parametrize(("style", "arm_down", "euler"), [
    ("mixamo", 0.0, ()), ("ue5", 40.0, ("upperarm_l", "calf_r")),
    ("vrm", 45.0, ("leftLowerArm",))])
def test_retarget_onto_named_rigs_keeps_directions_and_twist(model, style, arm_down, euler):
    rotmats, transl = large_motion(12, seed=5)
    source = source_rig(model, rotmats, transl)
    layout = rig_layout(style, model.rest_joints(BETAS), leg_scale=1.15, arm_down_deg=arm_down,
                        roll_seed=7)
    target = build_target(layout, style, euler)
    report = retarget.retarget_rig(source, target)
    assert report.preset == style
    assert report.unmapped.startswith(f"{len(report.bone_map)} bones mapped")
    assert target.animation_data.action is None  # the take plays from its NLA strip
    assert [t.name for t in target.animation_data.nla_tracks] == ["Source"]
    worst_dir, worst_twist = check_accuracy(source, target, report.bone_map, range(1, 13))
    assert worst_dir <= 1.0
    assert worst_twist <= 2.0


SWITCHES = ("upper_arm_parent.L", "upper_arm_parent.R", "thigh_parent.L", "thigh_parent.R")
ORG = {f"{s}_{j}": f"ORG-{b}.{s[0].upper()}" for s in ("left", "right")
       for j, b in (("shoulder", "upper_arm"), ("elbow", "forearm"), ("wrist", "hand"),
                    ("hip", "thigh"), ("knee", "shin"), ("ankle", "foot"), ("foot", "toe"))}
IK_CHAINS = [(f"{s}_{a}", f"{s}_{b}", f"{lower}.{s[0].upper()}")
             for s in ("left", "right")
             for a, b, lower in (("shoulder", "elbow", "MCH-forearm_ik"),
                                 ("hip", "knee", "MCH-shin_ik"))]


@pytest.mark.parametrize("keep_ik", [False, True])
def test_rigify_controls_drive_the_deform_skeleton(model, rigify_blend, keep_ik):
    """Rigify generates its limbs in IK (IK_FK = 0). By default the take keys them to FK and
    the FK controls drive the deform chain exactly; the IK controls are keyed to follow (IK
    hand/foot on the FK ones, IK elbow/knee in the FK bend plane). keep_ik plays them in IK."""
    rotmats, transl = large_motion(10, seed=6)
    source = source_rig(model, rotmats, transl)
    target = load_rigify(rigify_blend)
    assert all(target.pose.bones[n]["IK_FK"] == 0.0 for n in SWITCHES)
    report = retarget.retarget_rig(source, target, keep_ik=keep_ik)
    assert report.preset == "rigify"
    assert ("play in IK" in report.message) == keep_ik
    limbs = [limb for limb in LIMBS if limb[0] != "spine1"]
    body = [limb for limb in limbs if "_" not in limb[0]]  # spine, neck, head: FK controls
    worst_dir, worst_twist = check_accuracy(source, target, report.bone_map, range(1, 11),
                                            limbs=limbs if not keep_ik else body, measured=ORG)
    assert worst_dir <= 1.0  # measured on the deform chain (ORG bones)
    assert worst_twist <= 2.0
    frames = range(1, 11)
    for frame in frames:
        pose = evaluated_world(target, frame)
        for fk, ik in (("hand_fk.L", "hand_ik.L"), ("foot_fk.R", "foot_ik.R")):
            offset = np.linalg.inv(rest_world(target)[fk]) @ rest_world(target)[ik]
            np.testing.assert_allclose(pose[ik], pose[fk] @ offset, atol=1e-4)
        # The IK chain bends in the FK limb's plane (within 1 degree): switching is seamless
        # up to Rigify's stretchy IK solver, which may move the elbow/knee along the plane.
        for upper, lower, ik_lower in IK_CHAINS:
            by_joint = {j: b for b, j in report.bone_map.items()}
            shoulder = pose[by_joint[upper]][:3, 3]
            wrist = pose[by_joint[lower.replace("elbow", "wrist").replace("knee", "ankle")]]
            axis = wrist[:3, 3] - shoulder
            normal_fk = np.cross(axis, pose[by_joint[lower]][:3, 3] - shoulder)
            normal_ik = np.cross(axis, pose[ik_lower][:3, 3] - shoulder)
            assert float(angle_deg(normal_fk, normal_ik)) <= 1.0
    bpy.context.scene.frame_set(5)
    assert all(target.pose.bones[n]["IK_FK"] == (0.0 if keep_ik else 1.0) for n in SWITCHES)
    if keep_ik:  # in IK the deform limbs follow the IK chain: hands and feet in place
        pose = evaluated_world(target, 5)
        for org, fk in (("ORG-hand.L", "hand_fk.L"), ("ORG-foot.R", "foot_fk.R")):
            assert np.linalg.norm(pose[org][:3, 3] - pose[fk][:3, 3]) <= 1e-3


def test_contacting_feet_move_at_most_a_centimetre_with_longer_legs(model):
    rotmats, transl, contacts = standing_motion(30)
    source = source_rig(model, rotmats, transl)
    layout = rig_layout("mixamo", model.rest_joints(BETAS), leg_scale=1.15, roll_seed=2)
    target = build_target(layout, "Mixamo")
    retarget.retarget_rig(source, target, contacts=contacts)
    heel = np.array([evaluated_world(target, f)["mixamorig:LeftFoot"][:3, 3]
                     for f in range(1, 31)])[contacts[:, 0] > 0.5]
    toe = np.array([evaluated_world(target, f)["mixamorig:RightToeBase"][:3, 3]
                    for f in range(1, 31)])[contacts[:, 3] > 0.5]
    assert np.linalg.norm(heel - heel.mean(0), axis=1).max() <= 0.01
    assert np.linalg.norm(toe - toe.mean(0), axis=1).max() <= 0.01


def test_takes_layer_on_nla_and_object_root_motion(model):
    rotmats, transl = large_motion(6, seed=8)
    source = source_rig(model, rotmats, transl)
    target = build_target(rig_layout("ue5", model.rest_joints(BETAS)), "UE5")
    first = retarget.retarget_rig(source, target, take_name="walk")
    second = retarget.retarget_rig(source, target, take_name="walk in place",
                                   root_motion="object")
    anim = target.animation_data
    assert [t.name for t in anim.nla_tracks] == ["walk", "walk in place"]
    assert [t.strips[0].action for t in anim.nla_tracks] == [first.action, second.action]
    assert first.action != second.action and anim.action is None
    anim.nla_tracks["walk"].mute = True
    bpy.context.scene.frame_set(6)
    moved = np.array(target.matrix_world)[:3, 3]
    bpy.context.scene.frame_set(1)
    assert np.linalg.norm(moved[:2] - np.array(target.matrix_world)[:2, 3]) > 0.1


def test_a_target_in_edit_mode_is_read_as_edited_and_left_in_edit_mode(model):
    rotmats, transl = large_motion(4, seed=11)
    source = source_rig(model, rotmats, transl)
    target = build_target(rig_layout("vrm", model.rest_joints(BETAS)), "VRM")
    bpy.context.view_layer.objects.active = target
    bpy.ops.object.mode_set(mode="EDIT")
    target.data.edit_bones["leftLowerArm"].roll += 1.0  # not yet synced to the bones
    report = retarget.retarget_rig(source, target)
    assert bpy.context.mode == "EDIT_ARMATURE"
    bpy.ops.object.mode_set(mode="OBJECT")
    worst_dir, worst_twist = check_accuracy(source, target, report.bone_map, range(1, 5))
    assert worst_dir <= 1.0 and worst_twist <= 2.0


def test_a_bone_map_saved_with_the_rig_is_used(model):
    rotmats, transl = large_motion(3, seed=12)
    source = source_rig(model, rotmats, transl)
    target = build_target(rig_layout("mixamo", model.rest_joints(BETAS)), "Mixamo")
    _, detected = retarget.detect_bone_map(target)
    edited = {b: j for b, j in detected.items() if "Hand" not in b or "Thumb" not in b}
    retarget.store_bone_map(target, edited)
    assert retarget.stored_bone_map(target) == edited
    report = retarget.retarget_rig(source, target)
    assert report.preset is None and report.bone_map == edited
    assert "left_thumb1" in report.unmapped
    with pytest.raises(DPoseError, match="lacks"):
        retarget.store_bone_map(target, {**edited, "Tail": "jaw"})
    target[retarget.PROP_BONE_MAP] = "{broken"
    with pytest.raises(DPoseError, match="damaged"):
        retarget.retarget_rig(source, target)


def _scene_state(target):
    anim = target.animation_data
    return (sorted(bpy.data.objects.keys()), sorted(bpy.data.actions.keys()),
            anim.action.name if anim and anim.action else None,
            [t.name for t in anim.nla_tracks] if anim else None,
            bpy.context.scene.frame_current)


def test_bad_input_is_one_line_and_leaves_the_scene_as_it_was(model):
    rotmats, transl = large_motion(4, seed=9)
    source = source_rig(model, rotmats, transl)
    target = build_target(rig_layout("mixamo", model.rest_joints(BETAS)), "Mixamo")
    mesh = bpy.data.objects.new("Mesh", bpy.data.meshes.new("Mesh"))
    bpy.context.scene.collection.objects.link(mesh)
    empty_rig = rig.build_armature(model, BETAS, name="Unkeyed")
    odd = build_target(rig_layout("vrm", model.rest_joints(BETAS)), "Odd")
    for bone in odd.data.bones:
        bone.name = f"bone_{bone.name}"  # no preset fits
    before = _scene_state(target)
    cases = [
        (lambda: retarget.retarget_rig(source, mesh), "not an armature"),
        (lambda: retarget.retarget_rig(empty_rig, target), "no action"),
        (lambda: retarget.retarget_rig(source, odd), "No bone map preset fits"),
        (lambda: retarget.retarget_rig(source, target, bone_map={"Tail": "pelvis"}),
         "lacks: Tail"),
    ]
    for call, words in cases:
        with pytest.raises(DPoseError, match=words) as info:
            call()
        assert "\n" not in str(info.value)
        assert _scene_state(target) == before
    target.pose.bones["mixamorig:LeftArm"].scale = (1.0, 1.2, 1.0)
    with pytest.raises(DPoseError, match="scaled in its pose"):
        retarget.retarget_rig(source, target)
    assert _scene_state(target) == before


def test_a_failure_while_baking_removes_the_new_action_and_track(model, monkeypatch):
    rotmats, transl = large_motion(4, seed=10)
    source = source_rig(model, rotmats, transl)
    target = build_target(rig_layout("mixamo", model.rest_joints(BETAS)), "Mixamo")
    retarget.retarget_rig(source, target, take_name="kept")
    before = _scene_state(target)

    def broken(*args, **kwargs):
        raise DPoseError("disk on fire")

    monkeypatch.setattr(retarget, "_evaluation_levels", broken)
    with pytest.raises(DPoseError, match="disk on fire"):
        retarget.retarget_rig(source, target, take_name="lost")
    assert _scene_state(target) == before
