"""Grounded (world-space) motion in the scene: camera, floor, contacts and quality on the rig.

The refine stage (``dpose_core.refine``, run by ``dpose_core.pipeline``) gives motion in a Z-up
world with the floor at Z = 0 and the footage camera per frame (``Motion.camera_to_world``,
OpenCV camera axes to world). Blender's world is that world, so the rig needs no offset; the
D-PoSE camera is placed at ``camera_to_world @ diag(1, -1, -1, 1)`` (Blender cameras look down
their local -Z with +Y up, docs/grounding.md), keyed per frame when it moves, so looking
through it the rig still lies on the footage. Other people of the same run were grounded in
worlds of their own: their rigs are moved into the first person's world through the shared
camera. The contacts become keyed custom properties on the rig (``dpose_contact_left_heel``,
..., 0 or 1, constant interpolation), the quality report keyed curves (``dpose_foot_skate_mm``,
``dpose_float_mm``, ``dpose_penetration_mm``, ``dpose_reprojection_px``) and timeline markers
on the frames to look at. All keys are written in bulk (``keyframe_points.add`` +
``foreach_set``), the rest of the add-on's way.

``camera_track`` goes the other way: an animated Blender camera (a Motion Tracking solve, any
keyed camera) sampled per frame as OpenCV camera-to-world matrices, for the refine stage.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..dpose_core.errors import DPoseError
from ..dpose_core.grounding import FOOT_POINT_NAMES
from ..dpose_core.motion import FRAME_WORLD_Z_UP
from ..dpose_core.rotations import make_quaternions_continuous, matrix_to_quaternion

# Blender camera axes from OpenCV camera axes (and back: the matrix is its own inverse).
BLENDER_FROM_OPENCV_CAMERA = np.diag([1.0, -1.0, -1.0, 1.0])
CONTACT_PROPS = tuple(f"dpose_contact_{name}" for name in FOOT_POINT_NAMES)
QUALITY_PROPS = {  # custom property -> RefineReport field, per frame
    "dpose_foot_skate_mm": "skate_mm",
    "dpose_float_mm": "float_mm",
    "dpose_penetration_mm": "penetration_mm",
    "dpose_reprojection_px": "reprojection_beyond_slide_px",
}
GROUP_CONTACTS = "D-PoSE Contacts"
GROUP_QUALITY = "D-PoSE Quality"
FLOOR_NAME = "D-PoSE Floor"
FLOOR_MARGIN_M = 1.0
_STILL = 1e-9  # camera matrices closer than this everywhere are one still camera


def is_grounded(motion) -> bool:
    """True for motion the refine stage put in the world (it carries its camera)."""
    return motion.coordinate_frame == FRAME_WORLD_Z_UP and motion.camera_to_world is not None


def camera_pose_matrices(camera_to_world: np.ndarray) -> np.ndarray:
    """Blender camera matrix_world (N,4,4) for OpenCV camera-to-world matrices (N,4,4)."""
    return np.asarray(camera_to_world, np.float64) @ BLENDER_FROM_OPENCV_CAMERA


def camera_track(camera_obj, scene, frame_offset: int, source_frames) -> Callable:
    """An animated Blender camera as the refine stage's camera track.

    Samples ``camera_obj.matrix_world`` (constraints such as a Camera Solver included) at scene
    frame ``frame_offset + f`` for each source frame f (main thread), and returns a function
    (source frames (N,)) -> OpenCV camera-to-world (N,4,4) that the worker thread can call.
    """
    if camera_obj is None or camera_obj.type != "CAMERA":
        raise DPoseError("The Camera to follow must be a camera object.")
    frames = sorted({int(f) for f in source_frames})
    if not frames:
        raise DPoseError("No frames to sample the camera at.")
    keep = scene.frame_current, scene.frame_subframe
    samples: dict[int, np.ndarray] = {}
    try:
        for f in frames:
            scene.frame_set(frame_offset + f)
            pose = np.array(camera_obj.matrix_world, dtype=np.float64)
            samples[f] = pose @ BLENDER_FROM_OPENCV_CAMERA
    finally:
        scene.frame_set(keep[0], subframe=keep[1])
    name = camera_obj.name

    def lookup(source_frames_: np.ndarray) -> np.ndarray:
        missing = [int(f) for f in source_frames_ if int(f) not in samples]
        if missing:
            raise DPoseError(f"The camera {name!r} was not sampled at source frame "
                             f"{missing[0]}.")
        return np.stack([samples[int(f)] for f in source_frames_])

    return lookup


def refine_takes(takes: list, body_model, options, *, camera_to_world=None, warn=None,
                 images=None) -> list:
    """The refine stage (dpose_core.pipeline.refine_motions) on the takes of an image: each
    person grounded on the floor under their feet, the report kept on the take. images: the
    pipeline.ImagesResult the takes came from (scene_builder.takes_from_images, image 0), for
    how much of each foot the network's part segmentation shows."""
    from dataclasses import replace

    from ..dpose_core.foot_evidence import feet_seen
    from ..dpose_core.pipeline import refine_motions

    motions = {t.label: t.motion for t in takes}
    if images is not None:
        rows = images.rows_of_image(0)
        for take, row in zip(takes, rows, strict=True):
            seen = feet_seen(images.estimate.part_labels[int(row)])[None]
            motions[take.label] = take.motion.replace(feet_seen=seen)
    motions, reports, _ = refine_motions(motions, body_model, options,
                                         camera_to_world=camera_to_world, warn=warn)
    return [replace(take, motion=motions[take.label], report=reports.get(take.label))
            for take in takes]


