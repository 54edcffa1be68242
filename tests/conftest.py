"""Shared fixtures: generated stand-ins for the licensed files, and a clean Blender per test.

Nothing licensed is ever committed: the body model and the checkpoint are generated here
with the real SMPL-X shapes and the official Lightning layout, filled with random values.
"""

import os
import tempfile
from pathlib import Path

import pytest

# Blender must not read or write the developer's own preferences.
os.environ.setdefault("BLENDER_USER_RESOURCES", tempfile.mkdtemp(prefix="dpose-blender-user-"))


@pytest.fixture(scope="session")
def body_model_npz(tmp_path_factory, blob_body_npz) -> Path:
    """A synthetic SMPLX_NEUTRAL.npz: real array shapes and kinematic tree, random values.

    Its surface is synth_tube_body's bone tubes (betas move its joints as they move
    synth_body's; synth_body's random pose blend shapes), so
    part agreement, scored in every run, renders it as fast as the real mesh.
    """
    from tests.synth_tube_body import write_tube_smplx_npz

    path = tmp_path_factory.mktemp("body") / "SMPLX_NEUTRAL.npz"
    write_tube_smplx_npz(path, blob_body_npz, blend_shapes=True)
    return path


@pytest.fixture(scope="session")
def blob_body_npz(tmp_path_factory) -> Path:
    """synth_body's own SMPLX_NEUTRAL.npz (vertex blobs around the joints, random faces): the
    skeleton and shape space body_model_npz is built on, and the foot geometry the synthetic
    walk (tests/synth_walk.py) was tuned on. Too slow to render: never score it."""
    from tests.synth_body import write_synthetic_smplx_npz

    return write_synthetic_smplx_npz(tmp_path_factory.mktemp("blob") / "SMPLX_NEUTRAL.npz",
                                     seed=0)


@pytest.fixture(scope="session")
def checkpoint_path(tmp_path_factory, body_model_npz) -> Path:
    """A random-weight checkpoint in the official Lightning layout (all TSV keys)."""
    from tests.synth_checkpoint import write_random_checkpoint

    path = tmp_path_factory.mktemp("ckpt") / "paper_arxiv.ckpt"
    write_random_checkpoint(path, body_model_npz, seed=0)
    return path


@pytest.fixture(scope="session")
def onnx_cache_dir(tmp_path_factory) -> Path:
    """One ONNX Runtime model cache per test session (in-process and subprocess runs share it)."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="session")
def linux_extension_zip(tmp_path_factory) -> Path:
    """The linux-x64 extension zip built by wheels/build.py (downloads wheels once: needs PyPI,
    cached in wheels/downloads/; ~75 MB)."""
    import subprocess
    import sys

    out = tmp_path_factory.mktemp("dist")
    root = Path(__file__).resolve().parents[1]
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    subprocess.run([sys.executable, str(root / "wheels" / "build.py"), "--platform", "linux-x64",
                    "--python", py, "--output-dir", str(out), "--stage-dir", str(out / "stage")],
                   check=True)
    return next(out.glob("*.zip"))


@pytest.fixture(autouse=True)
def _fresh_blender(request):
    """Blender tests start from an empty factory scene."""
    if request.node.get_closest_marker("blender") is None:
        yield
        return
    import bpy

    bpy.ops.wm.read_factory_settings(use_empty=True)
    yield


# bpy before 5.0 as a Python module can fail while it shuts down, after every test passed:
# 4.2 crashes (SIGSEGV freeing a Python class after the interpreter is gone) once the glTF
# exporter has run, and 4.5 can hang for ever in its C exit handlers (a global state destroyed
# while its delayed-close thread still waits on it). The same guard as the farm script's: end
# the process with pytest's own exit status once pytest is done.
_EXIT_STATUS: list[int] = []


def pytest_sessionfinish(session, exitstatus):
    _EXIT_STATUS.append(int(exitstatus))


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    import sys

    bpy = sys.modules.get("bpy")
    if bpy is None or not _EXIT_STATUS:
        return
    if bpy.app.binary_path or tuple(bpy.app.version) >= (5, 0, 0):
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(_EXIT_STATUS[-1])
