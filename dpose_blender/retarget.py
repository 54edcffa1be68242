"""Retarget a D-PoSE take onto the artist's own armature: one new action, on its own NLA track.

The maths is dpose_core.retarget (bpy-free); this module reads the target's rest pose, writes
the keys in bulk (keyframes/anim_compat helpers) and pushes the action onto an NLA strip so
takes can be layered. Bones whose parent is moved by constraints (Rigify's MCH parents) cannot
be keyed from the rest pose alone: their parent's pose is read from Blender's evaluation, a
few passes over the frames, one per depth of such bones. Constraints that cannot move a parent
(muted, zero influence, Copy Scale: scale is never keyed) are not counted.

Rigify: the FK controls are driven. For a limb whose IK/FK switch is on IK, the IK hand/foot
control is keyed onto the FK hand/foot and the IK control that rolls the bend plane is turned
(a few evaluation passes) until the IK elbow/knee lies in the FK one's plane; the switch is
keyed to FK for the take (exact) unless keep_ik asks to play it in IK.
On any error the scene is put back: new data-blocks removed, the target's action, NLA tracks
and mode restored.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import bpy
import numpy as np
from mathutils import Euler, Matrix

from ..dpose_core import bone_maps
from ..dpose_core import retarget as core
from ..dpose_core.errors import DPoseError
from ..dpose_core.motion import Motion
from ..dpose_core.rotations import make_quaternions_continuous, matrix_to_quaternion
from . import anim_compat, keyframes
from .rig import rig_frame
from .rollback import SceneSnapshot

# Rigify limbs: IK/FK switch bone, FK end control, IK end control (per side).
# Rigify limbs: IK/FK switch bone; FK upper, lower and end controls; IK end control; IK
# control whose roll sets the bend plane; IK chain's lower bone (where the IK elbow/knee is).
_RIGIFY_LIMBS = (
    ("upper_arm_parent.{S}", "upper_arm_fk.{S}", "forearm_fk.{S}", "hand_fk.{S}", "hand_ik.{S}",
     "upper_arm_ik.{S}", "MCH-forearm_ik.{S}"),
    ("thigh_parent.{S}", "thigh_fk.{S}", "shin_fk.{S}", "foot_fk.{S}", "foot_ik.{S}",
     "thigh_ik.{S}", "MCH-shin_ik.{S}"),
)
_PLANE_PASSES = 3  # evaluations that turn the IK bend plane onto the FK one
_IK_FK = "IK_FK"  # Rigify: 0 = IK, 1 = FK
PROP_BONE_MAP = "dpose_bone_map"  # JSON {bone: joint} saved with the rig
# Foot contacts the grounding stage keys on a D-PoSE rig, in the core's contact order.
CONTACT_PROPS = ("dpose_contact_left_heel", "dpose_contact_left_toe",
                 "dpose_contact_right_heel", "dpose_contact_right_toe")
_HARMLESS_CONSTRAINTS = {"COPY_SCALE", "LIMIT_SCALE", "MAINTAIN_VOLUME"}


@dataclass
class RetargetReport:
    """What retarget_motion did: the new action, its NLA track, the Blender frames keyed, the
    bone map used (and the preset it came from, if any), which joints and bones it leaves
    out (bone_maps.unmapped_report), and a one-line summary."""

    action: bpy.types.Action
    track_name: str
    first_frame: int
    last_frame: int
    preset: str | None
    bone_map: dict
    unmapped: str
    message: str


def read_skeleton(armature: bpy.types.Object) -> core.TargetSkeleton:
    """The rest pose of an armature object as the core engine reads it."""
    if armature is None or armature.type != "ARMATURE":
        raise DPoseError(f"{getattr(armature, 'name', armature)!r} is not an armature; select "
                         "the character's armature as the retarget target.")
    bones = armature.data.bones
    names = [b.name for b in bones]
    index = {n: i for i, n in enumerate(names)}
    parents = [index[b.parent.name] if b.parent else -1 for b in bones]
    rest = np.array([b.matrix_local for b in bones], dtype=np.float64).reshape(-1, 4, 4)
    return core.TargetSkeleton(names, parents, rest, np.array(armature.matrix_world),
                               armature.name)


def detect_bone_map(armature: bpy.types.Object) -> tuple[str, dict]:
    """(preset, {bone: joint}) picked from the armature's bone names; DPoseError if none fits."""
    return bone_maps.detect_preset(b.name for b in armature.data.bones)