# ------------------------------------------------------------------------------ building
def apply_grounding(scene, collection, takes, rigs, camera, frame_offset: int, *,
                    add_floor: bool, planes=()) -> list:
    """The scene builder's step for grounded takes: the camera placed by the first grounded
    person, the other rigs and the depth reliefs (built where the camera was at the origin)
    moved into that world, contacts and quality keyed on each rig, markers on frames to look
    at, optionally the floor. Returns the objects made."""
    grounded = [(take, rig) for take, rig in zip(takes, rigs, strict=True)
                if is_grounded(take.motion)]
    if not grounded:
        return []
    first = grounded[0][0].motion
    if camera is not None:
        place_camera(camera, first, frame_offset)
    for take, rig in zip(takes, rigs, strict=True):
        if take.motion is not first:
            align_to_first(rig, take.motion, first, frame_offset)
    for plane in planes:
        follow_camera(plane, first, frame_offset)
    for take, rig in grounded:
        report = getattr(take, "report", None)
        key_report(rig, take.motion, report, frame_offset)
        if report is not None:
            mark_bad_frames(scene, take.label, take.motion, report, frame_offset)
    if add_floor:
        return [floor_plane(collection, [take.motion for take, _ in grounded])]
    return []


def place_camera(camera_obj, motion, frame_offset: int) -> None:
    """Put the D-PoSE camera where the refine stage says the footage camera was."""
    from mathutils import Matrix

    poses = camera_pose_matrices(motion.camera_to_world)
    if np.ptp(poses, axis=0).max() <= _STILL:
        camera_obj.matrix_world = Matrix(poses[0].tolist())
        return
    key_object_matrices(camera_obj, frame_offset + motion.frame_indices, poses,
                        f"{camera_obj.name} path")


def align_to_first(armature, motion, first, frame_offset: int) -> None:
    """Move another person's rig into the first person's grounded world.

    Both see the same footage camera. A grounded rig moves by shared_world.world_moves (a
    no-op for takes the refine stage already put in one world); a rig left in the camera frame
    (its motion could not be grounded) has the camera as its world: its armature space is the
    camera frame, placed at the first person's camera of the nearest frame.
    """
    from mathutils import Matrix

    from ..dpose_core.shared_world import world_moves

    mine = np.asarray(motion.frame_indices)
    theirs = np.asarray(first.frame_indices)
    base = np.array(armature.matrix_world, dtype=np.float64)
    if is_grounded(motion):
        move = world_moves(mine, motion.camera_to_world, theirs, first.camera_to_world)
    else:
        nearest = np.abs(theirs[None, :] - mine[:, None]).argmin(axis=1)
        move = first.camera_to_world[nearest] @ np.linalg.inv(base)
    if np.ptp(move, axis=0).max() <= _STILL:
        armature.matrix_world = Matrix((move[0] @ base).tolist())
        return
    key_object_matrices(armature, frame_offset + mine, move @ base, None)


def follow_camera(obj, first, frame_offset: int) -> None:
    """Move an object built in the camera frame placed at the origin (a depth relief) to the
    first grounded person's camera: world = C @ inv(OPENCV_TO_BLENDER) @ built."""
    from mathutils import Matrix

    from ..dpose_core.coords import OPENCV_TO_BLENDER

    undo = np.eye(4)
    undo[:3, :3] = OPENCV_TO_BLENDER.T
    base = np.array(obj.matrix_world, dtype=np.float64)
    moves = np.asarray(first.camera_to_world) @ undo @ base
    if np.ptp(moves, axis=0).max() <= _STILL:
        obj.matrix_world = Matrix(moves[0].tolist())
        return
    key_object_matrices(obj, frame_offset + np.asarray(first.frame_indices), moves, None)


def key_report(armature, motion, report, frame_offset: int) -> None:
    """Contacts and per-frame quality as keyed custom properties of the rig."""
    frames = (frame_offset + np.asarray(motion.frame_indices)).astype(np.float64)
    if motion.contacts is not None:
        for k, prop in enumerate(CONTACT_PROPS):
            armature[prop] = int(motion.contacts[0, k])
            key_property(armature, prop, frames, motion.contacts[:, k].astype(np.float64),
                         GROUP_CONTACTS, constant=True)
    if report is None:
        return
    for prop, name in QUALITY_PROPS.items():
        values = getattr(report, name)
        if values is None:
            continue
        values = np.nan_to_num(np.asarray(values, np.float64))
        armature[prop] = float(values[0])
        key_property(armature, prop, frames, values, GROUP_QUALITY)


