"""Frame sources: videos, image folders and single images, streamed as uint8 RGB.

Every consumer (CLI, Blender panel, headless runs) needs the same thing: frames one at a time
with bounded memory, in the right orientation, with the clip's frame rate, and a failed frame
reported rather than fatal. Iterating a `FrameSource` yields `FrameRecord`s; a record whose
`image` is None says which frame failed and why, so callers can report and carry on, and the
source counts them (`skipped`). Nothing reaches an OpenCV decoder that can exhaust memory: the
image size is read from the file header (or the video's stream info) and checked against a
pixel budget first (docs/native-guards.md).
Only OpenCV and numpy are used, so this runs inside Blender.
"""

from __future__ import annotations

import math
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FrameError
from .image_header import image_size

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pnm",
    ".exr", ".hdr",
)
VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".gif",
    ".mts", ".m2ts", ".ts", ".3gp",
)
DEFAULT_FOLDER_FPS = 30.0
# Largest image or video frame decoded: 120 MP covers 100 MP medium-format cameras and 108 MP
# phone sensors; an 8-bit RGB frame of that size is 360 MB (docs/native-guards.md).
MAX_IMAGE_PIXELS = 120_000_000
# Undecodable frames running to the end of a video are reported in one record from this many.
_TAIL_RUN = 2
_BAND_PIXELS = 1 << 20  # pixels converted at a time, so float intermediates stay small


@dataclass
class FrameRecord:
    """One frame of a source. `image` is None when the frame could not be read (`error` says why).

    `index` is the frame number in the source (before stride), `time_s` = index / fps.
    `span`: how many of the iteration's frames this record stands for; more than 1 only for a
    failed record covering the unreadable rest of a truncated video (reported once, not once per
    frame).
    """

    index: int
    time_s: float
    image: np.ndarray | None
    error: str | None = None
    path: str | None = None
    span: int = 1

    @property
    def ok(self) -> bool:
        return self.image is not None


def natural_key(name: str) -> list:
    """Sort key placing frame2 before frame10 (digit runs compare as numbers)."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside `folder`, in natural order."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS]
    return sorted(files, key=lambda p: natural_key(p.name))


# --- pixel formats -------------------------------------------------------------------------


def to_rgb8(image: np.ndarray, *, bgr: bool = True) -> np.ndarray:
    """Any decoded image (gray, gray+alpha, BGR, BGRA; uint8/uint16/float) -> (H,W,3) uint8 RGB.

    16-bit is scaled by 1/257 (65535 -> 255), floats are taken as 0-1. Alpha is composited over
    black, the same fill the network's crop uses outside the image. Converted in bands of rows,
    so the float intermediates of a large frame stay small.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3) or img.size == 0:
        raise FrameError(f"Unsupported image shape {img.shape}; expected (H, W) or (H, W, C).")
    if img.dtype == np.uint8:
        scale = None
    elif img.dtype == np.uint16:
        scale = 1.0 / 257.0
    elif np.issubdtype(img.dtype, np.signedinteger) or not np.issubdtype(img.dtype, np.number):
        raise FrameError(f"{img.dtype} images are not supported; convert to 8 or 16-bit "
                         "unsigned.")
    else:
        scale = 255.0
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    if channels not in (1, 2, 3, 4):
        raise FrameError(f"Unsupported channel count {channels}; expected 1 to 4.")
    if scale is None and channels == 1:
        return np.ascontiguousarray(np.broadcast_to(img, img.shape[:2] + (3,)))
    if scale is None and channels == 3:
        return np.ascontiguousarray(img[:, :, ::-1] if bgr else img)
    height, width = img.shape[:2]
    out = np.empty((height, width, 3), np.uint8)
    rows = max(1, _BAND_PIXELS // width)
    for y in range(0, height, rows):
        out[y:y + rows] = _band_to_rgb8(img[y:y + rows], scale, bgr)
    return out


def _band_to_rgb8(band: np.ndarray, scale: float | None, bgr: bool) -> np.ndarray:
    """Rows of a (h,w,C) image -> (h,w,3) or broadcastable (h,w,1) uint8, colour order RGB."""
    channels = band.shape[2]
    alpha = None
    if channels in (2, 4):
        band, alpha = band[:, :, :channels - 1], band[:, :, channels - 1:]
    out = band.astype(np.float32)
    if scale is not None:
        out *= scale
    if alpha is not None:
        a = alpha.astype(np.float32) * (scale if scale is not None else 1.0) / 255.0
        out *= np.clip(a, 0.0, 1.0)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    return out[:, :, ::-1] if bgr and out.shape[2] == 3 else out


# --- EXIF orientation ----------------------------------------------------------------------


def _tiff_orientation(tiff: bytes) -> int:
    """Orientation tag (0x0112) from a TIFF/EXIF block's IFD0; 1 when absent or malformed."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    endian = "<" if tiff[:2] == b"II" else ">"
    try:
        (ifd_offset,) = struct.unpack(endian + "I", tiff[4:8])
        (count,) = struct.unpack(endian + "H", tiff[ifd_offset:ifd_offset + 2])
        for i in range(count):
            entry = tiff[ifd_offset + 2 + 12 * i: ifd_offset + 14 + 12 * i]
            tag, typ = struct.unpack(endian + "HH", entry[:4])
            if tag == 0x0112 and typ == 3:
                (value,) = struct.unpack(endian + "H", entry[8:10])
                return int(value) if 1 <= value <= 8 else 1
    except struct.error:
        return 1
    return 1


def exif_orientation(data: bytes) -> int:
    """EXIF orientation (1-8) of an encoded JPEG, PNG (eXIf chunk) or TIFF; 1 when none."""
    if data[:2] == b"\xff\xd8":  # JPEG: walk the marker segments up to the scan
        pos = 2
        while pos + 4 <= len(data):
            if data[pos] != 0xFF:
                return 1
            marker = data[pos + 1]
            if marker in (0xD9, 0xDA):
                return 1
            if marker == 0x01 or 0xD0 <= marker <= 0xD7:
                pos += 2
                continue
            (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
            segment = data[pos + 4:pos + 2 + length]
            if marker == 0xE1 and segment.startswith(b"Exif\x00\x00"):
                return _tiff_orientation(segment[6:])
            pos += 2 + length
        return 1
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        pos = 8
        while pos + 8 <= len(data):
            length, ctype = struct.unpack(">I4s", data[pos:pos + 8])
            if ctype == b"eXIf":
                return _tiff_orientation(data[pos + 8:pos + 8 + length])
            if ctype in (b"IDAT", b"IEND"):
                return 1
            pos += 12 + length
        return 1
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return _tiff_orientation(data)
    return 1


def apply_orientation(image: np.ndarray, orientation: int) -> np.ndarray:
    """Turn a stored image upright according to its EXIF orientation (1-8)."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.swapaxes(a[::-1, ::-1], 0, 1),
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops.get(orientation, ops[1])(image))


