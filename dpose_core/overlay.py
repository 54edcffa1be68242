"""The network's part segmentation drawn over the photo, with the solved skeleton on top.

An artist judges a solve by looking: where the coloured parts and the bones part ways, the
pose disagrees with what the network saw (part_agreement puts a number on it). Each crop's
224 px label map is resampled nearest-neighbour into the image through its crop box, so a
label pixel covers exactly the image area it was predicted for; the skeleton is the solve's
projected joints. Colours are fixed per class (`PART_COLOURS`; left side warm, right side
cool, the trunk green) so a legend in the panel or the PNG reads the same everywhere.

OpenCV draws the skeleton and the legend; its calls only ever see a non-empty contiguous
uint8 image and finite, bounded integer coordinates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .atomic_io import write_bytes
from .constants import CROP_SIZE, NUM_PART_CLASSES
from .errors import DPoseError, FrameError
from .part_labels import BACKGROUND_CLASS, CLASS_NAMES
from .skeleton import NUM_PREDICTED_JOINTS, PARENTS

if TYPE_CHECKING:  # pragma: no cover
    from .estimator import Estimate

# RGB per class. 0 (background) is never painted; 1 is never predicted by a trained network.
PART_COLOURS = np.array(
    [
        (0, 0, 0),  # 0 background
        (128, 128, 128),  # 1 unused
        (70, 50, 200),  # 2 right hand + right thigh
        (255, 149, 0),  # 3 left upper arm
        (40, 200, 80),  # 4 head
        (255, 105, 180),  # 5 left lower leg
        (255, 190, 200),  # 6 left toes
        (150, 0, 90),  # 7 left foot
        (80, 190, 170),  # 8 middle spine
        (0, 130, 100),  # 9 chest
        (255, 80, 50),  # 10 left shoulder
        (30, 110, 180),  # 11 right shoulder
        (40, 20, 110),  # 12 right foot
        (0, 170, 255),  # 13 right upper arm
        (150, 110, 255),  # 14 right lower leg
        (255, 210, 0),  # 15 left forearm
        (130, 225, 255),  # 16 right forearm
        (160, 230, 100),  # 17 neck
        (200, 185, 255),  # 18 right toes
        (190, 220, 40),  # 19 lower spine
        (200, 30, 40),  # 20 left thigh
        (255, 240, 150),  # 21 left hand
        (100, 110, 30),  # 22 hips
    ],
    dtype=np.uint8,
)
assert PART_COLOURS.shape == (NUM_PART_CLASSES, 3)

DEFAULT_ALPHA = 0.55
# Body bones drawn: the 22 joints the network predicts, each to its parent.
_BONES = tuple((j, PARENTS[j]) for j in range(1, NUM_PREDICTED_JOINTS))
_LEFT_JOINTS = frozenset({1, 4, 7, 10, 13, 16, 18, 20})
_RIGHT_JOINTS = frozenset({2, 5, 8, 11, 14, 17, 19, 21})
_BONE_LEFT, _BONE_RIGHT, _BONE_MIDDLE = (255, 235, 60), (60, 220, 255), (255, 255, 255)
_OUTLINE = (20, 20, 20)
# Joints further than this outside the image are nonsense: their bones are not drawn.
_MAX_OFFSET_PX = 1e6
_SHIFT = 4  # OpenCV fixed-point bits: 1/16 px positions
# OpenCV refuses to decode images above 2**30 pixels; we encode no larger.
_MAX_PIXELS = 1 << 30


def legend() -> list[tuple[int, str, tuple[int, int, int]]]:
    """(class, name, RGB) of every class a trained network predicts, for the panel's legend."""
    return [
        (c, CLASS_NAMES[c], tuple(int(v) for v in PART_COLOURS[c]))
        for c in range(2, NUM_PART_CLASSES)
    ]


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise FrameError(
            f"The overlay needs an (H, W, 3) uint8 RGB image, got {image.shape} {image.dtype}."
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise FrameError(f"The image is empty ({image.shape[1]}x{image.shape[0]} pixels).")
    return image


def crop_to_image_index(crop_box, image_size: tuple[int, int], size: int = CROP_SIZE):
    """Which crop pixel each image pixel shows: (cols, col_index, rows, row_index).

    crop_box xyxy is the image region [x0, x1) x [y0, y1) the crop was resampled from;
    image_size (w, h). Image pixel x (centre x + 0.5) shows crop column
    floor((x + 0.5 - x0) * size / (x1 - x0)). Returns the image columns/rows inside the crop
    and the crop column/row each one shows.
    """
    box = np.asarray(crop_box, dtype=np.float64).reshape(4)
    if not np.all(np.isfinite(box)) or box[2] <= box[0] or box[3] <= box[1]:
        raise DPoseError(f"Invalid crop box {box.tolist()}: expected x0 < x1, y0 < y1.")
    out = []
    for lo, hi, n in ((box[0], box[2], image_size[0]), (box[1], box[3], image_size[1])):
        first = max(0, int(np.floor(lo)))
        last = min(int(n), int(np.ceil(hi)))
        pixels = np.arange(first, max(first, last))
        index = np.floor((pixels + 0.5 - lo) * (size / (hi - lo))).astype(np.int64)
        inside = (index >= 0) & (index < size)
        out += [pixels[inside], index[inside]]
    return tuple(out)


def paint_labels(
    image: np.ndarray, labels_in_crop: np.ndarray, crop_box, alpha: float = DEFAULT_ALPHA
) -> set[int]:
    """Blend one crop's part colours into `image` (H,W,3) uint8, in place; background stays.

    Returns the classes that landed inside the image.
    """
    labels = np.asarray(labels_in_crop)
    if labels.ndim != 2 or labels.shape[0] != labels.shape[1] or labels.size == 0:
        raise DPoseError(f"labels_in_crop must be a square (S, S) map, got {labels.shape}.")
    if labels.min() < 0 or labels.max() >= NUM_PART_CLASSES:
        raise DPoseError(f"part labels must be classes 0..{NUM_PART_CLASSES - 1}.")
    h, w = image.shape[:2]
    cols, col_idx, rows, row_idx = crop_to_image_index(crop_box, (w, h), labels.shape[0])
    if not len(cols) or not len(rows):
        return set()  # the crop lies outside the image
    region_labels = labels[np.ix_(row_idx, col_idx)]
    painted = region_labels != BACKGROUND_CLASS
    region = image[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    colour = PART_COLOURS[region_labels[painted]].astype(np.float32)
    mixed = (1.0 - alpha) * region[painted].astype(np.float32) + alpha * colour
    region[painted] = np.clip(np.rint(mixed), 0, 255).astype(np.uint8)
    return set(np.unique(region_labels).tolist())


def _cv_point(xy: np.ndarray) -> tuple[int, int]:
    """Continuous pixel coordinates (pixel i spans [i, i+1)) -> OpenCV fixed-point ints."""
    scale = 1 << _SHIFT
    return int(round((xy[0] - 0.5) * scale)), int(round((xy[1] - 0.5) * scale))


def draw_skeleton(image: np.ndarray, joints_2d: np.ndarray) -> None:
    """Draw the 22 body joints' bones and dots (image pixels, continuous coordinates), in place.

    Bones with a non-finite end, or an end absurdly far outside the image, are left out.
    """
    import cv2

    joints = np.asarray(joints_2d, dtype=np.float64)
    if joints.ndim != 2 or joints.shape[1] != 2 or len(joints) < NUM_PREDICTED_JOINTS:
        raise DPoseError(
            f"joints_2d must be (J>={NUM_PREDICTED_JOINTS}, 2) image pixels, got {joints.shape}."
        )
    h, w = image.shape[:2]
    joints = joints[:NUM_PREDICTED_JOINTS]
    limit = _MAX_OFFSET_PX + max(h, w)
    drawable = np.all(np.isfinite(joints), axis=1) & np.all(np.abs(joints) < limit, axis=1)
    thickness = max(1, int(round(min(h, w) / 300)))
    radius = (thickness + 1) << _SHIFT
    for outline in (True, False):  # a dark outline under every bone keeps it readable
        width = thickness + 2 if outline else thickness
        for child, parent in _BONES:
            if not (drawable[child] and drawable[parent]):
                continue
            colour = _OUTLINE if outline else (
                _BONE_LEFT if child in _LEFT_JOINTS
                else _BONE_RIGHT if child in _RIGHT_JOINTS else _BONE_MIDDLE
            )  # fmt: skip
            cv2.line(image, _cv_point(joints[child]), _cv_point(joints[parent]), colour,
                     width, cv2.LINE_AA, _SHIFT)  # fmt: skip
    for j in np.flatnonzero(drawable):
        cv2.circle(image, _cv_point(joints[j]), radius, _OUTLINE, -1, cv2.LINE_AA, _SHIFT)


def draw_legend(image: np.ndarray, classes) -> None:
    """Swatches and names of `classes` in the top-left corner, in place (skipped if too small)."""
    import cv2

    classes = [int(c) for c in classes if 2 <= int(c) < NUM_PART_CLASSES]
    h, w = image.shape[:2]
    scale = min(h, w) / 900.0
    line_h = max(1, int(round(26 * scale)))
    if not classes or line_h < 10 or (len(classes) + 1) * line_h > h or 12 * line_h > w:
        return
    font = cv2.FONT_HERSHEY_SIMPLEX
    text_scale = 0.6 * scale
    text_w = max(cv2.getTextSize(CLASS_NAMES[c], font, text_scale, 1)[0][0] for c in classes)
    box_w = min(w, int(text_w + 2.2 * line_h))
    box_h = min(h, (len(classes) + 1) * line_h)
    panel = image[:box_h, :box_w]
    panel[:] = (panel.astype(np.float32) * 0.35).astype(np.uint8)  # darken behind the text
    swatch_w, swatch_h = int(line_h * 0.8), int(line_h * 0.7)
    for k, c in enumerate(classes):
        top = int((k + 0.75) * line_h)
        left = line_h // 3
        swatch = tuple(int(v) for v in PART_COLOURS[c])
        cv2.rectangle(image, (left, top), (left + swatch_w, top + swatch_h), swatch, -1)
        cv2.putText(image, CLASS_NAMES[c], (int(1.5 * line_h), top + int(line_h * 0.65)), font,
                    text_scale, (255, 255, 255), 1, cv2.LINE_AA)  # fmt: skip


def render_overlay(
    image: np.ndarray,
    labels_in_crop: np.ndarray,
    crop_box,
    joints_2d: np.ndarray | None = None,
    alpha: float = DEFAULT_ALPHA,
    legend: bool = True,
) -> np.ndarray:
    """The photo (H,W,3) uint8 RGB with part colours and skeletons drawn over it (a copy).

    labels_in_crop (S,S) or (K,S,S) part classes of K crops; crop_box (4,) or (K,4) xyxy image
    region of each crop; joints_2d (J,2) or (K,J,2) full-image pixels (e.g. Estimate.joints2d)
    or None for no skeleton. Later crops are painted over earlier ones. With `legend`, the
    names of the classes shown are listed in the top-left corner when the image is big enough.
    """
    if not 0.0 <= float(alpha) <= 1.0:
        raise DPoseError(f"alpha must be between 0 and 1, got {alpha}.")
    out = np.ascontiguousarray(_check_image(image)).copy()
    labels = np.asarray(labels_in_crop)
    labels = labels[None] if labels.ndim == 2 else labels
    boxes = np.asarray(crop_box, dtype=np.float64).reshape(-1, 4)
    if labels.ndim != 3 or len(labels) != len(boxes):
        raise DPoseError(
            f"{len(boxes)} crop boxes need {len(boxes)} label maps, got shape {labels.shape}."
        )
    joints = None
    if joints_2d is not None:
        joints = np.asarray(joints_2d, dtype=np.float64)
        joints = joints[None] if joints.ndim == 2 else joints
        if len(joints) != len(boxes):
            raise DPoseError(f"{len(boxes)} crops need {len(boxes)} joint sets, got {len(joints)}.")
    shown = set()
    for k in range(len(boxes)):
        shown |= paint_labels(out, labels[k], boxes[k], alpha)
    if joints is not None:
        for k in range(len(joints)):
            draw_skeleton(out, joints[k])
    if legend:
        draw_legend(out, sorted(shown))
    return out


def overlay_estimate(
    image: np.ndarray,
    estimate: Estimate,
    image_index: int = 0,
    alpha: float = DEFAULT_ALPHA,
    legend: bool = True,
) -> np.ndarray:
    """render_overlay for the crops of `estimate` that came from image number `image_index`."""
    rows = np.flatnonzero(np.asarray(estimate.image_index) == image_index)
    return render_overlay(
        image, estimate.part_labels[rows], estimate.crop_box[rows], estimate.joints2d[rows],
        alpha=alpha, legend=legend,
    )  # fmt: skip


def write_png(path: str | os.PathLike, image_rgb: np.ndarray) -> Path:
    """Write an RGB image as PNG atomically: a temp file beside it, fsync, then rename.

    On any failure the file at `path` is left as it was and the temp file is removed.
    """
    import cv2

    image = np.ascontiguousarray(_check_image(image_rgb))
    if image.shape[0] * image.shape[1] > _MAX_PIXELS:
        raise DPoseError(f"The overlay is too large to write ({image.shape[1]}x{image.shape[0]}).")
    path = Path(path)
    ok, encoded = cv2.imencode(".png", image[:, :, ::-1].copy())
    if not ok:
        raise DPoseError(f"Could not encode the overlay for {path}.")
    return write_bytes(path, encoded.tobytes())