def mark_bad_frames(scene, label: str, motion, report, frame_offset: int) -> int:
    """A timeline marker at the start of each run of frames the report says to look at
    (penetration, float, foot skate, reprojection); returns how many were made."""
    from ..dpose_core.report import bad_frames
    from .keyframes import MARKER_PREFIX

    flagged = {f: [r for r in reasons if r not in ("low confidence", "interpolated")]
               for f, reasons in bad_frames(motion, report).items()}
    flagged = {f: r for f, r in flagged.items() if r}
    step = int(np.median(np.diff(motion.frame_indices))) if len(motion) > 1 else 1
    made, previous = 0, None
    for frame, reasons in flagged.items():
        if previous is None or frame - previous > step:
            scene.timeline_markers.new(f"{MARKER_PREFIX}{label}: {', '.join(reasons)}",
                                       frame=int(frame_offset + frame))
            made += 1
        previous = frame
    return made


def floor_plane(collection, motions, name: str = FLOOR_NAME):
    """A plane at Z = 0 under where the people go (plus a margin), as a mesh object."""
    import bpy

    points = np.concatenate([np.asarray(m.transl)[:, :2] for m in motions])
    points = np.concatenate([points] + [np.asarray(m.camera_to_world)[:, :2, 3]
                                        for m in motions])
    lo, hi = points.min(axis=0) - FLOOR_MARGIN_M, points.max(axis=0) + FLOOR_MARGIN_M
    mesh = bpy.data.meshes.new(name)
    corners = [(lo[0], lo[1], 0.0), (hi[0], lo[1], 0.0), (hi[0], hi[1], 0.0), (lo[0], hi[1], 0.0)]
    mesh.from_pydata(corners, [], [(0, 1, 2, 3)])
    mesh.update()
    obj = bpy.data.objects.new(name, mesh)
    collection.objects.link(obj)
    obj.display_type = "WIRE"  # the footage stays visible through it
    obj.hide_render = True
    return obj


# ------------------------------------------------------------------------------ bulk keys
def key_property(owner, prop: str, frames: np.ndarray, values: np.ndarray, group: str, *,
                 constant: bool = False) -> None:
    """Key custom property ``prop`` of ``owner`` at ``frames`` (replacing its keys)."""
    _key_curve(owner, f'["{prop}"]', 0, group, frames, values, constant=constant)


def key_object_matrices(obj, frames, matrices: np.ndarray, action_name: str | None) -> None:
    """Key an object's location and rotation (quaternion) from world matrices (N,4,4).

    The object must have no parent (its matrix_world is then its basis).
    """
    from . import anim_compat

    if obj.parent is not None:
        raise DPoseError(f"{obj.name} has a parent; it cannot be placed per frame.")
    frames = np.asarray(frames, np.float64)
    m = np.asarray(matrices, np.float64)
    rot = m[:, :3, :3]
    scale = np.linalg.norm(rot, axis=1)  # column norms: the object's scale
    quats = make_quaternions_continuous(matrix_to_quaternion(rot / scale[:, None, :]), axis=0)
    obj.rotation_mode = "QUATERNION"
    obj.scale = tuple(float(v) for v in scale[0])
    anim_compat.ensure_action(obj, action_name or f"{obj.name} placement")
    for i in range(3):
        _key_curve(obj, "location", i, "Object Transforms", frames, m[:, i, 3])
    for i in range(4):
        _key_curve(obj, "rotation_quaternion", i, "Object Transforms", frames, quats[:, i])


def _key_curve(owner, path: str, index: int, group: str, frames: np.ndarray,
               values: np.ndarray, *, constant: bool = False) -> None:
    from . import anim_compat
    from .keyframes import _read_points, _replace_range, keyframe_type_value

    if owner.animation_data is None or owner.animation_data.action is None:
        anim_compat.ensure_action(owner, f"{owner.name} motion")
    fcurve = anim_compat.ensure_fcurve(owner, path, index, group)
    order = np.argsort(frames, kind="stable")
    frames, values = np.asarray(frames, np.float64)[order], np.asarray(values)[order]
    types = np.full(len(frames), keyframe_type_value("KEYFRAME"), np.int32)
    _replace_range(fcurve, _read_points(fcurve), frames, values, types, float(frames[0]),
                   float(frames[-1]))
    if constant:
        import bpy

        points = fcurve.keyframe_points
        value = bpy.types.Keyframe.bl_rna.properties["interpolation"].enum_items["CONSTANT"].value
        points.foreach_set("interpolation", np.full(len(points), value, np.int32))
        fcurve.update()
