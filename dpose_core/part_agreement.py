"""How well a solve agrees with the body parts the network saw: per-part and silhouette IoU.

D-PoSE predicts a 23-class part map for each 224 px crop besides the pose it regresses, so the
map is evidence the pose can be checked against. The posed SMPL-X mesh is projected through the
solve's own camera into that crop, filled into a part-label image (`rasterise`) with each
vertex's class from its skinning (`part_labels`), and compared class by class with the map.

Scores per frame: `part_iou` (23 columns, one per class; column 0 is the background, NaN
where a class is in neither image), `mean_iou` over the body classes present in either image
(class 1 is left out: the network was never taught it, docs/part-labels.md), and
`silhouette_iou` of body versus background. NaN means nothing to compare (an empty frame).
"""

from __future__ import annotations

import math
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from . import preprocess
from .constants import CROP_SIZE, NUM_PART_CLASSES
from .part_labels import BACKGROUND_CLASS, UNUSED_CLASS, body_model_part_classes
from .rasterise import rasterise_labels
from .skeleton import NUM_JOINTS, NUM_PREDICTED_JOINTS

if TYPE_CHECKING:  # pragma: no cover
    from .body_model import BodyModel
    from .estimator import Estimate
    from .motion import Motion

# Classes averaged into mean_iou: the body parts the network can predict.
SCORED_CLASSES = np.array(
    [c for c in range(NUM_PART_CLASSES) if c not in (BACKGROUND_CLASS, UNUSED_CLASS)]
)
# Frames are posed and filled this many at a time (bounds the (n, V, 12) skinning blend).
_CHUNK = 16
# Near plane, metres: vertices closer than this to the camera are not drawn.
_NEAR_M = 1e-3


@dataclass
class AgreementScores:
    """Per frame (N rows): part_iou (N,23), mean_iou (N,), silhouette_iou (N,); NaN = no data."""

    part_iou: np.ndarray
    mean_iou: np.ndarray
    silhouette_iou: np.ndarray

    def __len__(self) -> int:
        return len(self.mean_iou)

    def low_frames(self, threshold: float) -> np.ndarray:
        """Row indices whose mean part IoU is below `threshold` (frames without data are not)."""
        with np.errstate(invalid="ignore"):
            return np.flatnonzero(self.mean_iou < threshold)

    def frame_summary(self, row: int) -> dict:
        """JSON-ready scores of one row (a crop or frame): NaN -> None, 4 decimals."""
        return {
            "mean_part_iou": _json_number(self.mean_iou[row]),
            "silhouette_iou": _json_number(self.silhouette_iou[row]),
            "part_iou": [_json_number(v) for v in self.part_iou[row]],
        }

    def summary(self) -> dict:
        """JSON-ready figures for a report: means over the scored rows, overall and per class."""

        def mean(values: np.ndarray) -> float | None:
            finite = values[np.isfinite(values)]
            return _json_number(finite.mean()) if finite.size else None

        return {
            "frames": len(self),
            "frames_scored": int(np.isfinite(self.mean_iou).sum()),
            "mean_part_iou": mean(self.mean_iou),
            "mean_silhouette_iou": mean(self.silhouette_iou),
            "part_iou_per_class": [mean(self.part_iou[:, c]) for c in range(NUM_PART_CLASSES)],
        }


def _json_number(value) -> float | None:
    value = float(value)
    return None if math.isnan(value) else round(value, 4)


def project_to_crop(
    points_cam: np.ndarray,
    focal_px: np.ndarray,
    principal_point: np.ndarray,
    crop_box: np.ndarray,
    size: int = CROP_SIZE,
) -> tuple[np.ndarray, np.ndarray]:
    """Camera-frame points (N,V,3) -> crop pixels (N,V,2) and inverse depth (N,V).

    The full-image projection u = fx X/Z + cx (camera.project) is mapped into the crop whose
    image region is crop_box (N,4) xyxy: crop x = (u - x0) * size / (x1 - x0), same for y.
    Pixel coordinates are continuous (pixel i spans [i, i+1)). Points with Z <= 1 mm get
    inverse depth 0, so the rasteriser skips their triangles.
    """
    p = np.asarray(points_cam, dtype=np.float64)
    f = np.asarray(focal_px, dtype=np.float64)
    c = np.asarray(principal_point, dtype=np.float64)
    box = np.asarray(crop_box, dtype=np.float64)
    n = len(p)
    if p.ndim != 3 or p.shape[2] != 3 or f.shape != (n, 2) or c.shape != (n, 2) or box.shape != (
        n, 4
    ):
        raise ValueError(
            "points_cam (N,V,3) needs focal_px and principal_point (N,2) and crop_box (N,4); "
            f"got {p.shape}, {f.shape}, {c.shape}, {box.shape}"
        )
    f, c = f[:, None], c[:, None]
    side = box[:, 2:] - box[:, :2]  # (N,2) crop region width, height in image pixels
    if np.any(~(side > 0)):
        raise ValueError(f"crop boxes must have x0 < x1 and y0 < y1, got {box.tolist()}")
    z = p[..., 2]
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse_depth = np.where(z > _NEAR_M, 1.0 / z, 0.0)
        image_xy = p[..., :2] * inverse_depth[..., None] * f + c
    crop_xy = (image_xy - box[:, None, :2]) * (size / side)[:, None, :]
    return crop_xy, inverse_depth


