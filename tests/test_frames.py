"""Frame sources: videos, folders, single images, pixel formats, EXIF, ranges and failures."""

import cv2
import numpy as np
import pytest

from dpose_core.errors import FrameError
from dpose_core.frames import (
    MAX_IMAGE_PIXELS,
    FrameSource,
    exif_orientation,
    list_images,
    open_frames,
    read_image,
    to_rgb8,
)
from dpose_core.image_header import image_size


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


def test_truncated_video_reports_the_unreadable_rest_once(tmp_path):
    path = tmp_path / "clip.avi"
    _write_video(path, "MJPG")
    data = path.read_bytes()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.8)])
    src = open_frames(cut)
    records = list(src)
    good = [r for r in records if r.ok]
    assert 3 <= len(good) < 12
    assert [r.index for r in good] == list(range(len(good)))
    rest = records[len(good):]
    assert len(rest) == 1 and not rest[0].ok
    assert rest[0].index == len(good) and rest[0].span == 12 - len(good)
    assert f"Frames {len(good)}-11 of cut.avi could not be decoded" in rest[0].error
    assert "truncated" in rest[0].error
    assert src.skipped_frames == list(range(len(good), 12)) and src.skipped == 12 - len(good)


def _avi_frame_chunks(data: bytes) -> list[tuple[int, int]]:
    """(payload offset, size) of each video frame chunk in the 'movi' list of an AVI file."""
    movi = data.index(b"movi") + 4
    chunks, pos = [], movi
    while pos + 8 <= len(data) and data[pos:pos + 4] != b"idx1":
        tag, size = data[pos:pos + 4], int.from_bytes(data[pos + 4:pos + 8], "little")
        if tag[2:] == b"dc":
            chunks.append((pos + 8, size))
        pos += 8 + size + (size & 1)
    return chunks


def _damaged_avi(tmp_path, damaged: set[int], n: int = 14):
    """An MJPG clip whose frames in `damaged` have their JPEG bytes overwritten with noise."""
    path = tmp_path / "clip.avi"
    _write_video(path, "MJPG", n=n)
    data = bytearray(path.read_bytes())
    chunks = _avi_frame_chunks(bytes(data))
    assert len(chunks) == n
    rng = np.random.default_rng(0)
    for k in damaged:
        offset, size = chunks[k]
        data[offset:offset + size] = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
    bad = tmp_path / "damaged.avi"
    bad.write_bytes(bytes(data))
    return bad


def test_video_damaged_in_the_middle_goes_on_and_reports_each_frame_once(tmp_path):
    damaged = {4, 5, 6, 7, 8, 11}
    src = open_frames(_damaged_avi(tmp_path, damaged))
    records = list(src)
    assert [r.index for r in records] == list(range(14))
    assert [r.index for r in records if not r.ok] == sorted(damaged)
    assert all(r.span == 1 for r in records)
    for r in records:
        if r.ok:  # later frames are the right frames, not shifted by the damage
            assert abs(float(r.image[16:, 16:].mean()) - _level(r.index)) < 6
        else:
            assert r.error == (f"Frame {r.index} of damaged.avi could not be decoded "
                               "(damaged data); skipped.")
    assert src.skipped_frames == sorted(damaged) and src.skipped == 6
    list(src)  # a second pass counts afresh
    assert src.skipped == 6


def test_damaged_video_with_range_and_stride(tmp_path):
    src = open_frames(_damaged_avi(tmp_path, {4, 5, 6, 7, 8, 11}), start=1, end=13, stride=2)
    records = list(src)
    assert [(r.index, r.ok) for r in records] == [
        (1, True), (3, True), (5, False), (7, False), (9, True), (11, False)]
    for r in records:
        if r.ok:
            assert abs(float(r.image[16:, 16:].mean()) - _level(r.index)) < 6
    assert src.skipped_frames == [5, 7, 11]


def test_mp4_damaged_in_the_middle_keeps_every_index_once(tmp_path):
    path = tmp_path / "clip.mp4"
    _write_video(path, "mp4v", n=12)
    data = bytearray(path.read_bytes())
    mdat = data.index(b"mdat") - 4  # box: 4-byte size, 4-byte type, payload
    size = int.from_bytes(data[mdat:mdat + 4], "big")
    at = mdat + 8 + (size - 8) // 2
    data[at:at + 300] = bytes(300)
    (tmp_path / "bad.mp4").write_bytes(bytes(data))
    src = open_frames(tmp_path / "bad.mp4")
    records = list(src)
    assert [r.index for r in records] == list(range(12))
    assert 1 <= src.skipped < 12 and records[-1].ok
    assert src.skipped_frames == [r.index for r in records if not r.ok]


def test_video_over_the_pixel_budget_is_refused_before_decoding(tmp_path):
    path = tmp_path / "clip.avi"
    _write_video(path, "MJPG")
    with pytest.raises(FrameError, match=r"Video .*clip.avi is 64x48 \(0 MP\), over the 0 MP"):
        open_frames(path, max_pixels=64 * 48 - 1)
    assert len(list(open_frames(path, max_pixels=64 * 48))) == 12


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
    assert src.skipped_frames == [2] and src.skipped == 1
    assert [r.index for r in open_frames(tmp_path, start=1, stride=2)] == [1, 3]


def test_folder_with_an_empty_frame_skips_it(tmp_path):
    for i in range(4):
        cv2.imwrite(str(tmp_path / f"f{i}.png"), np.full((8, 8, 3), 10 * i, np.uint8))
    (tmp_path / "f2.png").write_bytes(b"")
    src = open_frames(tmp_path)
    records = list(src)
    assert [r.ok for r in records] == [True, True, False, True]
    empty = tmp_path / "f2.png"
    assert records[2].error == f"Cannot read image {empty}: the file is empty (0 bytes)."
    assert src.skipped_frames == [2]


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


