"""Refine a camera-frame motion into grounded world-space motion (the `refine` stage).

In: a Motion in the OpenCV camera frame (what the network gives), optionally a camera track
(camera-to-world per frame, any scale). Out: the same motion in a Z-up world with the floor at
Z = 0 and the origin under the first frame's pelvis, the camera pose per frame (so looking
through it the body still lies on the person), foot contacts, and a quality report.

Steps (docs/grounding.md): slide each frame along its pelvis ray to a smooth, contact-consistent
depth (root_depth.py), fit the floor to the contacting foot points, detect heel/toe contacts,
lock them with two-bone leg IK (foot_lock.py), and keep every foot point above the floor.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import grounding
from .errors import BodyModelError, DPoseError, MotionFileError
from .foot_evidence import depths_along_rays, fit_map_scale, weigh_confidence
from .foot_lock import lock_targets, solve_legs
from .grounding import FOOT_POINT_NAMES, Floor, FootPoints
from .motion import FRAME_OPENCV_CAMERA, FRAME_WORLD_Z_UP, Motion
from .root_depth import DepthProblem, solve_depth
from .skeleton import NUM_PREDICTED_JOINTS, NUM_VERTICES

GROUND_MODES = ("auto", "none")
DEPTH_PRIOR = 0.05  # the network's root depth is trusted to this share of the distance (1 sigma)
BLEND_SECONDS = 0.1  # locks fade in and out over this long
MAX_SLIDE = 0.3  # no frame moves further along its ray than this share of its distance
JUMP_M = 0.15  # a pelvis velocity change across the line of sight this big in one frame is a cut
_HEIGHT_RANGE_M = (0.5, 2.8)
# OpenCV camera's up direction (image up = -y): the prior for the floor normal.
_CAMERA_UP = np.array([0.0, -1.0, 0.0])
_CAMERA_FORWARD = np.array([0.0, 0.0, 1.0])


@dataclass
class RefineReport:
    """Quality of one refine run; `to_dict()` is JSON-serialisable.

    Per frame: confidence (network x contact certainty), contacts (N,4) and their confidence
    in FOOT_POINT_NAMES order, foot skate (mm/frame, contacting points), float (mm, highest
    contacting point), penetration (mm, deepest foot point below the floor) and the 2D
    residual (px, mean over the body joints and foot points vs the input motion; None when the
    file has no intrinsics), also without the part that sliding the body along its camera ray
    (the depth smoothing) causes: what the locks and the floor changed in the image. Skate
    before refinement is measured on the input placed in the same world, same contacts.
    map_contact_evidence (N,4): how far the network's depth map backs each point's contact
    state (1 = fully, 0.5 = undecided, 1 where the map says nothing); None when not used.
    """

    frames: int
    ground: str
    foot_lock: float
    track_scale: float | None
    floor_normal_camera: list[float] | None
    camera_height_m: float | None
    subject_height_m: float
    confidence: np.ndarray
    contacts: np.ndarray
    contact_confidence: np.ndarray
    skate_mm: np.ndarray
    skate_before_mm: np.ndarray
    float_mm: np.ndarray
    penetration_mm: np.ndarray
    reprojection_px: np.ndarray | None
    reprojection_beyond_slide_px: np.ndarray | None
    notes: list[str] = field(default_factory=list)
    map_contact_evidence: np.ndarray | None = None

    def summary(self) -> dict[str, float | None]:
        def mean(x):
            return None if x is None or len(x) == 0 else round(float(np.mean(x)), 3)

        def peak(x):
            return None if x is None or len(x) == 0 else round(float(np.max(x)), 3)

        contact_frames = self.contacts.any(axis=1)
        return {
            "skate_mm_per_frame_before": mean(self.skate_before_mm[contact_frames]),
            "skate_mm_per_frame": mean(self.skate_mm[contact_frames]),
            "float_mm_mean": mean(self.float_mm[contact_frames]),
            "penetration_mm_max": peak(self.penetration_mm),
            "reprojection_px_mean": mean(self.reprojection_px),
            "reprojection_px_max": peak(self.reprojection_px),
            "reprojection_beyond_slide_px_mean": mean(self.reprojection_beyond_slide_px),
            "contact_share": round(float(self.contacts.mean()), 4),
            "map_contact_evidence_mean": mean(self.map_contact_evidence),
        }

    def to_dict(self) -> dict:
        def rows(x):
            return None if x is None else np.round(np.asarray(x, dtype=np.float64), 4).tolist()

        return {
            "frames": self.frames,
            "ground": self.ground,
            "foot_lock": self.foot_lock,
            "track_scale": self.track_scale,
            "floor_normal_camera": self.floor_normal_camera,
            "camera_height_m": self.camera_height_m,
            "subject_height_m": round(self.subject_height_m, 4),
            "contact_points": list(FOOT_POINT_NAMES),
            "summary": self.summary(),
            "per_frame": {
                "confidence": rows(self.confidence),
                "contacts": self.contacts.astype(int).tolist(),
                "contact_confidence": rows(self.contact_confidence),
                "skate_mm": rows(self.skate_mm),
                "skate_before_mm": rows(self.skate_before_mm),
                "float_mm": rows(self.float_mm),
                "penetration_mm": rows(self.penetration_mm),
                "reprojection_px": rows(self.reprojection_px),
                "reprojection_beyond_slide_px": rows(self.reprojection_beyond_slide_px),
                "map_contact_evidence": rows(self.map_contact_evidence),
            },
            "notes": list(self.notes),
        }


# ---------------------------------------------------------------------------- the stage
def refine_motion(
    motion: Motion, body_model, *, ground: str = "auto", foot_lock: float = 1.0,
    subject_height: float | None = None, camera_to_world: np.ndarray | None = None,
) -> tuple[Motion, RefineReport]:
    """Ground, lock and steady `motion` (OpenCV camera frame). Raises DPoseError on bad input.

    ground: "auto" fits the floor (world Z up, floor Z = 0); "none" keeps the camera's own level
    (world = camera turned Z up, no floor: contacts from stillness only, nothing is floored).
    foot_lock: 0 (off) to 1 (contacting points fixed). subject_height (m) rescales the body
    (betas) and the scene to that standing height. camera_to_world (N,4,4): a camera track,
    OpenCV camera axes (x right, y down, z forward) to the track's world, any unit; its scale
    is fixed from the body. The network's foot cues the motion carries scale the contact
    confidence (docs/grounding.md, "Evidence"): feet_seen, how much of each heel/toe its part
    segmentation shows (unknown counts half), and foot_map_depth, its depth map there, which
    backs or doubts each contact state by putting the point on or off the floor.
    """
    n = motion.num_frames
    _check_options(motion, ground, foot_lock, subject_height)
    check_body_model(body_model)
    evidence = None if motion.feet_seen is None else np.nan_to_num(motion.feet_seen, nan=0.5)
    map_depth = motion.foot_map_depth
    notes: list[str] = []

    height_before = grounding.body_height(body_model, motion.betas)
    if subject_height is not None:
        motion = _rescale_to_height(motion, body_model, float(subject_height))
    height = grounding.body_height(body_model, motion.betas)
    feet = grounding.foot_points(body_model, motion.betas)
    rest = body_model.rest_joints(motion.betas)
    pelvis_rest = rest[0]

    def skeleton(m: Motion) -> np.ndarray:  # (N,22,4,4) body joint transforms
        return grounding.posed_skeleton(m.rotmats, rest, body_model.parents, m.transl)

    raw = skeleton(motion)
    raw_points = feet.posed(raw)  # (N,4,3) camera frame
    raw_pelvis = raw[:, 0, :3, 3]
    intrinsics = _intrinsics(motion)
    if ground == "auto" and intrinsics is not None:
        _check_feet_on_screen(raw_points, intrinsics)

    track_rot, track_centres = _track(camera_to_world, n)
    rays_cam = raw_pelvis / np.linalg.norm(raw_pelvis, axis=1, keepdims=True)
    problem = DepthProblem(
        rays=np.einsum("nab,nb->na", track_rot, rays_cam),
        pelvis=np.einsum("nab,nb->na", track_rot, raw_pelvis),
        points=np.einsum("nab,npb->npa", track_rot, raw_points),
        centres=track_centres,
        prior_sigma=DEPTH_PRIOR * np.linalg.norm(raw_pelvis, axis=1),
        frame_step=_frame_step(motion),
    )
    problem.adjacent = np.diff(motion.frame_times()) <= 1.5 * problem.frame_step
    fps = 1.0 / problem.frame_step
    point_rays = problem.points / np.linalg.norm(problem.points, axis=-1, keepdims=True)
    up_prior = _unit(np.einsum("nab,b->a", track_rot, _CAMERA_UP))
    scale_prior = None
    if track_centres is not None:
        k0 = _initial_track_scale(problem, fps)
        scale_prior = (k0, 0.1 * k0)
    jumps = _jumps(problem, 1.0 if scale_prior is None else scale_prior[0])
    if jumps.any():
        problem.adjacent = problem.adjacent & ~jumps
        notes.append(f"the body jumps across the image between {int(jumps.sum())} pair(s) of "
                     f"frames; those are treated as cuts")

    # Pass 1: smooth depth from the prior alone; then floor, contacts; then two full passes.
    solution = solve_depth(problem, scale_prior=scale_prior)
    floor = None
    contacts = np.zeros((n, 4), dtype=bool)
    contact_conf = np.ones((n, 4))
    for _ in range(2):
        points = _working_points(problem, solution)
        if ground == "auto":
            floor = _fit_floor(points, point_rays, up_prior, fps, contacts,
                               _working_pelvis(problem, solution), problem.adjacent)
            heights = floor.height(points)
        else:
            heights = np.zeros((n, 4))  # no floor: stillness alone decides
        speeds = (grounding.point_speeds(points, fps, point_rays, problem.adjacent) if n > 1
                  else None)  # fmt: skip
        contacts, contact_conf = grounding.detect_contacts(heights, speeds, fps)
        if n < 2:
            break
        if scale_prior is not None:
            scale_prior = (solution.scale, 10.0 * solution.scale)
        solution = solve_depth(
            problem, contacts=contacts, contact_weights=np.maximum(contact_conf, 0.2),
            floor_normal=None if floor is None else floor.normal, scale_prior=scale_prior,
        )
        if floor is not None and solution.floor_offset is not None:
            floor = Floor(floor.normal, solution.floor_offset)
    limit = MAX_SLIDE * np.linalg.norm(raw_pelvis, axis=1)
    if np.any(np.abs(solution.slides) > limit):  # a safety net: never behind the camera
        notes.append(f"the depth of {int((np.abs(solution.slides) > limit).sum())} frame(s) "
                     f"was held to within {MAX_SLIDE:.0%} of the network's")
        solution.slides = np.clip(solution.slides, -limit, limit)
    if not contacts.any():
        floor_note = "; the floor lies under the lowest foot points" if ground == "auto" else ""
        notes.append(f"no foot contacts were found: nothing is locked{floor_note}")
    points = _working_points(problem, solution)
    if ground == "auto" and n > 1:
        floor = _fit_floor(points, point_rays, up_prior, fps, contacts,
                               _working_pelvis(problem, solution), problem.adjacent)
        if solution.floor_offset is not None:
            floor = Floor(floor.normal, solution.floor_offset)
    map_evidence = None
    if map_depth is not None and floor is not None:
        scale, how = fit_map_scale(map_depth, raw_points[..., 2] - raw_pelvis[:, None, 2])
        if scale is None:
            notes.append(f"the depth map was not used as contact evidence: {how}")
        else:  # each heel/toe at the map's depth along its own ray: on the floor or not?
            moved = depths_along_rays(raw_points, raw_pelvis, map_depth, scale)
            mapped = replace(problem, points=np.einsum("nab,npb->npa", track_rot, moved))
            low = grounding.floor_closeness(floor.height(_working_points(mapped, solution)))
            map_evidence = np.where(np.isfinite(map_depth),
                                    np.where(contacts, low, 1.0 - low), 1.0)
    # What the network saw of the feet: confidence, not geometry.
    for cue in (evidence, map_evidence):
        if cue is not None:
            contact_conf = weigh_confidence(contact_conf, cue)

    # World frame: Z = floor normal (or the camera's up), Y = the first camera's view direction.
    k = solution.scale
    working_floor = floor if floor is not None else Floor(up_prior, 0.0)
    pelvis_work = _working_pelvis(problem, solution)
    world = grounding.world_from_floor(working_floor, track_rot[0] @ _CAMERA_FORWARD,
                                       pelvis_work[0])
    if floor is None:  # "none": keep the camera at the origin's level, no floor height
        world[:3, 3] = 0.0
    cam_to_world = np.tile(np.eye(4), (n, 1, 1))
    cam_to_world[:, :3, :3] = world[:3, :3] @ track_rot
    centres = (k * track_centres if track_centres is not None else np.zeros((n, 3)))
    cam_to_world[:, :3, 3] = centres @ world[:3, :3].T + world[:3, 3]

    rot = motion.rotmats.copy()
    rot[:, 0] = cam_to_world[:, :3, :3] @ motion.rotmats[:, 0]
    pelvis_cam = raw_pelvis + solution.slides[:, None] * rays_cam
    transl = _apply(cam_to_world, pelvis_cam) - pelvis_rest

    # Foot locks (and the floor): legs only, the root stays where the depth solve put it.
    out_motion = motion.replace(rotmats=rot, transl=transl, coordinate_frame=FRAME_WORLD_Z_UP)
    posed = skeleton(out_motion)
    world_points = feet.posed(posed)
    if foot_lock > 0 and contacts.any():
        blend = max(1, int(round(BLEND_SECONDS * fps)))
        centres_world = cam_to_world[:, :3, 3] if floor is not None else None
        goals, weights = lock_targets(world_points, contacts, foot_lock, blend, centres_world,
                                      problem.adjacent)
        rot = solve_legs(rot, posed, feet, goals, weights, cam_to_world[:, :3, 3])
        out_motion = out_motion.replace(rotmats=rot)
        posed = skeleton(out_motion)
        world_points = feet.posed(posed)
    if floor is not None:
        rot = _lift_above_floor(rot, posed, feet, world_points, cam_to_world[:, :3, 3])
        out_motion = out_motion.replace(rotmats=rot)
        posed = skeleton(out_motion)
        world_points = feet.posed(posed)

    out_motion = out_motion.replace(
        camera_to_world=cam_to_world, contacts=contacts, contact_confidence=contact_conf,
    )
    report = _report(
        motion=motion, raw_joints=raw[..., :3, 3], joints=posed[..., :3, 3],
        world_points=world_points, raw_points=raw_points,
        slide=solution.slides[:, None] * rays_cam, contacts=contacts,
        contact_conf=contact_conf, cam_to_world=cam_to_world, floor=floor, ground=ground,
        foot_lock=foot_lock, track_scale=k if track_centres is not None else None,
        intrinsics=intrinsics, height=height, adjacent=problem.adjacent, notes=notes,
        map_evidence=map_evidence,
    )
    if subject_height is not None:
        notes.append(f"body rescaled from {height_before:.3f} m to {height:.3f} m")
    return out_motion, report


def check_body_model(body_model) -> None:
    """The body model must have the SMPL-X topology (the foot points and joints rely on it)."""
    if body_model.num_vertices != NUM_VERTICES:
        raise BodyModelError(
            f"The body model has {body_model.num_vertices} vertices but the motion is SMPL-X "
            f"({NUM_VERTICES}); give the SMPL-X model the motion was made with."
        )


def _check_options(motion: Motion, ground: str, foot_lock: float,
                   subject_height: float | None) -> None:
    if ground not in GROUND_MODES:
        raise DPoseError(f"ground must be one of {', '.join(GROUND_MODES)}, got {ground!r}.")
    if not (np.isfinite(foot_lock) and 0.0 <= foot_lock <= 1.0):
        raise DPoseError(f"foot lock must be between 0 and 1, got {foot_lock}.")
    if subject_height is not None and not (
        np.isfinite(subject_height) and _HEIGHT_RANGE_M[0] <= subject_height <= _HEIGHT_RANGE_M[1]
    ):
        raise DPoseError(f"subject height must be {_HEIGHT_RANGE_M[0]}-{_HEIGHT_RANGE_M[1]} m, "
                         f"got {subject_height}.")  # fmt: skip
    if motion.num_frames == 0:
        raise DPoseError("The motion has no frames to refine.")
    if motion.num_frames == 1 and foot_lock > 0:
        raise DPoseError("A single frame cannot be foot-locked (locks need motion over time); "
                         "use foot lock 0 to ground one image.")  # fmt: skip
    if motion.coordinate_frame != FRAME_OPENCV_CAMERA:
        raise DPoseError(f"refine needs motion in the camera frame (opencv_camera), got "
                         f"{motion.coordinate_frame!r}.")  # fmt: skip
    depth = motion.transl[:, 2]
    if np.any(depth <= 0.1):
        raise DPoseError("The motion puts the body at or behind the camera (depth <= 0.1 m); "
                         "it is not a camera-frame estimate.")  # fmt: skip


def _track(camera_to_world: np.ndarray | None, n: int
           ) -> tuple[np.ndarray, np.ndarray | None]:
    """Rotations (N,3,3) and centres (N,3) of a camera track; a still camera gives I and None."""
    if camera_to_world is None:
        return np.tile(np.eye(3), (n, 1, 1)), None
    m = np.asarray(camera_to_world, dtype=np.float64)
    if m.shape == (4, 4):
        m = np.broadcast_to(m, (n, 4, 4))
    if m.shape != (n, 4, 4) or not np.all(np.isfinite(m)):
        raise DPoseError(f"camera_to_world must be finite ({n}, 4, 4), got {m.shape}.")
    rot = m[:, :3, :3]
    scale = np.cbrt(np.linalg.det(rot))
    if np.any(scale <= 1e-9):
        raise DPoseError("The camera track has a degenerate or mirrored rotation.")
    rot = rot / scale[:, None, None]
    u, _, vt = np.linalg.svd(rot)
    rot = u @ vt
    centres = m[:, :3, 3].copy()
    if np.ptp(centres, axis=0).max() < 1e-9:  # a still camera: its scale cannot be known
        return rot, None
    return rot, centres


def _initial_track_scale(problem: DepthProblem, fps: float) -> float:
    """Scale k (metres per track unit) that keeps some foot point stillest in most frames."""
    spread = np.ptp(problem.centres, axis=0).max()
    body = max(np.ptp(problem.pelvis, axis=0).max(), 0.1)
    candidates = body / spread * np.geomspace(1e-3, 1e3, 241)
    smooth = grounding.smooth_in_time(problem.points, 2.0)
    c = grounding.smooth_in_time(problem.centres, 2.0)
    costs = []
    for k in candidates:
        pos = smooth + k * c[:, None]
        speed = np.linalg.norm(np.diff(pos, axis=0), axis=-1).min(axis=1)
        costs.append(np.median(speed))
    return float(candidates[int(np.argmin(costs))])


def _jumps(problem: DepthProblem, scale: float) -> np.ndarray:
    """(N-1,) True between frames where the pelvis leaps across the line of sight.

    Motion across the ray is what the footage shows well, so a sudden change of that velocity
    (over JUMP_M in one frame, far beyond any body's acceleration) is a cut, a tracker switch
    or a glitch, not motion: smoothing and locks must not reach across it.
    """
    n = len(problem.rays)
    jumps = np.zeros(max(n - 1, 0), bool)
    if n < 3:
        return jumps
    pelvis = problem.pelvis + (0.0 if problem.centres is None else scale * problem.centres)
    step = np.diff(pelvis, axis=0)  # (N-1,3)
    ray = problem.rays[1:]
    across = step - np.sum(step * ray, axis=1, keepdims=True) * ray
    neighbours = np.empty_like(across)
    neighbours[1:-1] = 0.5 * (across[:-2] + across[2:])
    neighbours[0], neighbours[-1] = across[1], across[-2]
    return np.linalg.norm(across - neighbours, axis=1) > JUMP_M


def _working_points(problem: DepthProblem, solution) -> np.ndarray:
    """Foot points (N,4,3) in the working frame, metric (track scaled by k)."""
    pts = problem.points + solution.slides[:, None, None] * problem.rays[:, None]
    if problem.centres is not None:
        pts = pts + solution.scale * problem.centres[:, None]
    return pts


def _working_pelvis(problem: DepthProblem, solution) -> np.ndarray:
    pelvis = problem.pelvis + solution.slides[:, None] * problem.rays
    if problem.centres is not None:
        pelvis = pelvis + solution.scale * problem.centres
    return pelvis


def _fit_floor(points: np.ndarray, rays: np.ndarray, up_prior: np.ndarray, fps: float,
               contacts: np.ndarray, pelvis: np.ndarray, adjacent: np.ndarray) -> Floor:
    """Floor through contacting points (or, before contacts exist, the still or lowest ones)."""
    n = len(points)
    if n == 1:
        return _single_frame_floor(points[0], up_prior, pelvis[0])
    if contacts.sum() >= 6:
        weights = contacts.astype(float)
    else:
        speeds = grounding.point_speeds(points, fps, rays, adjacent)
        lo, hi = grounding.CONTACT_SPEED
        weights = np.clip((hi - speeds) / (hi - lo), 0.0, 1.0)
        if (weights > 0.5).sum() < 3:  # nothing is still: the lowest point of each frame
            h = points @ up_prior
            weights = (h == h.min(axis=1, keepdims=True)).astype(float)
    try:
        return grounding.fit_floor(points.reshape(-1, 3), weights.reshape(-1), up_prior)
    except ValueError as exc:
        raise DPoseError(f"No foot contacts to place a floor under: {exc}.") from exc


def _single_frame_floor(points: np.ndarray, up_prior: np.ndarray, pelvis: np.ndarray) -> Floor:
    """One image: the plane under the lowest foot points, normal near the body's own up."""
    # The body's up (pelvis above the feet) blended with the camera's approximate up.
    body_up = pelvis - points.mean(axis=0)
    up = _unit(_unit(body_up) + up_prior)
    h = points @ up
    low = h - h.min() < 0.04
    return grounding.fit_floor(points, low.astype(float), up, max_tilt_deg=15.0,
                               prior_weight=0.2)


def lift_onto_floor(motion: Motion, body_model) -> Motion:
    """A grounded motion with its legs re-solved where a foot point is below Z = 0 of its world
    (after it was moved into another person's world, whose floor is a slightly other fit)."""
    rest = body_model.rest_joints(motion.betas)
    feet = grounding.foot_points(body_model, motion.betas)
    posed = grounding.posed_skeleton(motion.rotmats, rest, body_model.parents, motion.transl)
    rot = _lift_above_floor(motion.rotmats, posed, feet, feet.posed(posed),
                            motion.camera_to_world[:, :3, 3])
    return motion.replace(rotmats=rot)


def _lift_above_floor(rotmats, transforms, feet: FootPoints, points: np.ndarray,
                      camera_centres: np.ndarray) -> np.ndarray:
    """Re-solve the legs of frames where a foot point is below Z = 0 so it rests on the floor."""
    below = np.minimum(points[..., 2], 0.0)  # (N,4)
    if not np.any(below < 0):
        return rotmats
    lift = np.minimum(below[:, 0::2], below[:, 1::2])  # per foot (N,2): deepest point
    goals = points.copy()
    goals[..., 2] -= np.repeat(lift, 2, axis=1)
    weights = np.repeat((lift < 0).astype(float), 2, axis=1)
    return solve_legs(rotmats, transforms, feet, goals, weights, camera_centres)


def _rescale_to_height(motion: Motion, body_model, height: float) -> Motion:
    """Change the betas so the body is `height` tall; scale its distance from the camera alike.

    Moving along the line of sight by the height ratio keeps the body's image size.
    """
    betas = motion.betas.copy()
    old = grounding.body_height(body_model, betas)
    for _ in range(6):
        verts = body_model.shaped_vertices(betas)[:, 1]
        top, bottom = int(np.argmax(verts)), int(np.argmin(verts))
        grad = body_model.shapedirs[top, 1] - body_model.shapedirs[bottom, 1]
        if np.linalg.norm(grad) < 1e-9:
            raise DPoseError("This body model's shape space cannot change the body's height.")
        betas = betas + grad * (height - (verts[top] - verts[bottom])) / (grad @ grad)
    reached = grounding.body_height(body_model, betas)
    if abs(reached - height) > 0.005:
        raise DPoseError(f"Cannot reshape the body to {height:.2f} m (reached {reached:.2f} m).")
    ratio = reached / old
    pelvis_old = body_model.rest_joints(motion.betas)[0]
    pelvis_new = body_model.rest_joints(betas)[0]
    transl = ratio * (motion.transl + pelvis_old) - pelvis_new
    return motion.replace(betas=betas, transl=transl)


def _frame_step(motion: Motion) -> float:
    times = motion.frame_times()
    if len(times) < 2:
        return 1.0 / motion.fps
    return float(np.median(np.diff(times)))


def _intrinsics(motion: Motion) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """(focal (N,2), principal point (N,2), image size (2,)) or None when unknown."""
    size = motion.image_size
    if size is None:
        return None
    n = motion.num_frames
    focal = motion.focal_px
    if focal is None:
        focal = np.full((n, 2), float(np.hypot(*size)))
    pp = motion.principal_point if motion.principal_point is not None else np.tile(size / 2, (n, 1))
    if not (np.all(np.isfinite(focal)) and np.all(np.isfinite(pp)) and np.all(focal > 0)):
        raise DPoseError("The motion's camera intrinsics (focal length, principal point) are "
                         "not finite positive numbers.")  # fmt: skip
    return focal, pp, size


def _project(points_cam: np.ndarray, intrinsics) -> np.ndarray:
    focal, pp, _ = intrinsics
    z = np.maximum(points_cam[..., 2:3], 1e-6)
    return points_cam[..., :2] / z * focal[:, None] + pp[:, None]


def _check_feet_on_screen(points_cam: np.ndarray, intrinsics) -> None:
    _, _, size = intrinsics
    uv = _project(points_cam, intrinsics)
    inside = ((points_cam[..., 2] > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= size[0])
              & (uv[..., 1] >= 0) & (uv[..., 1] <= size[1]))  # fmt: skip
    if not inside.any():
        raise DPoseError("No foot is on screen in any frame, so there is no floor to find; "
                         "use ground none.")  # fmt: skip


def _apply(transforms: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Per-frame 4x4 transforms (N,4,4) applied to points (N,3) or (N,P,3)."""
    rot, shift = transforms[:, :3, :3], transforms[:, :3, 3]
    if points.ndim == 2:
        return np.einsum("nab,nb->na", rot, points) + shift
    return np.einsum("nab,npb->npa", rot, points) + shift[:, None]


def _report(*, motion, raw_joints, joints, world_points, raw_points, slide, contacts,
            contact_conf, cam_to_world, floor, ground, foot_lock, track_scale, intrinsics,
            height, adjacent, notes, map_evidence) -> RefineReport:
    n = motion.num_frames

    def skate(points):
        s = np.zeros(n)
        if n > 1:
            both = contacts[1:] & contacts[:-1] & adjacent[:, None]
            step = np.linalg.norm(np.diff(points[..., :2], axis=0), axis=-1) * 1000.0
            count = both.sum(axis=1)
            s[1:] = np.where(count > 0, (step * both).sum(axis=1) / np.maximum(count, 1), 0.0)
        return s

    grounded = floor is not None
    heights = world_points[..., 2] * 1000.0
    float_mm = np.where(contacts, heights, -np.inf).max(axis=1) if grounded else np.zeros(n)
    float_mm = np.where(np.isfinite(float_mm), np.maximum(float_mm, 0.0), 0.0)
    penetration = np.maximum(-heights.min(axis=1), 0.0) if grounded else np.zeros(n)
    reprojection = beyond_slide = None
    if intrinsics is not None:
        count = NUM_PREDICTED_JOINTS
        new_cam = _apply(np.linalg.inv(cam_to_world),
                         np.concatenate([joints[:, :count], world_points], 1))
        old_cam = np.concatenate([raw_joints[:, :count], raw_points], 1)
        slid_cam = old_cam + slide[:, None]  # the raw body moved along its pelvis ray
        new_px = _project(new_cam, intrinsics)
        reprojection = np.linalg.norm(new_px - _project(old_cam, intrinsics), axis=-1).mean(1)
        beyond_slide = np.linalg.norm(new_px - _project(slid_cam, intrinsics), axis=-1).mean(1)
    normal_cam = None
    camera_height = None
    if grounded:
        normal_cam = np.round(cam_to_world[0, :3, :3].T @ np.array([0, 0, 1.0]), 6).tolist()
        camera_height = round(float(cam_to_world[0, 2, 3]), 4)
    conf = motion.confidence * np.where(contacts, contact_conf, 1.0).mean(axis=1)
    return RefineReport(
        frames=n, ground=ground, foot_lock=float(foot_lock), track_scale=track_scale,
        floor_normal_camera=normal_cam, camera_height_m=camera_height, subject_height_m=height,
        confidence=conf, contacts=contacts, contact_confidence=contact_conf,
        skate_mm=skate(world_points), skate_before_mm=skate(_apply(cam_to_world, raw_points)),
        float_mm=float_mm, penetration_mm=penetration, reprojection_px=reprojection,
        reprojection_beyond_slide_px=beyond_slide, notes=notes,
        map_contact_evidence=map_evidence,
    )


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------------------- files
def refine_file(
    input_npz: str | os.PathLike, output_npz: str | os.PathLike, *,
    checkpoint: str | os.PathLike | None = None, body_model: str | os.PathLike | None = None,
    ground: str = "auto", foot_lock: float = 1.0, subject_height: float | None = None,
    report_path: str | os.PathLike | None = None,
) -> RefineReport:
    """Refine a motion .npz into a grounded one; optionally write the report as JSON.

    The body model comes from `body_model` (an SMPL-X file) or the D-PoSE `checkpoint`.
    A file already refined (world_z_up with dpose_camera_to_world) is taken back to its camera
    frame and refined again with its own camera. Outputs are written atomically and never over
    an input. Raises DPoseError (one line) on any bad input.
    """
    from .motion_io import load_motion_npz, motion_to_arrays

    src, dst = Path(input_npz), Path(output_npz)
    if dst.suffix.lower() != ".npz":
        raise DPoseError(f"The output {dst} must end in .npz.")
    outputs = [dst] + ([Path(report_path)] if report_path is not None else [])
    inputs = [src] + [Path(p) for p in (checkpoint, body_model) if p is not None]
    _refuse_clashes(inputs, outputs)
    if (checkpoint is None) == (body_model is None):
        raise DPoseError("Give exactly one of a checkpoint or an SMPL-X body model file.")
    motion = load_motion_npz(src)
    _check_surface_model(src)
    model = _load_body_model(checkpoint, body_model)
    camera_to_world = None
    if motion.coordinate_frame == FRAME_WORLD_Z_UP:
        if motion.camera_to_world is None:
            raise DPoseError(f"{src.name} is world-space motion without a camera "
                             f"(dpose_camera_to_world); refine needs camera-frame motion.")
        motion, camera_to_world = _back_to_camera(motion, model)
    refined, report = refine_motion(motion, model, ground=ground, foot_lock=foot_lock,
                                    subject_height=subject_height,
                                    camera_to_world=camera_to_world)  # fmt: skip
    arrays = motion_to_arrays(refined)
    _write_atomic(dst, lambda fh: np.savez(fh, **arrays))
    if report_path is not None:
        text = json.dumps(report.to_dict(), indent=1, allow_nan=False)
        _write_atomic(Path(report_path), lambda fh: fh.write(text.encode("utf-8")))
    return report


def _refuse_clashes(inputs: list[Path], outputs: list[Path]) -> None:
    def same(a: Path, b: Path) -> bool:
        try:
            return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
        except OSError:
            return False

    for out in outputs:
        for other in inputs:
            if same(out, other):
                raise DPoseError(f"The output {out} is also an input; choose another name.")
    if len(outputs) == 2 and same(outputs[0], outputs[1]):
        raise DPoseError(f"The motion and the report would both be written to {outputs[0]}.")


def _check_surface_model(path: Path) -> None:
    with np.load(path, allow_pickle=False) as npz:
        if "surface_model_type" not in npz.files:
            return
        kind = np.asarray(npz["surface_model_type"]).reshape(-1)[0]
    if isinstance(kind, bytes | np.bytes_):
        kind = kind.decode("utf-8", errors="replace")
    kind = str(kind).strip().lower()
    if kind != "smplx":
        raise BodyModelError(f"{path.name} is {kind} motion; refine works on SMPL-X motion and "
                             f"the SMPL-X body model.")  # fmt: skip


def _load_body_model(checkpoint, body_model):
    from .body_model import BODY_MODEL_PREFIX, BodyModel

    if body_model is not None:
        return BodyModel.load(body_model)
    from .checkpoint import load_checkpoint_arrays

    arrays = load_checkpoint_arrays(checkpoint, only=BODY_MODEL_PREFIX)
    return BodyModel.from_arrays(arrays, prefix=BODY_MODEL_PREFIX)


def _back_to_camera(motion: Motion, body_model) -> tuple[Motion, np.ndarray]:
    """A refined (world) motion back in its camera frame, with its camera as a track."""
    cam_to_world = motion.camera_to_world
    world_to_cam = np.linalg.inv(cam_to_world)
    pelvis_rest = body_model.rest_joints(motion.betas)[0]
    rot = motion.rotmats.copy()
    rot[:, 0] = world_to_cam[:, :3, :3] @ motion.rotmats[:, 0]
    transl = _apply(world_to_cam, motion.transl + pelvis_rest) - pelvis_rest
    try:
        back = motion.replace(rotmats=rot, transl=transl, coordinate_frame=FRAME_OPENCV_CAMERA,
                              camera_to_world=None, contacts=None, contact_confidence=None)
    except ValueError as exc:
        raise MotionFileError(f"the stored camera makes the motion invalid: {exc}") from exc
    return back, cam_to_world


def _write_atomic(path: Path, write) -> None:
    """Write through a temp file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise DPoseError(f"Cannot write {path}: {exc.strerror or exc}.") from exc
        raise
