"""A synthetic SMPL-X body with a surface that can be rendered: tubes around the bones.

The stand-in of `synth_body` skins each vertex sensibly (its dominant joint is the joint it
surrounds) but joins random vertices into faces, so a render of it is noise. Part masks need
limbs, so this model keeps that body's skeleton (its rest joints, kinematic tree, 55 joints,
10 475 vertices) and replaces the surface: every bone is a tube skinned to the joint that
drives it, as SMPL-X skins its limbs (the upper-arm tube to the shoulder joint, the thigh to
the hip), with a blend towards the child joint near the far end. About 20 000 triangles of
1-3 px at the 224 px segmentation scale, like the real mesh.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from dpose_core.body_model import BodyModel
from dpose_core.skeleton import JOINT_NAMES, NUM_FACES, NUM_JOINTS, NUM_VERTICES, PARENTS

_J = {name: i for i, name in enumerate(JOINT_NAMES)}
_AROUND = 24  # vertices per ring
_RING_SPACING = 0.013  # metres along the bone

# (driving joint, end: joint name or offset from the driving joint in metres, radius m).
# Offsets are in the model frame of synth_body (y up, the body faces +z).
_BONES: tuple[tuple[str, str | tuple[float, float, float], float], ...] = (
    ("pelvis", "spine1", 0.13), ("pelvis", "left_hip", 0.10), ("pelvis", "right_hip", 0.10),
    ("left_hip", "left_knee", 0.075), ("right_hip", "right_knee", 0.075),
    ("left_knee", "left_ankle", 0.05), ("right_knee", "right_ankle", 0.05),
    ("left_ankle", "left_foot", 0.04), ("right_ankle", "right_foot", 0.04),
    ("left_foot", (0.0, 0.0, 0.07), 0.035), ("right_foot", (0.0, 0.0, 0.07), 0.035),
    ("spine1", "spine2", 0.13), ("spine2", "spine3", 0.13), ("spine3", "neck", 0.12),
    ("spine3", "left_collar", 0.06), ("spine3", "right_collar", 0.06),
    ("left_collar", "left_shoulder", 0.055), ("right_collar", "right_shoulder", 0.055),
    ("neck", "head", 0.05), ("head", (0.0, 0.20, 0.0), 0.09),
    ("left_shoulder", "left_elbow", 0.045), ("right_shoulder", "right_elbow", 0.045),
    ("left_elbow", "left_wrist", 0.037), ("right_elbow", "right_wrist", 0.037),
    ("left_wrist", (0.17, 0.0, 0.0), 0.035), ("right_wrist", (-0.17, 0.0, 0.0), 0.035),
)  # fmt: skip


def _tube(start: np.ndarray, end: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray,
                                                                           np.ndarray]:
    """Ring vertices (R*K,3), faces (2K(R-1),3) local indices, and each ring's position 0..1."""
    axis = end - start
    length = float(np.linalg.norm(axis))
    axis = axis / length
    helper = np.array([0.0, 0.0, 1.0]) if abs(axis[2]) < 0.9 else np.array([1.0, 0.0, 0.0])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    rings = max(2, int(np.ceil(length / _RING_SPACING)) + 1)
    along = np.linspace(0.0, 1.0, rings)
    angle = np.linspace(0.0, 2 * np.pi, _AROUND, endpoint=False)
    circle = radius * (np.cos(angle)[:, None] * u + np.sin(angle)[:, None] * v)  # (K,3)
    verts = (start + along[:, None, None] * (end - start) + circle[None]).reshape(-1, 3)
    r = np.arange(rings - 1)[:, None]
    k = np.arange(_AROUND)[None, :]
    a, b = r * _AROUND + k, r * _AROUND + (k + 1) % _AROUND
    c, d = a + _AROUND, b + _AROUND
    faces = np.concatenate([np.stack([a, c, b], -1), np.stack([b, c, d], -1)]).reshape(-1, 3)
    return verts, faces, np.repeat(along, _AROUND)


