"""Frame sources: videos, folders, single images, pixel formats, EXIF, ranges and failures."""

import cv2
import numpy as np
import pytest

from dpose_core.errors import FrameError
from dpose_core.frames import (
    FrameSource,
    exif_orientation,
    list_images,
    open_frames,
    read_image,
    to_rgb8,
)


def _level(i: int) -> int:
    return 20 + 15 * i


def _write_video(path, fourcc: str, n: int = 12, fps: float = 25.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (64, 48))
    assert writer.isOpened()
    for i in range(n):
        frame = np.full((48, 64, 3), _level(i), np.uint8)
        frame[:8, :8] = (0, 0, 255)  # red in BGR: checks the RGB conversion
        writer.write(frame)
    writer.release()


@pytest.mark.parametrize("name,fourcc", [("clip.avi", "MJPG"), ("clip.mp4", "mp4v")])
def test_video_frames_count_fps_and_content(tmp_path, name, fourcc):
    path = tmp_path / name
    _write_video(path, fourcc)
    src = open_frames(path)
    assert src.kind == "video" and src.fps == pytest.approx(25.0) and len(src) == 12
    records = list(src)
    assert [r.index for r in records] == list(range(12))
    for r in records:
        assert r.ok and r.image.dtype == np.uint8 and r.image.shape == (48, 64, 3)
        assert abs(float(r.image[16:, 16:].mean()) - _level(r.index)) < 6
        assert r.time_s == pytest.approx(r.index / 25.0)
    red = records[0].image[2:6, 2:6].mean(axis=(0, 1))
    assert red[0] > 150 and red[2] < 100  # RGB order


def test_video_range_and_stride(tmp_path):
    path = tmp_path / "clip.avi"
    _write_video(path, "MJPG")
    src = open_frames(path, start=3, end=10, stride=2)
    records = list(src)
    assert [r.index for r in records] == [3, 5, 7, 9] and len(src) == 4
    for r in records:
        assert abs(float(r.image[16:, 16:].mean()) - _level(r.index)) < 6


def test_corrupt_video_raises_clear_error(tmp_path):
    path = tmp_path / "broken.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(FrameError, match="Cannot open .* as a video"):
        open_frames(path)


def test_truncated_video_reports_failed_frames(tmp_path):
    path = tmp_path / "clip.avi"
    _write_video(path, "MJPG")
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.8)])
    records = list(open_frames(cut))
    good = [r for r in records if r.ok]
    bad = [r for r in records if not r.ok]
    assert 0 < len(good) < 12 and bad
    assert "could not be decoded" in bad[0].error and "Stopping" in bad[-1].error
    assert bad[0].index == good[-1].index + 1


def test_folder_natural_sort_fps_and_skipped_corrupt_file(tmp_path):
    for i in (1, 2, 10, 11):
        cv2.imwrite(str(tmp_path / f"frame{i}.png"), np.full((8, 8, 3), i * 10, np.uint8))
    (tmp_path / "frame3.png").write_bytes(b"not a png at all")
    (tmp_path / "notes.txt").write_text("ignored")
    assert [p.name for p in list_images(tmp_path)] == [
        "frame1.png", "frame2.png", "frame3.png", "frame10.png", "frame11.png"]
    src = open_frames(tmp_path, fps=12.0)
    assert src.kind == "folder" and src.fps == 12.0 and len(src) == 5
    records = list(src)
    assert [r.ok for r in records] == [True, True, False, True, True]
    assert "frame3.png" in records[2].error
    assert [int(r.image[0, 0, 0]) for r in records if r.ok] == [10, 20, 100, 110]
    assert [r.index for r in open_frames(tmp_path, start=1, stride=2)] == [1, 3]


def test_single_image_source(tmp_path):
    path = tmp_path / "one.jpg"
    cv2.imwrite(str(path), np.zeros((10, 20, 3), np.uint8))
    records = list(FrameSource(path))
    assert len(records) == 1 and records[0].image.shape == (10, 20, 3)


