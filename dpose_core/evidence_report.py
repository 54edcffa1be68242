"""The part-agreement section of a run's quality report (`dpose estimate --report R.json`).

How well each solved body agrees with the part map the network predicted (part_agreement):
per frame (videos) or per person crop (images) the mean part IoU, the silhouette IoU and the
23 per-part IoUs, a summary, and the frames whose mean part IoU is below a threshold: the
ones to check or hand-key. Numbers are JSON-ready (NaN -> null, 4 decimals).

    section = tracks_section(result.tracks, threshold=0.4)
    report.write_report("R.json", {"part_agreement": section})
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from .constants import NUM_PART_CLASSES
from .part_agreement import AgreementScores
from .part_labels import CLASS_NAMES

if TYPE_CHECKING:  # pragma: no cover
    from .motion import Motion
    from .pipeline import ImagesResult

# Frames whose mean part IoU is below this are listed as low (report) and marked (Blender).
# A solve that matches the picture overlaps the network's parts by well over half; one that
# has lost a limb or turned the wrong way drops below this (docs/part-labels.md).
DEFAULT_LOW_PART_IOU = 0.4

SECTION_NOTE = (
    "mean_part_iou: IoU of the solved body's part masks with the network's part map, averaged "
    "over the parts present; silhouette_iou: body vs background; part_iou: one value per "
    "class (class_names); null = not scored (interpolated frame, nothing to compare)."
)


def check_threshold(threshold: float) -> float:
    """The low-score threshold, refused in one line unless within [0, 1]."""
    from .errors import DPoseError

    if not (np.isfinite(threshold) and 0.0 <= threshold <= 1.0):
        raise DPoseError(f"--low-part-iou must be between 0 and 1, got {threshold}.")
    return float(threshold)


def motion_scores(motion: Motion) -> AgreementScores | None:
    """A motion's stored scores as AgreementScores (mean IoU recomputed over the scored
    classes, as part_agreement does), or None when the motion was not scored."""
    if motion.part_iou is None or motion.silhouette_iou is None:
        return None
    from .part_agreement import SCORED_CLASSES

    part_iou = np.asarray(motion.part_iou, np.float64)
    scored = part_iou[:, SCORED_CLASSES]
    present = np.isfinite(scored)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(present.any(axis=1),
                        np.nansum(scored, axis=1) / np.maximum(present.sum(axis=1), 1), np.nan)
    return AgreementScores(part_iou=part_iou, mean_iou=mean,
                           silhouette_iou=np.asarray(motion.silhouette_iou, np.float64))


def _header(threshold: float) -> dict:
    return {"threshold": threshold, "note": SECTION_NOTE,
            "class_names": [CLASS_NAMES[c] for c in range(NUM_PART_CLASSES)]}


def tracks_section(tracks: dict[int, Motion], threshold: float = DEFAULT_LOW_PART_IOU) -> dict:
    """Per track: summary, low-score source frames and every frame's scores."""
    out = _header(check_threshold(threshold))
    out["tracks"] = {}
    for number in sorted(tracks):
        motion = tracks[number]
        scores = motion_scores(motion)
        if scores is None:
            out["tracks"][str(number)] = {"scored": False}
            continue
        frames = (np.arange(len(scores)) if motion.frame_indices is None
                  else np.asarray(motion.frame_indices))
        low = scores.low_frames(threshold)
        out["tracks"][str(number)] = {
            "scored": True, **scores.summary(),
            "low_frames": [int(frames[k]) for k in low],
            "per_frame": [{"frame": int(frames[k]), **scores.frame_summary(k)}
                          for k in range(len(scores))],
        }
    return out


def images_section(result: ImagesResult, threshold: float = DEFAULT_LOW_PART_IOU) -> dict:
    """Per person crop (ImagesResult rows): image, scores; the low ones listed by row."""
    out = _header(check_threshold(threshold))
    scores = result.scores
    if scores is None:
        out["scored"] = False
        return out
    image_index = np.asarray(result.estimate.image_index)
    out.update(scored=True, **scores.summary())
    out["low_rows"] = [int(k) for k in scores.low_frames(threshold)]
    out["per_crop"] = [{"row": k, "image": str(result.paths[int(image_index[k])]),
                        **scores.frame_summary(k)} for k in range(len(scores))]
    return out
