"""What the network saw, in the scene: part-agreement curves and markers, the part overlay.

- ``key_part_scores``: a rig's ``["dpose_part_iou_mean"]`` and ``["dpose_silhouette_iou"]``
  custom-property curves (group "D-PoSE", beside the confidence), keyed in bulk on the frames
  that were scored (interpolated frames have no score and get no key), and a timeline marker
  "D-PoSE: low part agreement" opening each run of frames whose mean part IoU is below the
  threshold, like the low-confidence markers.
- ``add_part_overlay``: the part map as a second background image of the D-PoSE camera, over
  the footage and under the rigs. A camera background rather than a texture on the depth
  relief: it needs no relief, sits exactly on the footage's pixels through the same camera
  and timing (the relief is a subsampled surface whose edges are cut from the same labels),
  and its opacity is one slider (the background's alpha) the artist can change.
- ``legend_icons``: a colour swatch per part class for the panel's legend.
"""

from __future__ import annotations

import numpy as np

from ..dpose_core.evidence_report import DEFAULT_LOW_PART_IOU, motion_scores
from . import anim_compat, keyframes

PROP_PART_IOU_MEAN = "dpose_part_iou_mean"
PROP_SILHOUETTE_IOU = "dpose_silhouette_iou"
LOW_PART_MARKER = keyframes.MARKER_PREFIX + "low part agreement"
OVERLAY_BACKGROUND_ALPHA = 1.0  # the PNGs carry their own alpha (overlay.DEFAULT_ALPHA)
OVERLAY_IMAGE_NAME = "D-PoSE Part Overlay"
_GROUP = "D-PoSE"


def key_part_scores(armature, motion, frame_offset: int, scene=None,
                    threshold: float = DEFAULT_LOW_PART_IOU) -> int:
    """Key the motion's scores on `armature` (Blender frame = frame_offset + source frame) and
    mark its low-agreement runs in `scene`'s timeline; returns the number of low frames.

    Keys in the motion's frame range are replaced; a motion without scores keys nothing.
    """
    scores = motion_scores(motion)
    if scores is None or not len(scores):
        return 0
    frames = (np.asarray(motion.frame_indices, np.float64) + frame_offset)
    start, end = float(frames.min()), float(frames.max())
    scored = np.isfinite(scores.mean_iou)
    key_types = np.full(int(scored.sum()), keyframes.keyframe_type_value("KEYFRAME"), np.int32)
    anim_compat.ensure_action(armature, f"{armature.name} motion")  # keeps the rig's action
    for prop, values in ((PROP_PART_IOU_MEAN, scores.mean_iou),
                         (PROP_SILHOUETTE_IOU, scores.silhouette_iou)):
        if prop not in armature:
            armature[prop] = 0.0
        fcurve = anim_compat.ensure_fcurve(armature, f'["{prop}"]', 0, _GROUP)
        keyed = np.nan_to_num(values[scored], nan=0.0)  # silhouette NaN where mean is not: 0
        keyframes._replace_range(fcurve, keyframes._read_points(fcurve), frames[scored],
                                 keyed, key_types, start, end)
    low = scores.low_frames(threshold)
    if scene is not None:
        _mark_low_runs(scene, frames, low, start, end)
    return len(low)


def _mark_low_runs(scene, frames: np.ndarray, low: np.ndarray, start: float, end: float) -> None:
    """One marker at the first frame of each run of consecutive low rows, ours replaced."""
    markers = scene.timeline_markers
    for marker in [m for m in markers if m.name == LOW_PART_MARKER]:
        if start <= marker.frame <= end:
            markers.remove(marker)
    is_low = np.zeros(len(frames), bool)
    is_low[low] = True
    starts = np.flatnonzero(is_low & ~np.concatenate([[False], is_low[:-1]]))
    for i in starts:
        markers.new(LOW_PART_MARKER, frame=int(frames[i]))


def add_part_overlay(camera_obj, first_file: str, *, frame_count: int, frame_start: int,
                     alpha: float = OVERLAY_BACKGROUND_ALPHA):
    """The overlay PNG (or numbered sequence from ``first_file``) as a camera background drawn
    over the footage: file n shows at scene frame frame_start + (n - first number). Returns
    the background entry."""
    from ..dpose_core.errors import DPoseError
    from . import scene_camera

    try:
        image = scene_camera.load_footage(first_file, sequence_length=frame_count)
    except RuntimeError as exc:  # Blender: missing or unreadable file
        raise DPoseError(f"The part overlay {first_file} could not be loaded: {exc}") from exc
    image.name = OVERLAY_IMAGE_NAME
    image.alpha_mode = "STRAIGHT"
    cam = camera_obj.data
    cam.show_background_images = True
    for bg in [b for b in cam.background_images
               if b.image is not None and b.image.name.startswith(OVERLAY_IMAGE_NAME)]:
        cam.background_images.remove(bg)
    bg = cam.background_images.new()  # after the footage: drawn over it
    bg.source = "IMAGE"
    bg.image = image
    bg.alpha = alpha
    bg.display_depth = "BACK"  # behind the rigs and meshes
    bg.frame_method = "STRETCH"  # the overlay has the footage's size
    # The files are numbered by source frame: the first one shows at frame_start.
    scene_camera.set_footage_timing(bg.image_user, image, frame_start=frame_start,
                                    first_source_frame=0, frame_duration=frame_count)
    return bg


_ICONS = None


def legend_icons() -> list:
    """(class name, preview) per part class a trained network predicts: a 16 px swatch in its
    overlay colour (``preview.icon_id`` for ``layout.label(icon_value=...)``)."""
    global _ICONS
    import bpy.utils.previews

    from ..dpose_core.overlay import legend

    if _ICONS is None:
        _ICONS = bpy.utils.previews.new()
    out = []
    for c, name, rgb in legend():
        key = f"part{c}"
        icon = _ICONS.get(key) or _ICONS.new(key)
        if tuple(icon.image_size) != (16, 16):
            icon.image_size = (16, 16)
            pixels = np.empty((16 * 16, 4), np.float32)
            pixels[:, :3] = np.asarray(rgb, np.float32) / 255.0
            pixels[:, 3] = 1.0
            icon.image_pixels_float.foreach_set(pixels.ravel())
        out.append((name, icon))
    return out


def release_icons() -> None:
    """Free the legend's icons (add-on unregister)."""
    global _ICONS
    if _ICONS is not None:
        import bpy.utils.previews

        bpy.utils.previews.remove(_ICONS)
        _ICONS = None
