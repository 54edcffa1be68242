"""Motion -> keyframes on an SMPL-X rig, in bulk, and back.

One action per armature: per bone a quaternion F-curve group (w, x, y, z), the root bone's
location, and two object custom-property curves, ``["dpose_confidence"]`` and
``["dpose_flags"]``, so the artist sees the estimate's confidence in the Graph Editor and a
read-back gets the Motion back whole. Keys are written with ``keyframe_points.add`` +
``foreach_set`` (about 100x faster than ``keyframe_insert``, see bench/bench_keyframes.py);
quaternions are sign-continuous in time (and with the keys around the written range) so
Blender's component-wise interpolation never spins a joint the long way round.

Writing frames [a, b] first removes every key of these curves in [a, b]: re-running a range
replaces it. Low-confidence frames get keyframe type 'JITTER', frames filled in between
detections 'BREAKDOWN', and a timeline marker opens each run of such frames.
Blender frame = frame_offset + Motion.frame_indices (source frame 0 lands on frame 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

from ..dpose_core.errors import MotionFileError
from ..dpose_core.motion import FLAG_INTERPOLATED, FLAG_LOW_CONFIDENCE, Motion
from ..dpose_core.rig_frames import RigFrame
from ..dpose_core.rotations import make_quaternions_continuous
from ..dpose_core.skeleton import JOINT_NAMES, NUM_JOINTS, NUM_PREDICTED_JOINTS
from . import anim_compat
from .rig import ROOT_BONE, rig_frame

PROP_CONFIDENCE = "dpose_confidence"
PROP_FLAGS = "dpose_flags"
PROP_FRAME_OFFSET = "dpose_frame_offset"
PROP_GENDER = "dpose_gender"
PROP_FPS = "dpose_fps"
PROP_KEYED_RANGES = "dpose_keyed_ranges"
MARKER_PREFIX = "D-PoSE: "
MAX_SCENE_FRAME = 1048574  # Blender's last frame (MAXFRAME)
DEFAULT_CONFIDENCE_THRESHOLD = 0.5
_GROUP_ESTIMATE = "D-PoSE"

# Per-keyframe attributes kept when a range is rewritten (float pairs, then scalars).
_PAIR_ATTRS = ("co", "handle_left", "handle_right")
_SCALAR_FLOAT_ATTRS = ("amplitude", "back", "period")
_ENUM_ATTRS = ("interpolation", "type", "handle_left_type", "handle_right_type", "easing")


@dataclass(frozen=True)
class KeyedRange:
    """What write_motion_keys did: Blender frames [first_frame, last_frame], keyed frame count,
    and how many of them were marked as low confidence or interpolated."""

    first_frame: int
    last_frame: int
    num_frames: int
    num_marked: int


def rotation_path(bone_name: str) -> str:
    return f'pose.bones["{bone_name}"].rotation_quaternion'


def location_path(bone_name: str) -> str:
    return f'pose.bones["{bone_name}"].location'


def keyframe_type_value(name: str) -> int:
    """The integer foreach_set expects for a keyframe type name ('KEYFRAME', 'JITTER', ...)."""
    return bpy.types.Keyframe.bl_rna.properties["type"].enum_items[name].value


def set_scene_fps(scene: bpy.types.Scene, fps: float) -> None:
    """Scene frame rate = fps: whole rates as is, others as round(fps) / fps_base.

    29.97 -> 30 / 1.001001 (NTSC 30000/1001 gives exactly 1.001). fps_base is single
    precision, so write_motion_keys also keeps the exact rate on the armature.
    """
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    rate = max(1, int(round(fps)))
    scene.render.fps = rate
    scene.render.fps_base = 1.0 if abs(fps - rate) < 1e-9 else rate / fps


def scene_fps(scene: bpy.types.Scene) -> float:
    return scene.render.fps / scene.render.fps_base


def write_motion_keys(
    armature: bpy.types.Object,
    motion: Motion,
    *,
    frame_offset: int = 1,
    scene: bpy.types.Scene | None = None,
    set_scene_timing: bool = True,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
    mark_frames: bool = True,
    action_name: str | None = None,
) -> KeyedRange:
    """Key every frame of `motion` onto a rig made by rig.build_armature; returns the range.

    The motion's betas are not applied (the rig's bones carry its shape); a motion in another
    coordinate frame than the rig's is converted. With set_scene_timing the scene's fps and
    frame range follow the motion.
    """
    scene = scene or bpy.context.scene
    check_frame_range(motion, frame_offset)
    rig = rig_frame(armature)
    rotmats, transl = rig.motion_in_rig_frame(motion)
    frames = (frame_offset + motion.frame_indices).astype(np.float64)
    low = motion.confidence < confidence_threshold
    low |= (motion.flags & FLAG_LOW_CONFIDENCE) != 0
    interpolated = (motion.flags & FLAG_INTERPOLATED) != 0
    key_types = np.full(len(frames), keyframe_type_value("KEYFRAME"), dtype=np.int32)
    if mark_frames:
        key_types[low] = keyframe_type_value("JITTER")
        key_types[interpolated] = keyframe_type_value("BREAKDOWN")

    _write(armature, rig, rotmats, transl, frames, motion.confidence, motion.flags,
           key_types, action_name or f"{armature.name} motion")
    armature[PROP_FRAME_OFFSET] = int(frame_offset)
    armature[PROP_GENDER] = motion.gender
    armature[PROP_FPS] = float(motion.fps)
    first, last = int(frames.min()), int(frames.max())
    _remember_range(armature, first, last)
    if mark_frames:
        _mark_runs(scene, frames, low, interpolated, first, last)
    if set_scene_timing:
        set_scene_fps(scene, motion.fps)
        scene.frame_start, scene.frame_end = first, last
    return KeyedRange(first, last, len(frames), int(np.count_nonzero(low | interpolated)))


def check_frame_range(motion: Motion, frame_offset: int) -> tuple[int, int]:
    """The scene frames [first, last] the motion's keys land on; a MotionFileError when they
    fall outside Blender's frames (0 to MAX_SCENE_FRAME), e.g. a file with huge frame numbers.

    Call it before building anything, so a bad file leaves no half-built rig.
    """
    if len(motion) == 0:
        raise MotionFileError("The motion has no frames to key; estimate or load a longer one.")
    indices = np.asarray(motion.frame_indices)
    first = int(frame_offset) + int(indices.min())
    last = int(frame_offset) + int(indices.max())
    if first < 0 or last > MAX_SCENE_FRAME:
        raise MotionFileError(
            f"The motion's frames would be keyed at scene frames {first}..{last}, outside "
            f"Blender's 0..{MAX_SCENE_FRAME}; its frame numbers (dpose_frame_indices) are "
            f"damaged or the start frame is too late."
        )
    return first, last


def key_pose(
    armature: bpy.types.Object,
    rotmats: np.ndarray,
    transl: np.ndarray | None = None,
    *,
    frame: int | None = None,
    confidence: float = 1.0,
    coordinate_frame: str | None = None,
) -> None:
    """Key one pose (55 or 22 local rotations, optional transl) at `frame` (default: current).

    A key already at that frame is replaced. Without transl the root location is not keyed.
    coordinate_frame: the frame of rotation 0 and transl (default: the rig's own).
    """
    rot = np.asarray(rotmats, dtype=np.float64)
    if rot.shape not in ((NUM_JOINTS, 3, 3), (NUM_PREDICTED_JOINTS, 3, 3)):
        raise ValueError(f"rotmats must be ({NUM_JOINTS},3,3) or ({NUM_PREDICTED_JOINTS},3,3), "
                         f"got {rot.shape}")
    full = np.broadcast_to(np.eye(3), (1, NUM_JOINTS, 3, 3)).copy()
    full[0, : rot.shape[0]] = rot
    if frame is None:
        frame = bpy.context.scene.frame_current
    rig = rig_frame(armature)
    motion = Motion(
        rotmats=full,
        transl=np.zeros((1, 3)) if transl is None else np.reshape(transl, (1, 3)),
        betas=rig.betas,
        fps=1.0,
        confidence=[confidence],
        coordinate_frame=coordinate_frame or rig.world_frame,
    )
    rotmats_rig, transl_rig = rig.motion_in_rig_frame(motion)
    kind = "JITTER" if confidence < DEFAULT_CONFIDENCE_THRESHOLD else "KEYFRAME"
    _write(armature, rig, rotmats_rig, None if transl is None else transl_rig,
           np.array([float(frame)]), motion.confidence, motion.flags,
           np.array([keyframe_type_value(kind)], dtype=np.int32), f"{armature.name} motion")


def keyed_ranges(armature: bpy.types.Object) -> list[tuple[int, int]]:
    """Blender frame ranges [first, last] keyed by write_motion_keys so far (merged, sorted)."""
    flat = [int(v) for v in armature.get(PROP_KEYED_RANGES, [])]
    return list(zip(flat[0::2], flat[1::2], strict=True))


def read_motion_keys(
    armature: bpy.types.Object,
    *,
    frame_start: int | None = None,
    frame_end: int | None = None,
    scene: bpy.types.Scene | None = None,
) -> Motion:
    """The Motion keyed on `armature` (frames of the root rotation keys within the range).

    Channels keyed at other frames are evaluated there; missing channels read as rest.
    """
    scene = scene or bpy.context.scene
    rig = rig_frame(armature)
    root_w = anim_compat.find_fcurve(armature, rotation_path(ROOT_BONE), 0)
    if root_w is None or len(root_w.keyframe_points) == 0:
        raise ValueError(f"{armature.name!r} has no root rotation keys to read")
    frames = np.unique(_read_points(root_w)["co"][:, 0])
    if frame_start is not None:
        frames = frames[frames >= frame_start]
    if frame_end is not None:
        frames = frames[frames <= frame_end]
    n = len(frames)
    quats = np.zeros((n, NUM_JOINTS, 4))
    quats[..., 0] = 1.0
    for j, name in enumerate(JOINT_NAMES):
        for i in range(4):
            quats[:, j, i] = _sample(armature, rotation_path(name), i, frames, quats[:, j, i])
    location = np.stack(
        [_sample(armature, location_path(ROOT_BONE), i, frames, np.zeros(n)) for i in range(3)],
        axis=1,
    )
    rotmats, transl = rig.smplx_from_pose(quats, location)
    offset = int(armature.get(PROP_FRAME_OFFSET, 1))
    return Motion(
        rotmats=rotmats,
        transl=transl,
        betas=rig.betas,
        fps=_keyed_fps(armature, scene),
        confidence=_sample(armature, f'["{PROP_CONFIDENCE}"]', 0, frames, np.ones(n)),
        frame_indices=np.round(frames).astype(np.int64) - offset,
        flags=np.round(_sample(armature, f'["{PROP_FLAGS}"]', 0, frames, np.zeros(n))),
        gender=str(armature.get(PROP_GENDER, "neutral")),
        coordinate_frame=rig.world_frame,
    )


# ---------------------------------------------------------------------- internals
def _keyed_fps(armature: bpy.types.Object, scene: bpy.types.Scene) -> float:
    """The motion's exact rate if the scene still runs at it, else the scene's rate."""
    rate = scene_fps(scene)
    keyed = armature.get(PROP_FPS)
    return float(keyed) if keyed is not None and abs(keyed - rate) < 1e-4 * rate else rate


def _remember_range(armature: bpy.types.Object, first: int, last: int) -> None:
    """Add [first, last] to the armature's keyed ranges, merging overlaps and neighbours."""
    merged: list[list[int]] = []
    for start, end in sorted([*keyed_ranges(armature), (first, last)]):
        if merged and start <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    armature[PROP_KEYED_RANGES] = [v for pair in merged for v in pair]


def _write(
    armature: bpy.types.Object,
    rig: RigFrame,
    rotmats: np.ndarray,
    transl: np.ndarray | None,
    frames: np.ndarray,
    confidence: np.ndarray,
    flags: np.ndarray,
    key_types: np.ndarray,
    action_name: str,
) -> None:
    """Replace keys in [min(frames), max(frames)] of every channel with these frames."""
    if len(frames) == 0:
        raise MotionFileError("The motion has no frames to key; estimate or load a longer one.")
    order = np.argsort(frames, kind="stable")
    frames, key_types = frames[order], key_types[order]
    rotmats, confidence, flags = rotmats[order], confidence[order], flags[order]
    quats, location = rig.pose_from_smplx(rotmats, np.zeros((len(frames), 3)) if transl is None
                                          else transl[order])
    quats = make_quaternions_continuous(quats, axis=0)
    start, end = float(frames[0]), float(frames[-1])

    action = anim_compat.ensure_action(armature, action_name)
    for prop, default in ((PROP_CONFIDENCE, 1.0), (PROP_FLAGS, 0)):
        if prop not in armature:
            armature[prop] = default
    for j, name in enumerate(JOINT_NAMES):
        curves = [anim_compat.ensure_fcurve(armature, rotation_path(name), i, name)
                  for i in range(4)]
        _write_quaternion_curves(curves, frames, quats[:, j], key_types, start, end)
    channels = []
    if transl is not None:
        channels += [(location_path(ROOT_BONE), i, ROOT_BONE, location[:, i]) for i in range(3)]
    channels += [(f'["{PROP_CONFIDENCE}"]', 0, _GROUP_ESTIMATE, confidence),
                 (f'["{PROP_FLAGS}"]', 0, _GROUP_ESTIMATE, flags.astype(np.float64))]
    for path, index, group, values in channels:
        fcurve = anim_compat.ensure_fcurve(armature, path, index, group)
        _replace_range(fcurve, _read_points(fcurve), frames, values, key_types, start, end)
    action.update_tag()


def _write_quaternion_curves(
    curves: list, frames: np.ndarray, quats: np.ndarray, key_types: np.ndarray,
    start: float, end: float,
) -> None:
    """Write one bone's (w, x, y, z) keys, sign-consistent with the kept keys around them."""
    old = [_read_points(fc) for fc in curves]
    flip_after = False
    if old[0] is not None:
        kept = old[0]["co"][:, 0]
        before, after = kept[kept < start], kept[kept > end]
        if before.size:
            previous = np.array([fc.evaluate(before.max()) for fc in curves])
            if previous @ quats[0] < 0:
                quats = -quats
        if after.size:
            following = np.array([fc.evaluate(after.min()) for fc in curves])
            flip_after = bool(following @ quats[-1] < 0)  # same rotations, other sign
    for i, fc in enumerate(curves):
        _replace_range(fc, old[i], frames, quats[:, i], key_types, start, end, flip_after)


def _read_points(fcurve: bpy.types.FCurve) -> dict[str, np.ndarray] | None:
    """All keyframe attributes of an F-curve as arrays, or None when it has no keys."""
    points = fcurve.keyframe_points
    count = len(points)
    if count == 0:
        return None
    out = {}
    for attr in _PAIR_ATTRS:
        buf = np.empty(2 * count, dtype=np.float32)
        points.foreach_get(attr, buf)
        out[attr] = buf.reshape(count, 2)
    for attr in _SCALAR_FLOAT_ATTRS:
        buf = np.empty(count, dtype=np.float32)
        points.foreach_get(attr, buf)
        out[attr] = buf
    for attr in _ENUM_ATTRS:
        buf = np.empty(count, dtype=np.int32)
        points.foreach_get(attr, buf)
        out[attr] = buf
    return out


def _replace_range(
    fcurve: bpy.types.FCurve,
    old: dict[str, np.ndarray] | None,
    frames: np.ndarray,
    values: np.ndarray,
    key_types: np.ndarray,
    start: float,
    end: float,
    negate_after: bool = False,
) -> None:
    """Drop the keys in [start, end], add (frames, values); keep everything else as it was."""
    points = fcurve.keyframe_points
    new_co = np.empty((len(frames), 2), dtype=np.float32)
    new_co[:, 0], new_co[:, 1] = frames, values
    default_type = keyframe_type_value("KEYFRAME")
    if old is None:  # the fast path: an empty curve
        points.add(len(frames))
        points.foreach_set("co", new_co.ravel())
        if np.any(key_types != default_type):
            points.foreach_set("type", key_types)
        fcurve.update()
        return
    old_frames = old["co"][:, 0]
    keep = (old_frames < start) | (old_frames > end)
    kept = {name: arr[keep].copy() for name, arr in old.items()}
    if negate_after:
        after = kept["co"][:, 0] > end
        for attr in _PAIR_ATTRS:
            kept[attr][after, 1] *= -1.0
    n_kept, n_new = int(keep.sum()), len(frames)
    all_frames = np.concatenate([kept["co"][:, 0], new_co[:, 0]])
    order = np.argsort(all_frames, kind="stable")
    from_old = order < n_kept
    points.clear()
    points.add(n_kept + n_new)
    for attr in _PAIR_ATTRS:
        merged = np.concatenate([kept[attr], new_co])[order]  # new keys: handles = co, then auto
        points.foreach_set(attr, merged.ravel())
    for attr in _SCALAR_FLOAT_ATTRS + _ENUM_ATTRS:
        dtype = np.float32 if attr in _SCALAR_FLOAT_ATTRS else np.int32
        merged = np.empty(n_kept + n_new, dtype=dtype)
        points.foreach_get(attr, merged)  # defaults of fresh keys
        merged[from_old] = kept[attr][order[from_old]]
        if attr == "type":
            merged[~from_old] = key_types[order[~from_old] - n_kept]
        points.foreach_set(attr, merged)
    fcurve.update()


def _sample(
    owner: bpy.types.ID, data_path: str, index: int, frames: np.ndarray, default: np.ndarray
) -> np.ndarray:
    """Values of one channel at `frames`: key values where keyed, evaluated elsewhere."""
    fcurve = anim_compat.find_fcurve(owner, data_path, index)
    if fcurve is None or len(fcurve.keyframe_points) == 0:
        return np.asarray(default, dtype=np.float64).copy()
    co = _read_points(fcurve)["co"]
    pos = np.clip(np.searchsorted(co[:, 0], frames), 0, len(co) - 1)
    hit = co[pos, 0] == frames
    out = np.where(hit, co[pos, 1], 0.0).astype(np.float64)
    for i in np.flatnonzero(~hit):
        out[i] = fcurve.evaluate(frames[i])
    return out


def _mark_runs(
    scene: bpy.types.Scene,
    frames: np.ndarray,
    low: np.ndarray,
    interpolated: np.ndarray,
    first: int,
    last: int,
) -> None:
    """Replace our timeline markers in [first, last] with one per run of marked frames."""
    markers = scene.timeline_markers
    for marker in [m for m in markers if m.name.startswith(MARKER_PREFIX)]:
        if first <= marker.frame <= last:
            markers.remove(marker)
    order = np.argsort(frames, kind="stable")
    for mask, label in ((low, "low confidence"), (interpolated, "interpolated")):
        marked = mask[order]
        starts = np.flatnonzero(marked & ~np.concatenate([[False], marked[:-1]]))
        for i in starts:
            markers.new(MARKER_PREFIX + label, frame=int(frames[order][i]))
