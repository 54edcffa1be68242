"""Temporal clean-up of per-frame estimates: One-Euro filtering, gap filling, one body shape.

Per-frame network output jitters. The One-Euro filter (Casiez et al. 2012) is a low-pass
whose cutoff rises with speed: still poses are smoothed hard, fast motion keeps up. Rotations
are filtered on the sphere (each step moves the estimate towards the new quaternion by a
slerp fraction, the derivative is the angular velocity), so there are no sign flips and no
re-normalisation artefacts. Because whole clips are processed offline, the filter runs
forwards and then backwards (zero phase): the forward lag is undone by the backward pass.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .rotations import (
    make_quaternions_continuous,
    matrix_to_quaternion,
    quaternion_multiply,
    quaternion_slerp,
    quaternion_to_axis_angle,
    quaternion_to_matrix,
)

_CHUNK = 1024


@dataclass(frozen=True)
class OneEuroParams:
    """min_cutoff (Hz) sets smoothing at rest; beta (s/unit) how fast the cutoff opens with
    speed; d_cutoff (Hz) smooths the speed estimate itself."""

    min_cutoff: float
    beta: float
    d_cutoff: float = 1.0


# Defaults at smooth=1.0 (tuned on noisy synthetic motion at 30 fps: see tests/test_smoothing).
ROTATION_DEFAULTS = OneEuroParams(min_cutoff=1.5, beta=0.3, d_cutoff=1.0)  # beta: per rad/s
TRANSLATION_DEFAULTS = OneEuroParams(min_cutoff=1.5, beta=0.5, d_cutoff=1.0)  # beta: per m/s


def scaled_params(base: OneEuroParams, smooth: float) -> OneEuroParams | None:
    """Filter settings for strength `smooth` (1 = default, 0 = off, 2 = twice as smooth)."""
    if smooth < 0:
        raise ValueError(f"smooth must be >= 0 (0 turns smoothing off), got {smooth}")
    if smooth == 0:
        return None
    return OneEuroParams(base.min_cutoff / smooth, base.beta / smooth, base.d_cutoff)


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray:
    r = 2.0 * math.pi * np.asarray(cutoff) * dt
    return r / (r + 1.0)


def _time_steps(times: np.ndarray, n: int) -> np.ndarray:
    times = np.asarray(times, dtype=np.float64).reshape(-1)
    if times.shape[0] != n:
        raise ValueError(f"need one time per frame: {times.shape[0]} times for {n} frames")
    dt = np.diff(times)
    if np.any(dt <= 0):
        raise ValueError("frame times must increase strictly")
    return dt


def _one_euro_vectors_pass(x: np.ndarray, dt: np.ndarray, p: OneEuroParams) -> np.ndarray:
    out = np.empty_like(x)
    out[0] = x[0]
    dx = np.zeros(x.shape[1:], dtype=x.dtype)
    for i in range(1, x.shape[0]):
        speed = (x[i] - out[i - 1]) / dt[i - 1]
        dx = dx + _alpha(p.d_cutoff, dt[i - 1]) * (speed - dx)
        a = _alpha(p.min_cutoff + p.beta * np.abs(dx), dt[i - 1])
        out[i] = out[i - 1] + a * (x[i] - out[i - 1])
    return out


def one_euro_vectors(x: np.ndarray, times: np.ndarray, params: OneEuroParams,
                     zero_phase: bool = True) -> np.ndarray:
    """One-Euro filter along axis 0 of x (N, ...); element-wise cutoffs. times in seconds."""
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] < 2:
        return x.copy()
    dt = _time_steps(times, x.shape[0])
    out = _one_euro_vectors_pass(x, dt, params)
    if zero_phase:
        out = _one_euro_vectors_pass(out[::-1], dt[::-1], params)[::-1]
    return np.ascontiguousarray(out)


def _one_euro_quaternion_pass(q: np.ndarray, dt: np.ndarray, p: OneEuroParams) -> np.ndarray:
    out = np.empty_like(q)
    out[0] = q[0]
    omega = np.zeros(q.shape[1:-1])  # filtered angular speed, rad/s
    for i in range(1, q.shape[0]):
        prev = out[i - 1]
        conj = prev * np.array([1.0, -1.0, -1.0, -1.0])
        rel = quaternion_multiply(conj, q[i])  # rotation from the estimate to the sample
        rel = np.where(rel[..., :1] < 0, -rel, rel)  # shortest way round
        speed = np.linalg.norm(quaternion_to_axis_angle(rel), axis=-1) / dt[i - 1]
        omega = omega + _alpha(p.d_cutoff, dt[i - 1]) * (speed - omega)
        a = _alpha(p.min_cutoff + p.beta * omega, dt[i - 1])
        out[i] = quaternion_slerp(prev, q[i], a)
    return out


def one_euro_quaternions(q: np.ndarray, times: np.ndarray, params: OneEuroParams,
                         zero_phase: bool = True) -> np.ndarray:
    """One-Euro filter of unit quaternions (N, ..., 4) on the sphere; output is continuous
    (neighbouring quaternions in the same hemisphere)."""
    q = make_quaternions_continuous(np.asarray(q, dtype=np.float64), axis=0)
    if q.shape[0] < 2:
        return q.copy()
    dt = _time_steps(times, q.shape[0])
    out = _one_euro_quaternion_pass(q, dt, params)
    if zero_phase:
        out = _one_euro_quaternion_pass(out[::-1], dt[::-1], params)[::-1]
    return make_quaternions_continuous(np.ascontiguousarray(out), axis=0)


def smooth_rotations(rotmats: np.ndarray, times: np.ndarray, smooth: float = 1.0,
                     base: OneEuroParams = ROTATION_DEFAULTS) -> np.ndarray:
    """Filter rotation matrices (N, J, 3, 3) over time at strength `smooth` (0 = unchanged)."""
    rotmats = np.asarray(rotmats, dtype=np.float64)
    params = scaled_params(base, smooth)
    if params is None or rotmats.shape[0] < 2:
        return rotmats.copy()
    # Conversions in time chunks: their temporaries are ~4x the data, which matters at 10k frames.
    q = np.empty(rotmats.shape[:-2] + (4,))
    for i in range(0, len(q), _CHUNK):
        q[i:i + _CHUNK] = matrix_to_quaternion(rotmats[i:i + _CHUNK])
    q = one_euro_quaternions(q, times, params)
    out = np.empty_like(rotmats)
    for i in range(0, len(q), _CHUNK):
        out[i:i + _CHUNK] = quaternion_to_matrix(q[i:i + _CHUNK])
    return out


def smooth_translation(transl: np.ndarray, times: np.ndarray, smooth: float = 1.0,
                       base: OneEuroParams = TRANSLATION_DEFAULTS) -> np.ndarray:
    """Filter translations (N, 3) in metres over time at strength `smooth` (0 = unchanged)."""
    transl = np.asarray(transl, dtype=np.float64)
    params = scaled_params(base, smooth)
    if params is None or transl.shape[0] < 2:
        return transl.copy()
    return one_euro_vectors(transl, times, params)


def robust_mean_betas(betas: np.ndarray, weights: np.ndarray | None = None,
                      iterations: int = 20) -> np.ndarray:
    """One body shape for a track: confidence-weighted geometric median of per-frame betas.

    The median ignores the frames where the network misjudged the shape (occlusion, blur,
    truncation) instead of averaging them in (Weiszfeld iterations).
    """
    b = np.asarray(betas, dtype=np.float64)
    if b.ndim != 2 or b.shape[0] == 0:
        raise ValueError(f"betas must be (N, K) with N >= 1, got {b.shape}")
    w = np.ones(b.shape[0]) if weights is None else np.clip(np.asarray(weights, float), 0, None)
    if w.sum() <= 0:
        w = np.ones(b.shape[0])
    estimate = (w[:, None] * b).sum(0) / w.sum()
    for _ in range(iterations):
        d = np.linalg.norm(b - estimate, axis=1)
        inv = w / np.maximum(d, 1e-6)
        new = (inv[:, None] * b).sum(0) / inv.sum()
        if np.linalg.norm(new - estimate) < 1e-9:
            estimate = new
            break
        estimate = new
    return estimate


def fill_gaps(rotmats: np.ndarray, transl: np.ndarray, valid: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """Replace the frames where `valid` is False: slerp rotations and lerp translations
    between the nearest valid frames (held constant before the first / after the last).

    rotmats (N, J, 3, 3), transl (N, 3), valid (N,) bool with at least one True. Rows are
    consecutive output frames, so the blend weight is the position between the two neighbours.
    """
    valid = np.asarray(valid, dtype=bool)
    if not valid.any():
        raise ValueError("fill_gaps needs at least one valid frame")
    rot = np.array(rotmats, dtype=np.float64, copy=True)
    tr = np.array(transl, dtype=np.float64, copy=True)
    if valid.all():
        return rot, tr
    good = np.nonzero(valid)[0]
    missing = np.nonzero(~valid)[0]
    pos = np.searchsorted(good, missing)
    lo = good[np.clip(pos - 1, 0, len(good) - 1)]
    hi = good[np.clip(pos, 0, len(good) - 1)]
    lo = np.where(pos == 0, hi, lo)
    hi = np.where(pos == len(good), lo, hi)
    span = np.maximum(hi - lo, 1)
    t = np.where(hi == lo, 0.0, (missing - lo) / span)
    q_fill = quaternion_slerp(matrix_to_quaternion(rot[lo]), matrix_to_quaternion(rot[hi]),
                              t[:, None])
    rot[missing] = quaternion_to_matrix(q_fill)
    tr[missing] = tr[lo] + t[:, None] * (tr[hi] - tr[lo])
    return rot, tr
