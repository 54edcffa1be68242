"""The farm script retargets onto a character in the opened .blend (--retarget-to), exports the
retargeted take (FBX, BVH, glTF re-imported by Blender's own importers match it), and refuses
bad retarget input before any work: one `error:` line, exit 2, nothing written."""

import json
import os
import subprocess
import sys

import pytest

from dpose_core import bone_maps
from dpose_core.body_model import BodyModel
from tests.blender_support import import_blender_module
from tests.retarget_rigs import rig_layout
from tests.test_headless import HEADLESS, image_folder  # noqa: F401 - a fixture
from tests.test_retarget_blender import BETAS, build_target

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")  # collected, and skipped, where bpy is missing

headless = import_blender_module("headless")

RUN_IN_BLEND = (
    "import runpy, sys, bpy\n"
    "bpy.ops.wm.open_mainfile(filepath=sys.argv[1])\n"  # as `blender -b scene.blend`
    "sys.argv = [sys.argv[2], '--', *sys.argv[3:]]\n"
    "runpy.run_path(sys.argv[0], run_name='__main__')\n"
)

CHECK_EXPORTS = """
import json, sys, bpy, numpy as np
bpy.ops.wm.open_mainfile(filepath=sys.argv[1])
scene = bpy.context.scene
target = bpy.data.objects["Hero"]
names = [b.name for b in target.data.bones]
frames = list(range(scene.frame_start, scene.frame_end + 1))

def heads(obj, frames, names):
    out = []
    for f in frames:
        scene.frame_set(f)
        w = np.array(obj.matrix_world)
        out.append([(w @ np.array([*obj.pose.bones[n].head, 1.0]))[:3] for n in names])
    return np.array(out)

expected = heads(target, frames, names)
w = np.array(target.matrix_world)
rest = np.array([(w @ np.array([*b.head_local, 1.0]))[:3] for b in target.data.bones])
hips = names.index("mixamorig:Hips")
posed = (expected - expected[:, hips:hips + 1]) - (rest - rest[hips])
fbx_offset = int(bpy.ops.import_scene.fbx.get_rna_type().properties["anim_offset"].default)
result = {"tracks": [t.name for t in target.animation_data.nla_tracks], "frames": frames,
          "posed": float(np.linalg.norm(posed, axis=-1).max())}
for path, importer, offset in ((sys.argv[2], bpy.ops.import_scene.fbx, fbx_offset - 1),
                               (sys.argv[3], bpy.ops.import_anim.bvh, 0),
                               (sys.argv[4], bpy.ops.import_scene.gltf, 0)):
    before = set(bpy.data.objects)
    importer(filepath=path)
    (arm,) = [o for o in bpy.data.objects if o not in before and o.type == "ARMATURE"]
    bones = [b.name for b in arm.data.bones]
    got = heads(arm, [f + offset for f in frames], names) if set(names) <= set(bones) else None
    result[path[-3:]] = {"bones": sorted(bones), "error": None if got is None else
                         float(np.linalg.norm(got - expected, axis=-1).max())}
result["names"] = sorted(names)
print("RESULT " + json.dumps(result))
"""


