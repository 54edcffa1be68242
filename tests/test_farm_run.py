"""The farm jobs run for real: the OpenJD template under `openjd run` (the session semantics
Deadline Cloud workers use) and the Flamenco job's authored command lines, each with the real
network, against a single-process run of the same clip.

Blender is the bpy module here: a stand-in `blender` executable turns `-b -y --python
SCRIPT -- ARGS` into `python SCRIPT -- ARGS`, which is how headless.py runs under bpy.
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dpose_core.motion_io import load_motion_npz
from dpose_core.rotations import matrix_to_quaternion

REPO = Path(__file__).resolve().parents[1]
HEADLESS = REPO / "dpose_blender" / "headless.py"
TEMPLATE = REPO / "farm" / "openjd" / "dpose_mocap.yaml"
JOB_TYPE = REPO / "farm" / "flamenco" / "dpose_mocap.js"
HARNESS = Path(__file__).with_name("flamenco_harness.js")
OPENJD = Path(sys.executable).with_name("openjd")
BOX = "20,40,260,200"  # the person's box on every frame: raw solves do not depend on history

pytestmark = pytest.mark.slow

BLENDER_SHIM = """#!{python}
import runpy, sys
args = sys.argv[1:]
assert args[:2] == ["-b", "-y"], args
script = args[args.index("--python") + 1]
sys.argv = [script] + args[args.index("--"):]
runpy.run_path(script, run_name="__main__")
"""
DPOSE_SHIM = """#!/bin/sh
exec {python} -m dpose_core.cli "$@"
"""


def _clip(path: Path, frames: int) -> Path:
    """A person (scikit-image's astronaut) gliding right across a grey frame."""
    from skimage import data

    person = cv2.resize(data.astronaut()[:, :, ::-1], (160, 160))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (320, 240))
    for f in range(frames):
        frame = np.full((240, 320, 3), 90, np.uint8)
        x = 20 + (f * 97) % 140  # wraps around: the motion has jumps of its own
        frame[40:200, x:x + 160] = person
        writer.write(frame)
    writer.release()
    return path


def _script(path: Path, text: str) -> Path:
    path.write_text(text.format(python=sys.executable))
    path.chmod(0o755)
    return path


@pytest.fixture
def env(onnx_cache_dir):
    return {**os.environ, "PYTHONPATH": str(REPO), "DPOSE_CACHE": str(onnx_cache_dir)}


