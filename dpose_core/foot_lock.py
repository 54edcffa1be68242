"""Foot locks: keep contacting heels and toes fixed in the world by re-solving the legs.

Each leg is a two-bone chain (hip -> knee -> ankle) solved analytically: bend the knee about
its own hinge until the hip-ankle distance is right, swing the leg onto the target, then twist
it about the hip-target axis so the knee stays in the plane it was in (the plane through the
hip, the target and the knee's old direction); given the camera, the knee then turns (within
+-60 deg) to stay on its own camera ray, so the image of the leg barely changes. The foot
moves rigidly with its heel and toe targets. Locks fade in and out over a few frames.
Everything is vectorised over frames and works in a Z-up world with the floor at Z = 0
(see docs/grounding.md).
"""

from __future__ import annotations

import numpy as np

from .grounding import FootPoints, runs
from .rotations import axis_angle_to_matrix
from .skeleton import JOINT_NAMES

_LEGS = tuple(
    tuple(JOINT_NAMES.index(f"{side}_{part}") for part in ("hip", "knee", "ankle"))
    for side in ("left", "right")
)  # fmt: skip
_EPS = 1e-9


def rotation_between(a: np.ndarray, b: np.ndarray, fraction: np.ndarray | float = 1.0
                     ) -> np.ndarray:
    """Shortest rotations (..., 3, 3) taking directions a to b (..., 3), scaled by `fraction`.

    Parallel (or antiparallel, rare for limbs) pairs give the identity.
    """
    axis = np.cross(a, b)
    sin = np.linalg.norm(axis, axis=-1)
    cos = np.sum(a * b, axis=-1)
    angle = np.arctan2(sin, cos) * fraction
    unit = axis / np.maximum(sin, _EPS)[..., None]
    unit = np.where((sin > 1e-12)[..., None], unit, 0.0)
    return axis_angle_to_matrix(unit * np.asarray(angle)[..., None])