def test_pixel_formats_become_uint8_rgb(tmp_path):
    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[..., 0] = 200  # red
    rgb[..., 2] = 30
    cv2.imwrite(str(tmp_path / "rgb8.png"), rgb[..., ::-1])
    np.testing.assert_array_equal(read_image(tmp_path / "rgb8.png"), rgb)

    rgb16 = rgb.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "rgb16.png"), rgb16[..., ::-1])
    assert cv2.imread(str(tmp_path / "rgb16.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    np.testing.assert_array_equal(read_image(tmp_path / "rgb16.png"), rgb)

    gray = np.arange(42, dtype=np.uint8).reshape(6, 7) * 5
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    out = read_image(tmp_path / "gray.png")
    assert out.shape == (6, 7, 3)
    np.testing.assert_array_equal(out[..., 1], gray)

    gray16 = gray.astype(np.uint16) * 257
    cv2.imwrite(str(tmp_path / "gray16.png"), gray16)
    np.testing.assert_array_equal(read_image(tmp_path / "gray16.png")[..., 2], gray)

    bgra = np.dstack([rgb[..., ::-1], np.full((6, 7), 255, np.uint8)])
    bgra[0, 0, 3] = 0  # fully transparent pixel -> black
    cv2.imwrite(str(tmp_path / "rgba.png"), bgra)
    out = read_image(tmp_path / "rgba.png")
    assert out.shape == (6, 7, 3)
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])
    np.testing.assert_array_equal(out[1:, 1:], rgb[1:, 1:])

    assert to_rgb8(np.ones((2, 2), np.float32)).max() == 255


def _asymmetric_rgb() -> np.ndarray:
    img = np.zeros((40, 60, 3), np.uint8)
    img[:20, :30] = (255, 0, 0)  # red top-left
    img[:20, 30:] = (0, 255, 0)  # green top-right
    img[20:, :30] = (0, 0, 255)  # blue bottom-left
    img[20:, 30:] = (255, 255, 255)
    return img


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_exif_orientation_matches_pillow(tmp_path, orientation):
    from PIL import Image, ImageOps

    path = tmp_path / f"o{orientation}.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(_asymmetric_rgb()).save(path, quality=95, exif=exif.tobytes())
    assert exif_orientation(path.read_bytes()) == orientation
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))
    ours = read_image(path)
    assert ours.shape == expected.shape
    assert np.abs(ours.astype(int) - expected.astype(int)).mean() < 3


def test_hand_crafted_exif_segment(tmp_path):
    ok, jpg = cv2.imencode(".jpg", _asymmetric_rgb()[..., ::-1])
    data = jpg.tobytes()
    # Big-endian TIFF header, one IFD entry: Orientation (0x0112), SHORT, count 1, value 6.
    tiff = b"MM\x00\x2a\x00\x00\x00\x08" + b"\x00\x01" + b"\x01\x12\x00\x03\x00\x00\x00\x01"
    tiff += b"\x00\x06\x00\x00" + b"\x00\x00\x00\x00"
    payload = b"Exif\x00\x00" + tiff
    app1 = b"\xff\xe1" + (len(payload) + 2).to_bytes(2, "big") + payload
    path = tmp_path / "rot.jpg"
    path.write_bytes(data[:2] + app1 + data[2:])
    out = read_image(path)
    assert out.shape == (60, 40, 3)  # rotated 90 degrees clockwise
    assert out[5, 35, 0] > 200 and out[5, 35, 1] < 60  # red ends top-right


def test_missing_and_empty_inputs(tmp_path):
    with pytest.raises(FrameError, match="does not exist"):
        open_frames(tmp_path / "nope.mp4")
    with pytest.raises(FrameError, match="No images"):
        open_frames(tmp_path)
    with pytest.raises(FrameError, match="Cannot decode"):
        bad = tmp_path / "x.png"
        bad.write_bytes(b"\x89PNG garbage")
        read_image(bad)


def test_png_exif_chunk_orientation(tmp_path):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated: turn 90 degrees counter-clockwise to view
    path = tmp_path / "rot.png"
    Image.fromarray(_asymmetric_rgb()).save(path, exif=exif.tobytes())
    assert exif_orientation(path.read_bytes()) == 8
    np.testing.assert_array_equal(read_image(path), np.rot90(_asymmetric_rgb(), 1))