def _single_run(clip: Path, out: Path, checkpoint: Path, env: dict) -> Path:
    npz = out / "single.npz"
    proc = subprocess.run(
        [sys.executable, str(HEADLESS), "--", "--input", str(clip), "--output",
         str(out / "single.blend"), "--npz", str(npz), "--checkpoint", str(checkpoint),
         f"--bbox={BOX}"], capture_output=True, text=True, timeout=1200, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return npz


def _rotations(npz: Path) -> np.ndarray:
    motion = load_motion_npz(npz)
    return matrix_to_quaternion(motion.rotmats[:, :22])


def _angles(q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
    """Per frame: the largest joint rotation angle between two (N,22,4) quaternion sets."""
    dot = np.abs(np.sum(q0 * q1, axis=-1)).clip(0, 1)
    return (2 * np.arccos(dot)).max(axis=1)


def _blend_poses(*paths: Path) -> list[np.ndarray]:
    """Each .blend's first rig: pose-bone matrices on every scene frame (frames, bones, 4, 4)."""
    script = (
        "import bpy, json, sys\n"
        "out = []\n"
        "for path in sys.argv[1:]:\n"
        "    bpy.ops.wm.open_mainfile(filepath=path)\n"
        "    rig = next(o for o in bpy.data.objects if o.type == 'ARMATURE')\n"
        "    scene = bpy.context.scene\n"
        "    frames = []\n"
        "    for f in range(scene.frame_start, scene.frame_end + 1):\n"
        "        scene.frame_set(f)\n"
        "        frames.append([[list(r) for r in pb.matrix] for pb in rig.pose.bones])\n"
        "    out.append(frames)\n"
        "print('POSES' + json.dumps(out))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, *map(str, paths)], capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("POSES"))
    return [np.array(p) for p in json.loads(line[len("POSES"):])]


@pytest.mark.timeout(2400)  # 630 network passes: about 2 minutes on an idle 2-core machine
def test_openjd_job_equals_a_single_run(tmp_path, checkpoint_path, env):
    clip = _clip(tmp_path / "shot.avi", 300)
    out = tmp_path / "out"
    args = [str(OPENJD), "run", str(TEMPLATE), "--step", "Merge", "--run-dependencies"]
    params = {"Input": clip, "OutputDir": out, "FrameStart": 0, "FrameEnd": 299,
              "ChunkSize": 100, "ChunkOverlap": 16, "Checkpoint": checkpoint_path,
              "PersonBox": BOX, "Device": "cpu", "HeadlessScript": HEADLESS,
              "DposeCommand": _script(tmp_path / "dpose", DPOSE_SHIM),
              "BlenderExecutable": _script(tmp_path / "blender", BLENDER_SHIM)}
    for key, value in params.items():
        args += ["-p", f"{key}={value}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=3000, env=env,
                          cwd=tmp_path)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    assert "openjd_progress: 100" in log and "openjd_status: merging 3 chunk file(s)" in log
    assert sorted(p.name for p in (out / "chunks").iterdir()) == [
        "chunk_000000.npz", "chunk_000100.npz", "chunk_000200.npz"]

    single = _single_run(clip, tmp_path, checkpoint_path, env)
    merged, alone = _rotations(out / "motion.npz"), _rotations(single)
    assert merged.shape == alone.shape == (300, 22, 4)
    diff = _angles(merged, alone)
    seams = np.zeros(300, bool)
    for seam in (100, 200):
        seams[seam - 16:seam + 16] = True
    print(f"merged vs single run: {diff[~seams].max():.2e} rad away from seams, "
          f"{diff[seams].max():.2e} near them")
    assert diff[~seams].max() <= 1e-4 and diff[seams].max() <= 1e-3

    step = _angles(merged[1:], merged[:-1])  # frame-to-frame change; step[k]: k -> k+1
    at_seams = step[[99, 199]]
    inside = np.delete(step, [99, 199])
    assert np.all(at_seams <= np.percentile(inside, 99))

    blend_merged, blend_single = _blend_poses(out / "motion.blend", tmp_path / "single.blend")
    assert blend_merged.shape == blend_single.shape and len(blend_merged) == 300
    assert np.abs(blend_merged - blend_single).max() <= 1e-4


def _run_flamenco_command(command: dict, shim: Path, env: dict) -> subprocess.CompletedProcess:
    """What a Flamenco worker runs for a blender-render command, with {blender} = the shim."""
    params = command["parameters"]
    exe = params["exe"].replace("{blender}", str(shim))
    argv = [exe, *shlex.split(params["exeArgs"].replace("{blenderArgs}", "-b -y")),
            *params["argsBefore"], *([params["blendfile"]] if params["blendfile"] else []),
            *params["args"]]
    return subprocess.run(argv, capture_output=True, text=True, timeout=1200, env=env)


def test_flamenco_command_lines_build_the_blend(tmp_path, checkpoint_path, env):
    clip = _clip(tmp_path / "shot.avi", 60)
    out = tmp_path / "out"
    settings = {"input": str(clip), "output_dir": str(out), "frames": "0-59", "chunk_size": 30,
                "chunk_overlap": 8, "headless_script": str(HEADLESS),
                "checkpoint": str(checkpoint_path), "device": "cpu", "person_box": BOX,
                "smooth": 1.0, "export_fbx": False, "export_bvh": True, "strict": True}
    (tmp_path / "settings.json").write_text(json.dumps(settings))
    compiled = subprocess.run(["node", str(HARNESS), str(JOB_TYPE),
                               str(tmp_path / "settings.json")],
                              capture_output=True, text=True, timeout=60, check=True)
    tasks = json.loads(compiled.stdout)["tasks"]
    shim = _script(tmp_path / "blender", BLENDER_SHIM)
    (out / "chunks").mkdir(parents=True)
    for task in tasks:  # authored in dependency order: the solves, then the merge
        (command,) = task["commands"]
        proc = _run_flamenco_command(command, shim, env)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        steps = [ln for ln in proc.stdout.splitlines() if ln.startswith("Time: ")]
        if task["name"] != "merge":
            assert len(steps) == command["totalStepCount"]
    assert (out / "motion.blend").is_file() and (out / "motion.bvh").is_file()
    assert len(load_motion_npz(out / "motion.npz")) == 60
