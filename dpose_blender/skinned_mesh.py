"""The shaped SMPL-X mesh skinned to the rig, optionally with pose-corrective shape keys.

The mesh is parented to the armature with an identity parent inverse, so its local space is
the armature space (rig.py): vertices are U @ v_shaped(beta). One vertex group per joint
holds the SMPL-X blend weights and an Armature modifier deforms with them; because the rig
reproduces SMPL-X's skinning transforms, the deformed mesh is the smplx mesh without pose
correctives (to float32 precision).

Pose correctives (off by default). SMPL-X adds sum_j sum_ab (R_j - I)_ab * posedirs[j,ab]
to the rest vertices before skinning: 54 joints x 9 entries = 486 linear blend shapes. In
bone terms R_j - I = D_j (P_j - I) D_j^T, so each key is a fixed mix of posedirs and its
value is one entry of (P_j - I), P_j being the pose bone's own rotation. Each of the 486
shape keys is driven by a *simple expression* (evaluated natively, no Python, works with
auto-run scripts off) of the bone's quaternion, normalised so interpolated keys stay exact:
e.g. P_00 - 1 = -2(y^2 + z^2) / (w^2 + x^2 + y^2 + z^2).
Cost, measured on the 10 475-vertex mesh (2-core CPU, bpy 4.5 and 5.0; test_skinned_mesh.py
prints it with ``-s``): 486 keys x V x 3 floats = 61 MB more in memory and in the .blend,
0.5-1 s to build, and each frame evaluation goes from ~1 ms (plain skinning) to ~20-60 ms
(486 drivers plus blending 486 keys over every vertex). Use it for final renders or
close-ups; leave it off while animating.
"""

from __future__ import annotations

import bpy
import numpy as np

from ..dpose_core.body_model import BodyModel
from ..dpose_core.errors import BodyModelError
from ..dpose_core.rig_frames import RigFrame
from ..dpose_core.skeleton import JOINT_NAMES, NUM_JOINTS
from .keyframes import rotation_path
from .rig import rig_frame

CORRECTIVE_PREFIX = "pose_"
# Slider range of the corrective keys: entries of P - I lie in [-2, 2].
_SLIDER = 2.0
_AXES = "xyz"


def build_skinned_mesh(
    armature: bpy.types.Object,
    body_model: BodyModel,
    *,
    pose_correctives: bool = False,
    name: str | None = None,
    collection: bpy.types.Collection | None = None,
) -> bpy.types.Object:
    """A mesh object of the rig's shaped body, deformed by `armature` (built by rig.py).

    body_model must be the model the rig was built from (its rest joints are checked).
    """
    rig = rig_frame(armature)
    rest = body_model.rest_joints(rig.betas)
    if np.abs(rest - rig.rest_joints).max() > 1e-6:
        raise BodyModelError(
            f"This body model does not match the one armature {armature.name!r} was built "
            "with; choose the same SMPL-X model file (or rebuild the rig)."
        )
    vertices = body_model.shaped_vertices(rig.betas) @ rig.upright.T
    mesh = _make_mesh(name or f"{armature.name} body", vertices, body_model.faces)
    body = bpy.data.objects.new(mesh.name, mesh)
    (collection or armature.users_collection[0]).objects.link(body)
    body.parent = armature
    body.matrix_parent_inverse.identity()
    body.matrix_basis.identity()

    _add_vertex_groups(body, body_model.lbs_weights)
    modifier = body.modifiers.new("Armature", "ARMATURE")
    modifier.object = armature
    modifier.use_vertex_groups = True
    modifier.use_bone_envelopes = False
    if pose_correctives:
        add_pose_correctives(body, armature, body_model, rig, vertices)
    return body


def _make_mesh(name: str, vertices: np.ndarray, faces: np.ndarray) -> bpy.types.Mesh:
    """Triangle mesh from arrays, in bulk (foreach_set), smooth shaded."""
    mesh = bpy.data.meshes.new(name)
    faces = np.asarray(faces, dtype=np.int32)
    mesh.vertices.add(len(vertices))
    mesh.vertices.foreach_set("co", vertices.astype(np.float32).ravel())
    mesh.loops.add(faces.size)
    mesh.loops.foreach_set("vertex_index", faces.ravel())
    mesh.polygons.add(len(faces))
    mesh.polygons.foreach_set("loop_start", np.arange(0, faces.size, 3, dtype=np.int32))
    mesh.update(calc_edges=True)
    mesh.validate(clean_customdata=False)  # drops degenerate faces; vertices stay as they are
    mesh.shade_smooth()
    return mesh


