"""Exports re-imported by Blender's own importers at default settings match the source rig.

"The right way up" means: in the importer's world (Blender, Z up), on every frame, the head
bone is at least 0.3 m above the pelvis and every bone sits where the source rig has it; for
BVH also in the file itself, the rest head is above the rest pelvis along +Y (a Y-up file).
"""

import os

import numpy as np
import pytest

from dpose_core.body_model import BodyModel
from dpose_core.errors import DPoseError
from dpose_core.motion import Motion
from dpose_core.motion_io import load_motion_npz
from dpose_core.rotations import axis_angle_to_matrix
from dpose_core.skeleton import JOINT_NAMES
from tests.blender_support import import_blender_module

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")  # collected, and skipped, where bpy is missing

rig = import_blender_module("rig")
keyframes = import_blender_module("keyframes")
exports = import_blender_module("exports")

NUM_FRAMES = 12
BODY = JOINT_NAMES[:22]


@pytest.fixture(scope="module")
def model(body_model_npz) -> BodyModel:
    return BodyModel.load(body_model_npz)


def moving_motion(n: int = NUM_FRAMES, seed: int = 0) -> Motion:
    """Large joint rotations (up to ~70 deg), a full turn of heading and metres of travel.

    In the OpenCV camera frame; the body stays upright (tilts < 20 deg) so "head above pelvis"
    is a fair check of the exported file's up axis on every frame.
    """
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, n)[:, None]
    phases = rng.uniform(0, 2 * np.pi, (55, 3))
    amplitude = rng.uniform(0.4, 1.2, (55, 3)) / np.sqrt(3)
    aa = amplitude * np.sin(2 * np.pi * t[..., None] + phases)  # (n,55,3)
    rotmats = axis_angle_to_matrix(aa)
    upright = rig.frame_rotations("opencv_camera")[1]
    yaw = axis_angle_to_matrix(np.concatenate([0.2 * np.sin(5 * t), 2 * np.pi * t * 0.9,
                                               0.2 * np.cos(4 * t)], axis=1))
    rotmats[:, 0] = upright @ yaw
    transl = np.concatenate([2 * t - 1, 0.1 * np.sin(6 * t), 4 + 1.5 * t], axis=1)
    return Motion(rotmats=rotmats, transl=transl, betas=rng.normal(0, 1, 11), fps=30.0)


def source_rig(model, motion):
    armature = rig.build_armature(model, motion.betas)
    keyframes.write_motion_keys(armature, motion)
    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 1, len(motion)
    return armature


def world_heads(armature, frames, names) -> np.ndarray:
    """(F, B, 3) world positions of the named bones' heads, evaluated frame by frame."""
    scene = bpy.context.scene
    out = np.empty((len(frames), len(names), 3))
    for i, frame in enumerate(frames):
        scene.frame_set(frame)
        world = np.array(armature.matrix_world)
        heads = np.array([armature.pose.bones[n].head for n in names])
        out[i] = heads @ world[:3, :3].T + world[:3, 3]
    return out


def imported_armature(before: set):
    new = [o for o in bpy.data.objects if o.name not in before and o.type == "ARMATURE"]
    assert len(new) == 1
    return new[0]


def bone_names_by_joint(armature) -> dict:
    """Imported bone name for each SMPL-X joint (FBX may prefix names with 'xxx:')."""
    return {b.name.split(":")[-1]: b.name for b in armature.pose.bones}


def assert_round_trip(source, imported, tolerance, first_frame=1):
    names = bone_names_by_joint(imported)
    frames = list(range(1, NUM_FRAMES + 1))
    expected = world_heads(source, frames, BODY)
    got = world_heads(imported, [f - 1 + first_frame for f in frames], [names[n] for n in BODY])
    error = np.linalg.norm(got - expected, axis=-1)
    assert error.max() <= tolerance, f"max bone error {error.max():.2e} m"
    up = got[:, BODY.index("head"), 2] - got[:, BODY.index("pelvis"), 2]
    assert up.min() > 0.1  # the right way up in Blender's Z-up world


def fbx_import_frame_offset() -> int:
    """Blender's FBX importer shifts keys by its anim_offset option (1 frame by default):
    FBX time t lands on frame t * fps + anim_offset."""
    props = bpy.ops.import_scene.fbx.get_rna_type().properties
    return int(props["anim_offset"].default)


