"""Box -> crop -> network input, reproducing the reference demo preprocessing with numpy and
OpenCV only.

Why not scikit-image: this runs inside Blender, where scipy and scikit-image are absent. The
reference crops with SPIN's `crop` (integer corners from an inverted affine transform, zero
fill) and resizes with `skimage.transform.resize` defaults (v0.19): a Gaussian anti-aliasing
pre-filter (sigma = max(0, (s - 1) / 2), truncate 4, boundary 'mirror') followed by
`ndimage.zoom(order=1, mode='mirror', grid_mode=True)` and a clip to the input range.
`crop_image` does the same separably in float32 with OpenCV's filter on only the pixels the
output reads (within 1e-4 of the exact result on the 0-255 scale); `crop_image_exact`
collapses both linear steps per axis into one (224, n) float64 matrix (~1e-13 of skimage).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .constants import BOX_SCALE_UNIT, CROP_SIZE, IMAGENET_MEAN, IMAGENET_STD
from .errors import FrameError

_GAUSS_TRUNCATE = 4.0  # scipy.ndimage.gaussian_filter default
# Window area (px) allowed beyond 4x the image part before crop_image takes the exact path.
_FAST_SPARE_AREA = 512 * 512


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


@dataclass(frozen=True)
class _AxisResample:
    """One axis of skimage's anti-aliased resize: Gaussian (mirror boundary), then bilinear.

    taps (n_out, 2): input indices each output reads after the filter, already mirrored into
    [0, n_in); tap_weights (n_out, 2); kernel (2 radius + 1,) normalised Gaussian weights.
    """

    taps: np.ndarray
    tap_weights: np.ndarray
    kernel: np.ndarray

    @property
    def radius(self) -> int:
        return len(self.kernel) // 2


@functools.lru_cache(maxsize=64)
def _axis_resample(n_in: int, n_out: int) -> _AxisResample:
    factor = n_in / n_out
    # Bilinear sample positions of ndimage.zoom(grid_mode=True): pixel-area aligned.
    pos = (np.arange(n_out) + 0.5) * factor - 0.5
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    taps = _mirror(np.stack([i0, i0 + 1], axis=1), n_in)
    tap_weights = np.stack([1.0 - frac, frac], axis=1)
    sigma = max(0.0, (factor - 1.0) / 2.0) if n_out < n_in else 0.0
    if sigma > 1e-15:
        radius = int(_GAUSS_TRUNCATE * sigma + 0.5)
        offsets = np.arange(-radius, radius + 1).astype(np.float64)
        kernel = np.exp(-0.5 / sigma**2 * offsets**2)
        kernel /= kernel.sum()
    else:
        kernel = np.ones(1)
    for array in (taps, tap_weights, kernel):
        array.flags.writeable = False  # shared through the cache
    return _AxisResample(taps, tap_weights, kernel)


def _resize_matrix(n_in: int, n_out: int, lo: int = 0, hi: int | None = None) -> np.ndarray:
    """(n_out, hi - lo) matrix = bilinear grid-mode zoom after the anti-aliasing Gaussian.

    Only input columns lo..hi are built: the rest of a crop is zero fill, and a box far larger
    than the image must not cost memory in proportion to its area.
    """
    hi = n_in if hi is None else hi
    axis = _axis_resample(n_in, n_out)
    offsets = np.arange(-axis.radius, axis.radius + 1)
    # Each bilinear tap reads a Gaussian-filtered value at a mirrored index; the filter
    # itself reads mirrored neighbours of that index.
    src = _mirror(axis.taps[:, :, None] + offsets[None, None, :], n_in)  # (n_out, 2, K)
    weights = axis.tap_weights[:, :, None] * axis.kernel[None, None, :]
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


def _check_rgb(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise FrameError(f"Expected an (H, W, 3) RGB image, got shape {image.shape}.")
    return image


def _crop_extent(center, scale: float) -> tuple[np.ndarray, int, int]:
    """Upper-left corner and (height, width) of the crop square; a clear error below a pixel."""
    ul, br = _crop_corners(center, scale)
    crop_h, crop_w = int(br[1] - ul[1]), int(br[0] - ul[0])
    if crop_h < 1 or crop_w < 1:
        raise FrameError(
            f"The person box (scale {scale:.4g}) is smaller than one pixel; "
            "pass a larger box."
        )
    return ul, crop_h, crop_w


def crop_image_exact(image: np.ndarray, center, scale: float) -> np.ndarray:
    """`crop_image` as float64 resampling matrices: skimage's resize to ~1e-13.

    Used by `crop_image` when a box is far larger than the image (its cost follows the image
    part, not the box), and as the reference the fast path is checked against.
    """
    image = _check_rgb(image)
    ul, crop_h, crop_w = _crop_extent(center, scale)
    img_h, img_w = image.shape[:2]
    sx0, sx1 = max(0, ul[0]), min(img_w, ul[0] + crop_w)
    sy0, sy1 = max(0, ul[1]), min(img_h, ul[1] + crop_h)
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


def _window(axis: _AxisResample, n: int) -> tuple[int, int]:
    """Crop indices [w0, w1) that the taps and their filter reach (mirror beyond 0 and n)."""
    return (max(0, int(axis.taps.min()) - axis.radius),
            min(n, int(axis.taps.max()) + axis.radius + 1))


def _filter_and_sample(array: np.ndarray, resample: _AxisResample, start: int,
                       axis: int) -> np.ndarray:
    """Gaussian along `axis` (OpenCV, float32), then the two bilinear taps of each output.

    `array` holds crop indices start.. along `axis`; its border there is REFLECT_101, which
    is scipy's 'mirror' wherever the array reaches the edge of the crop square.
    """
    import cv2

    kernel = resample.kernel.astype(np.float32)
    if len(kernel) == 1:
        filtered = array.astype(np.float32)
    else:
        one = np.ones(1, np.float32)
        kx, ky = (one, kernel) if axis == 0 else (kernel, one)
        filtered = cv2.sepFilter2D(array, cv2.CV_32F, kx, ky, borderType=cv2.BORDER_REFLECT_101)
    shape = [1, 1, 1]
    shape[axis] = -1
    weights = resample.tap_weights.astype(np.float32)
    out = np.take(filtered, resample.taps[:, 0] - start, axis=axis)
    out *= weights[:, 0].reshape(shape)
    second = np.take(filtered, resample.taps[:, 1] - start, axis=axis)
    second *= weights[:, 1].reshape(shape)
    out += second
    return out


def crop_image(image: np.ndarray, center, scale: float) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (224, 224, 3) float32 in 0-255, as the reference crops.

    Areas of the square outside the image are black; the square is resized with the
    reference's anti-aliased bilinear resize. Same numbers as `crop_image_exact` to ~1e-4
    (float32 rounding), at a fraction of the cost: OpenCV's separable filter runs on the
    part of the square the output reads (its REFLECT_101 border is scipy's 'mirror' at the
    square's edges), each axis is narrowed to its 224 bilinear taps right after its filter,
    and the zero fill outside the image is only materialised inside that part.
    """
    import cv2

    image = _check_rgb(image)
    ul, crop_h, crop_w = _crop_extent(center, scale)
    rows, cols = _axis_resample(crop_h, CROP_SIZE), _axis_resample(crop_w, CROP_SIZE)
    (ry0, ry1), (cx0, cx1) = _window(rows, crop_h), _window(cols, crop_w)
    img_h, img_w = image.shape[:2]
    # The window in image pixels, and how much of it falls outside the image (zero fill).
    y0, y1, x0, x1 = ul[1] + ry0, ul[1] + ry1, ul[0] + cx0, ul[0] + cx1
    sy0, sy1, sx0, sx1 = max(0, y0), min(img_h, y1), max(0, x0), min(img_w, x1)
    if sy1 <= sy0 or sx1 <= sx0:
        return np.zeros((CROP_SIZE, CROP_SIZE, 3), dtype=np.float32)
    mostly_fill = (y1 - y0) * (x1 - x0) > 4 * (sy1 - sy0) * (sx1 - sx0) + _FAST_SPARE_AREA
    if mostly_fill or image.dtype != np.uint8:  # the exact path costs only the image part
        return crop_image_exact(image, center, scale)
    window = np.ascontiguousarray(image[sy0:sy1, sx0:sx1])  # OpenCV needs positive strides
    pads = (sy0 - y0, y1 - sy1, sx0 - x0, x1 - sx1)
    if any(pads):
        window = cv2.copyMakeBorder(window, *pads, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    # Rows first (gathering whole rows is a plain copy), then columns on the narrowed array.
    narrow = _filter_and_sample(window, rows, ry0, axis=0)
    out = _filter_and_sample(narrow, cols, cx0, axis=1)
    # skimage clips to the input's range, zero fill included (only rounding noise exceeds it).
    part = image[max(0, ul[1]):min(img_h, ul[1] + crop_h),
                 max(0, ul[0]):min(img_w, ul[0] + crop_w)]
    filled = part.shape[:2] != (crop_h, crop_w)
    lo = 0 if filled else int(part.min())
    hi = max(int(part.max()), 0)
    return np.clip(out, lo, hi, out=out)


def normalize_crops(crops) -> np.ndarray:
    """(B, 224, 224, 3) or (224, 224, 3) 0-255 -> (B, 3, 224, 224) float32 ImageNet-normalised."""
    arr = np.asarray(crops, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] != 3:
        raise FrameError(f"Expected crops of shape (B, H, W, 3), got {arr.shape}.")
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    # One pass into the (B, 3, H, W) layout, then in place: no full-size temporaries.
    out = np.empty((arr.shape[0], 3, *arr.shape[1:3]), dtype=np.float32)
    np.divide(arr.transpose(0, 3, 1, 2), np.float32(255.0), out=out)
    out -= mean[:, None, None]
    out /= std[:, None, None]
    return out


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
