"""Inputs that crashed or exhausted native code (OpenCV's HOG detector, its image decoders,
FFmpeg), each run in a child process: a native crash shows up as a signal exit (-11 / -6,
rc 139 / 134 in a shell) and fails the test instead of killing pytest. See
docs/native-guards.md for the measured bounds.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from dpose_core.motion import FLAG_INTERPOLATED

REPO = Path(__file__).resolve().parents[1]
BOX = "10,5,150,85"  # a person box inside the 160x90 test clips


def _child_env(cache_dir: Path | None = None) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1",
               MALLOC_PERTURB_="165")  # freed memory is scribbled over: corruption shows sooner
    env.pop("DPOSE_CHECKPOINT", None)
    if cache_dir is not None:
        env["DPOSE_CACHE"] = str(cache_dir)
    return env


def _python(code: str, *args, cache_dir: Path | None = None, timeout: int = 300):
    code = _PEAK_MB + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)],
                          cwd=REPO, env=_child_env(cache_dir), capture_output=True, text=True,
                          errors="backslashreplace", timeout=timeout)


# The child's own peak resident memory in MB: VmHWM starts afresh at exec, while ru_maxrss
# keeps the high-water mark of the forking parent (a large pytest process would show up).
_PEAK_MB = """
def peak_mb():
    with open("/proc/self/status") as fh:
        return next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:")) // 1024
"""

# The CLI in a child that also reports its peak resident memory (MB) on the last stdout line.
_CLI = """
    import sys
    from dpose_core.cli import main
    code = main(sys.argv[1:])
    print(f"peak_rss_mb={peak_mb()}")
    sys.exit(code)
"""


def _dpose(*args, cache_dir: Path, timeout: int = 600):
    return _python(_CLI, *args, cache_dir=cache_dir, timeout=timeout)


def _peak_mb(result) -> int:
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("peak_rss_mb="), result.stdout
    return int(last.split("=")[1])


def _lines(text: str) -> list[str]:
    """Lines of a child's stderr without progress-bar redraws."""
    return [ln for ln in text.replace("\r", "\n").splitlines()
            if ln.strip() and not ln.startswith(("estimate:", "dpose:  ", "dpose: 100%"))
            and "%|" not in ln]


def _assert_clean(result) -> None:
    assert result.returncode >= 0, f"killed by signal {-result.returncode}: {result.stderr}"
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout


def _noise(h: int, w: int, channels: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, channels), dtype=np.uint8)


# --- the person finder alone (no network): every size class that crashed HOG -------------


_FIND = """
    import sys
    import numpy as np
    from dpose_core.localise import OpenCVPersonFinder, make_finder
    w, h, kind = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rng = np.random.default_rng(w * 7 + h)
    image = {
        "rgb": lambda: rng.integers(0, 256, (h, w, 3), dtype=np.uint8),
        "gray": lambda: rng.integers(0, 256, (h, w), dtype=np.uint8),
        "rgba": lambda: rng.integers(0, 256, (h, w, 4), dtype=np.uint8),
        "rgb16": lambda: rng.integers(0, 65536, (h, w, 3), dtype=np.uint16),
    }[kind]()
    finder = OpenCVPersonFinder()
    for _ in range(3):  # heap damage from an earlier call would surface in a later one
        found = finder.find(image)
    print("found", len(found), all(d.box[2] <= w and d.box[3] <= h for d in found))
"""


@pytest.mark.parametrize("width,height,kind", [
    (1, 1, "rgb"), (2, 2, "rgb"), (96, 96, "rgb"), (128, 64, "rgb"), (64, 96, "rgb"),
    (3000, 300, "rgb"), (640, 61, "rgb"), (160, 90, "rgb"), (32, 400, "rgb"),
    (400, 1, "rgb"), (1, 400, "rgb"), (20000, 2, "rgb"), (2, 20000, "rgb"),
    (96, 96, "gray"), (96, 96, "rgba"), (96, 96, "rgb16"),
])
def test_person_finder_survives_small_and_odd_frames(width, height, kind):
    result = _python(_FIND, width, height, kind)
    _assert_clean(result)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[0] == "found" and result.stdout.split()[2] == "True"
    assert result.stderr == ""


