"""Ground geometry for a motion: foot contact points, the floor plane, the world frame, contacts.

Works on posed SMPL-X bodies (numpy only). The foot contact points and the reasons for them are
in docs/grounding.md: per foot a heel point rigidly attached to the ankle joint and a toe point
rigidly attached to the foot (ball) joint, both at the sole's height in the rest pose.
Heights are along the floor normal; the world frame is Z up with the floor at Z = 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .skeleton import JOINT_NAMES

# Order of the four contact points everywhere (contacts arrays are (N, 4) in this order).
FOOT_POINT_NAMES = ("left_heel", "left_toe", "right_heel", "right_toe")
LEFT_ANKLE, RIGHT_ANKLE = JOINT_NAMES.index("left_ankle"), JOINT_NAMES.index("right_ankle")
LEFT_FOOT, RIGHT_FOOT = JOINT_NAMES.index("left_foot"), JOINT_NAMES.index("right_foot")
# Joint each contact point rides on (heel: ankle, toe: foot/ball joint).
FOOT_POINT_JOINTS = np.array([LEFT_ANKLE, LEFT_FOOT, RIGHT_ANKLE, RIGHT_FOOT])
_SOLE_PERCENTILE = 2.0  # sole height = this percentile of the foot's vertex heights (rest pose)

# Contact detection thresholds (metres, metres per second).
CONTACT_HEIGHT = (0.015, 0.045)  # fully "low" below the first, not low above the second
CONTACT_SPEED = (0.35, 1.0)  # fully "still" below the first, moving above the second
# How much higher than the other end of the same foot a point may be (a tilted foot touches
# with one end only); this difference is far less noisy than either height.
CONTACT_ABOVE_PARTNER = (0.01, 0.025)
_ENTER, _LEAVE = 0.6, 0.3  # hysteresis on the contact score
_MIN_RUN_S = 0.1  # shorter contacts (and shorter gaps between contacts) are dropped / bridged


@dataclass(frozen=True)
class FootPoints:
    """Rest-pose offsets of the four contact points from the joints they ride on (model frame)."""

    joints: np.ndarray  # (4,) joint ids, FOOT_POINT_JOINTS
    offsets: np.ndarray  # (4, 3) metres: point_rest - joint_rest

    def posed(self, joint_world_transforms: np.ndarray) -> np.ndarray:
        """Posed contact points (N, 4, 3) from BodyOutput.joint_world_transforms (N, 55, 4, 4)."""
        t = joint_world_transforms[:, self.joints]
        return np.einsum("npab,pb->npa", t[..., :3, :3], self.offsets) + t[..., :3, 3]


def foot_points(body_model, betas: np.ndarray) -> FootPoints:
    """Heel and toe points of the shaped body: under the ankle and the foot joint, at sole height.

    The sole height is a low percentile of the heights (model y) of the vertices skinned mostly
    to that foot's ankle or foot joint: robust to a few stray vertices, and on the real mesh it
    is the flat underside of the foot.
    """
    verts = body_model.shaped_vertices(betas)
    joints = body_model.rest_joints(betas)
    owner = np.argmax(body_model.lbs_weights, axis=1)
    offsets = np.zeros((4, 3))
    for side, (ankle, foot) in enumerate(((LEFT_ANKLE, LEFT_FOOT), (RIGHT_ANKLE, RIGHT_FOOT))):
        members = np.isin(owner, (ankle, foot))
        if not members.any():
            raise ValueError(f"no vertex is skinned to {JOINT_NAMES[ankle]} or {JOINT_NAMES[foot]}")
        sole_y = np.percentile(verts[members, 1], _SOLE_PERCENTILE)
        for k, joint in enumerate((ankle, foot)):
            point = joints[joint].copy()
            point[1] = min(sole_y, point[1])
            offsets[2 * side + k] = point - joints[joint]
    return FootPoints(FOOT_POINT_JOINTS.copy(), offsets)


def posed_skeleton(rotmats: np.ndarray, rest_joints: np.ndarray, parents: np.ndarray,
                   transl: np.ndarray, count: int = 22) -> np.ndarray:
    """World transforms (N, count, 4, 4) of the first `count` joints, without skinning.

    The same kinematic chain as BodyModel.forward (the root turns about its rest position, then
    transl is added) for the body joints only: what grounding needs, at a fraction of the cost.
    """
    n = len(rotmats)
    rel = rest_joints[:count].copy()
    rel[1:] -= rest_joints[parents[1:count]]
    out = np.zeros((n, count, 4, 4))
    out[:, :, 3, 3] = 1.0
    out[:, 0, :3, :3] = rotmats[:, 0]
    out[:, 0, :3, 3] = rest_joints[0] + transl
    for j in range(1, count):
        p = parents[j]
        out[:, j, :3, :3] = out[:, p, :3, :3] @ rotmats[:, j]
        out[:, j, :3, 3] = out[:, p, :3, 3] + out[:, p, :3, :3] @ rel[j]
    return out


def body_height(body_model, betas: np.ndarray) -> float:
    """Standing height of the shaped rest-pose mesh (metres): its extent along model y."""
    y = body_model.shaped_vertices(betas)[:, 1]
    return float(y.max() - y.min())


# ---------------------------------------------------------------------------- floor plane
@dataclass(frozen=True)
class Floor:
    """The plane {x : normal . x = offset}; normal is unit and points up (towards the body)."""

    normal: np.ndarray
    offset: float

    def height(self, points: np.ndarray) -> np.ndarray:
        return points @ self.normal - self.offset


def fit_floor(
    points: np.ndarray, weights: np.ndarray, up_prior: np.ndarray, *,
    max_tilt_deg: float = 40.0, inlier_m: float = 0.03, prior_weight: float = 0.05,
    seed: int = 0,
) -> Floor:
    """Robust plane through candidate contact points (M, 3) with a prior on the up direction.

    RANSAC over triples whose normal is within `max_tilt_deg` of `up_prior` scores inliers and
    penalises points far below the plane; the winner is refined by weighted total least squares
    of its inliers, pulled towards the prior by `prior_weight` (so 2-3 contact spots cannot tip
    it over). Fewer than 3 usable points: the plane through the lowest point along the prior.
    """
    up = _unit(np.asarray(up_prior, dtype=np.float64))
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    keep = w > 0
    pts, w = pts[keep], w[keep]
    if len(pts) == 0:
        raise ValueError("no candidate contact points to fit a floor to")
    if len(pts) < 3:
        return Floor(up, float(np.min(pts @ up)))
    cos_tilt = np.cos(np.radians(max_tilt_deg))
    rng = np.random.default_rng(seed)
    trials = 300
    triples = rng.integers(0, len(pts), (trials, 3))
    a, b, c = pts[triples[:, 0]], pts[triples[:, 1]], pts[triples[:, 2]]
    normals = np.cross(b - a, c - a)
    norm = np.linalg.norm(normals, axis=1)
    ok = norm > 1e-6
    normals[ok] /= norm[ok, None]
    normals *= np.where(normals @ up < 0, -1.0, 1.0)[:, None]
    ok &= normals @ up > cos_tilt
    candidates = [(up, float(np.percentile(pts @ up, 5.0)))]
    candidates += [(n, float(p @ n)) for n, p in zip(normals[ok], a[ok], strict=True)]
    best, best_score = candidates[0], -np.inf
    for n, d in candidates:
        h = pts @ n - d
        score = np.sum(w * (np.abs(h) < inlier_m)) - 3.0 * np.sum(w * (h < -2 * inlier_m))
        if score > best_score:
            best, best_score = (n, d), score
    n, d = best
    for _ in range(5):  # weighted TLS on the inliers, with a pull towards the prior
        h = pts @ n - d
        inl = np.abs(h) < 2 * inlier_m
        if inl.sum() < 3:
            break
        wi = w[inl] / w[inl].sum()
        centre = wi @ pts[inl]
        diff = pts[inl] - centre
        # Minimise n' C n - mu (n . up)^2: the prior is worth `prior_weight` of the points
        # sitting `inlier_m` off a plane tilted away from it.
        cov = (diff * wi[:, None]).T @ diff - prior_weight * inlier_m**2 * np.outer(up, up)
        _, vecs = np.linalg.eigh(cov)
        n = vecs[:, 0] * (1.0 if vecs[:, 0] @ up >= 0 else -1.0)
        d = float(centre @ n)
    return Floor(_unit(n), float(d))


def world_from_floor(floor: Floor, forward: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """4x4 transform from the working frame to the world: Z = floor normal, Y = `forward`
    flattened onto the floor, X = Y x Z; the origin is `origin` dropped onto the floor."""
    z = _unit(floor.normal)
    y = np.asarray(forward, dtype=np.float64) - (np.asarray(forward) @ z) * z
    if np.linalg.norm(y) < 1e-6:  # looking straight down: any heading will do
        y = np.cross(z, [1.0, 0.0, 0.0]) if abs(z[0]) < 0.9 else np.cross(z, [0.0, 1.0, 0.0])
    y = _unit(y)
    x = np.cross(y, z)
    rot = np.stack([x, y, z])  # rows: world axes in working coordinates
    o = np.asarray(origin, dtype=np.float64)
    o = o - floor.height(o) * z
    out = np.eye(4)
    out[:3, :3] = rot
    out[:3, 3] = -rot @ o
    return out


# ---------------------------------------------------------------------------- contacts
def smooth_in_time(x: np.ndarray, sigma_frames: float) -> np.ndarray:
    """Gaussian smoothing along axis 0 with edge padding (the ends are not pulled to zero)."""
    if sigma_frames <= 0 or len(x) < 3:
        return np.array(x, dtype=np.float64, copy=True)
    radius = max(1, int(round(3 * sigma_frames)))
    k = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_frames) ** 2)
    k /= k.sum()
    pad = np.concatenate([np.repeat(x[:1], radius, 0), x, np.repeat(x[-1:], radius, 0)])
    out = np.zeros_like(x, dtype=np.float64)
    for i, wk in enumerate(k):
        out += wk * pad[i:i + len(x)]
    return out


def point_speeds(points: np.ndarray, fps: float, rays: np.ndarray | None = None,
                 adjacent: np.ndarray | None = None) -> np.ndarray:
    """Speed (N, P) in m/s of points (N, P, 3), from central differences of smoothed positions.

    A single-image estimate is far surer across the line of sight than along it, so with
    `rays` (N, P, 3, unit directions from the camera) the along-ray part of the motion is
    smoothed over a wider window (sigma 3 frames) than the across part (1 frame); without rays
    everything gets 1.5 frames. Per-frame depth noise would otherwise read as motion.
    Where `adjacent` (N-1,) is False (missing frames, a cut) each side is measured on its own.
    """
    if adjacent is not None and not np.all(adjacent):
        out = np.zeros(points.shape[:2])
        cuts = np.concatenate([[0], np.flatnonzero(~np.asarray(adjacent, bool)) + 1,
                               [len(points)]])
        for start, stop in zip(cuts[:-1], cuts[1:], strict=True):
            out[start:stop] = point_speeds(points[start:stop], fps,
                                           None if rays is None else rays[start:stop])
        return out
    if len(points) < 2:
        return np.zeros(points.shape[:2])
    if rays is None:
        return np.linalg.norm(np.gradient(smooth_in_time(points, 1.5), axis=0), axis=-1) * fps
    across = np.gradient(smooth_in_time(points, 1.0), axis=0)
    along = np.gradient(smooth_in_time(points, 3.0), axis=0)
    across -= np.sum(across * rays, axis=-1, keepdims=True) * rays
    along = np.sum(along * rays, axis=-1, keepdims=True) * rays
    return np.linalg.norm(across + along, axis=-1) * fps


def detect_contacts(
    heights: np.ndarray, speeds: np.ndarray | None, fps: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Contact states (N, P) bool and their confidence (N, P) in [0, 1].

    Heights (N, 4) are per FOOT_POINT_NAMES (heel, toe per foot). Score = "low" (height above
    the floor, metres, lightly smoothed over time) x "level" (not clearly above the other end
    of the same foot) x "still" (speed, m/s; ignored for a single frame). A contact starts
    above 0.6 and ends below 0.3 (hysteresis); contacts or gaps shorter than 0.1 s are
    removed. Confidence is how clearly the score sits on its side (the network's own
    evidence scales it later: foot_evidence.weigh_confidence).
    """
    h = smooth_in_time(np.asarray(heights, dtype=np.float64), 1.0)
    low = floor_closeness(heights)
    partner = h.reshape(len(h), -1, 2)[..., ::-1].reshape(h.shape)  # heel <-> toe of one foot
    score = low * _band(h - partner, CONTACT_ABOVE_PARTNER)
    if speeds is not None and len(h) > 1:
        v = np.asarray(speeds, dtype=np.float64)
        score = score * _band(v, CONTACT_SPEED)
    states = np.zeros(h.shape, dtype=bool)
    for p in range(h.shape[1]):
        on = False
        for t in range(h.shape[0]):
            on = score[t, p] >= _ENTER if not on else score[t, p] >= _LEAVE
            states[t, p] = on
    min_run = max(1, int(round(_MIN_RUN_S * fps)))
    if len(h) > 1:
        for p in range(h.shape[1]):
            states[:, p] = _drop_short(states[:, p], True, min_run)  # bridge short gaps
            states[:, p] = _drop_short(states[:, p], False, min_run)  # drop short contacts
    confidence = np.where(states, score, 1.0 - score)
    return states, np.clip(confidence, 0.0, 1.0)


