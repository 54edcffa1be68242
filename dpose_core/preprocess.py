"""Box -> crop -> network input, reproducing the reference demo preprocessing in numpy only.

Why numpy only: this runs inside Blender, where scipy and scikit-image are absent. The
reference crops with SPIN's `crop` (integer corners from an inverted affine transform, zero
fill) and resizes with `skimage.transform.resize` defaults (v0.19): a Gaussian anti-aliasing
pre-filter (sigma = max(0, (s - 1) / 2), truncate 4, boundary 'mirror') followed by
`ndimage.zoom(order=1, mode='mirror', grid_mode=True)` and a clip to the input range.
Both steps are linear, so per axis they collapse into one (224, n) matrix; the crop is
resampled with two matrix products (rows, then columns) in float64.
"""

from __future__ import annotations

import numpy as np

from .constants import BOX_SCALE_UNIT, CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD
from .errors import FrameError

_GAUSS_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter default


def box_to_center_scale(xyxy) -> tuple[np.ndarray, float]:
    """(x0, y0, x1, y1) px -> (centre (2,), scale): a square of the longer side, scale = side/200.

    No enlargement factor: the reference demo crops exactly the detector's longer side.
    """
    x0, y0, x1, y1 = (float(v) for v in np.asarray(xyxy, dtype=np.float64).reshape(4))
    w, h = x1 - x0, y1 - y0
    if not (np.isfinite([x0, y0, x1, y1]).all() and w > 0 and h > 0):
        raise FrameError(
            f"Invalid person box {x0, y0, x1, y1}: expected x0 < x1 and y0 < y1 in pixels."
        )
    side = w if w / h > 1 else h
    return np.array([(x0 + x1) / 2.0, (y0 + y1) / 2.0]), side / BOX_SCALE_UNIT