def _add_vertex_groups(body: bpy.types.Object, weights: np.ndarray) -> None:
    """One group per joint; vertices sharing a weight are added in one call."""
    for j, name in enumerate(JOINT_NAMES):
        group = body.vertex_groups.new(name=name)
        column = weights[:, j]
        nonzero = np.flatnonzero(column > 0)
        values, inverse = np.unique(column[nonzero], return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        bounds = np.searchsorted(inverse[order], np.arange(len(values) + 1))
        for k, value in enumerate(values):
            members = nonzero[order[bounds[k]:bounds[k + 1]]]
            group.add(members.tolist(), float(value), "REPLACE")


def corrective_offsets(body_model: BodyModel, rig: RigFrame) -> np.ndarray:
    """Pose-corrective offsets per bone-rotation entry, armature space: (54, 3, 3, V, 3).

    offsets[j-1, c, d] is the vertex offset per unit of (P_j - I)[c, d]:
    sum_ab D_ac D_bd posedirs[j, a, b], rotated into armature space by U.
    """
    num_v = body_model.num_vertices
    d = rig.bone_in_model[1:]  # (54,3,3)
    kron = np.einsum("jac,jbd->jcdab", d, d).reshape(NUM_JOINTS - 1, 9, 9)
    posedirs = body_model.posedirs.reshape(NUM_JOINTS - 1, 9, num_v * 3)
    bone_dirs = np.matmul(kron, posedirs).reshape(NUM_JOINTS - 1, 3, 3, num_v, 3)
    return bone_dirs @ rig.upright.T


def _entry_expression(c: int, d: int) -> str:
    """(P - I)[c, d] of the (not necessarily unit) quaternion w, x, y, z as a simple expression."""
    norm = "(w*w+x*x+y*y+z*z)"
    if c == d:
        others = [a for a in _AXES if a != _AXES[c]]
        return f"-2*({others[0]}*{others[0]}+{others[1]}*{others[1]})/{norm}"
    # Off-diagonal: 2 (a_c a_d -/+ w a_k) with k the third axis; sign from the cyclic order.
    k = 3 - c - d
    sign = "-" if (d - c) % 3 == 1 else "+"
    return f"2*({_AXES[c]}*{_AXES[d]}{sign}w*{_AXES[k]})/{norm}"


def add_pose_correctives(
    body: bpy.types.Object,
    armature: bpy.types.Object,
    body_model: BodyModel,
    rig: RigFrame | None = None,
    rest_vertices: np.ndarray | None = None,
) -> int:
    """Add the 486 driven corrective shape keys to a mesh from build_skinned_mesh.

    Returns the number of keys added. See the module docstring for what it costs.
    """
    rig = rig or rig_frame(armature)
    if rest_vertices is None:
        rest_vertices = body_model.shaped_vertices(rig.betas) @ rig.upright.T
    offsets = corrective_offsets(body_model, rig)
    if body.data.shape_keys is None:
        body.shape_key_add(name="Basis", from_mix=False)
    count = 0
    for j in range(1, NUM_JOINTS):
        bone = JOINT_NAMES[j]
        for c in range(3):
            for d in range(3):
                key = body.shape_key_add(name=f"{CORRECTIVE_PREFIX}{bone}_{c}{d}", from_mix=False)
                key.slider_min, key.slider_max = -_SLIDER, _SLIDER
                coords = rest_vertices + offsets[j - 1, c, d]
                key.data.foreach_set("co", coords.astype(np.float32).ravel())
                _drive_by_rotation_entry(key, armature, bone, c, d)
                count += 1
    return count


def _drive_by_rotation_entry(
    key: bpy.types.ShapeKey, armature: bpy.types.Object, bone: str, c: int, d: int
) -> None:
    driver = key.driver_add("value").driver
    driver.type = "SCRIPTED"
    for index, var_name in enumerate("wxyz"):
        var = driver.variables.new()
        var.name = var_name
        var.type = "SINGLE_PROP"
        target = var.targets[0]
        target.id_type = "OBJECT"
        target.id = armature
        target.data_path = f"{rotation_path(bone)}[{index}]"
    driver.expression = _entry_expression(c, d)
