"""The farm commands as a farm task runs them: `dpose estimate --chunk-overlap`, `dpose merge`,
--strict and the OpenJD progress protocol, each in a subprocess with the real network."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BOX = "40,20,280,230"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """Six frames, the fourth unreadable (0 bytes)."""
    folder = tmp_path_factory.mktemp("clip") / "frames"
    folder.mkdir()
    for k in range(6):
        frame = np.random.default_rng(30 + k).integers(0, 256, (240, 320, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"f{k:02d}.png"), frame)
    (folder / "f03.png").write_bytes(b"")
    return folder


def _dpose(*args, env_cache: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "DPOSE_CACHE": str(env_cache)}
    return subprocess.run([sys.executable, "-m", "dpose_core.cli", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=900, env=env)


def _chunk(folder, out, start, end, overlap, checkpoint, cache, *extra):
    return _dpose("estimate", folder, "--start", start, "--end", end, "--chunk-overlap",
                  overlap, "--checkpoint", checkpoint, f"--bbox={BOX}", "-o", out, *extra,
                  env_cache=cache)


def test_strict_fails_the_task_naming_the_frames_and_writes_nothing(
        folder, tmp_path, checkpoint_path, onnx_cache_dir):
    out = tmp_path / "chunk_000002.npz"
    proc = _chunk(folder, out, 2, 6, 1, checkpoint_path, onnx_cache_dir, "--strict",
                  "--progress", "openjd")
    assert proc.returncode == 1, proc.stderr
    fails = [ln for ln in proc.stdout.splitlines() if ln.startswith("openjd_fail: ")]
    assert fails == ["openjd_fail: --strict: 1 frame(s) skipped or interpolated: 3; nothing "
                     "was written"]
    assert "openjd_progress: 100" in proc.stdout.splitlines()
    assert "Traceback" not in proc.stderr and not out.exists()


def test_without_strict_the_chunk_is_written_with_a_warning(
        folder, tmp_path, checkpoint_path, onnx_cache_dir):
    out = tmp_path / "chunk_000002.npz"
    proc = _chunk(folder, out, 2, 6, 1, checkpoint_path, onnx_cache_dir)
    assert proc.returncode == 1, proc.stderr  # finished, but skipped a frame
    assert proc.stderr.count("skipped: ") == 1 and "f03.png" in proc.stderr
    from dpose_core.chunks import read_chunk

    chunk = read_chunk(out)
    assert (chunk.own_start, chunk.own_end) == (2, 6)
    np.testing.assert_array_equal(chunk.frames, [1, 2, 3, 4, 5])
    assert [f for f, _ in chunk.failures] == [3]


def test_merge_refuses_a_missing_chunk_and_mixed_checkpoints_in_one_line(
        folder, tmp_path, checkpoint_path, onnx_cache_dir):
    first, last = tmp_path / "chunk_000000.npz", tmp_path / "chunk_000004.npz"
    assert _chunk(folder, first, 0, 2, 0, checkpoint_path, onnx_cache_dir).returncode == 0
    assert _chunk(folder, last, 4, 6, 1, checkpoint_path, onnx_cache_dir).returncode == 0
    out = tmp_path / "motion.npz"
    out.write_bytes(b"old motion")
    proc = _dpose("merge", first, last, "--frames", "0-5", "--ground", "off", "-o", out,
                  env_cache=onnx_cache_dir)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("dpose: error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr
    assert "No chunk covers source frames 2-3:" in errors[0] and "Traceback" not in proc.stderr
    assert out.read_bytes() == b"old motion"

    filled = _dpose("merge", first, last, "--allow-gaps", "--ground", "off", "-o",
                    tmp_path / "filled.npz",
                    env_cache=onnx_cache_dir)
    assert filled.returncode == 1, filled.stderr  # written, with the gap flagged
    from dpose_core.motion_io import load_motion_npz

    motion = load_motion_npz(tmp_path / "filled.npz")
    np.testing.assert_array_equal(motion.frame_indices, np.arange(6))
    assert np.all(motion.flags[2:4] & 1) and not np.any(motion.flags[[0, 1, 4, 5]] & 1)

    other = tmp_path / "other.npz"
    from dpose_core.chunks import read_chunk, write_chunk

    chunk = read_chunk(last)
    chunk.provenance["checkpoint_sha256"] = "0" * 64
    write_chunk(other, chunk)
    mixed = _dpose("merge", first, other, "--ground", "off", "-o", tmp_path / "m.npz",
                   env_cache=onnx_cache_dir)
    assert mixed.returncode == 2 and mixed.stderr.count("dpose: error:") == 1
    assert "come from different runs (checkpoint_sha256" in mixed.stderr
