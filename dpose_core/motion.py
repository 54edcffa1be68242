"""A body motion: per-frame SMPL-X rotations and translation plus one shape, in one object.

This is what flows between estimation, smoothing, motion files and the Blender rig. Rotations
are local SMPL-X joint rotations (index 0 = global orientation); `transl` is SMPL-X `trans`
(vertices = lbs(...) + transl, the pelvis sits at J_0(betas) + transl), which for D-PoSE equals
the predicted full-image camera translation `cam_t`. `coordinate_frame` says which frame
rotation 0 and transl are in (see coords.py): "opencv_camera" for our estimates (x right,
y down, z forward, metres), "world_z_up" for AMASS-style files.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from .constants import NUM_PART_CLASSES
from .rotations import (
    make_quaternions_continuous,
    matrix_to_axis_angle,
    matrix_to_quaternion,
)
from .skeleton import NUM_BETAS, NUM_JOINTS, NUM_PREDICTED_JOINTS

if TYPE_CHECKING:  # pragma: no cover
    from .body_model import BodyModel, BodyOutput

FLAG_INTERPOLATED = 1  # frame filled in between detections, not estimated from pixels
FLAG_LOW_CONFIDENCE = 2  # estimated, but the detector or tracker was unsure

FRAME_OPENCV_CAMERA = "opencv_camera"
FRAME_WORLD_Z_UP = "world_z_up"

_PER_FRAME_OPTIONAL = {"boxes": 4, "focal_px": 2, "principal_point": 2}


@dataclass(eq=False)
class Motion:
    """Per-frame SMPL-X pose of one person. N frames; arrays are numpy float64 unless noted.

    rotmats (N,55,3,3) local rotations; transl (N,3) metres; betas (11,); fps of the source;
    confidence (N,) in [0,1]; frame_indices (N,) int source frame numbers (gaps allowed);
    boxes (N,4) xyxy px; focal_px (N,2); principal_point (N,2); image_size (2,) (w, h);
    flags (N,) uint8 bitmask of FLAG_*; part_iou (N,23) and silhouette_iou (N,) how well
    each frame's body agrees with the network's part map (part_agreement; NaN = not scored).
    After `refine` (world_z_up): camera_to_world (N,4,4) OpenCV camera axes to world;
    contacts (N,4) bool and contact_confidence (N,4) in [0,1] for left heel, left toe, right
    heel, right toe (grounding.FOOT_POINT_NAMES). The network's foot cues per heel/toe, NaN
    where unknown (foot_evidence.py): feet_seen (N,4) in [0,1], foot_map_depth (N,4).
    """

    rotmats: np.ndarray
    transl: np.ndarray
    betas: np.ndarray
    fps: float
    confidence: np.ndarray | None = None
    frame_indices: np.ndarray | None = None
    gender: str = "neutral"
    boxes: np.ndarray | None = None
    focal_px: np.ndarray | None = None
    principal_point: np.ndarray | None = None
    image_size: np.ndarray | None = None
    flags: np.ndarray | None = None
    coordinate_frame: str = FRAME_OPENCV_CAMERA
    part_iou: np.ndarray | None = None
    silhouette_iou: np.ndarray | None = None
    camera_to_world: np.ndarray | None = None
    contacts: np.ndarray | None = None
    contact_confidence: np.ndarray | None = None
    feet_seen: np.ndarray | None = None
    foot_map_depth: np.ndarray | None = None
    # (rotmats it belongs to, axis-angle): keeps axis-angle read from a file bit-exact on save.
    _axis_angle_cache: tuple[np.ndarray, np.ndarray] | None = field(
        default=None, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        self.rotmats = np.asarray(self.rotmats, dtype=np.float64)
        if self.rotmats.ndim != 4 or self.rotmats.shape[1:] != (NUM_JOINTS, 3, 3):
            raise ValueError(f"rotmats must be (N,55,3,3), got {self.rotmats.shape}")
        n = self.rotmats.shape[0]
        self.transl = _shaped(self.transl, (n, 3), "transl")
        self.betas = _shaped(self.betas, (NUM_BETAS,), "betas")
        self.fps = float(self.fps)
        if not np.isfinite(self.fps) or self.fps <= 0:
            raise ValueError(f"fps must be a positive number, got {self.fps}")
        self.confidence = (
            np.ones(n) if self.confidence is None else _shaped(self.confidence, (n,), "confidence")
        )
        if self.frame_indices is None:
            self.frame_indices = np.arange(n, dtype=np.int64)
        else:
            fi = np.asarray(self.frame_indices)
            if fi.shape != (n,) or (fi.size and not np.all(fi == np.round(fi))):
                raise ValueError(f"frame_indices must be {n} integers, got shape {fi.shape}")
            self.frame_indices = fi.astype(np.int64)
        self.flags = (
            np.zeros(n, np.uint8) if self.flags is None
            else _shaped(self.flags, (n,), "flags", np.uint8)
        )
        for name, width in _PER_FRAME_OPTIONAL.items():
            value = getattr(self, name)
            if value is None:
                continue
            value = np.asarray(value, dtype=np.float64)
            if value.ndim == 0 or value.shape == (width,):  # one value for every frame
                value = np.broadcast_to(value, (n, width)).copy()
            elif name == "focal_px" and value.shape == (n,):  # one focal for x and y
                value = np.repeat(value[:, None], 2, axis=1)
            setattr(self, name, _shaped(value, (n, width), name))
        if self.image_size is not None:
            self.image_size = _shaped(self.image_size, (2,), "image_size")
        if self.part_iou is not None:
            self.part_iou = _shaped(self.part_iou, (n, NUM_PART_CLASSES), "part_iou")
        if self.silhouette_iou is not None:
            self.silhouette_iou = _shaped(self.silhouette_iou, (n,), "silhouette_iou")
        if self.camera_to_world is not None:
            self.camera_to_world = _shaped(self.camera_to_world, (n, 4, 4), "camera_to_world")
        if self.contacts is not None:
            self.contacts = _shaped(self.contacts, (n, 4), "contacts", bool)
        for name in ("contact_confidence", "feet_seen", "foot_map_depth"):
            if getattr(self, name) is not None:
                setattr(self, name, _shaped(getattr(self, name), (n, 4), name))
        self.gender = str(self.gender)
        self.coordinate_frame = str(self.coordinate_frame)
        if not all(np.all(np.isfinite(a)) for a in (self.rotmats, self.transl, self.betas)):
            raise ValueError("rotmats, transl and betas must be finite (no NaN/inf)")
        for name in ("camera_to_world", "contact_confidence"):
            value = getattr(self, name)
            if value is not None and not np.all(np.isfinite(value)):
                raise ValueError(f"{name} must be finite (no NaN/inf)")
        for name in ("feet_seen", "foot_map_depth"):  # NaN = unknown
            value = getattr(self, name)
            if value is not None and np.any(np.isinf(value)):
                raise ValueError(f"{name} must be a number or NaN (no inf)")

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_predictions(
        cls,
        rotmats: np.ndarray,
        cam_t: np.ndarray,
        betas: np.ndarray,
        fps: float,
        confidence: np.ndarray | None = None,
        frame_indices: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        focal_px: np.ndarray | None = None,
        principal_point: np.ndarray | None = None,
        image_size: np.ndarray | None = None,
        flags: np.ndarray | None = None,
        body_model: BodyModel | None = None,
    ) -> Motion:
        """Motion from per-frame network outputs: rotmats (N,22,3,3) (or 55), cam_t (N,3).

        Jaw, eyes and hands become identity (what D-PoSE's body call uses). Per-frame betas
        (N,11) are reduced to one body by the per-coefficient median (robust to the odd bad
        frame). Given `body_model`, transl is corrected by J_0(beta_frame) - J_0(beta_median) so
        the pelvis stays where the network put it despite the shared shape.
        """
        rot = np.asarray(rotmats, dtype=np.float64)
        if rot.ndim != 4 or rot.shape[-2:] != (3, 3) or rot.shape[1] not in (
            NUM_PREDICTED_JOINTS, NUM_JOINTS
        ):
            raise ValueError(f"rotmats must be (N,22,3,3) or (N,55,3,3), got {rot.shape}")
        n = rot.shape[0]
        full = np.broadcast_to(np.eye(3), (n, NUM_JOINTS, 3, 3)).copy()
        full[:, : rot.shape[1]] = rot
        transl = np.array(_shaped(cam_t, (n, 3), "cam_t"))
        b = np.asarray(betas, dtype=np.float64)
        if b.ndim == 2:
            if b.shape != (n, NUM_BETAS):
                raise ValueError(f"per-frame betas must be ({n},{NUM_BETAS}), got {b.shape}")
            shared = np.median(b, axis=0) if n else np.zeros(NUM_BETAS)
            if body_model is not None and n:
                pelvis_frame = body_model.rest_joints(b)[:, 0]
                transl += pelvis_frame - body_model.rest_joints(shared)[0]
        else:
            shared = b
        return cls(
            rotmats=full, transl=transl, betas=shared, fps=fps, confidence=confidence,
            frame_indices=frame_indices, boxes=boxes, focal_px=focal_px,
            principal_point=principal_point, image_size=image_size, flags=flags,
        )

    from_frames = from_predictions  # the name the contract also promises

    @classmethod
    def from_estimate(
        cls,
        estimate,
        fps: float,
        frame_indices: np.ndarray | None = None,
        confidence: np.ndarray | None = None,
        boxes: np.ndarray | None = None,
        body_model: BodyModel | None = None,
    ) -> Motion:
        """Motion from an `Estimate` whose crops are consecutive frames of one person.

        Reads rotmats, cam_t, betas, focal_px, principal_point and image_size (first row).
        """
        image_size = getattr(estimate, "image_size", None)
        if image_size is not None and np.ndim(image_size) == 2 and len(image_size):
            image_size = np.asarray(image_size)[0]
        elif image_size is not None and np.ndim(image_size) == 2:
            image_size = None
        return cls.from_predictions(
            estimate.rotmats, estimate.cam_t, estimate.betas, fps, confidence=confidence,
            frame_indices=frame_indices, boxes=boxes,
            focal_px=getattr(estimate, "focal_px", None),
            principal_point=getattr(estimate, "principal_point", None),
            image_size=image_size, body_model=body_model,
        )

    # ------------------------------------------------------------------ queries
    @property
    def num_frames(self) -> int:
        return int(self.rotmats.shape[0])

    def __len__(self) -> int:
        return self.num_frames

    def frame_times(self) -> np.ndarray:
        """Seconds of each frame in the source: frame_indices / fps."""
        return self.frame_indices / self.fps

    def select(self, index: np.ndarray | slice) -> Motion:
        """A new Motion with the frames picked by a slice, integer indices or a boolean mask."""
        if isinstance(index, slice):
            picked = np.arange(self.num_frames)[index]
        else:
            picked = np.arange(self.num_frames)[np.asarray(index)]
        if picked.ndim != 1:
            raise ValueError("select() takes a 1-D index")
        kwargs = {}
        for f in dataclasses.fields(self):
            if f.name == "_axis_angle_cache":
                continue
            value = getattr(self, f.name)
            per_frame = isinstance(value, np.ndarray) and value.ndim >= 1 and f.name not in (
                "betas", "image_size"
            )
            kwargs[f.name] = value[picked].copy() if per_frame else _copy(value)
        out = Motion(**kwargs)
        if self._cache_valid():
            out._axis_angle_cache = (out.rotmats.copy(), self._axis_angle_cache[1][picked].copy())
        return out

    def slice(self, start: int | None = None, stop: int | None = None, step: int | None = None
              ) -> Motion:
        """Frames [start:stop:step] (positions in this motion, not source frame numbers)."""
        return self.select(slice(start, stop, step))

    def copy(self) -> Motion:
        return self.select(slice(None))

    def replace(self, **changes) -> Motion:
        """A copy with some fields replaced (validated again)."""
        current = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                   if f.name != "_axis_angle_cache"}
        current.update(changes)
        return Motion(**current)

    def _cache_valid(self) -> bool:
        cache = self._axis_angle_cache
        return cache is not None and cache[0].shape == self.rotmats.shape and np.array_equal(
            cache[0], self.rotmats
        )

    def as_axis_angle(self) -> np.ndarray:
        """Rotations as axis-angle (N,55,3), radians (angles in [0, pi] unless read from a file)."""
        if self._cache_valid():
            return self._axis_angle_cache[1].copy()
        return matrix_to_axis_angle(self.rotmats)

    def quaternions(self) -> np.ndarray:
        """Rotations as quaternions (N,55,4), w first, sign-continuous along time for keyframes."""
        return make_quaternions_continuous(matrix_to_quaternion(self.rotmats), axis=0)

    def body_output(
        self, body_model: BodyModel, pose_correctives: bool = True, return_vertices: bool = False
    ) -> BodyOutput:
        """Pose `body_model` with this motion (joints in this motion's coordinate frame)."""
        return body_model.forward(
            self.rotmats, self.betas, self.transl, pose_correctives=pose_correctives,
            return_vertices=return_vertices,
        )


def _shaped(value, shape: tuple[int, ...], name: str, dtype=np.float64) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return arr


def _copy(value):
    return value.copy() if isinstance(value, np.ndarray) else value