def floor_closeness(heights: np.ndarray) -> np.ndarray:
    """(N,P) how "low" points at these heights above the floor are for a contact: 1 below
    CONTACT_HEIGHT[0], 0 above CONTACT_HEIGHT[1] (heights lightly smoothed over time first)."""
    return _band(smooth_in_time(np.asarray(heights, dtype=np.float64), 1.0), CONTACT_HEIGHT)


def _band(x: np.ndarray, band: tuple[float, float]) -> np.ndarray:
    """1 below band[0], 0 above band[1], linear between."""
    return np.clip((band[1] - x) / (band[1] - band[0]), 0.0, 1.0)


def _drop_short(states: np.ndarray, fill_gaps: bool, min_run: int) -> np.ndarray:
    """Flip interior runs of `not fill_gaps` (gaps when True, contacts when False) < min_run."""
    out = states.copy()
    target = not fill_gaps  # the value whose short runs get flipped
    for start, stop in runs(out == target):
        interior = start > 0 and stop < len(out)
        if stop - start < min_run and (interior or not fill_gaps):
            out[start:stop] = not target
    return out


def runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) index pairs of the True runs of a 1-D boolean array."""
    m = np.concatenate([[False], np.asarray(mask, dtype=bool), [False]])
    edges = np.flatnonzero(m[1:] != m[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist(), strict=True))


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v)
    if not np.isfinite(n) or n < 1e-12:
        raise ValueError("cannot normalise a zero or non-finite vector")
    return v / n