def test_fbx_round_trip_every_key(model, tmp_path):
    source = source_rig(model, moving_motion())
    path = exports.export_fbx(tmp_path / "take.fbx", [source], preset="blender")
    before = {o.name for o in bpy.data.objects}
    bpy.ops.import_scene.fbx(filepath=str(path))
    assert fbx_import_frame_offset() == 1
    assert_round_trip(source, imported_armature(before), 1e-4, first_frame=2)


@pytest.mark.parametrize("preset", ["unreal", "unity"])
def test_fbx_engine_presets_round_trip(model, tmp_path, preset):
    source = source_rig(model, moving_motion(seed=1))
    path = exports.export_fbx(tmp_path / f"{preset}.fbx", [source], preset=preset)
    before = {o.name for o in bpy.data.objects}
    bpy.ops.import_scene.fbx(filepath=str(path))
    assert_round_trip(source, imported_armature(before), 1e-4,
                      first_frame=1 + fbx_import_frame_offset())


def test_gltf_round_trip(model, tmp_path):
    source = source_rig(model, moving_motion(seed=2))
    path = exports.export_gltf(tmp_path / "take.glb", [source])
    before = {o.name for o in bpy.data.objects}
    bpy.ops.import_scene.gltf(filepath=str(path))
    assert_round_trip(source, imported_armature(before), 1e-4)


def test_bvh_is_y_up_and_round_trips(model, tmp_path):
    source = source_rig(model, moving_motion(seed=3))
    path = exports.export_bvh(tmp_path / "take.bvh", source)
    offsets = _bvh_rest_positions(path.read_text())
    assert offsets["head"][1] - offsets["pelvis"][1] > 0.3  # Y up in the file itself
    before = {o.name for o in bpy.data.objects}
    bpy.ops.import_anim.bvh(filepath=str(path))
    assert_round_trip(source, imported_armature(before), 1e-3)


def _bvh_rest_positions(text: str) -> dict:
    """Rest position of every joint in a BVH file (sum of OFFSETs down the hierarchy)."""
    positions, stack, name = {}, [], None
    for line in text.split("MOTION")[0].splitlines():
        words = line.split()
        if words and words[0] in ("ROOT", "JOINT", "End"):
            name = words[1] if words[0] != "End" else None
        elif words and words[0] == "{":
            stack.append(name)
        elif words and words[0] == "}":
            stack.pop()
        elif words and words[0] == "OFFSET" and stack[-1] is not None:
            parents = [p for p in stack[:-1] if p is not None]
            base = positions[parents[-1]] if parents else np.zeros(3)
            positions[stack[-1]] = base + np.array([float(v) for v in words[1:4]])
    return positions


def test_exports_leave_the_scene_as_it_was(model, tmp_path):
    source = source_rig(model, moving_motion(seed=4))
    other = bpy.data.objects.new("Empty", None)
    bpy.context.scene.collection.objects.link(other)
    other.select_set(True)
    source.select_set(False)
    bpy.context.view_layer.objects.active = source
    bpy.ops.object.mode_set(mode="POSE")
    bpy.context.scene.frame_set(5)
    objects_before = set(bpy.data.objects.keys())
    armatures_before = set(bpy.data.armatures.keys())
    exports.export_bvh(tmp_path / "a.bvh", source)
    exports.export_fbx(tmp_path / "a.fbx", [source], preset="unity")
    exports.export_gltf(tmp_path / "a.glb", [source])
    assert bpy.context.mode == "POSE"
    assert bpy.context.view_layer.objects.active == source
    assert other.select_get() and not source.select_get()
    assert bpy.context.scene.frame_current == 5
    assert set(bpy.data.objects.keys()) == objects_before
    assert set(bpy.data.armatures.keys()) == armatures_before
    assert sorted(os.listdir(tmp_path)) == ["a.bvh", "a.fbx", "a.glb"]  # no temp files left