def store_bone_map(armature: bpy.types.Object, bone_map: dict) -> None:
    """Save an (edited) bone map with the rig, as JSON in a custom property of its object."""
    bone_maps.check_bone_map(bone_map, (b.name for b in armature.data.bones))
    armature[PROP_BONE_MAP] = json.dumps(dict(bone_map), sort_keys=True)


def stored_bone_map(armature: bpy.types.Object) -> dict | None:
    """The bone map saved with the rig by store_bone_map, or None."""
    text = armature.get(PROP_BONE_MAP)
    if text is None:
        return None
    try:
        data = json.loads(str(text))
    except json.JSONDecodeError:
        raise DPoseError(f"The bone map stored on {armature.name!r} is damaged; pick a preset "
                         "or load a bone map file again.") from None
    if not isinstance(data, dict):
        raise DPoseError(f"The bone map stored on {armature.name!r} is not a bone map.")
    return {str(k): str(v) for k, v in data.items()}


def resolve_bone_map(
    target: bpy.types.Object, bone_map: dict | None = None
) -> tuple[str | None, dict]:
    """(preset or None, bone map) that retargeting onto `target` uses, checked up front.

    bone_map None: the map stored with the rig, else the preset detected from its bone names.
    DPoseError (one line) when `target` is no armature, is scaled in its pose, or is not
    humanoid under the map (bones it lacks, joints mapped twice, limbs left out).
    """
    read_skeleton(target)
    _refuse_scaled_pose(target)
    preset = None
    if bone_map is None:
        bone_map = stored_bone_map(target)
    if bone_map is None:
        preset, bone_map = detect_bone_map(target)
    bone_maps.check_bone_map(bone_map, (b.name for b in target.data.bones))
    return preset, dict(bone_map)


def rig_contacts(source: bpy.types.Object, frames: np.ndarray) -> np.ndarray | None:
    """(N,4) foot contacts (left heel, left toe, right heel, right toe; 1 = planted) that the
    grounding stage keyed on a D-PoSE rig (CONTACT_PROPS), at Blender `frames`; None if the rig
    has none. A property that is set but not keyed holds for every frame; a missing one of
    the four counts as no contact."""
    frames = np.asarray(frames, np.float64)
    if not any(name in source for name in CONTACT_PROPS):
        return None
    out = np.zeros((len(frames), len(CONTACT_PROPS)))
    for k, name in enumerate(CONTACT_PROPS):
        if name not in source:
            continue
        fcurve = anim_compat.find_fcurve(source, f'["{name}"]')
        if fcurve is not None:
            out[:, k] = [fcurve.evaluate(f) for f in frames]
            continue
        value = source[name]
        try:
            value = np.asarray(value.to_list() if hasattr(value, "to_list") else value, float)
        except (TypeError, ValueError):
            raise DPoseError(f"{source.name!r}: the contact property {name!r} is not a "
                             "number.") from None
        if value.ndim == 0 or value.shape == (len(frames),):
            out[:, k] = value
        else:
            raise DPoseError(f"{source.name!r}: {name!r} holds {value.size} values for "
                             f"{len(frames)} frames.")
    return out