def _encoded(ext: str) -> bytes:
    ok, buf = cv2.imencode(ext, np.random.default_rng(0).integers(0, 256, (30, 50, 3), np.uint8))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize("name,data,reason", [
    ("empty.png", b"", "the file is empty (0 bytes)"),
    ("noise.jpg", np.random.default_rng(1).bytes(5000), "the file is corrupt or not an image"),
    ("text.png", b"hello, not a picture\n", "the file is corrupt or not an image"),
    ("header_only.png", _encoded(".png")[:40], "the file is corrupt or truncated"),
    ("half.jpg", _encoded(".jpg")[:300], "the file is corrupt or truncated"),
    ("half.webp", _encoded(".webp")[:60], "the file is corrupt or truncated"),
])
def test_unreadable_images_raise_one_clean_frame_error(tmp_path, name, data, reason):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(FrameError) as info:
        read_image(path)
    message = str(info.value)
    assert reason in message and str(path) in message and "\n" not in message
    assert "OpenCV(" not in message and "Assertion" not in message


def test_pixel_budget_is_checked_on_the_header(tmp_path):
    path = tmp_path / "wide.png"
    cv2.imwrite(str(path), np.zeros((30, 500, 3), np.uint8))
    assert read_image(path, max_pixels=30 * 500).shape == (30, 500, 3)
    with pytest.raises(FrameError) as info:
        read_image(path, max_pixels=30 * 500 - 1)
    assert str(info.value) == (f"Image {path} is 500x30 (0 MP), over the 0 MP limit that keeps "
                               "memory bounded; downscale it first (e.g. to 499 px wide).")
    assert MAX_IMAGE_PIXELS == 120_000_000


def test_band_conversion_matches_whole_image_formula():
    rng = np.random.default_rng(3)
    bgra16 = rng.integers(0, 65536, (700, 1800, 4), dtype=np.uint16)  # > 1 band of rows
    f = bgra16.astype(np.float64)
    expected = np.clip(np.rint(f[..., :3] / 257 * np.clip(f[..., 3:] / 65535, 0, 1)), 0, 255)
    out = to_rgb8(bgra16)
    assert out.shape == (700, 1800, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected[..., ::-1].astype(int)).max() <= 1
    gray = rng.integers(0, 256, (5, 7), dtype=np.uint8)
    np.testing.assert_array_equal(to_rgb8(gray), np.repeat(gray[..., None], 3, axis=2))
    with pytest.raises(FrameError, match="int16 images are not supported"):
        to_rgb8(np.zeros((2, 2), np.int16))
    with pytest.raises(FrameError, match="bool images are not supported"):
        to_rgb8(np.zeros((2, 2), bool))


def test_png_exif_chunk_orientation(tmp_path):
    from PIL import Image

    exif = Image.Exif()
    exif[0x0112] = 8  # stored rotated: turn 90 degrees counter-clockwise to view
    path = tmp_path / "rot.png"
    Image.fromarray(_asymmetric_rgb()).save(path, exif=exif.tobytes())
    assert exif_orientation(path.read_bytes()) == 8
    np.testing.assert_array_equal(read_image(path), np.rot90(_asymmetric_rgb(), 1))


def _pil_bytes(fmt: str, array: np.ndarray, **options) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, fmt, **options)
    return buffer.getvalue()


def test_image_size_from_headers_of_every_decoded_format():
    rgb = np.random.default_rng(2).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    encoded = {ext: cv2.imencode(ext, rgb)[1].tobytes()
               for ext in (".png", ".jpg", ".bmp", ".tif", ".webp", ".ppm", ".pam", ".jp2",
                           ".ras")}
    encoded[".pgm"] = cv2.imencode(".pgm", rgb[..., 0])[1].tobytes()
    encoded[".pbm"] = cv2.imencode(".pbm", rgb[..., 0])[1].tobytes()
    encoded[".hdr"] = cv2.imencode(".hdr", rgb.astype(np.float32) / 255)[1].tobytes()
    encoded[".pfm"] = cv2.imencode(".pfm", rgb.astype(np.float32) / 255)[1].tobytes()
    encoded["progressive.jpg"] = _pil_bytes("JPEG", rgb, progressive=True)
    encoded["lzw.tif"] = _pil_bytes("TIFF", rgb, compression="tiff_lzw")
    encoded["lossless.webp"] = _pil_bytes("WEBP", rgb, lossless=True)
    encoded["alpha.webp"] = _pil_bytes("WEBP", np.dstack([rgb, rgb[..., :1]]))
    encoded["pil.jp2"] = _pil_bytes("JPEG2000", rgb)
    encoded["rgba16.png"] = cv2.imencode(".png", np.dstack([rgb, rgb[..., :1]]).astype(
        np.uint16) * 257)[1].tobytes()
    sizes = {name: image_size(data) for name, data in encoded.items()}
    assert sizes == dict.fromkeys(encoded, (53, 37))


def test_image_size_of_non_images_is_none():
    png = cv2.imencode(".png", np.zeros((5, 6, 3), np.uint8))[1].tobytes()
    for data in (b"", b"\x89PNG", png[:20], b"BM", b"GIF89a\x05\x00\x06\x00", b"P6\n# x\n",
                 b"RIFF\x00\x00\x00\x00WEBPVP8 ", np.random.default_rng(0).bytes(300),
                 png[:16] + b"\x00" * 8):  # zero width and height
        assert image_size(data) is None