@pytest.fixture(scope="module")
def character_blend(tmp_path_factory, body_model_npz):
    """A .blend with a Mixamo-named character 'Hero' (legs 15 % longer) and a non-humanoid
    armature 'Odd'."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    rest = BodyModel.load(body_model_npz).rest_joints(BETAS)
    build_target(rig_layout("mixamo", rest, leg_scale=1.15), "Hero")
    odd = build_target(rig_layout("vrm", rest), "Odd")
    for bone in odd.data.bones:
        bone.name = f"bone_{bone.name}"
    path = tmp_path_factory.mktemp("scene") / "character.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(path), copy=True)
    return path


def _run_in_blend(blend, args, tmp_path, timeout=300):
    env = dict(os.environ)
    env.pop("DPOSE_CHECKPOINT", None)
    env["BLENDER_USER_RESOURCES"] = str(tmp_path / "blender-user")
    proc = subprocess.run(
        [sys.executable, "-c", RUN_IN_BLEND, str(blend), str(HEADLESS), *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path)
    return proc.returncode, proc.stdout + proc.stderr


def test_retarget_to_a_character_and_export_the_retargeted_take(
        tmp_path, checkpoint_path, image_folder, onnx_cache_dir, character_blend):  # noqa: F811
    out_blend = tmp_path / "out.blend"
    fbx, bvh, glb = tmp_path / "hero.fbx", tmp_path / "hero.bvh", tmp_path / "hero.glb"
    code, out = _run_in_blend(character_blend, [
        "--input", image_folder, "--output", out_blend, "--checkpoint", checkpoint_path,
        "--device", "cpu", "--cache-dir", onnx_cache_dir, "--person", "largest",
        "--bbox", "20,5,80,115", "--retarget-to", "Hero", "--root-motion", "bone",
        "--ground", "off",  # the camera-frame take, as the export round trips are checked
        "--fbx", fbx, "--fbx-preset", "blender", "--bvh", bvh, "--gltf", glb], tmp_path)
    assert code == 0, out
    assert "D-PoSE: retargeted" in out and "bones mapped" in out
    proc = subprocess.run([sys.executable, "-c", CHECK_EXPORTS, str(out_blend), str(fbx),
                           str(bvh), str(glb)], capture_output=True, text=True, timeout=240)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    assert line is not None, proc.stdout[-2000:] + proc.stderr[-2000:]
    result = json.loads(line[len("RESULT "):])
    assert len(result["tracks"]) == 1 and len(result["frames"]) == 3
    assert result["posed"] > 0.05  # the take poses the character (away from its rest)
    for suffix, tolerance in (("fbx", 1e-4), ("bvh", 1e-3), ("glb", 1e-4)):
        assert result[suffix]["bones"] == result["names"], suffix  # the character's bones
        assert result[suffix]["error"] <= tolerance, (suffix, result[suffix]["error"])


def test_bad_retarget_input_is_one_error_line_and_nothing_is_written(
        tmp_path, checkpoint_path, image_folder, character_blend):  # noqa: F811
    bpy.ops.wm.open_mainfile(filepath=str(character_blend))
    hero = bpy.data.objects["Hero"]
    good_map = tmp_path / "hero.json"
    bone_maps.save_bone_map(good_map, bone_maps.detect_preset(b.name for b in hero.data.bones)[1])
    bad_map = tmp_path / "bad.json"
    bone_maps.save_bone_map(bad_map, {"Tail": "pelvis", "mixamorig:Hips": "pelvis"})
    not_json = tmp_path / "broken.json"
    not_json.write_text("{bones")
    out_blend = tmp_path / "o.blend"
    base = ["--input", image_folder, "--output", out_blend, "--checkpoint", checkpoint_path]
    cases = [
        (["--retarget-to", "Nobody"], "no armature named 'Nobody' in character.blend"),
        (["--retarget-to", "Odd"], "No bone map preset fits"),
        (["--retarget-to", "Hero", "--bone-map", bad_map], "lacks: Tail"),
        (["--retarget-to", "Hero", "--bone-map", not_json], "Cannot read bone map"),
        (["--retarget-to", "Hero", "--bone-map", tmp_path / "none.json"], "does not exist"),
        (["--bone-map", good_map], "need --retarget-to"),
        (["--root-motion", "bone"], "need --retarget-to"),
        (["--fbx-preset", "unity"], "give --fbx too"),
        (["--retarget-to", "Hero", "--root-motion", "object", "--bvh", tmp_path / "h.bvh"],
         "BVH stores bone motion only"),
        (["--gltf", tmp_path / "h.gltf"], "name the file *.glb"),
    ]
    for extra, words in cases:
        lines = []
        code = headless.main(["headless.py", "--", *map(str, base + extra)], out=lines.append)
        errors = [ln for ln in lines if ln.startswith("error:")]
        assert code == 2 and len(errors) == 1 and words in errors[0], (extra, lines)
        assert not [ln for ln in lines if "loading" in ln], lines  # before any work
    lines = []
    code = headless.main(["headless.py", "--", "--input", str(image_folder), "--output",
                          str(character_blend), "--checkpoint", str(checkpoint_path)],
                         out=lines.append)
    assert code == 2 and "is the opened .blend" in lines[-1]
    hero.pose.bones["mixamorig:LeftArm"].scale = (1.0, 1.3, 1.0)
    lines = []
    code = headless.main(["headless.py", "--", *map(str, base), "--retarget-to", "Hero"],
                         out=lines.append)
    assert code == 2 and "scaled in its pose" in lines[-1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.json", "broken.json", "hero.json"]
    # The farm run itself: exit code 2 and one line, from the process.
    code, out = _run_in_blend(character_blend, base + ["--retarget-to", "Odd"], tmp_path)
    assert code == 2 and "Traceback" not in out
    (error,) = [ln for ln in out.splitlines() if ln.startswith("error:")]
    assert error.startswith("error: --retarget-to Odd: No bone map preset fits this armature")
    assert not out_blend.exists()