# --- decoding: budget, damaged files, format fuzz ------------------------------------------


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    """20000 x 20000 of one grey: 424 KB on disk, 400 MP (1.2 GB as 8-bit RGB) decoded."""
    path = tmp_path_factory.mktemp("huge") / "huge.png"
    cv2.imwrite(str(path), np.zeros((20000, 20000), np.uint8))
    assert path.stat().st_size < 1_000_000
    return path


def test_huge_png_is_refused_from_its_header_with_bounded_memory(huge_png):
    result = _python("""
        import sys
        from dpose_core.errors import FrameError
        from dpose_core.frames import read_image
        try:
            read_image(sys.argv[1])
        except FrameError as exc:
            print(exc)
        print(peak_mb())
    """, huge_png)
    _assert_clean(result)
    message, peak_mb = result.stdout.strip().splitlines()
    assert message == (f"Image {huge_png} is 20000x20000 (400 MP), over the 120 MP limit that "
                       "keeps memory bounded; downscale it first (e.g. to 10954 px wide).")
    assert int(peak_mb) < 250  # the decode alone would need more than 1200 MB


_FUZZ = """
    import sys
    import cv2, numpy as np
    from dpose_core.errors import FrameError
    from dpose_core.frames import read_image
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    outcomes = {"ok": 0, "FrameError": 0, "short refused": 0}
    folder = sys.argv[1]
    for ext in (".png", ".jpg", ".bmp", ".tif", ".webp", ".ppm", ".jp2", ".hdr", ".ras"):
        src = image.astype(np.float32) / 255 if ext == ".hdr" else image
        data = cv2.imencode(ext, src)[1].tobytes()
        variants = [data[:n] for n in (0, 1, 8, 16, 30, 60, len(data) // 2, len(data) - 1)]
        for k in range(12):  # flipped bytes, header and body
            flipped = bytearray(data)
            for at in rng.integers(0, len(data), 1 + k):
                flipped[at] ^= 0xFF
            variants.append(bytes(flipped))
        for i, v in enumerate(variants):
            path = f"{folder}/f{i}{ext}"
            open(path, "wb").write(v)
            try:
                out = read_image(path)
                assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
                outcomes["ok"] += 1
            except FrameError as exc:
                assert "\\n" not in str(exc) and "OpenCV(" not in str(exc), str(exc)
                outcomes["FrameError"] += 1
                outcomes["short refused"] += len(v) <= 60
    print(outcomes["ok"], outcomes["FrameError"], outcomes["short refused"])
"""


def test_damaged_files_of_every_format_decode_or_raise_frame_error(tmp_path):
    result = _python(_FUZZ, tmp_path)
    _assert_clean(result)
    assert result.returncode == 0, result.stderr
    ok, refused, short_refused = map(int, result.stdout.split())
    assert ok + refused == 9 * 20
    assert short_refused == 9 * 6  # no format decodes from its first 60 bytes or fewer


_VIDEO_FUZZ = """
    import sys
    from pathlib import Path
    import cv2, numpy as np
    from dpose_core.errors import FrameError
    from dpose_core.frames import open_frames
    folder = Path(sys.argv[1])
    rng = np.random.default_rng(0)
    good = {}
    for fourcc, ext in (("MJPG", ".avi"), ("mp4v", ".mp4")):
        path = folder / f"good{ext}"
        writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 25, (64, 48))
        for i in range(8):
            writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
        writer.release()
        good[ext] = path.read_bytes()
    variants = []
    for ext, data in good.items():
        variants += [(ext, data[:n]) for n in (0, 1, 12, 100, 1000, len(data) // 2)]
        for k in range(10):
            flipped = bytearray(data)
            for at in rng.integers(0, len(data), 1 + 4 * k):
                flipped[at] ^= 0xFF
            variants.append((ext, bytes(flipped)))
    variants.append((".mp4", rng.bytes(4000)))
    refused = iterated = 0
    for i, (ext, data) in enumerate(variants):
        path = folder / f"v{i}{ext}"
        path.write_bytes(data)
        try:
            source = open_frames(path)
        except FrameError as exc:
            assert "\\n" not in str(exc)
            refused += 1
            continue
        records = list(source)
        assert source.skipped == sum(r.span for r in records if not r.ok)
        iterated += 1
    print(refused, iterated)
"""