def test_failed_export_keeps_the_old_file_and_bad_targets_are_one_line_errors(model, tmp_path):
    source = source_rig(model, moving_motion(seed=5))
    old = tmp_path / "take.bvh"
    old.write_bytes(b"previous take")
    mesh = bpy.data.objects.new("Mesh", bpy.data.meshes.new("Mesh"))
    bpy.context.scene.collection.objects.link(mesh)
    with pytest.raises(DPoseError, match="needs an armature"):
        exports.export_bvh(old, mesh)
    with pytest.raises(DPoseError, match="writes .fbx"):
        exports.export_fbx(tmp_path / "take.txt", [source])
    with pytest.raises(DPoseError, match="does not exist"):
        exports.export_gltf(tmp_path / "missing" / "a.glb", [source])
    with pytest.raises(DPoseError, match="Unknown FBX preset"):
        exports.export_fbx(tmp_path / "a.fbx", [source], preset="maya")
    image = bpy.data.images.new("plate", 4, 4)
    image.filepath = str(tmp_path / "plate.fbx")
    with pytest.raises(DPoseError, match="input of this scene"):
        exports.export_fbx(tmp_path / "plate.fbx", [source])
    assert old.read_bytes() == b"previous take"
    assert sorted(os.listdir(tmp_path)) == ["take.bvh"]


def test_an_exporter_failing_midway_leaves_the_old_file_and_no_temp(model, tmp_path,
                                                                    monkeypatch):
    source = source_rig(model, moving_motion(seed=8))
    old = tmp_path / "take.fbx"
    old.write_bytes(b"previous take")

    def half_written(operator, filepath, **options):
        with open(filepath, "wb") as fh:
            fh.write(b"Kaydara FBX Binary  \x00 truncated")
        raise DPoseError("Export failed: No space left on device")

    monkeypatch.setattr(exports, "_run", half_written)
    with pytest.raises(DPoseError, match="No space left"):
        exports.export_fbx(old, [source])
    assert old.read_bytes() == b"previous take"
    assert sorted(os.listdir(tmp_path)) == ["take.fbx"]


def test_npz_export_round_trips(tmp_path):
    motion = moving_motion(seed=6)
    path = exports.export_npz(tmp_path / "take.npz", motion)
    back = load_motion_npz(path)
    np.testing.assert_allclose(back.rotmats, motion.rotmats, atol=1e-9)
    np.testing.assert_allclose(back.transl, motion.transl, atol=1e-12)


def test_a_retargeted_rig_round_trips_through_fbx_bvh_and_gltf(model, tmp_path):
    """The take sits on an NLA strip (no active action): exporters bake what plays."""
    from tests.retarget_rigs import rig_layout
    from tests.test_retarget_blender import build_target

    retarget = import_blender_module("retarget")
    source = source_rig(model, moving_motion(seed=7))
    layout = rig_layout("ue5", model.rest_joints(source_betas(source)), leg_scale=1.15)
    target = build_target(layout, "UE5")
    retarget.retarget_rig(source, target)
    assert target.animation_data.action is None
    names = list(layout["names"])
    frames = list(range(1, NUM_FRAMES + 1))
    expected = world_heads(target, frames, names)
    for suffix, importer, offset, tolerance in (
        (".fbx", bpy.ops.import_scene.fbx, fbx_import_frame_offset(), 1e-4),
        (".bvh", bpy.ops.import_anim.bvh, 0, 1e-3),
        (".glb", bpy.ops.import_scene.gltf, 0, 1e-4),
    ):
        path = tmp_path / f"retargeted{suffix}"
        if suffix == ".fbx":
            exports.export_fbx(path, [target])
        elif suffix == ".bvh":
            exports.export_bvh(path, target)
        else:
            exports.export_gltf(path, [target])
        before = {o.name for o in bpy.data.objects}
        importer(filepath=str(path))
        imported = imported_armature(before)
        by_name = bone_names_by_joint(imported)
        got = world_heads(imported, [f + offset for f in frames], [by_name[n] for n in names])
        error = np.linalg.norm(got - expected, axis=-1).max()
        assert error <= tolerance, (suffix, error)
        up = got[:, names.index("head"), 2] - got[:, names.index("pelvis"), 2]
        assert up.min() > 0.1, suffix


def source_betas(source) -> np.ndarray:
    return np.array(source[rig.PROP_BETAS])
