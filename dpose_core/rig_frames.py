"""The maths of the exact SMPL-X armature, without Blender: rest layout, bone frames, pose keys.

Frames (all rotations act on column vectors):
- model frame: SMPL-X's own (y up, facing +z); rest joints J(beta) live here.
- motion world W: the frame the motion's global orientation and transl are in, named by
  Motion.coordinate_frame: the OpenCV camera frame for D-PoSE ("opencv_camera"), a Z-up
  world for AMASS files ("world_z_up").
- armature space = W. The armature object's matrix is blender_from_world from
  coords.frame_to_blender (OPENCV_TO_BLENDER for the camera frame), so cam_t keys are metres
  in the camera frame and a Blender camera at the origin looking along +Y sees what the
  footage camera saw.
- The rest skeleton is built upright in armature space: heads = U @ J(beta) with the fixed
  rotation U of frame_rotations(), so Blender's rest pose stands on +Z facing -Y like the
  SMPL-X add-on's. A person facing the camera upright has root rotation ~= U: identity keys.
- Bone j has rest rotation C_j (armature space, Y along the bone, Z towards its roll
  reference). With D_j = U^T C_j (bone frame in model coordinates), SMPL-X's local rotation
  R_j is keyed as pose basis P_j = D_j^T R_j D_j for j > 0 and P_0 = D_0^T (U^T R_0) D_0 for
  the root, whose location is C_0^T (J_0 + transl - U J_0). Blender then composes exactly
  SMPL-X's world transforms G_j, and the armature deform M_j B_j^-1 is SMPL-X's skinning
  transform G_j [I | -J_j]: bone heads are the SMPL-X joints and the skinned mesh is the
  SMPL-X mesh.

``dpose_blender.rig`` builds the armature from ``bone_layout`` and reads C_j back from the bones
Blender made (float32); ``RigFrame.for_body`` computes the same frames here in float64.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .coords import SMPLX_TO_BLENDER, frame_to_blender
from .errors import DPoseError
from .motion import Motion
from .rotations import matrix_to_quaternion, orthonormalize, quaternion_to_matrix
from .skeleton import JOINT_NAMES, NUM_BETAS, NUM_JOINTS

# Where a joint with several children points its bone (the rest point at their children).
_MAIN_CHILD = {"pelvis": "spine1", "spine3": "neck", "left_wrist": "left_middle1",
               "right_wrist": "right_middle1", "head": None}  # fmt: skip
_MODEL_UP = np.array([0.0, 1.0, 0.0])
_MODEL_FORWARD = np.array([0.0, 0.0, 1.0])


def frame_rotations(coordinate_frame: str) -> tuple[np.ndarray, np.ndarray]:
    """(blender_from_world, U = world_from_model at rest) for a Motion.coordinate_frame.

    U is chosen so that blender_from_world @ U = SMPLX_TO_BLENDER: whatever the motion's
    frame, the rest skeleton stands on +Z facing -Y in Blender.
    """
    try:
        blender_from_world = frame_to_blender(coordinate_frame)
    except ValueError as exc:
        raise DPoseError(f"Cannot place this motion in Blender: {exc}") from None
    return blender_from_world, blender_from_world.T @ SMPLX_TO_BLENDER


@dataclass(frozen=True)
class BoneLayout:
    """Rest bones in armature space (metres): heads/tails (55,3), use_connect (55,) and the
    roll reference (55,3) each bone's Z axis is turned towards."""

    heads: np.ndarray
    tails: np.ndarray
    connect: np.ndarray
    roll_refs: np.ndarray


def bone_layout(rest_joints: np.ndarray, parents: np.ndarray, upright: np.ndarray) -> BoneLayout:
    """Heads at the shaped joints; bones point at their (main) child.

    Leaves continue their parent's direction with a short length; eyes look forward. Roll puts
    each bone's Z axis forward (up for bones that point forward).
    """
    rest_joints = np.asarray(rest_joints, dtype=np.float64)
    children: dict[int, list[int]] = {j: [] for j in range(NUM_JOINTS)}
    for j in range(1, NUM_JOINTS):
        children[int(parents[j])].append(j)
    heads = rest_joints
    tails = np.empty_like(heads)
    connect = np.zeros(NUM_JOINTS, dtype=bool)
    for j, name in enumerate(JOINT_NAMES):
        if name in _MAIN_CHILD:
            child_name = _MAIN_CHILD[name]
            child = JOINT_NAMES.index(child_name) if child_name else None
        else:
            child = children[j][0] if len(children[j]) == 1 else None
        if child is not None and np.linalg.norm(heads[child] - heads[j]) > 1e-3:
            tails[j] = heads[child]
            connect[child] = True
            continue
        offset = heads[j] - heads[parents[j]] if parents[j] >= 0 else _MODEL_UP
        length = float(np.linalg.norm(offset))
        direction = offset / length if length > 1e-6 else _MODEL_UP
        if "eye" in name:
            direction, length = _MODEL_FORWARD, 0.02
        elif name == "head":
            length = float(np.clip(1.5 * length, 0.05, 0.25))
        else:
            length = float(np.clip(0.6 * length, 0.01, 0.12))
        tails[j] = heads[j] + direction * length
    directions = tails - heads
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    forward_like = np.abs(directions @ _MODEL_FORWARD) > 0.8
    refs = np.where(forward_like[:, None], _MODEL_UP, _MODEL_FORWARD)
    return BoneLayout(heads @ upright.T, tails @ upright.T, connect, refs @ upright.T)