def test_damaged_video_files_open_cleanly_or_are_refused(tmp_path):
    result = _python(_VIDEO_FUZZ, tmp_path)
    _assert_clean(result)
    assert result.returncode == 0, result.stderr
    refused, iterated = map(int, result.stdout.split())
    assert refused + iterated == 2 * 16 + 1 and refused >= 2 * 3 + 1  # 0, 1 and 12 bytes
    assert result.stderr == ""  # FFmpeg's own complaints are silenced


# --- the CLI end to end on the random-weight checkpoint --------------------------------------


@pytest.fixture(scope="module")
def small_images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("small")
    paths = {}
    for name, (h, w) in {"one_1x1.png": (1, 1), "thumb_96x96.jpg": (96, 96),
                         "strip_128x64.png": (64, 128), "pano_3000x300.jpg": (300, 3000)}.items():
        paths[name] = folder / name
        cv2.imwrite(str(paths[name]), _noise(h, w, seed=h + w))
    paths["empty.jpg"] = folder / "empty.jpg"
    paths["empty.jpg"].write_bytes(b"")
    paths["garbage.png"] = folder / "garbage.png"
    paths["garbage.png"].write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    return paths


@pytest.mark.parametrize("name", ["one_1x1.png", "thumb_96x96.jpg"])
def test_cli_estimates_a_tiny_image(tmp_path, name, small_images, checkpoint_path,
                                    onnx_cache_dir):
    out = tmp_path / "x.json"
    result = _dpose("estimate", small_images[name], "--checkpoint", checkpoint_path, "-o", out,
                    cache_dir=onnx_cache_dir)
    _assert_clean(result)
    assert result.returncode == 0, result.stderr
    lines = _lines(result.stderr)
    assert len(lines) == 1 and lines[0].startswith(f"wrote {out}: 1 person crop(s) in 1 image(s)")
    doc = json.loads(out.read_text())
    assert doc["image_index"] == [0]


def test_cli_batch_skips_unreadable_and_oversized_images(tmp_path, small_images, huge_png,
                                                         checkpoint_path, onnx_cache_dir):
    inputs = [small_images["strip_128x64.png"], small_images["empty.jpg"],
              small_images["pano_3000x300.jpg"], small_images["garbage.png"], huge_png]
    out = tmp_path / "batch.json"
    result = _dpose("estimate", *inputs, "--checkpoint", checkpoint_path, "-o", out,
                    cache_dir=onnx_cache_dir)
    _assert_clean(result)
    assert result.returncode == 1, result.stderr  # done, but not everything: say so
    skipped = [ln for ln in _lines(result.stderr) if ln.startswith("dpose: skipped: ")]
    assert skipped == [
        f"dpose: skipped: Cannot read image {inputs[1]}: the file is empty (0 bytes).",
        f"dpose: skipped: Cannot decode image {inputs[3]}: the file is corrupt or not an image "
        "format OpenCV reads (.png, .jpg, .jpeg, .bmp, .tif, .tiff, .webp, .jp2, .pgm, .ppm, "
        ".pnm, .exr, .hdr).",
        f"dpose: skipped: Image {huge_png} is 20000x20000 (400 MP), over the 120 MP limit that "
        "keeps memory bounded; downscale it first (e.g. to 10954 px wide).",
    ]
    assert _lines(result.stderr)[-1] == "dpose: 3 of 5 images skipped (listed above)"
    assert json.loads(out.read_text())["image_index"] == [0, 2]
    assert _peak_mb(result) < 1800  # ~1.1 GB with the network loaded; 11.8 GB before the guard


def test_cli_refuses_a_huge_image_in_one_line(tmp_path, huge_png, checkpoint_path,
                                              onnx_cache_dir):
    out = tmp_path / "x.json"
    result = _dpose("estimate", huge_png, "--checkpoint", checkpoint_path, "-o", out,
                    cache_dir=onnx_cache_dir)
    _assert_clean(result)
    assert result.returncode == 2
    assert _lines(result.stderr) == [
        f"dpose: error: Image {huge_png} is 20000x20000 (400 MP), over the 120 MP limit that "
        "keeps memory bounded; downscale it first (e.g. to 10954 px wide)."]
    assert not out.exists()
    assert _peak_mb(result) < 1800  # decoding alone would add 1.2 GB or more