def render_part_labels(
    vertices_cam: np.ndarray,
    faces: np.ndarray,
    vertex_classes: np.ndarray,
    focal_px: np.ndarray,
    principal_point: np.ndarray,
    crop_box: np.ndarray,
    size: int = CROP_SIZE,
) -> np.ndarray:
    """Part-label images (N,size,size) uint8 of camera-frame meshes (N,V,3) in their crops."""
    crop_xy, inverse_depth = project_to_crop(
        vertices_cam, focal_px, principal_point, crop_box, size
    )
    return rasterise_labels(crop_xy, inverse_depth, faces, vertex_classes, size)


def compare_part_labels(rendered: np.ndarray, network: np.ndarray) -> AgreementScores:
    """Scores of rendered part labels (N,S,S) against the network's part labels (N,S,S)."""
    rendered = np.asarray(rendered)
    network = np.asarray(network)
    if rendered.ndim == 2 and network.ndim == 2:  # one frame
        rendered, network = rendered[None], network[None]
    if rendered.shape != network.shape or rendered.ndim != 3:
        raise ValueError(
            f"label images must both be (N,S,S); got {rendered.shape} and {network.shape}"
        )
    for name, labels in (("rendered", rendered), ("network", network)):
        if labels.size and (labels.min() < 0 or labels.max() >= NUM_PART_CLASSES):
            raise ValueError(f"{name} labels must be classes 0..{NUM_PART_CLASSES - 1}")
    n = len(rendered)
    k = NUM_PART_CLASSES
    codes = (
        np.arange(n)[:, None] * (k * k)
        + rendered.reshape(n, -1).astype(np.int64) * k
        + network.reshape(n, -1).astype(np.int64)
    )
    confusion = np.bincount(codes.ravel(), minlength=n * k * k).reshape(n, k, k)
    inter = np.diagonal(confusion, axis1=1, axis2=2).astype(np.float64)
    union = confusion.sum(axis=2) + confusion.sum(axis=1) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        part_iou = np.where(union > 0, inter / union, np.nan)
        scored = part_iou[:, SCORED_CLASSES]
        present = np.isfinite(scored)
        mean_iou = np.where(
            present.any(axis=1),
            np.nansum(scored, axis=1) / np.maximum(present.sum(axis=1), 1),
            np.nan,
        )
        body_r = confusion[:, 1:, :].sum(axis=(1, 2))  # rendered body pixels
        body_n = confusion[:, :, 1:].sum(axis=(1, 2))
        both = confusion[:, 1:, 1:].sum(axis=(1, 2))
        either = body_r + body_n - both
        silhouette = np.where(either > 0, both / either, np.nan)
    return AgreementScores(part_iou=part_iou, mean_iou=mean_iou, silhouette_iou=silhouette)