def bone_rest_rotations(layout: BoneLayout) -> np.ndarray:
    """C_j (55,3,3): Y along head->tail, Z the roll reference made perpendicular to it.

    This is the bone matrix Blender stores after ``EditBone.align_roll(roll_ref)``.
    """
    y = layout.tails - layout.heads
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    z = layout.roll_refs - np.sum(layout.roll_refs * y, axis=1, keepdims=True) * y
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    x = np.cross(y, z)
    return np.stack([x, y, z], axis=-1)


@dataclass(frozen=True)
class RigFrame:
    """Everything needed to convert SMPL-X rotations to pose keys of one armature and back.

    rest_joints (55,3) model frame J(beta), float64; upright U (3,3); bone_rest C (55,3,3)
    armature-space bone rest rotations; betas (11,); world_frame the Motion.coordinate_frame.
    """

    rest_joints: np.ndarray
    upright: np.ndarray
    bone_rest: np.ndarray
    betas: np.ndarray
    world_frame: str

    @classmethod
    def for_body(cls, body_model, betas: np.ndarray, world_frame: str) -> RigFrame:
        """The frame of the armature ``rig.build_armature`` makes for these betas (float64)."""
        betas = padded_betas(betas)
        rest = body_model.rest_joints(betas)
        upright = frame_rotations(world_frame)[1]
        layout = bone_layout(rest, np.asarray(body_model.parents), upright)
        return cls(rest, upright, bone_rest_rotations(layout), betas, world_frame)

    @classmethod
    def from_stored(cls, rest_joints, bone_rest, betas, world_frame: str) -> RigFrame:
        """From what an armature stores (its custom properties and bone matrices)."""
        return cls(
            rest_joints=np.asarray(rest_joints, dtype=np.float64).reshape(-1, 3),
            upright=frame_rotations(world_frame)[1],
            bone_rest=orthonormalize(np.asarray(bone_rest, dtype=np.float64)[:, :3, :3]),
            betas=np.asarray(betas, dtype=np.float64),
            world_frame=world_frame,
        )

    @property
    def bone_in_model(self) -> np.ndarray:
        """D_j = U^T C_j: each bone's rest axes in SMPL-X model coordinates, (55,3,3)."""
        return self.upright.T @ self.bone_rest

    def pose_from_smplx(
        self, rotmats: np.ndarray, transl: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """SMPL-X local rotations (N,55,3,3) + transl (N,3) -> pose bases.

        Returns pose-bone quaternions (N,55,4) (w first, w >= 0, not yet made continuous)
        and root bone locations (N,3).
        """
        rotmats = np.asarray(rotmats, dtype=np.float64)
        transl = np.asarray(transl, dtype=np.float64)
        d = self.bone_in_model
        local = rotmats.copy()
        local[:, 0] = self.upright.T @ rotmats[:, 0]
        basis = _conjugate(local, d)
        c0 = self.bone_rest[0]
        j0 = self.rest_joints[0]
        location = (transl + j0 - self.upright @ j0) @ c0  # rows: C_0^T (...)
        return matrix_to_quaternion(basis), location

    def smplx_from_pose(
        self, quaternions: np.ndarray, location: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Inverse of pose_from_smplx: (N,55,4) quaternions (any norm), (N,3) -> rotmats, transl."""
        d = self.bone_in_model
        basis = quaternion_to_matrix(np.asarray(quaternions, dtype=np.float64))
        rotmats = _conjugate(basis, np.swapaxes(d, -1, -2))
        rotmats[:, 0] = self.upright @ rotmats[:, 0]
        j0 = self.rest_joints[0]
        transl = np.asarray(location, dtype=np.float64) @ self.bone_rest[0].T - j0
        return rotmats, transl + self.upright @ j0

    def motion_in_rig_frame(self, motion: Motion) -> tuple[np.ndarray, np.ndarray]:
        """rotmats (N,55,3,3) and transl (N,3) of ``motion`` re-expressed in this rig's frame.

        The pelvis J_0 + transl moves rigidly with the change of frame; local rotations stay.
        """
        if motion.coordinate_frame == self.world_frame:
            return motion.rotmats, motion.transl
        change = frame_to_blender(self.world_frame).T @ frame_to_blender(motion.coordinate_frame)
        rotmats = motion.rotmats.copy()
        rotmats[:, 0] = change @ rotmats[:, 0]
        j0 = self.rest_joints[0]
        return rotmats, (motion.transl + j0) @ change.T - j0


def padded_betas(betas: np.ndarray) -> np.ndarray:
    """Betas as the rig keeps them: (11,) float64, zero-padded; more than 11 is an error."""
    betas = np.asarray(betas, dtype=np.float64).reshape(-1)
    if betas.size > NUM_BETAS:
        raise DPoseError(f"Expected at most {NUM_BETAS} betas, got {betas.size}.")
    return np.pad(betas, (0, NUM_BETAS - betas.size))


def _conjugate(rotmats: np.ndarray, d: np.ndarray) -> np.ndarray:
    """d_j^T @ rotmats[n, j] @ d_j for (N,55,3,3) and (55,3,3), as one batched 9x9 product.

    Row-major vec(A X B) = kron(A, B^T) vec(X); joint-major batching keeps it ~10x faster
    than chained 3x3 matmuls at 10 000 frames.
    """
    dt = np.swapaxes(d, -1, -2)
    kron = np.einsum("jab,jcd->jacbd", dt, dt).reshape(len(d), 9, 9)
    n = rotmats.shape[0]
    flat = np.ascontiguousarray(rotmats.reshape(n, -1, 9).transpose(1, 0, 2))
    out = np.matmul(flat, np.swapaxes(kron, -1, -2))
    return out.transpose(1, 0, 2).reshape(rotmats.shape)
