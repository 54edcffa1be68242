"""The network's part map as transparent full-frame PNGs, one per source frame, for Blender.

Blender shows them as a second camera background over the footage (dpose_blender/evidence.py),
so each file has the footage's size and is clear except where a person's part map is painted
(the part colours of overlay.PART_COLOURS at `alpha`). A crop's 224 px labels land on the image
pixels they were predicted for (overlay.crop_to_image_index: the same mapping as the photo
overlay of `dpose estimate --overlay`).

Files are numbered by source frame (`part_overlay_000120.png`) with no holes between the first
and the last frame of the run, as an image sequence must be: a frame skipped by --stride shows
the previous solved frame's map, a frame with nobody (or unreadable) a clear image. Only the
current frame's maps are in memory; `PartOverlayWriter` is called from the video run's
frame hook (pipeline.estimate_video(frame_maps=...)).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .atomic_io import write_bytes
from .errors import DPoseError
from .overlay import DEFAULT_ALPHA, PART_COLOURS, crop_to_image_index
from .part_labels import BACKGROUND_CLASS

FILE_PREFIX = "part_overlay_"


def overlay_file(folder: str | os.PathLike, source_frame: int) -> Path:
    """Where the overlay of one source frame is written."""
    return Path(folder) / f"{FILE_PREFIX}{int(source_frame):06d}.png"


def overlay_rgba(image_size: tuple[int, int], labels: np.ndarray, crop_boxes: np.ndarray,
                 alpha: float = DEFAULT_ALPHA) -> np.ndarray:
    """(H,W,4) uint8 RGBA, clear but for the part colours of K crops (labels (K,S,S), boxes
    (K,4) xyxy image regions); image_size (w, h). Later crops are painted over earlier ones."""
    w, h = int(image_size[0]), int(image_size[1])
    if w < 1 or h < 1:
        raise DPoseError(f"The overlay needs a frame size, got {w}x{h}.")
    if not 0.0 <= float(alpha) <= 1.0:
        raise DPoseError(f"alpha must be between 0 and 1, got {alpha}.")
    out = np.zeros((h, w, 4), np.uint8)
    labels = np.asarray(labels).reshape(-1, *np.shape(labels)[-2:])
    boxes = np.asarray(crop_boxes, np.float64).reshape(-1, 4)
    for crop, box in zip(labels, boxes, strict=True):
        cols, col_idx, rows, row_idx = crop_to_image_index(box, (w, h), crop.shape[0])
        if not len(cols) or not len(rows):
            continue
        region_labels = crop[np.ix_(row_idx, col_idx)]
        painted = region_labels != BACKGROUND_CLASS
        region = out[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
        region[painted, :3] = PART_COLOURS[region_labels[painted]]
        region[painted, 3] = int(round(255 * alpha))
    return out


def encode_rgba_png(rgba: np.ndarray) -> bytes:
    """PNG bytes of an (H,W,4) uint8 RGBA image (OpenCV sees only a checked, contiguous array)."""
    import cv2

    rgba = np.asarray(rgba)
    if rgba.ndim != 3 or rgba.shape[2] != 4 or rgba.dtype != np.uint8 or rgba.size == 0:
        raise DPoseError(f"An overlay is (H, W, 4) uint8, got {rgba.shape} {rgba.dtype}.")
    bgra = np.ascontiguousarray(rgba[:, :, [2, 1, 0, 3]])
    ok, encoded = cv2.imencode(".png", bgra)
    if not ok:
        raise DPoseError("Could not encode a part overlay as PNG.")
    return encoded.tobytes()


def write_still_overlay(path: str | os.PathLike, estimate, rows, image_size,
                        alpha: float = DEFAULT_ALPHA) -> Path:
    """One photo's overlay (the crops `rows` of an Estimate), written atomically."""
    rows = np.asarray(rows, np.int64)
    rgba = overlay_rgba(image_size, estimate.part_labels[rows], estimate.crop_box[rows], alpha)
    return write_bytes(path, encode_rgba_png(rgba))


@dataclass
class OverlaySequence:
    """What a run wrote: files numbered first_frame..last_frame (inclusive) in `folder`."""

    folder: Path
    first_frame: int
    last_frame: int

    @property
    def first_file(self) -> Path:
        return overlay_file(self.folder, self.first_frame)

    @property
    def frame_count(self) -> int:
        return self.last_frame - self.first_frame + 1


class PartOverlayWriter:
    """Frame hook of a video run: writes each frame's overlay as it is solved.

    Call it with each sequence.FrameResult (its people carrying their Estimate); `finish()`
    returns the OverlaySequence, or None when no frame had a size to draw at.
    """

    def __init__(self, folder: str | os.PathLike, alpha: float = DEFAULT_ALPHA):
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DPoseError(f"Cannot create the overlay folder {self.folder} "
                             f"({exc.strerror or exc}).") from exc
        self.alpha = alpha
        self.size: tuple[int, int] | None = None
        self.first: int | None = None
        self.last: int | None = None
        self._last_png: bytes | None = None  # held over the frames --stride skips
        self._clear: list[int] = []  # frames with nobody, waiting for a frame size

    def __call__(self, frame) -> None:
        people = [p for p in frame.people if p.estimate is not None]
        if people and self.size is None:
            w, h = people[0].estimate.image_size[people[0].row]
            self.size = (int(w), int(h))
        if self.first is None:
            self.first = int(frame.index)
        if self.last is not None:  # frames skipped by the stride show the previous map
            for skipped in range(self.last + 1, int(frame.index)):
                self._write(skipped, self._last_png)
        self.last = int(frame.index)
        if not people:
            self._last_png = None
            self._write(frame.index, None)
            return
        rgba = overlay_rgba(self.size, np.stack([p.estimate.part_labels[p.row] for p in people]),
                            np.stack([p.estimate.crop_box[p.row] for p in people]), self.alpha)
        self._last_png = encode_rgba_png(rgba)
        self._write(frame.index, self._last_png)

    def _write(self, index: int, png: bytes | None) -> None:
        if png is None:  # clear: drawn once the frame size is known
            if self.size is None:
                self._clear.append(int(index))
                return
            png = encode_rgba_png(np.zeros((self.size[1], self.size[0], 4), np.uint8))
        if self._clear and self.size is not None:
            pending, self._clear = self._clear, []
            for earlier in pending:
                self._write(earlier, None)
        write_bytes(overlay_file(self.folder, index), png)

    def finish(self) -> OverlaySequence | None:
        if self.size is None or self.first is None:
            return None
        return OverlaySequence(self.folder, self.first, self.last)
