"""Atomic writes: a full disk or a failing write leaves the old file byte for byte, no temp."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dpose_core import atomic_io
from dpose_core.atomic_io import OutputError, atomic_write, write_bytes, write_text
from dpose_core.motion import Motion
from dpose_core.motion_io import load_motion_npz, save_motion_npz

REPO = Path(__file__).resolve().parents[1]
OLD = b"the old file, which must survive\n" * 4


@pytest.fixture
def small_disk(tmp_path):
    """A 256 kB tmpfs that fills up; skipped where mounting is not allowed (not root)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                          capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def _fill(disk: Path, leave: int = 8192) -> None:
    """Take all but about `leave` bytes of the disk."""
    stat = os.statvfs(disk)
    free = stat.f_bavail * stat.f_frsize
    (disk / "filler").write_bytes(b"\0" * max(0, free - leave))


def _motion(n: int = 40) -> Motion:
    rng = np.random.default_rng(0)
    return Motion.from_predictions(np.broadcast_to(np.eye(3), (n, 22, 3, 3)),
                                   rng.normal(size=(n, 3)), np.zeros(11), fps=25.0)


def test_write_replaces_and_keeps_permissions(tmp_path):
    target = tmp_path / "out.json"
    target.write_bytes(OLD)
    target.chmod(0o640)
    write_text(target, "new")
    assert target.read_text() == "new" and (target.stat().st_mode & 0o777) == 0o640
    fresh = write_bytes(tmp_path / "fresh.bin", b"x")
    assert fresh.stat().st_mode & 0o777 == 0o666 & ~atomic_io._umask()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fresh.bin", "out.json"]


def test_full_disk_leaves_the_old_file_and_no_temp(small_disk):
    target = small_disk / "motion.npz"
    target.write_bytes(OLD)
    _fill(small_disk)
    with pytest.raises(OutputError, match="No space left on device; the old file, if any, is "
                                          "unchanged"):
        save_motion_npz(target, _motion())  # ~110 kB of arrays
    assert target.read_bytes() == OLD
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "motion.npz"]
    (small_disk / "filler").unlink()
    save_motion_npz(target, _motion())  # with room again it is written whole
    assert len(load_motion_npz(target)) == 40


def test_an_injected_write_error_leaves_the_old_file_and_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "out.npz"
    target.write_bytes(OLD)

    def failing_fsync(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OutputError, match="Cannot write .*out.npz: Input/output error"):
        save_motion_npz(target, _motion(3))
    assert target.read_bytes() == OLD and os.listdir(tmp_path) == ["out.npz"]


def test_an_exception_in_the_body_removes_the_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_bytes(OLD)
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as fh:
            fh.write(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == OLD and os.listdir(tmp_path) == ["out.txt"]


def test_two_writers_of_one_output_never_share_a_temp(tmp_path):
    target = tmp_path / "m.npz"
    with atomic_write(target) as first, atomic_write(target) as second:
        temps = [p.name for p in tmp_path.iterdir()]
        assert len(temps) == 2 and all(t.startswith(".m.npz.") for t in temps)
        first.write(b"first")
        second.write(b"second")
    assert target.read_bytes() == b"first"  # the last to finish wins, whole
    assert os.listdir(tmp_path) == ["m.npz"]


def test_an_unwritable_place_is_refused_before_work(tmp_path):
    (tmp_path / "file.txt").write_text("in the way")
    with pytest.raises(OutputError, match="does not exist"):
        atomic_io.check_writable(tmp_path / "missing" / "out.npz")
    with pytest.raises(OutputError, match="it is a folder"):
        atomic_io.check_writable(tmp_path)
    with pytest.raises(OutputError, match="Cannot write"):
        write_text(tmp_path / "file.txt" / "out.json", "x")


def test_cli_on_a_full_disk_exits_2_and_keeps_the_old_output(small_disk, checkpoint_path,
                                                             onnx_cache_dir, tmp_path):
    """The real `dpose estimate` writing an .npz with per-pixel maps (several MB) to a disk
    that has no room: one line, exit 2, the old file byte for byte, no temp file."""
    import cv2

    image = tmp_path / "photo.png"
    cv2.imwrite(str(image), np.full((120, 90, 3), 128, np.uint8))
    target = small_disk / "out.npz"
    target.write_bytes(OLD)
    env = {**os.environ, "DPOSE_CACHE": str(onnx_cache_dir), "PYTHONPATH": str(REPO)}
    env.pop("DPOSE_CHECKPOINT", None)
    done = subprocess.run(
        [sys.executable, "-m", "dpose_core.cli", "estimate", str(image), "--checkpoint",
         str(checkpoint_path), "--device", "cpu", "--bbox", "10,10,80,110", "-o", str(target)],
        capture_output=True, text=True, timeout=600, cwd=REPO, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2, done.stderr
    assert lines[-1].startswith("dpose: error: Cannot write") and "No space left" in lines[-1]
    assert "Traceback" not in done.stderr
    assert target.read_bytes() == OLD and os.listdir(small_disk) == ["out.npz"]


def test_convert_on_a_full_disk_keeps_the_old_model(small_disk, checkpoint_path, capsys):
    """`dpose convert` writes ~260 MB of weights: on a full disk the old weights.bin and
    model.onnx stay byte for byte and nothing else is left behind."""
    from dpose_core.cli import main

    (small_disk / "weights.bin").write_bytes(OLD)
    (small_disk / "model.onnx").write_bytes(OLD[:20])
    assert main(["convert", str(checkpoint_path), "-o", str(small_disk / "model.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dpose: error: Cannot write") and "No space left" in err
    assert len(err.strip().splitlines()) == 1
    assert (small_disk / "weights.bin").read_bytes() == OLD
    assert (small_disk / "model.onnx").read_bytes() == OLD[:20]
    assert sorted(os.listdir(small_disk)) == ["model.onnx", "weights.bin"]
