"""The farm entry: a folder of images -> .blend (+ npz/fbx/bvh) in a clean bpy subprocess,
and one clear error line with a non-zero code for each bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.blender

REPO = Path(__file__).resolve().parents[1]
HEADLESS = REPO / "dpose_blender" / "headless.py"


def _run(args, tmp_path, timeout=240):
    env = dict(os.environ)
    env.pop("DPOSE_CHECKPOINT", None)
    env["BLENDER_USER_RESOURCES"] = str(tmp_path / "blender-user")
    proc = subprocess.run(
        [sys.executable, str(HEADLESS), "--", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=env, cwd=tmp_path,
    )
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Three small frames with a bright figure on a dark background."""
    import cv2

    folder = tmp_path_factory.mktemp("frames")
    rng = np.random.default_rng(0)
    for i in range(3):
        img = (rng.uniform(0, 40, (120, 96, 3))).astype(np.uint8)
        cv2.rectangle(img, (34 + i, 20), (62 + i, 100), (200, 180, 160), -1)
        cv2.circle(img, (48 + i, 14), 8, (220, 200, 180), -1)
        cv2.imwrite(str(folder / f"frame_{i:04d}.png"), img)
    return folder


def test_missing_checkpoint_fails_with_one_line(tmp_path, image_folder):
    code, out = _run(["--input", image_folder, "--output", tmp_path / "o.blend",
                      "--checkpoint", tmp_path / "nope.ckpt"], tmp_path)
    assert code == 2
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "checkpoint" in errors[0].lower()
    assert not (tmp_path / "o.blend").exists()


def test_wrong_checkpoint_file_fails_before_any_work(tmp_path, image_folder):
    wrong = tmp_path / "paper_arxiv.ckpt"
    wrong.write_bytes(b"not a checkpoint" * 64)
    code, out = _run(["--input", image_folder, "--output", tmp_path / "o.blend",
                      "--checkpoint", wrong], tmp_path)
    assert code == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "not a PyTorch checkpoint" in errors[0]
    assert "loading" not in out and not (tmp_path / "o.blend").exists()


