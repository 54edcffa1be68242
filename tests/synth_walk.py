"""Synthetic ground truth for grounding: a walk with known contacts on a known floor and camera.

The walk is built in a Z-up world (floor Z = 0): each foot follows heel strike (heel on the
floor, toe coming down), flat stance, toe off (heel rising about the planted toe) and swing;
the legs are solved to those foot poses, the upper body swings its arms. A camera (still or
moving) sees it; `network_solve` then adds the errors a single-image network makes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dpose_core.foot_lock import solve_legs
from dpose_core.grounding import foot_points
from dpose_core.motion import Motion
from dpose_core.rotations import axis_angle_to_matrix
from dpose_core.skeleton import JOINT_NAMES, NUM_JOINTS, PARENTS

# Model frame (y up, facing +z) -> world (Z up), walking along +X: model x (left) -> world +Y.
MODEL_TO_WORLD = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
IMAGE_SIZE = np.array([1280.0, 720.0])
FOCAL = float(np.hypot(*IMAGE_SIZE))
J = {name: i for i, name in enumerate(JOINT_NAMES)}


@dataclass
class Truth:
    rotmats: np.ndarray  # (N,55,3,3), root in the world
    transl: np.ndarray  # (N,3) world
    contacts: np.ndarray  # (N,4) bool, FOOT_POINT_NAMES order
    betas: np.ndarray
    fps: float


def _rot(axis, deg):  # rotation(s) about a fixed axis by deg (scalar or (N,))
    deg = np.asarray(deg, float)
    return axis_angle_to_matrix(np.asarray(axis, float) * np.radians(deg)[..., None])


def _pitch(deg):  # toe up for positive degrees (about world -Y, the walker walks along +X)
    return _rot([0.0, -1.0, 0.0], deg)


def _forward(body_model, rotmats, betas, transl):
    return body_model.forward(rotmats, betas, transl, return_vertices=False)


def walk(body_model, betas, *, fps=30.0, seconds=2.4, cycle_s=1.1, stride_m=1.0) -> Truth:
    """A straight walk along +X at stride_m per gait cycle, both feet in contact phases."""
    n = int(round(seconds * fps))
    t = np.arange(n) / fps
    feet = foot_points(body_model, betas)
    rest = body_model.rest_joints(betas)
    rest_points = rest[feet.joints] + feet.offsets
    # Standing: pelvis height above the sole, heel/toe offsets from the ankle, in the world.
    stand = rest[0, 1] - rest_points[0, 1]
    speed = stride_m / cycle_s
    rot = np.tile(np.eye(3), (n, NUM_JOINTS, 1, 1))
    gait = 2 * np.pi * t / cycle_s
    rot[:, 0] = _rot([0, 0, 1], 4 * np.sin(gait)) @ MODEL_TO_WORLD
    for knee in (J["left_knee"], J["right_knee"]):
        rot[:, knee] = _rot([1, 0, 0], 20.0)  # a bent knee gives the leg its plane
    swing = 25 * np.sin(gait)
    for side, sign in (("left", 1.0), ("right", -1.0)):
        rot[:, J[f"{side}_shoulder"]] = _rot([0, 0, 1], -sign * 70) @ _rot([1, 0, 0], sign * swing)
        rot[:, J[f"{side}_elbow"]] = _rot([0, 1, 0], sign * 15)
    rot[:, J["spine1"]] = _rot([0, 1, 0], 3 * np.sin(gait))
    pelvis = np.stack([speed * t, 0.02 * np.sin(gait), stand - 0.06 + 0.012 * np.cos(2 * gait)], 1)
    transl = pelvis - rest[0]

    # Foot poses from the gait phase of each foot.
    goals = np.zeros((n, 4, 3))
    contacts = np.zeros((n, 4), dtype=bool)
    for side, offset in ((0, 0.0), (1, 0.5)):
        lateral = rest_points[2 * side, 0]
        toe_from_heel = MODEL_TO_WORLD @ (rest_points[2 * side + 1] - rest_points[2 * side])
        for i in range(n):
            cycle = t[i] / cycle_s + offset
            j, phase = int(np.floor(cycle)), cycle - np.floor(cycle)

            def heel_strike(k, offset=offset, lateral=lateral):  # heel position of stance k
                return np.array([speed * (k - offset) * cycle_s + 0.3 * stride_m, lateral, 0.0])

            if phase < 0.1:
                pitch = 12 * (1 - phase / 0.1)
                heel = heel_strike(j)
            elif phase < 0.45:
                pitch, heel = 0.0, heel_strike(j)
            elif phase < 0.62:
                pitch = -30 * (phase - 0.45) / 0.17
                toe = heel_strike(j) + toe_from_heel
                heel = toe - _pitch(pitch) @ toe_from_heel
            else:
                s = (phase - 0.62) / 0.38
                lift = heel_strike(j) + toe_from_heel - _pitch(-30) @ toe_from_heel
                land = heel_strike(j + 1)
                ease = s * s * (3 - 2 * s)
                heel = lift + ease * (land - lift)
                heel[2] = (1 - s) * lift[2] + 0.07 * np.sin(np.pi * s)
                pitch = -30 + 42 * s
            goals[i, 2 * side] = heel
            goals[i, 2 * side + 1] = heel + _pitch(pitch) @ toe_from_heel
            contacts[i, 2 * side] = phase < 0.45
            contacts[i, 2 * side + 1] = 0.1 <= phase < 0.62
    posed = _forward(body_model, rot, betas, transl)
    rot = solve_legs(rot, posed.joint_world_transforms, feet, goals, np.ones((n, 4)))
    return Truth(rot, transl, contacts, np.asarray(betas, float), fps)


def standing(body_model, betas) -> Truth:
    """One frame: standing, left foot a little forward, both feet flat on the floor."""
    feet = foot_points(body_model, betas)
    rest = body_model.rest_joints(betas)
    rest_points = rest[feet.joints] + feet.offsets
    rot = np.tile(np.eye(3), (1, NUM_JOINTS, 1, 1))
    rot[:, 0] = _rot([0, 0, 1], 25) @ MODEL_TO_WORLD
    for knee in (J["left_knee"], J["right_knee"]):
        rot[:, knee] = _rot([1, 0, 0], 10.0)
    stand = rest[0, 1] - rest_points[0, 1]
    transl = np.array([[0.3, 0.2, stand - 0.03]]) - rest[0]
    posed = _forward(body_model, rot, betas, transl)
    points = feet.posed(posed.joint_world_transforms)
    goals = points.copy()
    goals[0, :2, :2] += [0.08, 0.0]  # left foot forward
    goals[..., 2] = 0.0
    rot = solve_legs(rot, posed.joint_world_transforms, feet, goals, np.ones((1, 4)))
    return Truth(rot, transl, np.ones((1, 4), bool), np.asarray(betas, float), 30.0)


def look_at(centre, target, roll_deg=0.0) -> np.ndarray:
    """OpenCV camera-to-world 4x4 at `centre` looking at `target` (world Z up)."""
    centre, target = np.asarray(centre, float), np.asarray(target, float)
    z = target - centre
    z /= np.linalg.norm(z)
    x = np.cross(z, [0.0, 0.0, 1.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    m = np.eye(4)
    m[:3, :3] = np.stack([x, y, z], axis=1) @ _rot([0, 0, 1], roll_deg)
    m[:3, 3] = centre
    return m


def to_camera(body_model, truth: Truth, cam_to_world: np.ndarray) -> Motion:
    """The truth seen by the camera(s) (N,4,4): an exact camera-frame motion."""
    n = len(truth.transl)
    cams = np.broadcast_to(cam_to_world, (n, 4, 4))
    world_to_cam = np.linalg.inv(cams)
    pelvis_rest = body_model.rest_joints(truth.betas)[0]
    rot = truth.rotmats.copy()
    rot[:, 0] = world_to_cam[:, :3, :3] @ truth.rotmats[:, 0]
    pelvis = np.einsum("nab,nb->na", world_to_cam[:, :3, :3], truth.transl + pelvis_rest)
    pelvis += world_to_cam[:, :3, 3]
    return Motion(rotmats=rot, transl=pelvis - pelvis_rest, betas=truth.betas, fps=truth.fps,
                  focal_px=np.array([FOCAL, FOCAL]), principal_point=IMAGE_SIZE / 2,
                  image_size=IMAGE_SIZE)


# Child used to aim each joint's depth-ambiguous error (the bone whose far end it moves).
_AIM_CHILD = {0: 12, 1: 4, 2: 5, 3: 6, 4: 7, 5: 8, 6: 9, 7: 10, 8: 11, 9: 12, 12: 15,
              13: 16, 14: 17, 16: 18, 17: 19, 18: 20, 19: 21}  # fmt: skip


def network_solve(body_model, exact: Motion, seed: int, *, joint_deg=(2.0, 4.0),
                  depth_share=(0.03, 0.05), isotropic_deg=0.3) -> Motion:
    """Per-frame errors of a single-image network: each body part's orientation off by 2-4 deg
    and the root's depth off by 3-5 % along its camera ray, independently in every frame.

    A network fits the image, so its errors move limbs mostly along the line of sight: each
    of the 22 predicted joints' world orientation turns about the axis perpendicular to its
    bone and to the camera ray of the bone's far end (plus a small isotropic part, the
    network's 2D error). Joints without a bone to aim (hands, feet) turn about random axes.
    """
    rng = np.random.default_rng(seed)
    n = exact.num_frames
    posed = body_model.forward(exact.rotmats, exact.betas, exact.transl, return_vertices=False)
    glob = posed.joint_world_transforms[..., :3, :3]
    pos = posed.joints[:, :NUM_JOINTS]
    noisy = glob.copy()
    for j in range(22):
        angle = np.radians(rng.uniform(*joint_deg, n)) * rng.choice([-1.0, 1.0], n)
        if j in _AIM_CHILD:
            child = pos[:, _AIM_CHILD[j]]
            axis = np.cross(child - pos[:, j], child)  # moves the child along its own ray
        else:
            axis = rng.normal(size=(n, 3))
        axis /= np.linalg.norm(axis, axis=1, keepdims=True)
        iso = rng.normal(size=(n, 3))
        iso *= np.radians(isotropic_deg) / np.linalg.norm(iso, axis=1, keepdims=True)
        noisy[:, j] = axis_angle_to_matrix(axis * angle[:, None]) @ axis_angle_to_matrix(iso) @ (
            glob[:, j])
    rot = exact.rotmats.copy()
    rot[:, 0] = noisy[:, 0]
    for j in range(1, 22):
        rot[:, j] = np.swapaxes(noisy[:, PARENTS[j]], 1, 2) @ noisy[:, j]
    share = rng.uniform(*depth_share, n) * rng.choice([-1.0, 1.0], n)
    pelvis_rest = body_model.rest_joints(exact.betas)[0]
    pelvis = (exact.transl + pelvis_rest) * (1.0 + share[:, None])
    return exact.replace(rotmats=rot, transl=pelvis - pelvis_rest)


def depth_map_of(body_model, motion: Motion, metres_per_unit: float) -> np.ndarray:
    """(N,4) what a depth map following the body would say of each heel/toe: its depth minus
    the pelvis' in a camera-frame motion, in map units (foot_evidence.foot_map_depth)."""
    posed = _forward(body_model, motion.rotmats, motion.betas, motion.transl)
    points = foot_points(body_model, motion.betas).posed(posed.joint_world_transforms)
    return (points[..., 2] - posed.joints[:, None, 0, 2]) / metres_per_unit
