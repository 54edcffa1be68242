"""The skinned SMPL-X mesh, evaluated through Blender's depsgraph, against smplx."""

import time

import numpy as np
import pytest

from dpose_core.body_model import BodyModel
from dpose_core.coords import OPENCV_TO_BLENDER
from dpose_core.errors import BodyModelError
from dpose_core.motion import Motion
from dpose_core.rotations import axis_angle_to_matrix
from dpose_core.skeleton import JOINT_NAMES
from tests.blender_support import import_blender_module, smplx_reference
from tests.synth_body import write_synthetic_smplx_npz

bpy = pytest.importorskip("bpy")  # collected (and skipped) without Blender
pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")  # collected, and skipped, where bpy is missing

rig = import_blender_module("rig")
keyframes = import_blender_module("keyframes")
skinned_mesh = import_blender_module("skinned_mesh")


@pytest.fixture(scope="module")
def model(body_model_npz) -> BodyModel:
    return BodyModel.load(body_model_npz)


@pytest.fixture(scope="module")
def motion() -> Motion:
    rng = np.random.default_rng(21)
    n = 3
    return Motion(
        rotmats=axis_angle_to_matrix(rng.normal(0, 0.6, (n, 55, 3))),
        transl=rng.normal(0, 1.0, (n, 3)) + [0.0, 0.0, 4.0],
        betas=rng.normal(0, 1.5, 11),
        fps=30.0,
    )


def _evaluated_world_vertices(body, frame: int) -> np.ndarray:
    """The deformed mesh as Blender evaluates it (modifiers, shape keys, drivers), world space."""
    bpy.context.scene.frame_set(frame)
    evaluated = body.evaluated_get(bpy.context.evaluated_depsgraph_get())
    mesh = evaluated.to_mesh()
    try:
        co = np.empty(3 * len(mesh.vertices), dtype=np.float32)
        mesh.vertices.foreach_get("co", co)
    finally:
        evaluated.to_mesh_clear()
    world = np.array(evaluated.matrix_world)
    return co.reshape(-1, 3).astype(np.float64) @ world[:3, :3].T + world[:3, 3]


def _rig_with_body(model, motion, pose_correctives: bool):
    armature = rig.build_armature(model, motion.betas)
    body = skinned_mesh.build_skinned_mesh(armature, model, pose_correctives=pose_correctives)
    keyframes.write_motion_keys(armature, motion)
    return armature, body


def test_skinned_mesh_equals_smplx_without_pose_correctives(model, body_model_npz, motion):
    _, body = _rig_with_body(model, motion, pose_correctives=False)
    assert body.data.shape_keys is None
    plain, _ = smplx_reference(body_model_npz, motion.rotmats, motion.betas, motion.transl,
                               pose_correctives=False)
    corrected, _ = smplx_reference(body_model_npz, motion.rotmats, motion.betas, motion.transl)
    for i in range(len(motion)):
        vertices = _evaluated_world_vertices(body, frame=1 + i)
        np.testing.assert_allclose(vertices, plain[i] @ OPENCV_TO_BLENDER.T, rtol=0, atol=1e-4)
        # The correctives are big enough on the synthetic model for the check to mean something.
        assert np.abs(vertices - corrected[i] @ OPENCV_TO_BLENDER.T).max() > 1e-3


def test_pose_corrective_shape_keys_equal_smplx_with_pose_blend_shapes(
    model, body_model_npz, motion
):
    start = time.perf_counter()
    armature, body = _rig_with_body(model, motion, pose_correctives=True)
    build_s = time.perf_counter() - start
    keys = body.data.shape_keys.key_blocks
    assert len(keys) == 1 + 54 * 9
    drivers = body.data.shape_keys.animation_data.drivers
    assert len(drivers) == 486 and all(d.driver.is_simple_expression for d in drivers)
    reference, _ = smplx_reference(body_model_npz, motion.rotmats, motion.betas, motion.transl)
    for i in range(len(motion)):
        vertices = _evaluated_world_vertices(body, frame=1 + i)
        np.testing.assert_allclose(vertices, reference[i] @ OPENCV_TO_BLENDER.T, rtol=0,
                                   atol=1e-4)
    # What the correctives cost (documented in skinned_mesh.py); printed, never asserted.
    start = time.perf_counter()
    for frame in (1, 2, 3, 1, 2, 3):
        bpy.context.scene.frame_set(frame)
    with_keys = (time.perf_counter() - start) / 6
    print(f"\npose correctives: build {build_s:.2f} s, frame evaluation {with_keys * 1e3:.1f} ms")


def test_vertex_groups_hold_the_smplx_blend_weights(model, motion):
    armature = rig.build_armature(model, motion.betas)
    body = skinned_mesh.build_skinned_mesh(armature, model)
    assert [g.name for g in body.vertex_groups] == list(JOINT_NAMES)
    modifier = body.modifiers["Armature"]
    assert modifier.object == armature and body.parent == armature
    for v in np.random.default_rng(0).choice(model.num_vertices, 25, replace=False):
        weights = np.zeros(55)
        for element in body.data.vertices[int(v)].groups:
            weights[element.group] = element.weight
        np.testing.assert_allclose(weights, model.lbs_weights[v], atol=1e-7)


def test_a_different_body_model_is_refused(model, motion, tmp_path):
    armature = rig.build_armature(model, motion.betas)
    other = BodyModel.load(write_synthetic_smplx_npz(tmp_path / "SMPLX_NEUTRAL.npz", seed=5))
    with pytest.raises(BodyModelError, match="does not match"):
        skinned_mesh.build_skinned_mesh(armature, other)