def read_image(path: str | Path, *, max_pixels: int = MAX_IMAGE_PIXELS) -> np.ndarray:
    """Read one image file as upright (H,W,3) uint8 RGB, honouring EXIF orientation.

    The size is read from the file header first: an image over `max_pixels` is refused before
    any decoding (a small file can decode to gigabytes). Raises FrameError when the file is
    missing, empty, corrupt, not an image or too large; never an OpenCV error.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FrameError(f"Cannot read image {path}: {exc.strerror or exc}.") from exc
    if not data:
        raise FrameError(f"Cannot read image {path}: the file is empty (0 bytes).")
    size = image_size(data)
    if size is None:
        raise FrameError(f"Cannot decode image {path}: the file is corrupt or not an image "
                         f"format OpenCV reads ({', '.join(IMAGE_EXTENSIONS)}).")
    check_pixel_budget(size[0], size[1], f"Image {path}", max_pixels)
    cv2 = _cv2()
    try:  # without OpenCV's own rotation, keeping depth and alpha; orientation applied below
        decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise FrameError(f"Cannot decode image {path}: {_cv2_reason(exc)}.") from exc
    if decoded is None:
        raise FrameError(f"Cannot decode image {path}: the file is corrupt or truncated.")
    check_pixel_budget(decoded.shape[1], decoded.shape[0], f"Image {path}", max_pixels)
    if decoded.dtype == np.uint8 and decoded.ndim == 3 and decoded.shape[2] == 3:
        rgb = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB, dst=decoded)  # in place: no second copy
    else:
        rgb = to_rgb8(decoded)
    del decoded
    return apply_orientation(rgb, exif_orientation(data))


def check_pixel_budget(width: int, height: int, what: str,
                       max_pixels: int = MAX_IMAGE_PIXELS) -> None:
    """FrameError when a width x height frame is over the decode budget (or has no pixels)."""
    if width <= 0 or height <= 0:
        raise FrameError(f"{what} has no pixels ({width}x{height}).")
    pixels = int(width) * int(height)
    if pixels > max_pixels:
        side = int(math.sqrt(max_pixels * width / height))
        raise FrameError(
            f"{what} is {width}x{height} ({pixels / 1e6:.0f} MP), over the {max_pixels / 1e6:.0f}"
            f" MP limit that keeps memory bounded; downscale it first (e.g. to {side} px wide).")


def _cv2_reason(exc: Exception) -> str:
    """The one informative line of an OpenCV exception (its text spans several lines)."""
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    text = lines[-1] if lines else type(exc).__name__
    return text.split(") ", 1)[-1] if text.startswith("OpenCV(") else text


# --- sources -------------------------------------------------------------------------------


class FrameSource:
    """A re-iterable stream of FrameRecords over a frame range [start, end) with a stride.

    Attributes: `kind` ("video", "folder" or "image"), `fps` (of the source; strided frames
    keep their source index and time), `total_frames` (in the source, None if unknown),
    `skipped_frames` (source indices of the frames the latest iteration could not read; see
    `skipped`). `len()` gives the number of frames the iteration visits (estimated for videos).
    A damaged video frame is reported once and reading goes on past it; damaged frames that
    run to the end of the listed frames (a truncated file) are reported in one record
    (`FrameRecord.span`). See docs/native-guards.md.
    """

    def __init__(self, path: str | Path, *, start: int = 0, end: int | None = None,
                 stride: int = 1, fps: float | None = None,
                 max_pixels: int = MAX_IMAGE_PIXELS):
        self.path = Path(path)
        if start < 0 or stride < 1 or (end is not None and end < start):
            raise ValueError(f"Bad frame range start={start} end={end} stride={stride}: need "
                             "0 <= start <= end and stride >= 1.")
        self.start, self.end, self.stride = int(start), end, int(stride)
        self.max_pixels = int(max_pixels)
        self.skipped_frames: list[int] = []
        if not self.path.exists():
            raise FrameError(f"Input {self.path} does not exist.")
        self._files: list[Path] = []
        if self.path.is_dir():
            self.kind = "folder"
            self._files = list_images(self.path)
            if not self._files:
                raise FrameError(f"No images in folder {self.path} (looked for "
                                 f"{', '.join(IMAGE_EXTENSIONS)}).")
            self.total_frames: int | None = len(self._files)
            self.fps = float(fps) if fps else DEFAULT_FOLDER_FPS
        elif self.path.suffix.lower() in IMAGE_EXTENSIONS:
            self.kind = "image"
            self._files = [self.path]
            self.total_frames = 1
            self.fps = float(fps) if fps else DEFAULT_FOLDER_FPS
        else:
            self.kind = "video"
            cv2 = _cv2()
            cap = self._open_video()
            try:
                container_fps = float(cap.get(cv2.CAP_PROP_FPS) or 0.0)
                count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
                width = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH) or 0)
                height = int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT) or 0)
            finally:
                cap.release()
            if width > 0 and height > 0:  # frames over the budget are refused before decoding
                check_pixel_budget(width, height, f"Video {self.path}", self.max_pixels)
            self.fps = float(fps) if fps else (container_fps if container_fps > 0 else 30.0)
            self.total_frames = count if count > 0 else None

    @property
    def skipped(self) -> int:
        """How many frames the latest iteration could not read (each reported once)."""
        return len(self.skipped_frames)

    def _open_video(self):
        cv2 = _cv2()
        try:
            # FFmpeg only: OpenCV's fallback readers print to stderr on files FFmpeg refuses.
            cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
            opened = cap.isOpened()
        except cv2.error:
            cap, opened = None, False
        if not opened:
            if cap is not None:
                cap.release()
            raise FrameError(f"Cannot open {self.path} as a video: the file is corrupt or its "
                             "codec is not supported by OpenCV's FFmpeg. Re-encode it (e.g. "
                             "H.264 .mp4) or extract the frames to an image folder.")
        return cap

    def _stop(self) -> int | None:
        stops = [v for v in (self.end, self.total_frames) if v is not None]
        return min(stops) if stops else None

    def __len__(self) -> int:
        stop = self._stop()
        if stop is None:
            return 0
        return max(0, (stop - self.start + self.stride - 1) // self.stride)

    def __iter__(self) -> Iterator[FrameRecord]:
        if self.kind == "video":
            return self._iter_video()
        return self._iter_files()

    def _failed(self, index: int, error: str, path: str | None = None,
                span: int = 1) -> FrameRecord:
        self.skipped_frames.extend(range(index, index + span * self.stride, self.stride))
        return FrameRecord(index, index / self.fps, None, error, path, span)

    def _iter_files(self) -> Iterator[FrameRecord]:
        self.skipped_frames = []
        stop = self._stop()
        for index in range(self.start, stop, self.stride):
            path = self._files[index]
            try:
                image = read_image(path, max_pixels=self.max_pixels)
            except FrameError as exc:
                yield self._failed(index, str(exc), str(path))
                continue
            yield FrameRecord(index, index / self.fps, image, None, str(path))

    def _iter_video(self) -> Iterator[FrameRecord]:
        self.skipped_frames = []
        cap = self._open_video()
        try:
            if self.start > 0 and not _seek(cap, self.start):  # walk there instead
                cap.release()
                cap = self._open_video()
                for index in range(self.start):
                    if not _grab(cap) and (self.total_frames is None
                                           or index >= self.total_frames):
                        return
            index, stop, total = self.start, self.end, self.total_frames
            run: list[int] = []  # consecutive wanted frames that did not decode
            while stop is None or index < stop:
                # A damaged frame fails on its own: the demuxer has consumed its packet, so the
                # next read goes on past the damage (failed reads at the end of data are fast).
                frame = _read(cap)
                if frame is None:
                    if total is None or index >= total:
                        break  # ordinary end of stream
                    run.append(index)
                else:
                    yield from self._report_damage(run)
                    run = []
                    try:
                        yield FrameRecord(index, index / self.fps, to_rgb8(frame))
                    except FrameError as exc:
                        yield self._failed(index, f"Frame {index} of {self.path.name}: {exc}")
                # Skip to the next wanted frame without converting the ones in between.
                for _ in range(self.stride - 1):
                    index += 1
                    if stop is not None and index >= stop:
                        break
                    _grab(cap)
                index += 1
            to_the_end = stop is None or total is None or stop >= total
            if len(run) >= _TAIL_RUN and to_the_end:  # one report for the rest, not hundreds
                yield self._failed(run[0], (
                    f"Frames {run[0]}-{run[-1]} of {self.path.name} could not be decoded: the "
                    f"container lists {total} frames but nothing from frame {run[0]} on "
                    "decodes (truncated or corrupt file)."), span=len(run))
            else:
                yield from self._report_damage(run)
        finally:
            cap.release()

    def _report_damage(self, run: list[int]) -> Iterator[FrameRecord]:
        for bad in run:
            yield self._failed(bad, f"Frame {bad} of {self.path.name} could not be decoded "
                                    "(damaged data); skipped.")


def _read(cap) -> np.ndarray | None:
    """The next decoded frame (BGR), or None when it could not be read."""
    cv2 = _cv2()
    try:
        ok, frame = cap.read()
    except cv2.error:
        return None
    return frame if ok and frame is not None and frame.size else None


def _grab(cap) -> bool:
    cv2 = _cv2()
    try:
        return bool(cap.grab())
    except cv2.error:
        return False


def _seek(cap, index: int) -> bool:
    """Position the capture on frame `index`; False when the container cannot seek there."""
    cv2 = _cv2()
    try:
        cap.set(cv2.CAP_PROP_POS_FRAMES, index)
        return int(cap.get(cv2.CAP_PROP_POS_FRAMES)) == index
    except cv2.error:
        return False


def open_frames(source: str | Path | FrameSource, *, start: int = 0, end: int | None = None,
                stride: int = 1, fps: float | None = None,
                max_pixels: int = MAX_IMAGE_PIXELS) -> FrameSource:
    """A FrameSource for a video file, an image folder or one image (FrameError if unreadable)."""
    if isinstance(source, FrameSource):
        return source
    return FrameSource(source, start=start, end=end, stride=stride, fps=fps,
                       max_pixels=max_pixels)


# FFmpeg's decoder messages ("[mjpeg @ 0x...] No JPEG data found") are off: each failure is
# reported here as one failed FrameRecord. OpenCV reads this when it first starts FFmpeg, so it
# is set on import; -8 is FFmpeg's "quiet". A user's own setting is kept.
os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")
_QUIETED = False


def _cv2():
    """cv2, with OpenCV's own warnings off (errors reach us as exceptions and become one
    FrameError each). A user's own OPENCV_LOG_LEVEL is left alone."""
    global _QUIETED
    import cv2

    if not _QUIETED:
        if "OPENCV_LOG_LEVEL" not in os.environ:
            cv2.setLogLevel(2)  # errors only; warnings such as "PNG input buffer is incomplete"
        _QUIETED = True
    return cv2