def two_bone_ik(
    hip: np.ndarray, knee: np.ndarray, ankle: np.ndarray, target: np.ndarray,
    hinge_fallback: np.ndarray, camera: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Solve hip/knee so the ankle reaches `target` (all (n, 3), same frame).

    Returns (swing, bend, reached): the new thigh world rotation is swing @ old, the new shin
    world rotation is swing @ bend @ old_shin, `reached` the ankle's new position (the target,
    or the nearest reachable point when the leg is too short or folds completely).
    `hinge_fallback` (n, 3) is the knee axis used when the leg is straight (no bend plane).
    With `camera` (n, 3) centres, the knee is then turned about the hip-target axis (at most
    60 deg) to the point of its circle nearest the old knee's camera ray, so the knee stays
    where the footage shows it.
    """
    thigh, shin = knee - hip, ankle - knee
    l1 = np.linalg.norm(thigh, axis=-1)
    l2 = np.linalg.norm(shin, axis=-1)
    lo, hi = np.abs(l1 - l2) + 1e-4, l1 + l2 - 1e-4
    d0 = np.clip(np.linalg.norm(ankle - hip, axis=-1), lo, hi)
    d = np.clip(np.linalg.norm(target - hip, axis=-1), lo, hi)
    hinge = np.cross(thigh, shin)
    hinge_len = np.linalg.norm(hinge, axis=-1)
    straight = hinge_len < 1e-4 * l1 * l2
    hinge = np.where(straight[:, None], hinge_fallback, hinge)
    hinge /= np.maximum(np.linalg.norm(hinge, axis=-1), _EPS)[:, None]

    def interior(dist):  # knee's interior angle for a hip-ankle distance (law of cosines)
        return np.arccos(np.clip((l1**2 + l2**2 - dist**2) / (2 * l1 * l2), -1.0, 1.0))

    bend = axis_angle_to_matrix(hinge * (interior(d0) - interior(d))[:, None])
    bent_ankle = knee + np.einsum("nab,nb->na", bend, shin)
    swing = rotation_between(bent_ankle - hip, target - hip)
    # Twist about the hip-target axis until the knee is back in its old plane.
    axis = target - hip
    axis /= np.maximum(np.linalg.norm(axis, axis=-1), _EPS)[:, None]
    swung_knee = np.einsum("nab,nb->na", swing, thigh)
    u = swung_knee - np.sum(swung_knee * axis, -1)[:, None] * axis
    v = thigh - np.sum(thigh * axis, -1)[:, None] * axis
    angle = np.arctan2(np.sum(axis * np.cross(u, v), -1), np.sum(u * v, -1))
    ok = (np.linalg.norm(u, axis=-1) > 1e-6) & (np.linalg.norm(v, axis=-1) > 1e-6)
    angle = np.where(ok, angle, 0.0)
    if camera is not None:  # turn further, within +-60 deg, to keep the knee on its camera ray
        turned = np.einsum("nab,nb->na", axis_angle_to_matrix(axis * angle[:, None]), swung_knee)
        angle = angle + _knee_turn_towards_ray(hip, axis, turned, knee, camera)
    twist = axis_angle_to_matrix(axis * angle[:, None])
    swing = twist @ swing
    reached = hip + np.einsum("nab,nb->na", swing, bent_ankle - hip)
    return swing, bend, reached


def _knee_turn_towards_ray(hip, axis, twist_knee, old_knee, camera) -> np.ndarray:
    """Angle (n,) about `axis` (through the hip) taking the knee offset `twist_knee` closest
    to the line camera -> old_knee (sampled every 2 deg in +-60 deg, then a parabola fit)."""
    along = np.sum(twist_knee * axis, -1)[:, None] * axis
    radial = twist_knee - along
    side = np.cross(axis, radial)
    ray = old_knee - camera
    ray /= np.maximum(np.linalg.norm(ray, axis=-1), _EPS)[:, None]
    angles = np.radians(np.arange(-60.0, 60.1, 2.0))
    cos, sin = np.cos(angles)[:, None, None], np.sin(angles)[:, None, None]
    knees = hip + along + cos * radial + sin * side  # (A, n, 3)
    rel = knees - camera
    dist = np.linalg.norm(rel - np.sum(rel * ray, -1)[..., None] * ray, axis=-1)  # (A, n)
    best = np.clip(np.argmin(dist, axis=0), 1, len(angles) - 2)
    cols = np.arange(dist.shape[1])
    left, mid, right = dist[best - 1, cols], dist[best, cols], dist[best + 1, cols]
    curve = left - 2 * mid + right
    step = np.where(curve > 1e-12, 0.5 * (left - right) / np.maximum(curve, 1e-12), 0.0)
    return angles[best] + np.clip(step, -1, 1) * (angles[1] - angles[0])


def lock_targets(
    points: np.ndarray, contacts: np.ndarray, strength: float, blend_frames: int,
    camera_centres: np.ndarray | None = None, adjacent: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """World targets (N, P, 3) and lock weights (N, P) in [0, strength] for contact points.

    Each contact run's target is the mean of its positions, slid along the camera ray from the
    run's middle frame onto the floor (Z = 0), so it stays where the footage shows it. The
    weight is 1 inside the run and fades linearly over `blend_frames` on either side.
    With camera_centres None the target keeps its mean height (no floor known). A contact is
    split where `adjacent` (N-1,) is False (frames missing in between): a foot seen before and
    after a gap may have stepped.
    """
    n, num_points = contacts.shape
    targets = points.copy()
    weights = np.zeros((n, num_points))
    gaps = np.zeros(n, bool)
    if adjacent is not None:
        gaps[1:] = ~np.asarray(adjacent, bool)
    segment = np.cumsum(gaps)
    for p in range(num_points):
        for start, stop in _split(runs(contacts[:, p]), gaps):
            mean = points[start:stop, p].mean(axis=0)
            target = mean.copy()
            if camera_centres is not None:
                target[2] = 0.0
                c = camera_centres[(start + stop - 1) // 2]
                if c[2] - mean[2] > 0.05:  # camera above the point: slide along its ray
                    lam = c[2] / (c[2] - mean[2])
                    if 0.5 < lam < 2.0:
                        target = c + lam * (mean - c)
                        target[2] = 0.0
            for t in range(max(0, start - blend_frames), min(n, stop + blend_frames)):
                if segment[t] != segment[start]:
                    continue  # fades do not reach across missing frames either
                gap = max(start - t, t - (stop - 1), 0)
                w = 1.0 - gap / (blend_frames + 1)
                if w > weights[t, p]:
                    weights[t, p] = w
                    targets[t, p] = target
    return targets, weights * strength


def _split(spans: list[tuple[int, int]], gaps: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) spans cut before every frame where gaps is True."""
    out = []
    for start, stop in spans:
        cuts = [start] + [int(t) for t in np.flatnonzero(gaps[start + 1:stop]) + start + 1] + [stop]
        out += list(zip(cuts[:-1], cuts[1:], strict=True))
    return out


