"""Camera maths shared by every backend (numpy only): focal length, CLIFF box features,
crop camera -> full-image translation, intrinsics and projection (docs/camera.md).

Conventions: OpenCV camera frame (x right, y down, z forward, metres); pixel coordinates with
the principal point at (w/2, h/2); box `scale` = square side / 200 px; `image_size` rows are
(w, h); `focal_px` rows are (fx, fy).

Difference from the reference: `HMR.forward` builds its (B,2) focal array with
`f.repeat(2).view(B, 2)`, which tiles the whole batch instead of duplicating each sample, so in
a batch mixing image sizes sample b gets another sample's focal length (docs/camera.md). Here
every batch element keeps its own focal length; results agree with the reference whenever all
images in a batch have the same diagonal (the demo's case: one image per batch).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .constants import BOX_SCALE_UNIT
from .errors import DPoseError


def _rows(a: np.ndarray, width: int, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != width:
        raise DPoseError(f"{name} must have shape (B, {width}), got {a.shape}")
    return a


def _vector(a: np.ndarray, batch: int, name: str) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).reshape(-1)
    if a.shape != (batch,):
        raise DPoseError(f"{name} must have shape ({batch},), got {a.shape}")
    return a


def focal_from_image_size(width: float | np.ndarray, height: float | np.ndarray) -> np.ndarray:
    """Default focal length in pixels: the image diagonal sqrt(w^2 + h^2), as in the reference."""
    w = np.asarray(width, dtype=np.float64)
    h = np.asarray(height, dtype=np.float64)
    if np.any(w <= 0) or np.any(h <= 0):
        raise DPoseError(f"image sizes must be positive, got width {w} and height {h}")
    return np.sqrt(w * w + h * h)


def default_focal_px(image_size: np.ndarray) -> np.ndarray:
    """(B,2) (w,h) -> (B,2) (fx, fy) = (diagonal, diagonal) of each sample's own image."""
    size = _rows(image_size, 2, "image_size")
    f = focal_from_image_size(size[:, 0], size[:, 1])
    return np.stack([f, f], axis=1)


def bbox_info(
    center: np.ndarray, scale: np.ndarray, image_size: np.ndarray, focal_px: np.ndarray
) -> np.ndarray:
    """CLIFF box features (B,3): [(cx - w/2)/fx, (cy - h/2)/fx, 200*scale/fx] (docs/camera.md).

    All three terms divide by fx, like the reference (fy is not used). float64; cast to float32
    for the network.
    """
    c = _rows(center, 2, "center")
    b = c.shape[0]
    s = _vector(scale, b, "scale")
    size = _rows(image_size, 2, "image_size")
    fx = _rows(focal_px, 2, "focal_px")[:, 0]
    return np.stack(
        [
            (c[:, 0] - size[:, 0] / 2.0) / fx,
            (c[:, 1] - size[:, 1] / 2.0) / fx,
            BOX_SCALE_UNIT * s / fx,
        ],
        axis=1,
    )


