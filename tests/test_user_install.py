"""The README's first command, as a user runs it: a fresh virtual environment with `pip install .`
(no torch, today's numpy 2 and OpenCV 4.x), then `dpose` on an image and on a video.

The test environment pins numpy 1.26 for Blender; this is where the core proves it also runs
on numpy 2 and without torch, as it must inside Blender 5.1+ and on a user's machine.
"""

import json
import subprocess
import venv
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def user_env(tmp_path_factory) -> Path:
    env = tmp_path_factory.mktemp("user") / "venv"
    venv.create(env, with_pip=True)
    subprocess.run([env / "bin" / "pip", "install", "-q", str(REPO)], check=True)
    return env


def _run(env: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(env / "bin" / args[0]), *args[1:]], cwd=cwd, capture_output=True,
                          text=True, timeout=600)


def test_user_install_has_no_torch_and_numpy_2(user_env, tmp_path):
    probe = _run(user_env, "python", "-c",
                 "import importlib.util, numpy; "
                 "print(importlib.util.find_spec('torch') is None, numpy.__version__)",
                 cwd=tmp_path)
    no_torch, numpy_version = probe.stdout.split()
    assert no_torch == "True"
    assert int(numpy_version.split(".")[0]) >= 2


def test_dpose_estimate_image_and_video_in_a_user_install(user_env, checkpoint_path, tmp_path):
    from skimage import data

    photo = data.astronaut()  # scikit-image's sample photo of a person
    cv2.imwrite(str(tmp_path / "photo.png"), photo[:, :, ::-1])
    writer = cv2.VideoWriter(str(tmp_path / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25,
                             (photo.shape[1], photo.shape[0]))
    for shift in range(4):
        writer.write(np.ascontiguousarray(np.roll(photo[:, :, ::-1], 4 * shift, axis=1)))
    writer.release()

    image_run = _run(user_env, "dpose", "estimate", "photo.png", "--checkpoint",
                     str(checkpoint_path), "--bbox", "100,0,420,512", "-o", "out.json",
                     cwd=tmp_path)
    assert image_run.returncode == 0, image_run.stderr
    result = json.loads((tmp_path / "out.json").read_text())
    assert np.asarray(result["rotmats"]).shape == (1, 22, 3, 3)
    assert np.asarray(result["joints2d"]).shape == (1, 127, 2)
    assert result["backend"] == "onnxruntime"

    video_run = _run(user_env, "dpose", "estimate", "clip.avi", "--checkpoint",
                     str(checkpoint_path), "--bbox", "100,0,420,512", "-o", "motion.npz",
                     cwd=tmp_path)
    assert video_run.returncode == 0, video_run.stderr
    with np.load(tmp_path / "motion.npz", allow_pickle=False) as motion:
        assert motion["poses"].shape == (4, 165)
        assert motion["trans"].shape == (4, 3)


def test_missing_checkpoint_tells_the_user_what_to_do(user_env, tmp_path):
    (tmp_path / "photo.png").write_bytes(b"")  # the input exists; the checkpoint does not
    run = _run(user_env, "dpose", "estimate", "photo.png", "--checkpoint",
               str(tmp_path / "absent.ckpt"), "-o", "out.json", cwd=tmp_path)
    assert run.returncode != 0
    assert "DPOSE_CHECKPOINT" in run.stderr + run.stdout
    assert "Traceback" not in run.stderr