def foot_transform(
    heel: np.ndarray, toe: np.ndarray, heel_goal: np.ndarray, toe_goal: np.ndarray,
    heel_weight: np.ndarray, toe_weight: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Rigid motion (R (n,3,3), t (n,3)) of a foot that best takes its heel/toe to their goals.

    Turns the heel->toe direction towards the goals' as far as both points are locked (a
    heel-only lock just moves the foot), then matches the weighted centre of the two points.
    """
    wsum = heel_weight + toe_weight
    wmax = np.maximum(heel_weight, toe_weight)
    frac = np.where(wmax > 0, np.minimum(heel_weight, toe_weight) / np.maximum(wmax, _EPS), 0.0)
    rot = rotation_between(toe - heel, toe_goal - heel_goal, frac)
    safe = np.maximum(wsum, _EPS)[:, None]
    centre = (heel_weight[:, None] * heel + toe_weight[:, None] * toe) / safe
    goal = (heel_weight[:, None] * heel_goal + toe_weight[:, None] * toe_goal) / safe
    shift = goal - np.einsum("nab,nb->na", rot, centre)
    shift = np.where((wsum > 0)[:, None], shift, 0.0)
    rot = np.where((wsum > 0)[:, None, None], rot, np.eye(3))
    return rot, shift


def solve_legs(
    rotmats: np.ndarray, transforms: np.ndarray, feet: FootPoints, goals: np.ndarray,
    weights: np.ndarray, camera_centres: np.ndarray | None = None,
) -> np.ndarray:
    """New local rotations (N, 55, 3, 3) moving each foot's points towards `goals` (N, 4, 3).

    transforms are the posed joint world transforms (N, J >= 12, 4, 4) of `rotmats` in the
    world frame; weights (N, 4) say how far each point goes (0 = untouched). Only the hips, knees
    and ankles change; the root stays, so the rest of the body does not move. With
    camera_centres (N, 3) the knees keep their place in the image (see two_bone_ik).
    """
    out = rotmats.copy()
    rot_w = transforms[..., :3, :3]
    pos_w = transforms[..., :3, 3]
    points = feet.posed(transforms)
    for side, (hip, knee, ankle) in enumerate(_LEGS):
        heel, toe = 2 * side, 2 * side + 1
        active = (weights[:, heel] > 0) | (weights[:, toe] > 0)
        if not active.any():
            continue
        idx = np.flatnonzero(active)
        wh, wt = weights[idx, heel], weights[idx, toe]
        heel_goal = points[idx, heel] + wh[:, None] * (goals[idx, heel] - points[idx, heel])
        toe_goal = points[idx, toe] + wt[:, None] * (goals[idx, toe] - points[idx, toe])
        foot_rot, foot_shift = foot_transform(points[idx, heel], points[idx, toe], heel_goal,
                                              toe_goal, wh, wt)
        ankle_goal = np.einsum("nab,nb->na", foot_rot, pos_w[idx, ankle]) + foot_shift
        r_hip, r_knee, r_ankle = rot_w[idx, hip], rot_w[idx, knee], rot_w[idx, ankle]
        swing, bend, _ = two_bone_ik(pos_w[idx, hip], pos_w[idx, knee], pos_w[idx, ankle],
                                     ankle_goal, hinge_fallback=r_knee[:, :, 0],
                                     camera=None if camera_centres is None
                                     else camera_centres[idx])  # fmt: skip
        parent = rot_w[idx, 0]
        new_hip = swing @ r_hip
        new_knee = swing @ bend @ r_knee
        new_ankle = foot_rot @ r_ankle
        out[idx, hip] = np.swapaxes(parent, -1, -2) @ new_hip
        out[idx, knee] = np.swapaxes(new_hip, -1, -2) @ new_knee
        out[idx, ankle] = np.swapaxes(new_knee, -1, -2) @ new_ankle
    return out
