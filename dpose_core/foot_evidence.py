"""What the network's own maps say about the feet: contact evidence beside the pose.

D-PoSE predicts, for every crop, a part segmentation and a depth map besides the SMPL-X pose
(docs/grounding.md, "Evidence"). Two cues come from them per heel and toe:

- *seen*: how much of that part the segmentation shows (an unseen foot's contact is a guess);
- *map depth*: the depth map's value on that part minus its value on the hips. The map has
  no unit (a sigmoid), so the refine stage fits one scale per clip that turns it into metres
  of the solve's own foot-minus-pelvis depth, and only uses it when it follows that depth.
  It then places each heel and toe at the map's depth along its own camera ray: if that puts
  it on the floor, the map backs a contact there; if it lifts it off, the map argues against.
"""

from __future__ import annotations

import numpy as np

from .part_labels import PART_CLASS

FOOT_EVIDENCE_PIXELS = 50  # pixels of a 224x224 crop's part map that fully show a heel or toe
MIN_DEPTH_PIXELS = 10  # fewer pixels of a part than this: its map depth is unknown
_FOOT_PART_NAMES = ("leftFoot", "leftToeBase", "rightFoot", "rightToeBase")  # heel, toe order
MIN_FIT_SAMPLES = 20  # map depths (frames x points) needed to fit the map's scale
MIN_FIT_CORRELATION = 0.5  # the map must follow the solve's foot depth at least this well


def feet_seen(part_labels: np.ndarray) -> np.ndarray:
    """(4,) in [0, 1]: how much of the left heel, left toe, right heel, right toe the network's
    part segmentation of one crop shows (its ankle/foot and toe parts, docs/part-labels.md)."""
    labels = np.asarray(part_labels)
    counts = np.array([np.count_nonzero(labels == PART_CLASS[n]) for n in _FOOT_PART_NAMES])
    return np.clip(counts / FOOT_EVIDENCE_PIXELS, 0.0, 1.0)


def foot_map_depth(depth: np.ndarray, part_labels: np.ndarray) -> np.ndarray:
    """(4,) the depth map's median on each heel/toe part minus its median on the hips (map
    units); NaN where the part or the hips cover fewer than MIN_DEPTH_PIXELS pixels. The part
    map is sampled onto the depth map's grid (nearest pixel) when their sizes differ."""
    depth = np.asarray(depth, dtype=np.float64)
    labels = np.asarray(part_labels)
    if labels.shape != depth.shape:
        rows = np.arange(depth.shape[0]) * labels.shape[0] // depth.shape[0]
        cols = np.arange(depth.shape[1]) * labels.shape[1] // depth.shape[1]
        labels = labels[np.ix_(rows, cols)]

    def median(name: str) -> float:
        values = depth[labels == PART_CLASS[name]]
        ok = values[np.isfinite(values)]
        return float(np.median(ok)) if len(ok) >= MIN_DEPTH_PIXELS else np.nan

    return np.array([median(n) for n in _FOOT_PART_NAMES]) - median("hips")


def fit_map_scale(map_depth: np.ndarray, solve_depth: np.ndarray) -> tuple[float | None, str]:
    """Metres per map unit that best turns map_depth (N,4) into solve_depth (N,4), the solve's
    foot-minus-pelvis depth, by a robust fit through zero; None, with why, when there are too
    few samples or the map does not follow the solve (|correlation| < MIN_FIT_CORRELATION)."""
    m = np.asarray(map_depth, dtype=np.float64).ravel()
    s = np.asarray(solve_depth, dtype=np.float64).ravel()
    ok = np.isfinite(m) & np.isfinite(s)
    m, s = m[ok], s[ok]
    if len(m) < MIN_FIT_SAMPLES:
        return None, f"only {len(m)} heel/toe depths on the map (need {MIN_FIT_SAMPLES})"
    if np.std(m) < 1e-9 or np.std(s) < 1e-9:
        return None, "the depth map is flat over the feet"
    r = float(np.corrcoef(m, s)[0, 1])
    if not abs(r) >= MIN_FIT_CORRELATION:
        return None, f"the depth map does not follow the body's foot depth (r = {r:.2f})"
    weights = np.ones_like(m)
    scale = 0.0
    for _ in range(10):  # Cauchy reweighting: a few wrong frames do not set the scale
        scale = float((weights * m * s).sum() / (weights * m * m).sum())
        residual = s - scale * m
        spread = max(1.4826 * float(np.median(np.abs(residual))), 1e-3)
        weights = 1.0 / (1.0 + (residual / (3.0 * spread)) ** 2)
    return scale, f"r = {r:.2f}, {scale:.3f} m per map unit"


def weigh_confidence(confidence: np.ndarray, cue: np.ndarray) -> np.ndarray:
    """Contact confidence (N,4) scaled by a cue in [0, 1]: a cue of 0 (unseen, or the map
    against) keeps half the confidence, 1 keeps it all."""
    return confidence * (0.5 + 0.5 * np.clip(cue, 0.0, 1.0))


def depths_along_rays(points: np.ndarray, pelvis: np.ndarray, map_depth: np.ndarray,
                      scale: float) -> np.ndarray:
    """Camera-frame points (N,4,3) moved along their own rays to the depth the map gives them
    (pelvis depth + scale x map depth); points without a map depth stay where they are."""
    z = pelvis[:, None, 2] + scale * map_depth
    ratio = np.where(np.isfinite(z) & (z > 0.1), z, points[..., 2]) / points[..., 2]
    return points * ratio[..., None]
