"""The armature maths without Blender: pose keys composed as Blender composes them give the
SMPL-X joints, and the conversion round-trips in float64."""

import numpy as np
import pytest

from dpose_core.body_model import BodyModel
from dpose_core.errors import DPoseError
from dpose_core.motion import FRAME_OPENCV_CAMERA, FRAME_WORLD_Z_UP, Motion
from dpose_core.rig_frames import RigFrame, bone_layout, bone_rest_rotations, padded_betas
from dpose_core.rotations import axis_angle_to_matrix, quaternion_to_matrix
from dpose_core.skeleton import NUM_JOINTS


@pytest.fixture(scope="module")
def model(body_model_npz) -> BodyModel:
    return BodyModel.load(body_model_npz)


def _motion(seed: int, n: int = 3, frame: str = FRAME_OPENCV_CAMERA) -> Motion:
    rng = np.random.default_rng(seed)
    return Motion(rotmats=axis_angle_to_matrix(rng.normal(0, 0.7, (n, 55, 3))),
                  transl=rng.normal(0, 1.0, (n, 3)) + [0.0, 0.0, 4.0],
                  betas=rng.normal(0, 1.5, 11), fps=30.0, coordinate_frame=frame)


def _blender_pose_heads(rig: RigFrame, parents, quats, location) -> np.ndarray:
    """Bone heads (N,55,3) in armature space, composed as Blender's pose evaluation does:
    M_j = M_parent B_parent^-1 B_j [P_j | loc_j], with rest matrices B_j = [C_j | head_j]."""
    heads = rig.rest_joints @ rig.upright.T
    rest = np.tile(np.eye(4), (NUM_JOINTS, 1, 1))
    rest[:, :3, :3], rest[:, :3, 3] = rig.bone_rest, heads
    n = len(quats)
    basis = np.tile(np.eye(4), (n, NUM_JOINTS, 1, 1))
    basis[..., :3, :3] = quaternion_to_matrix(quats)
    basis[:, 0, :3, 3] = location
    posed = np.empty_like(basis)
    for j in range(NUM_JOINTS):
        p = parents[j]
        parent = np.eye(4) if p < 0 else posed[:, p] @ np.linalg.inv(rest[p])
        posed[:, j] = parent @ rest[j] @ basis[:, j]
    return posed[..., :3, 3]


@pytest.mark.parametrize("frame", [FRAME_OPENCV_CAMERA, FRAME_WORLD_Z_UP])
def test_pose_keys_reproduce_smplx_joints(model, frame):
    motion = _motion(seed=5, frame=frame)
    rig = RigFrame.for_body(model, motion.betas, frame)
    quats, location = rig.pose_from_smplx(motion.rotmats, motion.transl)
    heads = _blender_pose_heads(rig, np.asarray(model.parents), quats, location)
    joints = motion.body_output(model).joint_world_transforms[..., :3, 3]
    np.testing.assert_allclose(heads, joints, atol=1e-9)


def test_pose_conversion_round_trips_in_float64(model):
    motion = _motion(seed=11, n=5)
    rig = RigFrame.for_body(model, motion.betas, FRAME_OPENCV_CAMERA)
    rotmats, transl = rig.smplx_from_pose(*rig.pose_from_smplx(motion.rotmats, motion.transl))
    np.testing.assert_allclose(rotmats, motion.rotmats, atol=1e-12)
    np.testing.assert_allclose(transl, motion.transl, atol=1e-12)


def test_bone_frames_point_along_bones_with_z_towards_the_roll_reference(model):
    rig = RigFrame.for_body(model, np.zeros(11), FRAME_OPENCV_CAMERA)
    layout = bone_layout(rig.rest_joints, np.asarray(model.parents), rig.upright)
    c = bone_rest_rotations(layout)
    np.testing.assert_allclose(c @ np.swapaxes(c, -1, -2), np.tile(np.eye(3), (55, 1, 1)),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(c), 1.0, atol=1e-12)
    along = (layout.tails - layout.heads) / np.linalg.norm(layout.tails - layout.heads, axis=1,
                                                           keepdims=True)
    np.testing.assert_allclose(c[:, :, 1], along, atol=1e-12)
    assert np.all(np.sum(c[:, :, 2] * layout.roll_refs, axis=1) > 0.1)


def test_motion_in_another_frame_keeps_the_body_in_place(model):
    """A Z-up motion seen by a camera-frame rig: the same joints, expressed in the camera frame."""
    from dpose_core.coords import frame_to_blender

    motion = _motion(seed=13, frame=FRAME_WORLD_Z_UP)
    rig = RigFrame.for_body(model, motion.betas, FRAME_OPENCV_CAMERA)
    rotmats, transl = rig.motion_in_rig_frame(motion)
    in_rig = model.forward(rotmats, motion.betas, transl).joint_world_transforms[..., :3, 3]
    original = motion.body_output(model).joint_world_transforms[..., :3, 3]
    blender = frame_to_blender(FRAME_OPENCV_CAMERA)
    np.testing.assert_allclose(in_rig @ blender.T, original, atol=1e-9)


def test_too_many_betas_is_a_typed_error():
    assert padded_betas(np.ones(3)).tolist() == [1.0, 1.0, 1.0] + [0.0] * 8
    with pytest.raises(DPoseError, match="at most 11 betas"):
        padded_betas(np.zeros(16))