def retarget_rig(
    source: bpy.types.Object,
    target: bpy.types.Object,
    *,
    bone_map: dict | None = None,
    root_motion: str = "bone",
    contacts: np.ndarray | None = None,
    take_name: str | None = None,
    keep_ik: bool = False,
    scene: bpy.types.Scene | None = None,
) -> RetargetReport:
    """Retarget the keyed motion of a D-PoSE SMPL-X rig (rig.build_armature) onto `target`.

    contacts None: the foot contacts keyed on the rig by the grounding stage, if any
    (rig_contacts); pass zeros to retarget without planting the feet.
    """
    rig = rig_frame(source)
    if source.animation_data is None or source.animation_data.action is None:
        raise DPoseError(f"{source.name!r} has no action to retarget; estimate or import a "
                         "motion first.")
    try:
        motion = keyframes.read_motion_keys(source, scene=scene)
    except ValueError as exc:
        raise DPoseError(f"{source.name!r} has no motion keys to retarget ({exc}).") from None
    offset = int(source.get(keyframes.PROP_FRAME_OFFSET, 1))
    if contacts is None:
        contacts = rig_contacts(source, offset + motion.frame_indices)
    return retarget_motion(motion, rig.rest_joints, target, bone_map=bone_map,
                           root_motion=root_motion, contacts=contacts, frame_offset=offset,
                           take_name=take_name or source.name, keep_ik=keep_ik, scene=scene)


def retarget_motion(
    motion: Motion,
    rest_joints: np.ndarray,
    target: bpy.types.Object,
    *,
    bone_map: dict | None = None,
    root_motion: str = "bone",
    contacts: np.ndarray | None = None,
    frame_offset: int = 1,
    take_name: str = "Take",
    keep_ik: bool = False,
    scene: bpy.types.Scene | None = None,
) -> RetargetReport:
    """Bake `motion` (SMPL-X, rest joints J(beta) (55,3) model frame) onto `target` as a new
    action pushed onto a new NLA track; keys at Blender frames frame_offset + frame_indices.

    bone_map {bone: joint} (default: the one stored with the rig, else detected from the bone
    names); root_motion "bone",
    "object" or "in_place"; contacts (N,4) heel/toe per foot to plant the feet. keep_ik:
    Rigify limbs whose switch is on IK play in IK (driven through the IK controls; Rigify's
    stretchy IK chain then lands elbows and knees within a few degrees) instead of being keyed
    to FK for the take (exact); their IK controls are keyed to follow in both cases.
    """
    scene = scene or bpy.context.scene
    if target is None or target.type != "ARMATURE":
        read_skeleton(target)  # the one-line error
    snapshot = SceneSnapshot(scene)
    state = _AnimState(target, scene)  # object mode: edit-mode bone changes are synced
    try:
        skeleton = read_skeleton(target)
        preset, bone_map = resolve_bone_map(target, bone_map)
        result = core.retarget(motion.rotmats, motion.transl, rest_joints, skeleton, bone_map,
                               coordinate_frame=motion.coordinate_frame,
                               root_motion=root_motion, contacts=contacts)
        frames = (frame_offset + motion.frame_indices).astype(np.float64)
        action, track_name, switched = _bake(target, skeleton, result, frames, take_name, scene,
                                             keep_ik)
    except BaseException:
        state.restore()
        snapshot.restore()
        raise
    state.restore_view()
    verb = "play in IK, driven through their IK controls" if keep_ik else (
        "play in FK in this take; their IK controls follow")
    note = f"; IK limbs {verb}: {', '.join(switched)}" if switched else ""
    return RetargetReport(
        action=action, track_name=track_name, first_frame=int(frames.min()),
        last_frame=int(frames.max()), preset=preset, bone_map=dict(bone_map),
        unmapped=bone_maps.unmapped_report(bone_map, skeleton.names),
        message=f"{take_name} -> {target.name}: {result.report}{note}",
    )


# ---------------------------------------------------------------------- internals
class _AnimState:
    """The target's animation setup, mode and the scene frame, to restore after a failure."""

    def __init__(self, target: bpy.types.Object, scene: bpy.types.Scene) -> None:
        self.target, self.scene = target, scene
        anim = target.animation_data
        self.had_anim = anim is not None
        self.action = anim.action if anim else None
        self.slot = getattr(anim, "action_slot", None) if anim else None
        self.tracks = {t.as_pointer() for t in anim.nla_tracks} if anim else set()
        self.frame = scene.frame_current
        self.mode = bpy.context.mode
        self.active = bpy.context.view_layer.objects.active
        if self.mode != "OBJECT" and self.active is not None:
            bpy.ops.object.mode_set(mode="OBJECT")

    def restore(self) -> None:
        anim = self.target.animation_data
        if anim is not None:
            for track in [t for t in anim.nla_tracks if t.as_pointer() not in self.tracks]:
                anim.nla_tracks.remove(track)
            if anim.action != self.action:
                anim.action = self.action
                if self.slot is not None and anim.action_slot != self.slot:
                    anim.action_slot = self.slot
            if not self.had_anim and len(anim.nla_tracks) == 0:
                self.target.animation_data_clear()
        self.restore_view()

    def restore_view(self) -> None:
        self.scene.frame_set(self.frame)
        if self.mode != "OBJECT" and self.active is not None:
            bpy.context.view_layer.objects.active = self.active
            bpy.ops.object.mode_set(mode=_MODE_SET.get(self.mode, self.mode))


