"""Motion files: SMPL-X .npz in the AMASS layout, plus D-PoSE extras under `dpose_` keys.

Written keys (N frames):
    poses (N,165) axis-angle of the 55 SMPL-X joints; trans (N,3) metres; betas (11,);
    num_betas; gender (str); mocap_frame_rate (rows per second: the source rate over the
    frame step, so AMASS tools play it at the right speed); surface_model_type "smplx";
    root_orient (N,3), pose_body (N,63), pose_hand (N,90), pose_jaw (N,3), pose_eye (N,6)
    (the same numbers as `poses`, split as AMASS does);
    dpose_confidence (N,), dpose_frame_indices (N,), dpose_flags (N,) uint8,
    dpose_boxes (N,4) xyxy px, dpose_focal_px (N,2), dpose_principal_point (N,2),
    dpose_image_size (2,) (w, h), dpose_source_fps (the footage's rate: frame_indices / it =
    seconds), dpose_coordinate_frame, dpose_format_version;
    when scored: dpose_part_iou (N,23) and dpose_silhouette_iou (N,) (NaN = frame not scored);
    after `refine` also dpose_camera_to_world (N,4,4), dpose_contacts (N,4) bool and
    dpose_contact_confidence (N,4); from a video run the network's foot cues
    dpose_feet_seen (N,4) and dpose_foot_map_depth (N,4) (NaN = unknown), which `refine` uses.

Frames: our root_orient and trans are in the OpenCV camera frame of the footage (x right,
y down, z forward; dpose_coordinate_frame = "opencv_camera"). AMASS files are in a Z-up world
frame; files without dpose_coordinate_frame are read as "world_z_up". coords.frame_to_blender
turns either into Blender's world.

Reading is tolerant: `dpose_source_fps`, else `mocap_framerate` / `fps` / `frame_rate` for
the rate (30 if absent),
files that only have the split arrays, SMPL-H `poses` (N,156: no jaw/eyes), gender stored as
bytes or 0-d arrays, betas of any length (zero-padded or cut to 11; per-frame betas are reduced
to their median), missing `trans` (zeros). Nothing is ever unpickled (allow_pickle=False).
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from .atomic_io import OutputError, write_npz
from .errors import MotionFileError
from .motion import FRAME_OPENCV_CAMERA, FRAME_WORLD_Z_UP, Motion
from .npz_sniff import npz_problem
from .rotations import axis_angle_to_matrix
from .skeleton import NUM_BETAS, NUM_JOINTS

FORMAT_VERSION = 1
_SOURCE_FPS_KEY = "dpose_source_fps"
_FPS_KEYS = (_SOURCE_FPS_KEY, "mocap_frame_rate", "mocap_framerate", "fps", "frame_rate")
DEFAULT_FILE_FPS = 30.0  # the rate of a file that names none
# (key, first joint, joint count) of the AMASS split arrays.
_SPLIT = (
    ("root_orient", 0, 1), ("pose_body", 1, 21), ("pose_jaw", 22, 1), ("pose_eye", 23, 2),
    ("pose_hand", 25, 30),
)  # fmt: skip
_EXTRAS = ("confidence", "frame_indices", "flags", "boxes", "focal_px", "principal_point",
           "image_size", "part_iou", "silhouette_iou", "camera_to_world", "contacts",
           "contact_confidence", "feet_seen", "foot_map_depth")  # fmt: skip


def motion_to_arrays(motion: Motion) -> dict[str, np.ndarray]:
    """The arrays save_motion_npz writes (useful to embed a motion in another container)."""
    aa = motion.as_axis_angle()  # (N,55,3)
    n = motion.num_frames
    out: dict[str, np.ndarray] = {
        "poses": aa.reshape(n, NUM_JOINTS * 3),
        "trans": motion.transl,
        "betas": motion.betas,
        "num_betas": np.array(NUM_BETAS),
        "gender": np.array(motion.gender),
        "mocap_frame_rate": np.array(rows_per_second(motion)),
        _SOURCE_FPS_KEY: np.array(motion.fps),
        "surface_model_type": np.array("smplx"),
    }
    for key, first, count in _SPLIT:
        out[key] = aa[:, first:first + count].reshape(n, count * 3)
    for name in _EXTRAS:
        value = getattr(motion, name)
        if value is not None:
            out[f"dpose_{name}"] = value
    out["dpose_coordinate_frame"] = np.array(motion.coordinate_frame)
    out["dpose_format_version"] = np.array(FORMAT_VERSION)
    return {k: np.asarray(v) for k, v in out.items()}


def rows_per_second(motion: Motion) -> float:
    """Rate of the motion's rows: the source rate over the mean frame step (`--stride 2` on
    25 fps footage -> 12.5); the source rate for a single frame."""
    frames = motion.frame_indices
    if len(frames) < 2 or frames[-1] <= frames[0]:
        return float(motion.fps)
    return float(motion.fps * (len(frames) - 1) / (frames[-1] - frames[0]))


def save_motion_npz(path: str | os.PathLike, motion: Motion) -> Path:
    """Write `motion` as an uncompressed SMPL-X/AMASS .npz (no pickled objects inside).

    Atomic (atomic_io): on failure (OutputError) an existing file is left as it was.
    """
    path = Path(path)
    if path.suffix.lower() != ".npz":
        path = path.with_name(path.name + ".npz")  # np.savez would append it anyway
    arrays = motion_to_arrays(motion)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"Cannot create the folder {path.parent}: "
                          f"{exc.strerror or exc}.") from exc
    write_npz(path, arrays)
    return path


def load_motion_npz(path: str | os.PathLike) -> Motion:
    """Read an SMPL-X motion .npz (ours, AMASS, or similar). Raises MotionFileError."""
    path = Path(path)
    if not path.is_file():
        raise MotionFileError(f"Motion file {path} does not exist.")
    try:
        problem = npz_problem(path)  # a text file or an image named .npz: say what it is
    except OSError as exc:
        raise MotionFileError(f"Cannot read {path.name}: {exc.strerror or exc}.") from exc
    if problem is not None:
        raise MotionFileError(f"{path.name} is {problem}.")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except ValueError as exc:  # object arrays need pickle: refuse rather than run code
        raise MotionFileError(
            f"{path.name} stores Python objects, which we do not unpickle; re-save it with plain "
            f"numpy arrays ({exc})."
        ) from exc
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise MotionFileError(f"Cannot read {path.name} as an .npz file: {exc}") from exc
    try:
        motion = motion_from_arrays(data)
    except MotionFileError as exc:
        raise MotionFileError(f"{path.name}: {exc}") from exc
    except (ValueError, TypeError) as exc:  # e.g. text where numbers belong
        raise MotionFileError(f"{path.name}: an array has the wrong type ({exc}).") from exc
    if motion.num_frames == 0:
        raise MotionFileError(f"{path.name} holds no frames.")
    return motion


def motion_from_arrays(data: dict[str, np.ndarray]) -> Motion:
    """Motion from the arrays of an SMPL-X motion file (see module docstring for the keys)."""
    axis_angle = _read_axis_angle(data)
    n = axis_angle.shape[0]
    trans = data.get("trans")
    if trans is None:
        trans = np.zeros((n, 3))
    trans = np.asarray(trans, dtype=np.float64)
    if trans.shape != (n, 3):
        raise MotionFileError(f"'trans' has shape {trans.shape}, expected ({n}, 3)")
    kwargs = {}
    for name in _EXTRAS:
        if f"dpose_{name}" in data:
            kwargs[name] = data[f"dpose_{name}"]
    default_frame = FRAME_WORLD_Z_UP
    try:
        motion = Motion(
            rotmats=axis_angle_to_matrix(axis_angle),
            transl=trans,
            betas=_read_betas(data),
            fps=_read_fps(data),
            gender=_text(data.get("gender"), "neutral"),
            coordinate_frame=_text(data.get("dpose_coordinate_frame"), default_frame),
            **kwargs,
        )
    except ValueError as exc:
        raise MotionFileError(f"the motion arrays are inconsistent: {exc}") from exc
    motion._axis_angle_cache = (motion.rotmats.copy(), axis_angle)
    return motion


def _read_axis_angle(data: dict[str, np.ndarray]) -> np.ndarray:
    """(N,55,3) axis-angle from `poses` (165 / 156 SMPL-H / 72 or 66 body-only) or split keys."""
    if "poses" in data:
        poses = np.asarray(data["poses"], dtype=np.float64)
        if poses.ndim == 1:
            poses = poses[None]
        if poses.ndim != 2 or poses.shape[1] not in (165, 156, 72, 66):
            raise MotionFileError(
                f"'poses' has shape {poses.shape}; expected N×165 axis-angle (SMPL-X, 55 joints)"
            )
        n = poses.shape[0]
        aa = np.zeros((n, NUM_JOINTS, 3))
        if poses.shape[1] == 165:
            aa[:] = poses.reshape(n, NUM_JOINTS, 3)
        elif poses.shape[1] == 156:  # SMPL-H: 22 body joints then 30 hand joints
            aa[:, :22] = poses[:, :66].reshape(n, 22, 3)
            aa[:, 25:] = poses[:, 66:].reshape(n, 30, 3)
        else:  # SMPL (72) or body only (66): the first 22 joints agree with SMPL-X
            aa[:, :22] = poses[:, :66].reshape(n, 22, 3)
    elif "root_orient" in data and "pose_body" in data:
        root = np.asarray(data["root_orient"], dtype=np.float64)
        if root.ndim != 2 or root.shape[1] != 3:
            raise MotionFileError(f"'root_orient' has shape {root.shape}, expected (N, 3)")
        n = root.shape[0]
        aa = np.zeros((n, NUM_JOINTS, 3))
        for key, first, count in _SPLIT:
            if key not in data:
                continue
            part = np.asarray(data[key], dtype=np.float64)
            if part.shape != (n, count * 3):
                raise MotionFileError(
                    f"'{key}' has shape {part.shape}, expected ({n}, {count * 3})"
                )
            aa[:, first:first + count] = part.reshape(n, count, 3)
    else:
        raise MotionFileError(
            "no SMPL-X pose found: expected 'poses' (N×165) or 'root_orient' + 'pose_body'"
        )
    if not np.all(np.isfinite(aa)):
        raise MotionFileError("the poses contain NaN or infinite values")
    return aa


def _read_betas(data: dict[str, np.ndarray]) -> np.ndarray:
    """Betas padded with zeros or cut to 11 (SMPL-X files often carry 10, 16 or 300)."""
    betas = np.asarray(data.get("betas", np.zeros(NUM_BETAS)), dtype=np.float64)
    if betas.ndim == 2:  # per-frame shapes: one body
        betas = np.median(betas, axis=0) if len(betas) else np.zeros(betas.shape[1])
    if betas.ndim != 1:
        raise MotionFileError(f"'betas' has shape {betas.shape}, expected (K,)")
    out = np.zeros(NUM_BETAS)
    k = min(NUM_BETAS, betas.size)
    out[:k] = betas[:k]
    return out


def _read_fps(data: dict[str, np.ndarray]) -> float:
    for key in _FPS_KEYS:
        if key in data:
            try:
                fps = float(np.asarray(data[key]).reshape(-1)[0])
            except (TypeError, ValueError, IndexError) as exc:
                raise MotionFileError(f"'{key}' is not a number") from exc
            if not np.isfinite(fps) or fps <= 0:
                raise MotionFileError(f"'{key}' = {fps} is not a positive frame rate")
            return fps
    return DEFAULT_FILE_FPS


def _text(value, default: str) -> str:
    """A string stored as str, bytes, or a 0-d / 1-element array of either."""
    if value is None:
        return default
    arr = np.asarray(value)
    if arr.size != 1:
        raise MotionFileError(f"expected a single string, got an array of shape {arr.shape}")
    item = arr.reshape(-1)[0]
    if isinstance(item, bytes | np.bytes_):
        item = item.decode("utf-8", errors="replace")
    return str(item).strip()


__all__ = [
    "FORMAT_VERSION", "load_motion_npz", "motion_from_arrays", "motion_to_arrays",
    "rows_per_second", "save_motion_npz", "FRAME_OPENCV_CAMERA", "FRAME_WORLD_Z_UP",
]  # fmt: skip