def crop_cam_to_full_translation(
    cam_crop: np.ndarray,
    center: np.ndarray,
    scale: np.ndarray,
    image_size: np.ndarray,
    focal_px: np.ndarray,
) -> np.ndarray:
    """Weak-perspective crop camera (s, tx, ty) -> camera-frame translation (B,3), metres.

    With b = 200*scale (box side, px) and f = fx: tz = 2f/(s*b), tx' = tx + 2(cx - w/2)/(s*b),
    ty' = ty + 2(cy - h/2)/(s*b) (docs/camera.md). Like the reference
    there is no epsilon: s = 0 gives inf.
    """
    cam = _rows(cam_crop, 3, "cam_crop")
    c = _rows(center, 2, "center")
    s_box = BOX_SCALE_UNIT * _vector(scale, cam.shape[0], "scale")
    size = _rows(image_size, 2, "image_size")
    fx = _rows(focal_px, 2, "focal_px")[:, 0]
    s, tx, ty = cam[:, 0], cam[:, 1], cam[:, 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        denom = s * s_box
        tz = 2.0 * fx / denom
        tx_full = tx + 2.0 * (c[:, 0] - size[:, 0] / 2.0) / denom
        ty_full = ty + 2.0 * (c[:, 1] - size[:, 1] / 2.0) / denom
    return np.stack([tx_full, ty_full, tz], axis=1)


def principal_point(image_size: np.ndarray) -> np.ndarray:
    """(B,2) (w,h) -> (B,2) image centre (w/2, h/2), the reference's principal point."""
    return _rows(image_size, 2, "image_size") / 2.0


def intrinsics(focal_px: np.ndarray, image_size: np.ndarray) -> np.ndarray:
    """(B,3,3) pinhole matrices K with fx, fy on the diagonal and principal point (w/2, h/2)."""
    f = _rows(focal_px, 2, "focal_px")
    pp = principal_point(image_size)
    if pp.shape[0] != f.shape[0]:
        raise DPoseError(f"focal_px has {f.shape[0]} rows but image_size has {pp.shape[0]}")
    k = np.zeros((f.shape[0], 3, 3))
    k[:, 0, 0], k[:, 1, 1] = f[:, 0], f[:, 1]
    k[:, 0, 2], k[:, 1, 2] = pp[:, 0], pp[:, 1]
    k[:, 2, 2] = 1.0
    return k


def project(
    points: np.ndarray, cam_t: np.ndarray, focal_px: np.ndarray, principal_point: np.ndarray
) -> np.ndarray:
    """Project body-frame points (B,N,3) translated by cam_t (B,3) to pixels (B,N,2).

    u = fx * X/Z + cx, v = fy * Y/Z + cy with (X,Y,Z) = point + cam_t (OpenCV frame, no flips).
    """
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 3 or p.shape[2] != 3:
        raise DPoseError(f"points must have shape (B, N, 3), got {p.shape}")
    t = _rows(cam_t, 3, "cam_t")
    f = _rows(focal_px, 2, "focal_px")
    pp = _rows(principal_point, 2, "principal_point")
    cam_points = p + t[:, None, :]
    with np.errstate(divide="ignore", invalid="ignore"):
        xy = cam_points[..., :2] / cam_points[..., 2:3]
    return xy * f[:, None, :] + pp[:, None, :]


# ------------------------------------------------------------------- Blender's camera model
BLENDER_SENSOR_MM = 36.0  # any value works; 36 mm is Blender's default full-frame width


@dataclass(frozen=True)
class BlenderCameraSettings:
    """Camera data + render settings that reproduce an OpenCV pinhole camera in Blender.

    With the sensor fitted to the image's longer side (HORIZONTAL for landscape, VERTICAL for
    portrait, both sensor sides equal) ``lens_mm = fx * sensor_mm / max(w, h)``; a principal
    point off the centre is a lens shift in units of the longer side; the render resolution
    is the image size. Square pixels: fx is used (the network uses fx = fy).
    """

    lens_mm: float
    sensor_mm: float
    sensor_fit: str  # 'HORIZONTAL' or 'VERTICAL'
    shift_x: float
    shift_y: float
    resolution: tuple[int, int]  # (w, h) px


def blender_camera_settings(
    image_size: tuple[int, int],
    focal_px: float | tuple[float, float] | np.ndarray,
    principal_point: tuple[float, float] | np.ndarray | None = None,
    sensor_mm: float = BLENDER_SENSOR_MM,
) -> BlenderCameraSettings:
    """OpenCV intrinsics (px) -> Blender lens, explicit sensor fit, shift and render size.

    The fit is explicit so the camera does not change if Blender's AUTO rule or the render
    percentage does.
    """
    from .coords import blender_camera_intrinsics

    values = blender_camera_intrinsics(focal_px, image_size, principal_point, sensor_mm)
    w, h = values["resolution_x"], values["resolution_y"]
    return BlenderCameraSettings(
        lens_mm=values["lens_mm"],
        sensor_mm=values["sensor_width_mm"],
        sensor_fit="HORIZONTAL" if w >= h else "VERTICAL",
        shift_x=values["shift_x"],
        shift_y=values["shift_y"],
        resolution=(w, h),
    )