def _crop_corners(center, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Integer upper-left / bottom-right corners exactly as the reference computes them.

    The reference maps crop pixels (1, 1) and (res+1, res+1) through the inverse of its
    crop transform and truncates with astype(int); going through np.linalg.inv matters
    because c - h/2 is often an integer, where a one-ulp difference flips the truncation.
    """
    h = BOX_SCALE_UNIT * float(scale)
    cx, cy = float(center[0]), float(center[1])
    t = np.zeros((3, 3))
    t[0, 0] = float(CROP_SIZE) / h
    t[1, 1] = float(CROP_SIZE) / h
    t[0, 2] = CROP_SIZE * (-cx / h + 0.5)
    t[1, 2] = CROP_SIZE * (-cy / h + 0.5)
    t[2, 2] = 1.0
    inv = np.linalg.inv(t)
    ul = np.dot(inv, np.array([0.0, 0.0, 1.0]))[:2].astype(int)
    br = np.dot(inv, np.array([float(CROP_SIZE), float(CROP_SIZE), 1.0]))[:2].astype(int)
    return ul, br


def crop_box(center, scale: float) -> np.ndarray:
    """xyxy (float64) of the square region the crop covers, in image pixels (br exclusive)."""
    ul, br = _crop_corners(center, scale)
    return np.array([ul[0], ul[1], br[0], br[1]], dtype=np.float64)


def _mirror(idx: np.ndarray, n: int) -> np.ndarray:
    """scipy 'mirror' boundary (d c b | a b c d | c b a), valid for any offset."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * (n - 1)
    idx = np.mod(idx, period)
    return np.where(idx >= n, period - idx, idx)


def _resize_matrix(n_in: int, n_out: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """(n_out, hi - lo) matrix = bilinear grid-mode zoom after the anti-aliasing Gaussian.

    Only input columns lo..hi are built: the rest of a crop is zero fill, and a box far larger
    than the image must not cost memory in proportion to its area.
    """
    hi = n_in if hi is None else hi
    factor = n_in / n_out
    # Bilinear sample positions of ndimage.zoom(grid_mode=True): pixel-area aligned.
    pos = (np.arange(n_out) + 0.5) * factor - 0.5
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    taps = np.stack([i0, i0 + 1], axis=1)  # (n_out, 2)
    tap_w = np.stack([1.0 - frac, frac], axis=1)
    sigma = max(0.0, (factor - 1.0) / 2.0) if n_out < n_in else 0.0
    if sigma > 1e-15:
        radius = int(_GAUSS_TRUNCATE * sigma + 0.5)
        offsets = np.arange(-radius, radius + 1)
        kernel = np.exp(-0.5 / sigma**2 * offsets.astype(np.float64) ** 2)
        kernel /= kernel.sum()
    else:
        offsets, kernel = np.zeros(1, dtype=np.int64), np.ones(1)
    # Each bilinear tap reads a Gaussian-filtered value at a mirrored index; the filter
    # itself reads mirrored neighbours of that index.
    centre = _mirror(taps, n_in)  # (n_out, 2)
    src = _mirror(centre[:, :, None] + offsets[None, None, :], n_in)  # (n_out, 2, K)
    weights = tap_w[:, :, None] * kernel[None, None, :]
    rows = np.broadcast_to(np.arange(n_out)[:, None, None], src.shape)
    keep = (src >= lo) & (src < hi)
    matrix = np.zeros((n_out, hi - lo))
    np.add.at(matrix, (rows[keep], src[keep] - lo), weights[keep])
    return matrix


def _resize(region: np.ndarray, size: int) -> np.ndarray:
    """skimage.transform.resize(region, (size, size)) for a float64 (h, w, 3) array."""
    rows = _resize_matrix(region.shape[0], size)
    cols = _resize_matrix(region.shape[1], size)
    out = np.einsum("ih,hwc->iwc", rows, region, optimize=True)
    out = np.einsum("jw,iwc->ijc", cols, out, optimize=True)
    # skimage clips to the input's range (only rounding noise can exceed it here).
    return np.clip(out, region.min(), region.max())


def crop_image(image: np.ndarray, center, scale: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (224, 224, 3) float32 in 0-255, as the reference crops.

    Areas of the square outside the image are black; the square is resized with the
    reference's anti-aliased bilinear resize.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise FrameError(f"Expected an (H, W, 3) RGB image, got shape {image.shape}.")
    ul, br = _crop_corners(center, scale)
    crop_h, crop_w = int(br[1] - ul[1]), int(br[0] - ul[0])
    if crop_h < 1 or crop_w < 1:
        raise FrameError(
            f"The person box (scale {scale:.4g}) is smaller than one pixel; "
            "pass a larger box."
        )
    img_h, img_w = image.shape[:2]
    sx0, sx1 = max(0, ul[0]), min(img_w, br[0])
    sy0, sy1 = max(0, ul[1]), min(img_h, br[1])
    if sx1 <= sx0 or sy1 <= sy0:
        return np.zeros((CROP_SIZE, CROP_SIZE, 3), dtype=np.float32)
    # Resize only the part inside the image: the zero fill contributes nothing, so the crop
    # region itself is never allocated (a huge box costs no more than the image).
    part = image[sy0:sy1, sx0:sx1].astype(np.float64)
    if (sx1 - sx0, sy1 - sy0) == (crop_w, crop_h):
        return _resize(part, CROP_SIZE).astype(np.float32)
    rows = _resize_matrix(crop_h, CROP_SIZE, sy0 - ul[1], sy1 - ul[1])
    cols = _resize_matrix(crop_w, CROP_SIZE, sx0 - ul[0], sx1 - ul[0])
    out = np.einsum("ih,hwc->iwc", rows, part, optimize=True)
    out = np.einsum("jw,iwc->ijc", cols, out, optimize=True)
    # skimage clips to the input's range, zero fill included (only rounding noise exceeds it).
    lo, hi = min(float(part.min()), 0.0), max(float(part.max()), 0.0)
    return np.clip(out, lo, hi).astype(np.float32)


def normalize_crops(crops) -> np.ndarray:
    """(B, 224, 224, 3) or (224, 224, 3) 0-255 -> (B, 3, 224, 224) float32 ImageNet-normalised."""
    arr = np.asarray(crops, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise FrameError(f"Expected crops of shape (B, H, W, 3), got {arr.shape}.")
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    out = (arr / np.float32(255.0) - mean) / std
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32)


def prepare_crops(image: np.ndarray, boxes) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Crop every box of one image: -> (crops (K,224,224,3) 0-255, centres (K,2), scales (K,)).

    boxes: (K,4) xyxy pixels; extra columns (e.g. a detector score) are ignored.
    """
    boxes = np.asarray(boxes, dtype=np.float64)
    if boxes.size == 0:
        boxes = np.zeros((0, 4))
    boxes = np.atleast_2d(boxes)
    if boxes.ndim != 2 or boxes.shape[1] < 4:
        raise FrameError(f"Boxes must be (K, 4) x0,y0,x1,y1 pixels, got shape {boxes.shape}.")
    boxes = boxes[:, :4]
    centres = np.zeros((len(boxes), 2))
    scales = np.zeros(len(boxes))
    crops = np.zeros((len(boxes), CROP_SIZE, CROP_SIZE, 3), dtype=np.float32)
    for k, box in enumerate(boxes):
        centres[k], scales[k] = box_to_center_scale(box)
        crops[k] = crop_image(image, centres[k], scales[k])
    return crops, centres, scales