_MODE_SET = {"EDIT_ARMATURE": "EDIT", "EDIT_MESH": "EDIT", "PAINT_WEIGHT": "WEIGHT_PAINT"}


def _refuse_scaled_pose(target: bpy.types.Object) -> None:
    for pose_bone in target.pose.bones:
        if any(abs(s - 1.0) > 1e-6 for s in pose_bone.scale):
            raise DPoseError(
                f"Bone {pose_bone.name!r} of {target.name!r} is scaled in its pose; clear its "
                "scale (Alt+S) before retargeting."
            )


def _moves_parent(pose_bone: bpy.types.PoseBone) -> bool:
    """True when a bone's own constraints (or inheritance settings) can move its children
    away from what its basis and parent give."""
    bone = pose_bone.bone
    if not (bone.use_inherit_rotation and bone.inherit_scale == "FULL"):
        return True
    return any(c.enabled and c.influence > 0 and c.type not in _HARMLESS_CONSTRAINTS
               for c in pose_bone.constraints)


@dataclass
class _IKLimb:
    """A Rigify limb whose switch is on IK, by bone index (see _RIGIFY_LIMBS)."""

    switch: str
    value: float
    fk: tuple[int, int, int]
    ik_end: int
    ik_roll: int
    ik_lower: int


def _rigify_ik_limbs(target, skeleton, result) -> list[_IKLimb]:
    """The Rigify limbs of `target` that are driven by FK keys but play in IK."""
    pose_bones = target.pose.bones
    limbs = []
    for side in ("L", "R"):
        for names in _RIGIFY_LIMBS:
            names = [n.format(S=side) for n in names]
            switch = names[0]
            if switch not in pose_bones or _IK_FK not in pose_bones[switch]:
                continue
            if any(n not in result.rotated for n in names[1:4]) or any(
                    n not in pose_bones for n in names[4:]):
                continue
            value = float(pose_bones[switch][_IK_FK])
            if value >= 1.0:
                continue
            idx = [skeleton.index(n) for n in names[1:]]
            limbs.append(_IKLimb(switch, value, tuple(idx[:3]), *idx[3:]))
    return limbs


def _key_ik_controls(writer, target, skeleton, limbs, frames, scene) -> None:
    """Put each IK end control on its FK end as Blender evaluates it, then roll the IK
    control that sets the bend plane until the IK elbow/knee lies where the FK one does."""
    ends = {}
    wanted = [i for limb in limbs for i in (limb.fk[2], skeleton.parents[limb.ik_end])]
    evaluated = _evaluate(target, wanted, skeleton, frames, scene)
    for limb in limbs:
        follow = core.rigid_inverse(skeleton.rest[limb.fk[2]]) @ skeleton.rest[limb.ik_end]
        ends[limb.ik_end] = evaluated[limb.fk[2]] @ follow
        writer.bone(skeleton, limb.ik_end, _basis(
            skeleton, limb.ik_end, None, ends[limb.ik_end],
            evaluated[skeleton.parents[limb.ik_end]], _local(target, skeleton, limb.ik_end)),
            True)
    roll = {limb.ik_roll: np.zeros(len(frames)) for limb in limbs}
    for _ in range(_PLANE_PASSES):
        wanted = [i for limb in limbs for i in (*limb.fk, limb.ik_lower, limb.ik_roll)]
        evaluated = _evaluate(target, wanted, skeleton, frames, scene)
        for limb in limbs:
            shoulder, elbow, wrist = (evaluated[i][:, :3, 3] for i in limb.fk)
            axis = wrist - shoulder
            axis /= np.linalg.norm(axis, axis=1, keepdims=True)
            have = _perpendicular(evaluated[limb.ik_lower][:, :3, 3] - shoulder, axis)
            want = _perpendicular(elbow - shoulder, axis)
            turn = np.arctan2(np.einsum("ni,ni->n", np.cross(have, want), axis),
                              np.einsum("ni,ni->n", have, want))
            own_axis = evaluated[limb.ik_roll][:, :3, 1]  # the control rolls about its Y
            roll[limb.ik_roll] += turn * np.sign(np.einsum("ni,ni->n", own_axis, axis))
            basis = np.tile(np.eye(4), (len(frames), 1, 1))
            basis[:, :3, :3] = core.axis_rotation(np.array([0.0, 1.0, 0.0]), roll[limb.ik_roll])
            writer.bone(skeleton, limb.ik_roll, basis, False)