def tube_body_model(rest_joints: np.ndarray) -> BodyModel:
    """A BodyModel of bone tubes around `rest_joints` (55,3), e.g. synth_body's skeleton.

    The first 55 vertices sit on the joints (the joint regressor reads them; no face uses
    them); the rest are tubes, then unused padding up to SMPL-X's vertex count. The 18 720
    tube triangles are followed by empty ones (all corners at vertex 0) up to SMPL-X's 20 908.
    Shape and pose blend shapes are zero: betas change nothing; only skinning moves the surface.
    """
    rest_joints = np.asarray(rest_joints, dtype=np.float64)
    parents = np.array(PARENTS)
    children = {j: [c for c in range(NUM_JOINTS) if parents[c] == j] for j in range(NUM_JOINTS)}
    verts = [rest_joints]
    faces, weights = [], [np.eye(NUM_JOINTS)]
    count = NUM_JOINTS
    for owner_name, end, radius in _BONES:
        owner = _J[owner_name]
        start = rest_joints[owner]
        if isinstance(end, str):
            child = _J[end]
            stop = rest_joints[child]
        else:
            child = children[owner][0] if children[owner] else owner
            stop = start + np.array(end)
        tube_v, tube_f, along = _tube(start, stop, radius)
        w = np.zeros((len(tube_v), NUM_JOINTS))
        # Full weight on the driving joint, blending to 55/45 with the child near the end.
        owner_w = np.where(along < 0.75, 1.0, 1.0 - 0.45 * (along - 0.75) / 0.25)
        w[:, owner] = owner_w
        w[:, child] += 1.0 - owner_w
        verts.append(tube_v)
        faces.append(tube_f + count)
        weights.append(w)
        count += len(tube_v)
    if count > NUM_VERTICES:
        raise AssertionError(f"tube body has {count} vertices, more than SMPL-X's {NUM_VERTICES}")
    pad = NUM_VERTICES - count  # unused vertices at the pelvis, skinned to it
    verts.append(np.repeat(rest_joints[:1], pad, axis=0))
    pad_w = np.zeros((pad, NUM_JOINTS))
    pad_w[:, 0] = 1.0
    weights.append(pad_w)
    v_template = np.concatenate(verts)
    j_regressor = np.zeros((NUM_JOINTS, NUM_VERTICES))
    j_regressor[np.arange(NUM_JOINTS), np.arange(NUM_JOINTS)] = 1.0
    all_faces = np.concatenate(faces)
    # SMPL-X's face count (the checkpoint layout fixes it): the rest are empty, at vertex 0.
    all_faces = np.concatenate([all_faces, np.zeros((NUM_FACES - len(all_faces), 3), np.int64)])
    return BodyModel(
        v_template=v_template,
        shapedirs=np.zeros((NUM_VERTICES, 3, 11)),
        posedirs=np.zeros(((NUM_JOINTS - 1) * 9, NUM_VERTICES * 3)),
        J_regressor=j_regressor,
        parents=parents,
        lbs_weights=np.concatenate(weights),
        faces=all_faces,
        lmk_faces_idx=np.arange(51),
        lmk_bary_coords=np.full((51, 3), 1.0 / 3.0),
    )


def tube_body_from_npz(body_model_npz) -> BodyModel:
    """The tube body around the skeleton of a synth_body SMPLX_NEUTRAL.npz."""
    source = BodyModel.load(body_model_npz)
    return tube_body_model(source.rest_joints(np.zeros(11)))


def write_tube_smplx_npz(path, body_model_npz, blend_shapes: bool = False) -> Path:
    """The tube body as an SMPLX_NEUTRAL.npz (same keys as synth_body writes), e.g. to build a
    random checkpoint whose body renders sensibly: `write_random_checkpoint(ckpt, path)`.

    Scoring part agreement on synth_body itself is slow (its random faces span the whole body,
    ~50 M pixel fragments per crop); on this body it costs what it does on real SMPL-X.
    blend_shapes: betas move the joints exactly as they move the source's (the joint
    vertices get the source's regressed joint shape directions, each tube vertex those of its
    joints by its skinning weights) and the source's random pose blend shapes are kept, so
    betas and pose correctives still change the mesh (what tests comparing with the `smplx`
    package need); by default both are zero and only skinning moves the tubes.
    """
    data = dict(np.load(body_model_npz, allow_pickle=False))
    body = tube_body_from_npz(body_model_npz)
    if blend_shapes:
        shapedirs = data["shapedirs"]
        joint_dirs = np.einsum("jv,vkl->jkl", data["J_regressor"], shapedirs)  # (55,3,B)
        data["shapedirs"] = np.einsum("vj,jkl->vkl", body.lbs_weights, joint_dirs)
    else:
        data.update(shapedirs=np.zeros_like(data["shapedirs"]),
                    posedirs=np.zeros_like(data["posedirs"]))
    data.update(
        v_template=body.v_template,
        J_regressor=body.J_regressor,
        weights=body.lbs_weights,
        f=body.faces.astype(np.uint32),
        lmk_faces_idx=body.lmk_faces_idx,
        lmk_bary_coords=body.lmk_bary_coords,
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **data)
    return path
