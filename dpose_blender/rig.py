"""The exact SMPL-X armature in Blender: one bone per joint, posed so that Blender reproduces
SMPL-X LBS. The frames and the maths (rest layout, bone frames, pose keys) are bpy-free in
``dpose_core.rig_frames``; this module makes the bones and reads their frames back.
"""

from __future__ import annotations

import bpy
import numpy as np
from mathutils import Matrix

from ..dpose_core.body_model import BodyModel
from ..dpose_core.errors import DPoseError
from ..dpose_core.motion import FRAME_OPENCV_CAMERA
from ..dpose_core.rig_frames import BoneLayout, RigFrame, bone_layout, frame_rotations, padded_betas
from ..dpose_core.skeleton import JOINT_NAMES, NUM_JOINTS, NUM_PREDICTED_JOINTS

ROOT_BONE = JOINT_NAMES[0]
RIG_VERSION = 1
# Custom properties on the armature object; plain ID properties (float arrays are doubles).
PROP_RIG = "dpose_rig"
PROP_REST_JOINTS = "dpose_rest_joints"
PROP_BETAS = "dpose_betas"
PROP_WORLD_FRAME = "dpose_world_frame"

_FIRST_HAND_JOINT = JOINT_NAMES.index("left_index1")
_BONE_COLLECTIONS = {
    "Body": JOINT_NAMES[:NUM_PREDICTED_JOINTS],  # the joints the network predicts
    "Face": JOINT_NAMES[NUM_PREDICTED_JOINTS:_FIRST_HAND_JOINT],
    "Hands": JOINT_NAMES[_FIRST_HAND_JOINT:],
}


def is_rig(obj) -> bool:
    """True for an armature object made by build_armature."""
    return obj is not None and obj.type == "ARMATURE" and PROP_RIG in obj


def rig_frame(armature: bpy.types.Object) -> RigFrame:
    """Read the frame of an armature made by build_armature (custom properties + bones)."""
    if not is_rig(armature):
        name = getattr(armature, "name", None)
        raise DPoseError(
            f"{name!r} is not a D-PoSE SMPL-X armature; create one with "
            "'Import motion' or build_armature() first."
        )
    bones = armature.data.bones
    missing = [n for n in JOINT_NAMES if n not in bones]
    if missing:
        raise DPoseError(
            f"Armature {armature.name!r} lacks the SMPL-X bones {missing[:5]}...; "
            "rebuild the rig instead of renaming or deleting bones."
        )
    rest = np.array([bones[n].matrix_local for n in JOINT_NAMES], dtype=np.float64)
    return RigFrame.from_stored(armature[PROP_REST_JOINTS], rest, armature[PROP_BETAS],
                                str(armature[PROP_WORLD_FRAME]))


def build_armature(
    body_model: BodyModel,
    betas: np.ndarray,
    *,
    name: str = "SMPL-X",
    world_frame: str = FRAME_OPENCV_CAMERA,
    collection: bpy.types.Collection | None = None,
) -> bpy.types.Object:
    """A new armature with one bone per SMPL-X joint, heads at the shaped rest joints (metres).

    world_frame: the Motion.coordinate_frame the rig will be keyed in ("opencv_camera" for
    D-PoSE, "world_z_up" for AMASS); it sets the object matrix (dpose_core.coords).
    Linked into `collection` (default: the scene's collection); left active, in object mode.
    """
    betas = padded_betas(betas)
    parents = np.asarray(body_model.parents, dtype=np.int64)
    rest_joints = body_model.rest_joints(betas)
    blender_from_world, upright = frame_rotations(world_frame)

    data = bpy.data.armatures.new(name)
    armature = bpy.data.objects.new(name, data)
    (collection or bpy.context.scene.collection).objects.link(armature)
    world = np.eye(4)
    world[:3, :3] = blender_from_world
    armature.matrix_world = Matrix(world.tolist())  # Matrix() takes rows
    data.display_type = "OCTAHEDRAL"
    armature.show_in_front = True

    _make_edit_bones(armature, parents, bone_layout(rest_joints, parents, upright))

    armature[PROP_RIG] = RIG_VERSION
    armature[PROP_REST_JOINTS] = rest_joints.ravel().tolist()
    armature[PROP_BETAS] = betas.tolist()
    armature[PROP_WORLD_FRAME] = world_frame
    for pose_bone in armature.pose.bones:
        pose_bone.rotation_mode = "QUATERNION"
    return armature


def _make_edit_bones(
    armature: bpy.types.Object,
    parents: np.ndarray,
    layout: BoneLayout,
) -> None:
    """Create the bones in edit mode (the only way), then return to object mode."""
    view_layer = bpy.context.view_layer
    if bpy.context.mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    view_layer.objects.active = armature
    armature.select_set(True)
    bpy.ops.object.mode_set(mode="EDIT")
    try:
        edit_bones = armature.data.edit_bones
        bones = []
        for j, name in enumerate(JOINT_NAMES):
            bone = edit_bones.new(name)
            bone.head = layout.heads[j].tolist()
            bone.tail = layout.tails[j].tolist()
            bone.align_roll(layout.roll_refs[j].tolist())
            bones.append(bone)
        for j in range(1, NUM_JOINTS):
            bones[j].parent = bones[int(parents[j])]
            bones[j].use_connect = bool(layout.connect[j])
        for collection_name, names in _BONE_COLLECTIONS.items():
            bone_collection = armature.data.collections.new(collection_name)
            for name in names:
                bone_collection.assign(edit_bones[name])
    finally:
        bpy.ops.object.mode_set(mode="OBJECT")