def _perpendicular(v: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return v - np.einsum("ni,ni->n", v, axis)[:, None] * axis


def _bake(target, skeleton, result, frames, take_name, scene, keep_ik=False):
    """Write every key into a new action, push it onto a new NLA track; returns
    (action, track name, Rigify limbs driven through their IK controls)."""
    ik_limbs = _rigify_ik_limbs(target, skeleton, result)
    switched = [limb.switch for limb in ik_limbs]
    desired = {skeleton.index(n): result.pose[n] for n in result.rotated}
    located = {skeleton.index(n) for n in result.located}

    levels = _evaluation_levels(target, skeleton, desired)
    anim = target.animation_data or target.animation_data_create()
    previous = anim.action
    if previous is not None:  # stash the user's action under ours, as Blender does
        stash = anim.nla_tracks.new()
        stash.name = "[Action Stash]"
        stash.strips.new(previous.name, int(previous.frame_range[0]), previous)
        stash.mute = True
        anim.action = None
    followers = _probe_followers(target, skeleton, desired, located, levels, switched)
    levels = _evaluation_levels(target, skeleton, desired, set(followers))
    action = anim_compat.ensure_action(target, f"{target.name} | {take_name}")
    writer = _KeyWriter(target, frames)
    for switch in switched:  # FK while the FK controls' children are evaluated
        writer.channel(_switch_path(switch), 0, switch, np.ones(len(frames)))

    analytic = [b for b in desired if levels[b] == 0 and b not in followers]
    for b in analytic:
        writer.bone(skeleton, b, _basis(skeleton, b, result.pose, desired[b],
                                        local_location=_local(target, skeleton, b)),
                    b in located)
    for b, (leader, offset) in followers.items():
        parent = desired[leader] @ offset if leader >= 0 else np.broadcast_to(
            offset, desired[b].shape)
        writer.bone(skeleton, b, _basis(skeleton, b, None, desired[b], parent,
                                        _local(target, skeleton, b)), b in located)
    for level in sorted({v for v in levels.values() if v > 0}):
        bones = [b for b in desired if levels[b] == level and b not in followers]
        parents = _evaluate(target, [skeleton.parents[b] for b in bones], skeleton, frames,
                            scene)
        for b in bones:
            writer.bone(skeleton, b, _basis(skeleton, b, None, desired[b],
                                            parents[skeleton.parents[b]],
                                            _local(target, skeleton, b)), b in located)
    if ik_limbs:  # the IK controls follow the FK pose; the IK chain solves either way
        if keep_ik:  # play the take in IK, at the rig's own setting
            for limb in ik_limbs:
                writer.channel(_switch_path(limb.switch), 0, limb.switch,
                               np.full(len(frames), limb.value))
        _key_ik_controls(writer, target, skeleton, ik_limbs, frames, scene)
    if result.object_location is not None:
        for i in range(3):
            writer.channel("location", i, "Object Transforms", result.object_location[:, i])
    action.update_tag()

    track = anim.nla_tracks.new()
    track.name = take_name
    strip = track.strips.new(take_name, int(frames.min()), action)
    slot = getattr(anim, "action_slot", None)
    if slot is not None and getattr(strip, "action_slot", slot) is None:
        strip.action_slot = slot
    anim.action = None
    return action, track.name, switched


def _switch_path(switch: str) -> str:
    return f'pose.bones["{bpy.utils.escape_identifier(switch)}"]["{_IK_FK}"]'


def _evaluation_levels(target, skeleton, desired: dict, followers=frozenset()) -> dict[int, int]:
    """Per keyed bone: 0 when its parent's pose follows from the intended poses and the rest
    (no constraint between it and the nearest keyed bone above), else one more than the
    deepest level above it, so that level's keys exist before it is evaluated."""
    moving = {skeleton.index(pb.name) for pb in target.pose.bones if _moves_parent(pb)}
    levels: dict[int, int] = {}
    for b in skeleton.order():
        if b not in desired:
            continue
        above = skeleton.ancestors(b)
        needs = False
        for a in () if b in followers else above:
            needs = needs or a in moving
            if a in desired:
                break
        keyed_above = [levels[a] for a in above if a in desired]
        levels[b] = 1 + max(keyed_above, default=0) if needs else 0
    return levels


def _probe_followers(target, skeleton, desired, located, levels, switched) -> dict:
    """Bones whose constraint-moved parent turns out to move rigidly with one keyed bone (or
    not at all): {bone: (that keyed bone or -1, parent pose relative to it)}.

    Found with three probe poses (rest and two random ones) set straight on the pose bones
    and evaluated once each; the probes are undone. Such bones need no evaluation pass.
    """
    candidates = [b for b in desired if levels[b] > 0]
    if not candidates:
        return {}
    pose_bones = target.pose.bones
    keyed = list(desired)
    saved = {b: (tuple(pose_bones[skeleton.names[b]].rotation_quaternion),
                 tuple(pose_bones[skeleton.names[b]].rotation_euler),
                 tuple(pose_bones[skeleton.names[b]].location)) for b in keyed}
    switches = {name: pose_bones[name][_IK_FK] for name in switched}
    parents = sorted({skeleton.parents[b] for b in candidates})
    rng = np.random.default_rng(0)
    samples = []
    try:
        for name in switched:
            pose_bones[name][_IK_FK] = 1.0
        for probe in range(3):
            for b in keyed:
                pb = pose_bones[skeleton.names[b]]
                turn = rng.normal(0, 0.4, 3) if probe else np.zeros(3)
                quat = Matrix(core.axis_rotation(turn / max(np.linalg.norm(turn), 1e-12),
                                                 np.linalg.norm(turn)).tolist()).to_quaternion()
                pb.rotation_quaternion = quat
                pb.rotation_euler = quat.to_euler(pb.rotation_euler.order)
                if b in located:
                    pb.location = rng.normal(0, 0.1, 3) if probe else (0.0, 0.0, 0.0)
            bpy.context.view_layer.update()
            evaluated = target.evaluated_get(bpy.context.evaluated_depsgraph_get())
            samples.append({i: np.array(evaluated.pose.bones[skeleton.names[i]].matrix)
                            for i in set(keyed) | set(parents)})
    finally:
        for b, (quat, euler, loc) in saved.items():
            pb = pose_bones[skeleton.names[b]]
            pb.rotation_quaternion, pb.rotation_euler, pb.location = quat, euler, loc
        for name, value in switches.items():
            pose_bones[name][_IK_FK] = value
        bpy.context.view_layer.update()
    if any(np.allclose(samples[0][b], samples[1][b], atol=1e-6) for b in keyed):
        return {}  # something else (NLA, drivers) holds the keyed bones: trust no probe
    followers = {}
    for b in candidates:
        p = skeleton.parents[b]
        # A located bone's parent must follow a bone whose intended position is Blender's too.
        leaders = [-1, *(located if b in located else keyed)]
        for leader in leaders:
            if leader == b:
                continue
            base = [np.eye(4) if leader < 0 else s[leader] for s in samples]
            offset = np.linalg.inv(base[0]) @ samples[0][p]
            if all(np.allclose(base[i] @ offset, samples[i][p], atol=1e-5) for i in (1, 2)):
                followers[b] = (leader, offset)
                break
    return followers


def _local(target, skeleton, b: int) -> bool:
    return bool(target.data.bones[skeleton.names[b]].use_local_location)


def _evaluate(target, bones: list[int], skeleton, frames, scene) -> dict[int, np.ndarray]:
    """Armature-space pose matrices (N,4,4) of `bones` as Blender evaluates them per frame."""
    out = {b: np.empty((len(frames), 4, 4)) for b in set(bones)}
    for i, frame in enumerate(frames):
        scene.frame_set(int(frame))
        evaluated = target.evaluated_get(bpy.context.evaluated_depsgraph_get())
        for b in out:
            out[b][i] = np.array(evaluated.pose.bones[skeleton.names[b]].matrix)
    return out


def _basis(skeleton, b, pose, desired, parent_pose=None, local_location=True) -> np.ndarray:
    """Pose basis (N,4,4) that puts bone b at `desired` under its parent's pose (the
    evaluated `parent_pose`, else the intended one from `pose` {name: (N,4,4)}).

    Without local location (Bone.use_local_location off, e.g. Rigify's IK controls) Blender
    adds the location in the parent's axes at the bone's rest offset, not in the bone's own.
    """
    p = skeleton.parents[b]
    n = desired.shape[0]
    if p < 0:
        parent = np.broadcast_to(np.eye(4), (n, 4, 4))
    elif parent_pose is not None:
        parent = parent_pose
    else:  # bones between keyed ones keep their rest pose relative to the keyed one above
        anchor = next((a for a in skeleton.ancestors(b) if skeleton.names[a] in pose), None)
        parent = skeleton.rest[p] if anchor is None else (
            pose[skeleton.names[anchor]] @ core.rigid_inverse(skeleton.rest[anchor])
            @ skeleton.rest[p])
    rel = skeleton.rest[b] if p < 0 else core.rigid_inverse(skeleton.rest[p]) @ skeleton.rest[b]
    basis = np.linalg.inv(parent @ rel) @ desired
    if not local_location:
        basis[:, :3, 3] = (np.linalg.inv(parent) @ desired)[:, :3, 3] - rel[:3, 3]
    return basis


class _KeyWriter:
    """Bulk keys on the target's new action: rotations in each bone's own rotation mode."""

    def __init__(self, target, frames: np.ndarray) -> None:
        self.target, self.frames = target, frames
        self.types = np.full(len(frames), keyframes.keyframe_type_value("KEYFRAME"), np.int32)

    def channel(self, path: str, index: int, group: str, values: np.ndarray) -> None:
        fcurve = anim_compat.ensure_fcurve(self.target, path, index, group)
        keyframes._replace_range(fcurve, keyframes._read_points(fcurve), self.frames,
                                 np.asarray(values, np.float64),
                                 self.types, float(self.frames.min()), float(self.frames.max()))

    def bone(self, skeleton, b: int, basis: np.ndarray, with_location: bool) -> None:
        name = skeleton.names[b]
        pose_bone = self.target.pose.bones[name]
        rotation = basis[:, :3, :3]
        rotation = rotation / np.cbrt(np.linalg.det(rotation))[:, None, None]
        mode = pose_bone.rotation_mode
        prefix = f'pose.bones["{bpy.utils.escape_identifier(name)}"]'
        if mode == "QUATERNION":
            quats = make_quaternions_continuous(matrix_to_quaternion(rotation), axis=0)
            for i in range(4):
                self.channel(prefix + ".rotation_quaternion", i, name, quats[:, i])
        elif mode == "AXIS_ANGLE":
            raise DPoseError(f"Bone {name!r} uses axis-angle rotation; set it to Quaternion or "
                             "an Euler order before retargeting.")
        else:
            values = np.empty((len(rotation), 3))
            previous = Euler((0.0, 0.0, 0.0), mode)
            for i, m in enumerate(rotation):
                previous = Matrix(m.tolist()).to_euler(mode, previous)
                values[i] = previous
            for i in range(3):
                self.channel(prefix + ".rotation_euler", i, name, values[:, i])
        if with_location:
            for i in range(3):
                self.channel(prefix + ".location", i, name, basis[:, i, 3])
