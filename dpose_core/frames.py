"""Frame sources: videos, image folders and single images, streamed as uint8 RGB.

Every consumer (CLI, Blender panel, headless runs) needs the same thing: frames one at a time
with bounded memory, in the right orientation, with the clip's frame rate, and a failed frame
reported rather than fatal. Iterating a `FrameSource` yields `FrameRecord`s; a record whose
`image` is None says which frame failed and why, so callers can report and carry on.
Only OpenCV and numpy are used, so this runs inside Blender.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import FrameError

IMAGE_EXTENSIONS = (
    ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".jp2", ".pgm", ".ppm", ".pnm",
    ".exr", ".hdr",
)
VIDEO_EXTENSIONS = (
    ".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".gif",
    ".mts", ".m2ts", ".ts", ".3gp",
)
DEFAULT_FOLDER_FPS = 30.0
_MAX_CONSECUTIVE_VIDEO_FAILURES = 3


@dataclass
class FrameRecord:
    """One frame of a source. `image` is None when the frame could not be read (`error` says why).

    `index` is the frame number in the source (before stride), `time_s` = index / fps.
    """

    index: int
    time_s: float
    image: np.ndarray | None
    error: str | None = None
    path: str | None = None

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
    black, the same fill the network's crop uses outside the image.
    """
    img = np.asarray(image)
    if img.ndim not in (2, 3) or img.size == 0:
        raise FrameError(f"Unsupported image shape {img.shape}; expected (H, W) or (H, W, C).")
    if img.dtype == np.uint8:
        scale = None
    elif img.dtype == np.uint16:
        scale = 1.0 / 257.0
    elif img.dtype == np.int8 or img.dtype == np.int16 or img.dtype == np.int32:
        raise FrameError(f"Signed integer images ({img.dtype}) are not supported; convert to 8 "
                         "or 16-bit unsigned.")
    else:
        scale = 255.0
    if img.ndim == 2:
        img = img[:, :, None]
    channels = img.shape[2]
    alpha = None
    if channels == 2:  # gray + alpha
        img, alpha = img[:, :, :1], img[:, :, 1:2]
    elif channels == 4:
        img, alpha = img[:, :, :3], img[:, :, 3:4]
    elif channels not in (1, 3):
        raise FrameError(f"Unsupported channel count {channels}; expected 1 to 4.")
    if scale is None and alpha is None:
        out = img
    else:
        out = img.astype(np.float32)
        if scale is not None:
            out = out * scale
        if alpha is not None:
            a = alpha.astype(np.float32) * (scale if scale is not None else 1.0) / 255.0
            out = out * np.clip(a, 0.0, 1.0)
        out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    elif bgr:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


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


def read_image(path: str | Path) -> np.ndarray:
    """Read one image file as upright (H,W,3) uint8 RGB, honouring EXIF orientation.

    Raises FrameError when the file is missing or cannot be decoded.
    """
    import cv2

    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise FrameError(f"Cannot read image {path}: {exc.strerror or exc}.") from exc
    # Decode without OpenCV's own rotation, keeping depth and alpha; orientation applied below.
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    if decoded is None:
        raise FrameError(f"Cannot decode image {path}: the file is corrupt or not an image "
                         f"format OpenCV reads ({', '.join(IMAGE_EXTENSIONS)}).")
    return apply_orientation(to_rgb8(decoded), exif_orientation(data))


# --- sources -------------------------------------------------------------------------------


class FrameSource:
    """A re-iterable stream of FrameRecords over a frame range [start, end) with a stride.

    Attributes: `kind` ("video", "folder" or "image"), `fps` (of the source; strided frames
    keep their source index and time), `total_frames` (in the source, None if unknown).
    `len()` gives the number of frames the iteration visits (estimated for videos).
    """

    def __init__(self, path: str | Path, *, start: int = 0, end: int | None = None,
                 stride: int = 1, fps: float | None = None):
        self.path = Path(path)
        if start < 0 or stride < 1 or (end is not None and end < start):
            raise ValueError(f"Bad frame range start={start} end={end} stride={stride}: need "
                             "0 <= start <= end and stride >= 1.")
        self.start, self.end, self.stride = int(start), end, int(stride)
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
            cap = self._open_video()
            try:
                container_fps = float(cap.get(_cv2().CAP_PROP_FPS) or 0.0)
                count = int(cap.get(_cv2().CAP_PROP_FRAME_COUNT) or 0)
            finally:
                cap.release()
            self.fps = float(fps) if fps else (container_fps if container_fps > 0 else 30.0)
            self.total_frames = count if count > 0 else None

    def _open_video(self):
        cv2 = _cv2()
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
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

    def _iter_files(self) -> Iterator[FrameRecord]:
        stop = self._stop()
        for index in range(self.start, stop, self.stride):
            path = self._files[index]
            try:
                image = read_image(path)
            except FrameError as exc:
                yield FrameRecord(index, index / self.fps, None, str(exc), str(path))
                continue
            yield FrameRecord(index, index / self.fps, image, None, str(path))

    def _iter_video(self) -> Iterator[FrameRecord]:
        cv2 = _cv2()
        cap = self._open_video()
        try:
            index = 0
            if self.start > 0:
                cap.set(cv2.CAP_PROP_POS_FRAMES, self.start)
                if int(cap.get(cv2.CAP_PROP_POS_FRAMES)) != self.start:  # seek unsupported
                    cap.release()
                    cap = self._open_video()
                    for _ in range(self.start):
                        if not cap.grab():
                            return
                index = self.start
            stop = self.end  # the container's frame count is only an estimate for some codecs
            failures = 0
            while stop is None or index < stop:
                ok, frame = cap.read()
                if ok and frame is not None:
                    failures = 0
                    try:
                        image = to_rgb8(frame)
                    except FrameError as exc:
                        yield FrameRecord(index, index / self.fps, None, str(exc))
                    else:
                        yield FrameRecord(index, index / self.fps, image)
                else:
                    if self.total_frames is None or index >= self.total_frames:
                        return  # ordinary end of stream
                    failures += 1
                    msg = (f"Frame {index} of {self.path.name} could not be decoded "
                           f"(the container lists {self.total_frames} frames).")
                    if failures >= _MAX_CONSECUTIVE_VIDEO_FAILURES:
                        yield FrameRecord(index, index / self.fps, None,
                                          msg + " Stopping: the rest of the video is unreadable"
                                          " (truncated or corrupt file).")
                        return
                    yield FrameRecord(index, index / self.fps, None, msg)
                # Skip to the next wanted frame without converting the ones in between.
                for _ in range(self.stride - 1):
                    index += 1
                    if stop is not None and index >= stop:
                        return
                    if not cap.grab() and (self.total_frames is None
                                           or index >= self.total_frames):
                        return
                index += 1
        finally:
            cap.release()


def open_frames(source: str | Path | FrameSource, *, start: int = 0, end: int | None = None,
                stride: int = 1, fps: float | None = None) -> FrameSource:
    """A FrameSource for a video file, an image folder or one image (FrameError if unreadable)."""
    if isinstance(source, FrameSource):
        return source
    return FrameSource(source, start=start, end=end, stride=stride, fps=fps)


def _cv2():
    import cv2

    return cv2