def _write_clip(path: Path, n: int, size=(160, 90)) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, size)
    assert writer.isOpened()
    for i in range(n):
        writer.write(_noise(size[1], size[0], seed=i))
    writer.release()


def test_cli_small_video_with_automatic_person_finding(tmp_path, checkpoint_path,
                                                       onnx_cache_dir):
    clip = tmp_path / "small_160x90.avi"
    _write_clip(clip, 4)
    out = tmp_path / "motion.npz"
    result = _dpose("estimate", clip, "--ground", "off",  # guards, not grounding
                    "--checkpoint", checkpoint_path, "-o", out,
                    cache_dir=onnx_cache_dir)
    _assert_clean(result)
    assert result.returncode == 0, result.stderr
    with np.load(out, allow_pickle=False) as motion:
        assert motion["dpose_frame_indices"].tolist() == [0, 1, 2, 3]


def _damage_avi_frames(path: Path, frames: set[int]) -> None:
    """Overwrite the JPEG bytes of the given frames of an MJPG AVI with noise."""
    data = bytearray(path.read_bytes())
    pos, k = data.index(b"movi") + 4, 0
    rng = np.random.default_rng(1)
    while pos + 8 <= len(data) and data[pos:pos + 4] != b"idx1":
        size = int.from_bytes(data[pos + 4:pos + 8], "little")
        if data[pos + 2:pos + 4] == b"dc":
            if k in frames:
                data[pos + 8:pos + 8 + size] = rng.integers(0, 256, size, np.uint8).tobytes()
            k += 1
        pos += 8 + size + (size & 1)
    path.write_bytes(bytes(data))


def test_cli_video_damaged_in_the_middle_goes_on(tmp_path, checkpoint_path, onnx_cache_dir):
    clip = tmp_path / "damaged.avi"
    _write_clip(clip, 7)
    _damage_avi_frames(clip, {3, 4, 5})
    out = tmp_path / "motion.npz"
    result = _dpose("estimate", clip, "--ground", "off",  # guards, not grounding
                    "--checkpoint", checkpoint_path, "-o", out,
                    f"--bbox={BOX}", cache_dir=onnx_cache_dir)
    _assert_clean(result)
    assert result.returncode == 1, result.stderr  # finished, and says frames were skipped
    assert _lines(result.stderr) == [  # nothing from FFmpeg, each damaged frame once
        f"dpose: skipped: Frame {i} of damaged.avi could not be decoded (damaged data); skipped."
        for i in (3, 4, 5)] + ["dpose: 3 of 7 frames skipped or unsolved (listed above)"]
    with np.load(out, allow_pickle=False) as motion:  # the gap is filled in and flagged
        assert motion["dpose_frame_indices"].tolist() == list(range(7))
        assert (motion["dpose_flags"][[3, 4, 5]] & FLAG_INTERPOLATED).all()


def test_cli_folder_with_an_empty_frame_skips_it(tmp_path, checkpoint_path, onnx_cache_dir):
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(4):
        cv2.imwrite(str(folder / f"frame{i}.png"), _noise(90, 160, seed=i))
    (folder / "frame2.png").write_bytes(b"")
    out = tmp_path / "motion.npz"
    result = _dpose("estimate", folder, "--ground", "off",  # guards, not grounding
                    "--checkpoint", checkpoint_path, "-o", out,
                    f"--bbox={BOX}", cache_dir=onnx_cache_dir)
    _assert_clean(result)
    assert result.returncode == 1, result.stderr  # finished, and says a frame was skipped
    assert _lines(result.stderr) == [f"dpose: skipped: Cannot read image "
                                     f"{folder / 'frame2.png'}: the file is empty (0 bytes).",
                                     "dpose: 1 of 4 frames skipped or unsolved (listed above)"]
    with np.load(out, allow_pickle=False) as motion:
        assert motion["dpose_frame_indices"].tolist() == [0, 1, 2, 3]
        assert motion["dpose_flags"][2] & FLAG_INTERPOLATED
