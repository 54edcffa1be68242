"""The one place where the OpenCV camera frame meets Blender's world.

D-PoSE predicts in the OpenCV camera frame of the footage: x right, y down, z forward, metres.
Blender's world is Z up. We put the footage camera at the world origin looking along +Y with +Z
up (a Blender camera with rotation_euler = (90 deg, 0, 0)); that camera then sees exactly what
the OpenCV camera saw, and a camera-frame point p lands at world point OPENCV_TO_BLENDER @ p:

    (x, y, z)_opencv -> (x, z, -y)_blender     straight ahead -> +Y, image up (-y) -> +Z.

Blender cameras look down their local -Z with local +Y as image up, so the camera object's
world rotation is OPENCV_TO_BLENDER @ diag(1, -1, -1) (= rotation of 90 deg about X).
Everything else (rig, keyframes, camera import) goes through these helpers, never its own signs.
"""

import numpy as np

# World (Blender, Z up) from OpenCV camera: world = OPENCV_TO_BLENDER @ cam.
OPENCV_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
BLENDER_TO_OPENCV = OPENCV_TO_BLENDER.T

# Upright a rest-pose SMPL-X model (y up, facing +z) in Blender (Z up, facing -Y, the
# convention of Blender's front view and the SMPL-X add-on): 90 deg about X.
SMPLX_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])

# Blender camera axes expressed in OpenCV camera axes: Blender local (x, y, z) = (x, -y, -z).
_BLENDER_CAMERA_FROM_OPENCV_CAMERA = np.diag([1.0, -1.0, -1.0])

# rotation_euler (XYZ, radians) of the footage camera placed at the world origin.
BLENDER_CAMERA_EULER = (np.pi / 2.0, 0.0, 0.0)


def camera_points_to_blender(points: np.ndarray) -> np.ndarray:
    """OpenCV camera-frame points (..., 3) -> Blender world points (..., 3), same metres."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1] != 3:
        raise ValueError(f"points must have trailing size 3, got {p.shape}")
    return p @ OPENCV_TO_BLENDER.T


def blender_points_to_camera(points: np.ndarray) -> np.ndarray:
    """Inverse of camera_points_to_blender."""
    p = np.asarray(points, dtype=np.float64)
    if p.shape[-1] != 3:
        raise ValueError(f"points must have trailing size 3, got {p.shape}")
    return p @ BLENDER_TO_OPENCV.T


def camera_rotations_to_blender(rotmats: np.ndarray) -> np.ndarray:
    """Orientations (..., 3, 3) given in the OpenCV camera frame -> in Blender world.

    For a body's global orientation R_cam (model -> camera), the world orientation is
    OPENCV_TO_BLENDER @ R_cam (model -> world). Local (child) joint rotations need no change.
    """
    r = np.asarray(rotmats, dtype=np.float64)
    if r.shape[-2:] != (3, 3):
        raise ValueError(f"rotations must have trailing shape (3, 3), got {r.shape}")
    return OPENCV_TO_BLENDER @ r


def blender_camera_rotation() -> np.ndarray:
    """World rotation (3x3) of the Blender camera that reproduces the OpenCV footage camera.

    Its local -Z (view direction) is world +Y and its local +Y (image up) is world +Z.
    """
    return OPENCV_TO_BLENDER @ _BLENDER_CAMERA_FROM_OPENCV_CAMERA


def blender_camera_matrix_world() -> np.ndarray:
    """4x4 matrix_world of the footage camera: at the origin, rotated by blender_camera_rotation."""
    m = np.eye(4)
    m[:3, :3] = blender_camera_rotation()
    return m


def blender_camera_intrinsics(
    focal_px: float | np.ndarray,
    image_size: tuple[int, int] | np.ndarray,
    principal_point: tuple[float, float] | np.ndarray | None = None,
    sensor_width_mm: float = 36.0,
) -> dict[str, float]:
    """Blender camera settings (lens mm, shift, sensor fit) matching pinhole intrinsics.

    Blender measures focal length and shift against the larger image side (sensor_fit
    'AUTO'), so lens = f_px * sensor / max(w, h). A principal point right of centre means
    the optical axis projects right of centre: shift_x = (w/2 - cx) / max(w, h);
    OpenCV v grows downward while shift_y is upward: shift_y = (cy - h/2) / max(w, h).
    Only fx is used (Blender has square pixels here); focal_px may be a scalar or (fx, fy).
    """
    fx = float(np.ravel(np.asarray(focal_px, dtype=np.float64))[0])
    w, h = (float(v) for v in np.ravel(np.asarray(image_size, dtype=np.float64))[:2])
    if fx <= 0 or w <= 0 or h <= 0:
        raise ValueError(f"focal length and image size must be positive, got {fx}, {(w, h)}")
    cx, cy = (w / 2.0, h / 2.0) if principal_point is None else (
        float(v) for v in np.ravel(np.asarray(principal_point, dtype=np.float64))[:2]
    )
    side = max(w, h)
    return {
        "lens_mm": fx * sensor_width_mm / side,
        "sensor_width_mm": float(sensor_width_mm),
        "sensor_fit": "AUTO",
        "shift_x": (w / 2.0 - cx) / side,
        "shift_y": (cy - h / 2.0) / side,
        "resolution_x": int(round(w)),
        "resolution_y": int(round(h)),
    }


def project_blender_points(
    world_points: np.ndarray, focal_px: float, image_size: tuple[int, int],
    principal_point: tuple[float, float] | None = None,
) -> np.ndarray:
    """Pixel coordinates (u right, v down) of world points seen by the footage camera.

    The check that ties the two frames together: equal to projecting the OpenCV camera-frame
    points with the same intrinsics.
    """
    cam = blender_points_to_camera(world_points)
    w, h = image_size
    cx, cy = (w / 2.0, h / 2.0) if principal_point is None else principal_point
    return np.stack(
        [focal_px * cam[..., 0] / cam[..., 2] + cx, focal_px * cam[..., 1] / cam[..., 2] + cy],
        axis=-1,
    )


# Motion.coordinate_frame values -> rotation taking that frame to Blender's world.
_FRAMES_TO_BLENDER = {
    "opencv_camera": OPENCV_TO_BLENDER,  # our estimates (footage camera at the origin)
    "world_z_up": np.eye(3),  # AMASS and most mocap: already Z up like Blender
    "smplx_y_up": SMPLX_TO_BLENDER,  # model frame of the SMPL-X rest pose
}


def frame_to_blender(coordinate_frame: str) -> np.ndarray:
    """3x3 rotation from a motion's coordinate frame (Motion.coordinate_frame) to Blender world.

    Apply it to transl and the global orientation (rotation 0); local joint rotations stay.
    """
    try:
        return _FRAMES_TO_BLENDER[coordinate_frame].copy()
    except KeyError:
        known = ", ".join(sorted(_FRAMES_TO_BLENDER))
        raise ValueError(
            f"unknown coordinate frame {coordinate_frame!r}; known frames: {known}"
        ) from None
