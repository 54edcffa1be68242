"""Motion files onto a new rig: the plain function behind the import operator.

Reads an SMPL-X motion .npz (ours, or an AMASS-style file: dpose_core.motion_io), builds an
armature for the file's betas in the file's coordinate frame, optionally the skinned mesh,
and keys every frame. No UI context is needed beyond a scene to put things in.
"""

from __future__ import annotations

from os import PathLike
from pathlib import Path

import bpy

from ..dpose_core.body_model import BodyModel
from ..dpose_core.motion import Motion
from ..dpose_core.motion_io import load_motion_npz
from .keyframes import DEFAULT_CONFIDENCE_THRESHOLD, write_motion_keys
from .rig import build_armature
from .skinned_mesh import build_skinned_mesh


def import_motion(
    motion: Motion,
    body_model: BodyModel,
    *,
    name: str = "SMPL-X",
    with_mesh: bool = True,
    pose_correctives: bool = False,
    frame_offset: int = 1,
    scene: bpy.types.Scene | None = None,
    collection: bpy.types.Collection | None = None,
    set_scene_timing: bool = True,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
) -> bpy.types.Object:
    """A new rig (and mesh, if asked) animated by `motion`; returns the armature object.

    The motion's own betas shape the rig; body_model supplies the rest of SMPL-X (D-PoSE's
    neutral model, whatever gender the file names).
    """
    scene = scene or bpy.context.scene
    armature = build_armature(
        body_model, motion.betas, name=name, world_frame=motion.coordinate_frame,
        collection=collection or scene.collection,
    )
    if with_mesh:
        build_skinned_mesh(armature, body_model, pose_correctives=pose_correctives)
    write_motion_keys(
        armature, motion, frame_offset=frame_offset, scene=scene,
        set_scene_timing=set_scene_timing, confidence_threshold=confidence_threshold,
    )
    return armature


def import_motion_file(
    path: str | PathLike,
    body_model: BodyModel,
    *,
    name: str | None = None,
    with_mesh: bool = True,
    pose_correctives: bool = False,
    frame_offset: int = 1,
    scene: bpy.types.Scene | None = None,
    collection: bpy.types.Collection | None = None,
    set_scene_timing: bool = True,
    confidence_threshold: float = DEFAULT_CONFIDENCE_THRESHOLD,
) -> bpy.types.Object:
    """Import a motion .npz onto a new rig named after the file; returns the armature.

    Raises dpose_core.errors.MotionFileError for unreadable files or missing SMPL-X keys.
    """
    motion = load_motion_npz(path)
    return import_motion(
        motion, body_model, name=name or Path(path).stem, with_mesh=with_mesh,
        pose_correctives=pose_correctives, frame_offset=frame_offset, scene=scene,
        collection=collection, set_scene_timing=set_scene_timing,
        confidence_threshold=confidence_threshold,
    )
