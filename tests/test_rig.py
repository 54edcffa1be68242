"""The SMPL-X armature: names, rest pose, frames, and exact joint positions against smplx."""

import numpy as np
import pytest

from dpose_core.body_model import BodyModel
from dpose_core.coords import OPENCV_TO_BLENDER, SMPLX_TO_BLENDER
from dpose_core.errors import DPoseError
from dpose_core.motion import FRAME_WORLD_Z_UP, Motion
from dpose_core.rotations import axis_angle_to_matrix
from dpose_core.skeleton import JOINT_NAMES, PARENTS
from tests.blender_support import import_blender_module, smplx_reference

bpy = pytest.importorskip("bpy")  # collected (and skipped) without Blender
pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")  # collected, and skipped, where bpy is missing

rig = import_blender_module("rig")
keyframes = import_blender_module("keyframes")


@pytest.fixture(scope="module")
def model(body_model_npz) -> BodyModel:
    return BodyModel.load(body_model_npz)


def _random_motion(seed: int, n: int = 4, frame: str = "opencv_camera") -> Motion:
    rng = np.random.default_rng(seed)
    return Motion(
        rotmats=axis_angle_to_matrix(rng.normal(0, 0.7, (n, 55, 3))),
        transl=rng.normal(0, 1.0, (n, 3)) + [0.0, 0.0, 4.0],
        betas=rng.normal(0, 1.5, 11),
        fps=30.0,
        coordinate_frame=frame,
    )


def _posed_heads(armature, frame: int) -> np.ndarray:
    """World positions of the 55 bone heads after Blender evaluates `frame`."""
    bpy.context.scene.frame_set(frame)
    evaluated = armature.evaluated_get(bpy.context.evaluated_depsgraph_get())
    world = np.array(evaluated.matrix_world)
    heads = np.array([evaluated.pose.bones[n].head for n in JOINT_NAMES])
    return heads @ world[:3, :3].T + world[:3, 3]


def test_rig_has_one_bone_per_smplx_joint_with_smplx_names_and_tree(model):
    armature = rig.build_armature(model, np.zeros(11))
    bones = armature.data.bones
    assert [b.name for b in bones if b.name in JOINT_NAMES] and len(bones) == 55
    for j, name in enumerate(JOINT_NAMES):
        parent = bones[name].parent
        assert (parent.name if parent else None) == (JOINT_NAMES[PARENTS[j]] if j else None)
        assert armature.pose.bones[name].rotation_mode == "QUATERNION"
    assert all(b.length > 1e-3 for b in bones)  # no bone was dropped for zero length


def test_rest_heads_are_shaped_joints_in_metres_upright(model):
    betas = np.random.default_rng(3).normal(0, 1.5, 11)
    armature = rig.build_armature(model, betas)
    world = np.array(armature.matrix_world)
    heads = np.array([armature.data.bones[n].head_local for n in JOINT_NAMES])
    heads = heads @ world[:3, :3].T + world[:3, 3]
    expected = model.rest_joints(betas) @ SMPLX_TO_BLENDER.T
    np.testing.assert_allclose(heads, expected, atol=1e-6)
    z = {n: heads[JOINT_NAMES.index(n), 2] for n in ("head", "pelvis", "left_ankle")}
    assert z["head"] > z["pelvis"] > z["left_ankle"]  # stands on +Z in the rest pose
    assert heads[JOINT_NAMES.index("left_hip"), 0] > heads[JOINT_NAMES.index("right_hip"), 0]


@pytest.mark.parametrize("frame", ["opencv_camera", FRAME_WORLD_Z_UP])
def test_bone_heads_equal_smplx_joints(model, body_model_npz, frame):
    motion = _random_motion(seed=7, frame=frame)
    armature = rig.build_armature(model, motion.betas, world_frame=frame)
    keyframes.write_motion_keys(armature, motion)
    _, joints = smplx_reference(body_model_npz, motion.rotmats, motion.betas, motion.transl)
    to_blender = OPENCV_TO_BLENDER if frame == "opencv_camera" else np.eye(3)
    for i in range(len(motion)):
        heads = _posed_heads(armature, frame=1 + i)
        np.testing.assert_allclose(heads, joints[i] @ to_blender.T, rtol=0, atol=1e-5)


def test_person_facing_a_level_camera_stands_upright_and_keys_identity_root(model):
    # SMPL-X's y-up body seen upright by an OpenCV camera (y down): 180 degrees about x.
    rotmats = np.broadcast_to(np.eye(3), (1, 55, 3, 3)).copy()
    rotmats[0, 0] = np.diag([1.0, -1.0, -1.0])
    motion = Motion(rotmats=rotmats, transl=[[0.0, 0.0, 3.0]], betas=np.zeros(11), fps=30)
    armature = rig.build_armature(model, motion.betas)
    keyframes.write_motion_keys(armature, motion)
    heads = _posed_heads(armature, frame=1)
    pelvis, head = heads[JOINT_NAMES.index("pelvis")], heads[JOINT_NAMES.index("head")]
    assert head[2] - pelvis[2] > 0.3  # upright in Blender's Z-up world
    assert pelvis[1] > 2.5  # in front of the camera (Blender camera looks along +Y)
    quat = np.array(armature.pose.bones["pelvis"].rotation_quaternion)
    np.testing.assert_allclose(np.abs(quat), [1, 0, 0, 0], atol=1e-6)


def test_blender_bone_frames_are_the_core_rig_frames(model):
    """The bones Blender made carry the frames dpose_core.rig_frames computes (float32)."""
    from dpose_core.rig_frames import RigFrame

    motion = _random_motion(seed=11, n=5)
    armature = rig.build_armature(model, motion.betas)
    read = rig.rig_frame(armature)
    computed = RigFrame.for_body(model, motion.betas, read.world_frame)
    np.testing.assert_allclose(read.bone_rest, computed.bone_rest, atol=2e-5)
    np.testing.assert_allclose(read.rest_joints, computed.rest_joints, atol=1e-12)
    quats, location = read.pose_from_smplx(motion.rotmats, motion.transl)
    rotmats, transl = read.smplx_from_pose(quats, location)
    np.testing.assert_allclose(rotmats, motion.rotmats, atol=1e-12)
    np.testing.assert_allclose(transl, motion.transl, atol=1e-12)


def test_non_rig_objects_are_refused_with_a_typed_error():
    armature = bpy.data.objects.new("plain", bpy.data.armatures.new("plain"))
    with pytest.raises(DPoseError, match="not a D-PoSE SMPL-X armature"):
        rig.rig_frame(armature)


def test_motion_in_another_frame_is_converted_onto_the_rig(model, body_model_npz):
    """A Z-up (AMASS-style) motion keyed onto a camera-frame rig lands where it belongs."""
    motion = _random_motion(seed=13, n=2, frame=FRAME_WORLD_Z_UP)
    armature = rig.build_armature(model, motion.betas)  # camera-frame rig
    keyframes.write_motion_keys(armature, motion)
    _, joints = smplx_reference(body_model_npz, motion.rotmats, motion.betas, motion.transl)
    for i in range(len(motion)):
        np.testing.assert_allclose(_posed_heads(armature, frame=1 + i), joints[i], atol=1e-5)