def part_agreement_arrays(
    body_model: BodyModel,
    rotmats: np.ndarray,
    betas: np.ndarray,
    transl: np.ndarray,
    focal_px: np.ndarray,
    principal_point: np.ndarray,
    crop_box: np.ndarray,
    part_labels: np.ndarray,
    pose_correctives: bool = False,
) -> AgreementScores:
    """Score N posed bodies against the network's part labels (N,224,224) of their crops.

    rotmats (N,22|55,3,3) local SMPL-X rotations with rotation 0 in the OpenCV camera frame;
    betas (11,) or (N,11); transl (N,3) metres such that the camera-frame mesh is
    body_model(rotmats, betas) + transl (D-PoSE's cam_t, or a motion's transl); focal_px and
    principal_point (N,2) px; crop_box (N,4) xyxy image region of each crop. Pose correctives
    are off by default, matching the mesh the Blender rig deforms.
    """
    rotmats = np.asarray(rotmats, dtype=np.float64)
    n = len(rotmats)
    part_labels = np.asarray(part_labels)
    if part_labels.ndim != 3 or len(part_labels) != n:
        raise ValueError(f"part_labels must be ({n}, S, S), got {part_labels.shape}")
    size = part_labels.shape[1]
    if part_labels.shape[2] != size:
        raise ValueError(f"part_labels must be square, got {part_labels.shape}")
    betas = np.asarray(betas, dtype=np.float64)
    transl = np.asarray(transl, dtype=np.float64).reshape(n, 3)
    focal_px = np.asarray(focal_px, dtype=np.float64).reshape(n, 2)
    principal_point = np.asarray(principal_point, dtype=np.float64).reshape(n, 2)
    crop_box = np.asarray(crop_box, dtype=np.float64).reshape(n, 4)
    classes = body_model_part_classes(body_model)
    rendered = np.zeros(part_labels.shape, dtype=np.uint8)
    for start in range(0, n, _CHUNK):
        rows = slice(start, min(n, start + _CHUNK))
        frame_betas = betas[rows] if betas.ndim == 2 else betas
        if pose_correctives:
            verts = body_model.forward(
                rotmats[rows], frame_betas, transl[rows], pose_correctives=True
            ).vertices
        else:
            verts = skinned_vertices(body_model, rotmats[rows], frame_betas, transl[rows])
        rendered[rows] = render_part_labels(
            verts, body_model.faces, classes, focal_px[rows], principal_point[rows],
            crop_box[rows], size,
        )  # fmt: skip
    return compare_part_labels(rendered, part_labels)


def part_agreement(
    estimate: Estimate, body_model: BodyModel, pose_correctives: bool = False
) -> AgreementScores:
    """Scores of every crop of an `Estimate`: its own pose, shape, camera and part labels."""
    return part_agreement_arrays(
        body_model, estimate.rotmats, estimate.betas, estimate.cam_t, estimate.focal_px,
        estimate.principal_point, estimate.crop_box, estimate.part_labels,
        pose_correctives=pose_correctives,
    )  # fmt: skip


def crop_boxes_of(person_boxes: np.ndarray) -> np.ndarray:
    """(M,4) xyxy boxes given to the network -> (M,4) image regions its crops covered."""
    boxes = np.asarray(person_boxes, dtype=np.float64).reshape(-1, 4)
    return np.array(
        [preprocess.crop_box(*preprocess.box_to_center_scale(b)) for b in boxes]
    ).reshape(-1, 4)


def motion_part_agreement(
    motion: Motion,
    body_model: BodyModel,
    part_labels: np.ndarray,
    crop_box: np.ndarray | None = None,
    rows: np.ndarray | None = None,
    pose_correctives: bool = False,
) -> AgreementScores:
    """Scores of a motion's frames (the body as keyed, e.g. after smoothing) against labels.

    part_labels (M,224,224) belong to the motion rows `rows` (M indices; default: all rows in
    order); crop_box (M,4) their crops' image regions, by default derived from the motion's
    `boxes` (the boxes the network was given). Rows without labels (interpolated frames) score
    NaN. The motion must be in the OpenCV camera frame and carry focal_px and principal_point.
    """
    from .motion import FRAME_OPENCV_CAMERA

    if motion.coordinate_frame != FRAME_OPENCV_CAMERA:
        raise ValueError(
            f"part agreement needs a motion in the {FRAME_OPENCV_CAMERA!r} frame, "
            f"not {motion.coordinate_frame!r}"
        )
    if motion.focal_px is None or motion.principal_point is None:
        raise ValueError("part agreement needs the motion's focal_px and principal_point")
    n = motion.num_frames
    rows = np.arange(n) if rows is None else np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows.size and (rows.min() < 0 or rows.max() >= n):
        raise ValueError(f"rows must index the motion's {n} frames")
    if crop_box is None:
        if motion.boxes is None:
            raise ValueError("part agreement needs crop boxes or the motion's boxes")
        crop_box = crop_boxes_of(motion.boxes[rows])
    scored = part_agreement_arrays(
        body_model, motion.rotmats[rows], motion.betas, motion.transl[rows],
        motion.focal_px[rows], motion.principal_point[rows], crop_box, part_labels,
        pose_correctives=pose_correctives,
    )  # fmt: skip
    out = AgreementScores(
        part_iou=np.full((n, NUM_PART_CLASSES), np.nan),
        mean_iou=np.full(n, np.nan),
        silhouette_iou=np.full(n, np.nan),
    )
    out.part_iou[rows] = scored.part_iou
    out.mean_iou[rows] = scored.mean_iou
    out.silhouette_iou[rows] = scored.silhouette_iou
    return out


def with_agreement(motion: Motion, scores: AgreementScores) -> Motion:
    """A copy of `motion` carrying the scores (saved as dpose_part_iou / dpose_silhouette_iou)."""
    if len(scores) != motion.num_frames:
        raise ValueError(f"{len(scores)} score rows for a motion of {motion.num_frames} frames")
    return motion.replace(part_iou=scores.part_iou, silhouette_iou=scores.silhouette_iou)


