"""The Blender camera that matches the network's pinhole camera, so rigs line up with footage.

D-PoSE solves with an OpenCV pinhole camera (focal length = image diagonal unless given,
principal point = image centre). ``dpose_core.camera.blender_camera_settings`` turns it into
Blender's lens, sensor fit, shift and render size; ``ensure_camera`` applies them to a camera at
the world origin with the rotation that ``coords.OPENCV_TO_BLENDER`` implies (90 degrees about
X), so camera-frame bodies placed through ``coords`` project onto the same pixels. The footage
goes behind the camera view, timed so that the first source frame used plays at the job's start
frame.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..dpose_core.camera import BlenderCameraSettings, blender_camera_settings
from ..dpose_core.frames import VIDEO_EXTENSIONS


def camera_rotation_matrix() -> np.ndarray:
    """World-from-Blender-camera rotation (3x3): 90 degrees about X, from ``coords``."""
    from ..dpose_core import coords

    return coords.blender_camera_rotation()


def apply_camera_settings(scene, camera_obj, settings: BlenderCameraSettings) -> None:
    """Write intrinsics onto a camera object and the scene's render size (main thread only)."""
    import mathutils

    cam = camera_obj.data
    cam.type = "PERSP"
    cam.lens_unit = "MILLIMETERS"
    cam.sensor_fit = settings.sensor_fit
    cam.sensor_width = settings.sensor_mm
    cam.sensor_height = settings.sensor_mm
    cam.lens = settings.lens_mm
    cam.shift_x = settings.shift_x
    cam.shift_y = settings.shift_y
    cam.clip_start = 0.01
    cam.clip_end = 1000.0
    render = scene.render
    render.resolution_x, render.resolution_y = settings.resolution
    render.resolution_percentage = 100
    render.pixel_aspect_x = render.pixel_aspect_y = 1.0
    rot = mathutils.Matrix(camera_rotation_matrix().tolist())
    camera_obj.matrix_world = rot.to_4x4()


def load_footage(path: str | Path, *, sequence_length: int = 0):
    """Load an image / movie / numbered image sequence as a Blender image datablock.

    sequence_length > 1 marks a still image as the first of a numbered sequence, so a camera
    background or texture follows the frame.
    """
    import bpy

    path = str(Path(path).resolve())
    image = bpy.data.images.load(path, check_existing=True)
    if Path(path).suffix.lower() in VIDEO_EXTENSIONS:
        image.source = "MOVIE"
    elif sequence_length > 1:
        image.source = "SEQUENCE"
    return image


def footage_frame_offset(image, first_source_frame: int = 0) -> int:
    """Image-user offset so that the user's ``frame_start`` shows ``first_source_frame``.

    Blender shows number ``scene_frame - frame_start + offset + 1`` of a movie (1-based) or of
    a numbered image sequence (the number in the file name): a movie needs offset
    first_source_frame, a sequence whose first file is numbered n0 needs n0 - 1 more.
    """
    if image.source != "SEQUENCE":
        return int(first_source_frame)
    digits = re.findall(r"(\d+)", Path(image.filepath).stem)
    return (int(digits[-1]) - 1 if digits else 0) + int(first_source_frame)


def set_footage_timing(image_user, image, *, frame_start: int = 1, first_source_frame: int = 0,
                       frame_duration: int = 0) -> None:
    """Make a movie / sequence image user play source frame ``first_source_frame + i`` at scene
    frame ``frame_start + i``, for frame_duration frames (0: the whole footage)."""
    if image is None or image.source not in {"MOVIE", "SEQUENCE"}:
        return
    image_user.frame_start = frame_start
    image_user.frame_offset = footage_frame_offset(image, first_source_frame)
    image_user.frame_duration = max(1, frame_duration or image.frame_duration)
    image_user.use_auto_refresh = True


def set_camera_background(camera_obj, image, *, frame_start: int = 1,
                          first_source_frame: int = 0, frame_duration: int = 0,
                          alpha: float = 1.0) -> None:
    """Show ``image`` behind the camera view (replaces earlier backgrounds of this camera)."""
    cam = camera_obj.data
    cam.show_background_images = True
    for bg in list(cam.background_images):
        cam.background_images.remove(bg)
    bg = cam.background_images.new()
    bg.source = "IMAGE"
    bg.image = image
    bg.alpha = alpha
    bg.display_depth = "BACK"
    bg.frame_method = "STRETCH"  # the camera frame has the footage's aspect already
    set_footage_timing(bg.image_user, image, frame_start=frame_start,
                       first_source_frame=first_source_frame, frame_duration=frame_duration)


def ensure_camera(
    scene,
    *,
    image_size: tuple[int, int],
    focal_px: float | tuple[float, float] | np.ndarray,
    principal_point: tuple[float, float] | np.ndarray | None = None,
    name: str = "D-PoSE Camera",
    camera_obj=None,
    make_active: bool = True,
):
    """Create (or update ``camera_obj``) a camera matching the solve's intrinsics; returns it."""
    import bpy

    settings = blender_camera_settings(image_size, focal_px, principal_point)
    if camera_obj is None:
        data = bpy.data.cameras.new(name)
        camera_obj = bpy.data.objects.new(name, data)
        scene.collection.objects.link(camera_obj)
    apply_camera_settings(scene, camera_obj, settings)
    if make_active:
        scene.camera = camera_obj
    return camera_obj


def project_to_pixels(scene, camera_obj, points_world: np.ndarray) -> np.ndarray:
    """(N,3) world points -> (N,2) OpenCV pixel coordinates through the Blender camera.

    Uses bpy_extras.object_utils.world_to_camera_view (what Blender itself uses for the
    camera view), so tests and tools check alignment with Blender's own projection.
    """
    import mathutils
    from bpy_extras.object_utils import world_to_camera_view

    w, h = scene.render.resolution_x, scene.render.resolution_y
    out = np.empty((len(points_world), 2), dtype=np.float64)
    for i, p in enumerate(np.asarray(points_world, dtype=np.float64)):
        ndc = world_to_camera_view(scene, camera_obj, mathutils.Vector(p.tolist()))
        out[i] = (ndc.x * w, (1.0 - ndc.y) * h)
    return out