def test_empty_input_fails(tmp_path, checkpoint_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    code, out = _run(["--input", empty, "--output", tmp_path / "o.blend",
                      "--checkpoint", checkpoint_path], tmp_path)
    assert code == 2
    assert "error:" in out and "No images" in out


def test_unwritable_output_fails(tmp_path, checkpoint_path, image_folder):
    code, out = _run(["--input", image_folder, "--output", tmp_path / "missing" / "o.blend",
                      "--checkpoint", checkpoint_path], tmp_path)
    assert code == 2
    assert "error: cannot write the output .blend" in out
    # A folder that exists but takes no files (even for root, where os.access says yes).
    code, out = _run(["--input", image_folder, "--output", "/proc/o.blend",
                      "--checkpoint", checkpoint_path], tmp_path)
    assert code == 2, out
    assert "error: cannot write the output .blend /proc/o.blend" in out
    assert "Traceback" not in out


def test_missing_input_and_bad_range_fail(tmp_path, checkpoint_path, image_folder):
    code, out = _run(["--input", tmp_path / "none", "--output", tmp_path / "o.blend",
                      "--checkpoint", checkpoint_path], tmp_path)
    assert code == 2 and "does not exist" in out
    code, out = _run(["--input", image_folder, "--output", tmp_path / "o.blend",
                      "--checkpoint", checkpoint_path, "--stride", "0"], tmp_path)
    assert code == 2 and "stride" in out
    for flag, value, word in (("--person", "tallest", "track number"), ("--fov", "500", "--fov"),
                              ("--smooth", "-1", "--smooth")):
        code, out = _run(["--input", image_folder, "--output", tmp_path / "o.blend",
                          "--checkpoint", checkpoint_path, flag, value], tmp_path)
        assert code == 2 and word in out and "Traceback" not in out, out


def test_argument_handling_after_double_dash():
    from tests.blender_support import import_blender_module

    headless = import_blender_module("headless")
    argv = ["blender", "-b", "scene.blend", "--python", "headless.py", "--", "--input", "x"]
    assert headless.script_args(argv) == ["--input", "x"]
    assert headless.script_args(["headless.py", "--input", "x"]) == ["--input", "x"]
    assert headless.script_args(["/opt/blender/blender", "-b"]) == []


def test_folder_to_blend_with_exports(tmp_path, checkpoint_path, image_folder, onnx_cache_dir):
    out_blend = tmp_path / "out.blend"
    code, out = _run(
        ["--input", image_folder, "--output", out_blend, "--checkpoint", checkpoint_path,
         "--device", "cpu", "--cache-dir", onnx_cache_dir, "--npz", tmp_path / "m.npz",
         "--fbx", tmp_path / "m.fbx", "--bvh", tmp_path / "m.bvh", "--person", "largest",
         "--bbox", "20,5,80,115"],
        tmp_path,
    )
    assert code == 0, out
    progress = [line for line in out.splitlines() if line.startswith("D-PoSE: ")
                and " frames" in line and "/" in line]
    assert len(progress) >= 3, out  # one line per batch (a frame here)
    for name in ("out.blend", "m.npz", "m.fbx", "m.bvh"):
        assert (tmp_path / name).stat().st_size > 0, name
    # Open the .blend in a fresh process: one keyed rig with provenance.
    script = (
        "import bpy, json, sys\n"
        f"bpy.ops.wm.open_mainfile(filepath={str(out_blend)!r})\n"
        "rigs = [o for o in bpy.data.objects if o.type == 'ARMATURE']\n"
        "rec = json.loads(rigs[0]['dpose_provenance'])\n"
        "print('RESULT', json.dumps({'rigs': len(rigs), 'hash': rec['checkpoint_sha256'],"
        " 'inputs': rec['inputs'], 'cam': bpy.context.scene.camera is not None}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    info = json.loads(line[len("RESULT "):])
    from dpose_core.checkpoint import checkpoint_hash

    assert info["rigs"] == 1 and info["cam"]
    assert info["hash"] == checkpoint_hash(checkpoint_path)
    assert info["inputs"] == [str(image_folder.resolve())]


def test_no_such_person_is_bad_input(tmp_path, checkpoint_path, image_folder, onnx_cache_dir):
    """A job that runs but finds no such person fails with one line and code 2 (the input's
    fault), before anything is written."""
    code, out = _run(
        ["--input", image_folder / "frame_0000.png", "--output", tmp_path / "o.blend",
         "--checkpoint", checkpoint_path, "--device", "cpu", "--cache-dir", onnx_cache_dir,
         "--person", "3", "--bbox", "20,5,80,115"],
        tmp_path,
    )
    assert code == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "person 3 was asked for, but 1 person(s)" in errors[0]
    assert not (tmp_path / "o.blend").exists() and "Traceback" not in out


def test_outputs_aimed_at_the_input_or_each_other_are_refused(tmp_path, checkpoint_path,
                                                               image_folder):
    photo = tmp_path / "photo.png"
    photo.write_bytes((image_folder / "frame_0000.png").read_bytes())
    before = photo.read_bytes()
    code, out = _run(["--input", photo, "--output", tmp_path / "o.blend", "--bvh", photo,
                      "--checkpoint", checkpoint_path], tmp_path)
    assert code == 2 and "is an input of this run" in out, out
    assert photo.read_bytes() == before
    code, out = _run(["--input", photo, "--output", tmp_path / "o.blend",
                      "--fbx", tmp_path / "o.blend", "--checkpoint", checkpoint_path], tmp_path)
    assert code == 2 and "given twice" in out, out
    assert not (tmp_path / "o.blend").exists() and "Traceback" not in out


def test_a_folder_of_unreadable_frames_says_so(tmp_path, checkpoint_path, onnx_cache_dir):
    broken = tmp_path / "broken"
    broken.mkdir()
    for k in range(3):
        (broken / f"f{k}.png").write_bytes(b"not a png")
    code, out = _run(["--input", broken, "--output", tmp_path / "o.blend", "--checkpoint",
                      checkpoint_path, "--device", "cpu", "--cache-dir", onnx_cache_dir,
                      "--bbox", "-10,-10,30,30"], tmp_path)
    assert code == 2, out
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "None of the 3 frames of" in errors[0]
    assert len([ln for ln in out.splitlines() if ln.startswith("warning: skipped:")]) == 3


def test_farm_npz_agrees_with_the_cli_json(tmp_path, checkpoint_path, onnx_cache_dir,
                                           monkeypatch):
    """One photo (scikit-image's astronaut), the same options, people found automatically:
    the farm script's motion file and `dpose estimate`'s JSON hold the same numbers."""
    skimage_data = pytest.importorskip("skimage.data")
    import cv2

    from dpose_core.cli import main as cli_main

    photo = tmp_path / "astronaut.png"
    cv2.imwrite(str(photo), skimage_data.astronaut()[:, :, ::-1])
    monkeypatch.setenv("DPOSE_CACHE", str(onnx_cache_dir))
    monkeypatch.delenv("DPOSE_CHECKPOINT", raising=False)
    out_json = tmp_path / "cli.json"
    assert cli_main(["estimate", str(photo), "--checkpoint", str(checkpoint_path), "--device",
                     "cpu", "--person", "largest", "-o", str(out_json)]) == 0
    doc = json.loads(out_json.read_text())
    code, out = _run(["--input", photo, "--output", tmp_path / "farm.blend", "--checkpoint",
                      checkpoint_path, "--device", "cpu", "--cache-dir", onnx_cache_dir,
                      "--person", "largest", "--npz", tmp_path / "farm.npz",
                      "--ground", "off"], tmp_path)  # the camera-frame solve, as in the JSON
    assert code == 0, out
    with np.load(tmp_path / "farm.npz") as npz:
        poses, trans = npz["poses"], npz["trans"]
        focal = npz["dpose_focal_px"]
    np.testing.assert_allclose(poses[0, :66], np.ravel(doc["pose_axis_angle"][0]), atol=1e-5)
    np.testing.assert_allclose(trans[0], doc["cam_t"][0], atol=1e-5)
    np.testing.assert_allclose(focal[0], doc["focal_px"][0], atol=1e-9)


def test_ground_auto_end_to_end(tmp_path, checkpoint_path, image_folder, onnx_cache_dir):
    """--ground auto on a tiny clip with --bbox: world-space motion file with its camera, the
    quality report, and in the .blend the rig, the camera placed by camera_to_world, the
    contacts keyed on the rig and the floor plane."""
    out_blend, npz, report = tmp_path / "g.blend", tmp_path / "g.npz", tmp_path / "r.json"
    code, out = _run(["--input", image_folder, "--output", out_blend, "--checkpoint",
                      checkpoint_path, "--device", "cpu", "--cache-dir", onnx_cache_dir,
                      "--bbox", "20,5,80,115", "--npz", npz, "--report", report, "--floor",
                      "--ground", "auto", "--foot-lock", "0.5"], tmp_path)
    assert code == 0, out
    assert "track 0 grounded" in out and "quality report" in out
    from dpose_core.motion_io import load_motion_npz

    motion = load_motion_npz(npz)
    assert motion.coordinate_frame == "world_z_up" and motion.camera_to_world.shape == (3, 4, 4)
    data = json.loads(report.read_text())
    track = data["tracks"][0]
    assert track["grounded"] and track["refine"]["foot_lock"] == 0.5
    assert len(track["refine"]["per_frame"]["skate_mm"]) == 3
    script = (
        "import bpy, json\n"
        f"bpy.ops.wm.open_mainfile(filepath={str(out_blend)!r})\n"
        "rig = next(o for o in bpy.data.objects if o.type == 'ARMATURE')\n"
        "cam = bpy.context.scene.camera\n"
        "print('RESULT', json.dumps({'contact': 'dpose_contact_left_heel' in rig,"
        " 'floor': 'D-PoSE Floor' in bpy.data.objects,"
        " 'cam': [list(r) for r in cam.matrix_world]}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT"))
    info = json.loads(line[len("RESULT "):])
    assert info["contact"] and info["floor"]
    expected = motion.camera_to_world[0] @ np.diag([1.0, -1.0, -1.0, 1.0])
    np.testing.assert_allclose(np.array(info["cam"]), expected, atol=1e-4)


@pytest.mark.parametrize("args, message", [
    (["--camera", "Nope"], "--camera 'Nope' is not a camera in the opened .blend"),
    (["--foot-lock", "3"], "--foot-lock must be between 0 (off) and 1"),
    (["--subject-height", "9"], "--subject-height must be the person's standing height"),
    (["--report", "r.txt"], "must end in .json"),
    (["--ground", "off", "--subject-height", "1.8"], "needs --ground auto or none"),
])
def test_bad_grounding_options_fail_before_work(args, message, tmp_path, checkpoint_path,
                                                image_folder):
    code, out = _run(["--input", image_folder, "--output", tmp_path / "o.blend",
                      "--checkpoint", checkpoint_path, *args], tmp_path)
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert code == 2, out
    assert len(errors) == 1 and message in errors[0], out
    assert "Traceback" not in out and not (tmp_path / "o.blend").exists()