class _RestModel:
    """What skinning without pose correctives needs from a BodyModel, regressed once."""

    def __init__(self, body_model: BodyModel) -> None:
        self.v_template = body_model.v_template
        self.shape_dirs = body_model.shapedirs.reshape(-1, body_model.num_betas)  # (V*3, B)
        self.joint_template = body_model.J_regressor @ body_model.v_template  # (55,3)
        self.joint_dirs = np.einsum("jv,vkl->jkl", body_model.J_regressor, body_model.shapedirs)
        self.parents = body_model.parents
        self.weights = body_model.lbs_weights  # (V,55)
        # A joint that keeps its parent's rotation moves its vertices exactly as the parent
        # does, so with only the 22 predicted rotations the jaw, eye and finger weights can
        # be added to their nearest predicted ancestor: a (V,22) blend instead of (V,55).
        ancestor = np.arange(NUM_JOINTS)
        for j in range(NUM_PREDICTED_JOINTS, NUM_JOINTS):
            ancestor[j] = ancestor[self.parents[j]]
        self.predicted_weights = np.zeros((len(self.weights), NUM_PREDICTED_JOINTS))
        np.add.at(self.predicted_weights.T, ancestor, self.weights.T)


_REST_MODELS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def skinned_vertices(
    body_model: BodyModel, rotmats: np.ndarray, betas: np.ndarray, transl: np.ndarray
) -> np.ndarray:
    """Posed vertices (n,V,3) by linear blend skinning alone, as the Blender rig deforms.

    The same numbers as `body_model.forward(..., pose_correctives=False).vertices` at a
    fraction of the cost: the joint regression of the shape space is done once per model and
    the blend is one (V,22) x (22,12) product per frame (55 joints when given 55 rotations).
    rotmats (n,22|55,3,3), betas (11,) or (n,11), transl (n,3).
    """
    rest = _REST_MODELS.get(body_model)
    if rest is None:
        rest = _REST_MODELS[body_model] = _RestModel(body_model)
    rot = np.asarray(rotmats, dtype=np.float64)
    if rot.ndim != 4 or rot.shape[1:] not in ((NUM_PREDICTED_JOINTS, 3, 3), (NUM_JOINTS, 3, 3)):
        raise ValueError(f"rotmats must be (n,22,3,3) or (n,55,3,3), got {rot.shape}")
    n, k = rot.shape[:2]
    b = np.asarray(betas, dtype=np.float64)
    dims = rest.shape_dirs.shape[1]
    if b.ndim not in (1, 2) or b.shape[-1] > dims:
        raise ValueError(f"betas must be ({dims},) or (n,{dims}), got {b.shape}")
    b = np.pad(b, [(0, 0)] * (b.ndim - 1) + [(0, dims - b.shape[-1])])  # missing betas are 0
    b = np.broadcast_to(b, (n, dims)) if b.ndim == 1 else b
    joints = rest.joint_template + np.einsum("nl,jkl->njk", b, rest.joint_dirs)  # (n,55,3)
    if np.ndim(betas) == 1:  # one shape for every frame: shape the template once
        shaped = (rest.v_template + (rest.shape_dirs @ b[0]).reshape(-1, 3))[None]
    else:
        shaped = rest.v_template + (b @ rest.shape_dirs.T).reshape(n, -1, 3)
    world_rot = np.empty((n, k, 3, 3))
    world_pos = np.empty((n, k, 3))
    world_rot[:, 0] = rot[:, 0]
    world_pos[:, 0] = joints[:, 0]
    for j in range(1, k):
        p = rest.parents[j]
        world_rot[:, j] = world_rot[:, p] @ rot[:, j]
        offset = joints[:, j] - joints[:, p]
        world_pos[:, j] = world_pos[:, p] + np.einsum("nab,nb->na", world_rot[:, p], offset)
    # Per joint x -> R x + t with t = posed joint - R rest joint; blended per vertex.
    shift = world_pos - np.einsum("njab,njb->nja", world_rot, joints[:, :k])
    transforms = np.concatenate([world_rot.reshape(n, k, 9), shift], axis=2)
    weights = rest.weights if k == NUM_JOINTS else rest.predicted_weights
    blend = weights @ transforms  # (n,V,12)
    x, y, z = shaped[..., 0:1], shaped[..., 1:2], shaped[..., 2:3]
    verts = blend[..., 0:9:3] * x + blend[..., 1:9:3] * y + blend[..., 2:9:3] * z
    verts += blend[..., 9:12]
    return verts + np.asarray(transl, dtype=np.float64).reshape(n, 1, 3)
