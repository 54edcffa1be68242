"""Motion files onto a new rig: the plain function behind the import operator.

``import_motion`` builds an armature for a Motion's betas in its coordinate frame, optionally
the skinned mesh, and keys every frame: the primitive the scene builder uses for every rig.
``import_motion_file`` reads an SMPL-X motion .npz (ours, or an AMASS-style file:
dpose_core.motion_io) and builds it through the scene builder. No UI context is needed beyond
a scene to put things in.
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
    scene: bpy.types.Scene | None = None,
    start_frame: int = 1,
    with_mesh: bool = False,
    name: str | None = None,
) -> list:
    """Import a motion .npz onto a new rig named after the file; returns the objects made.

    The file's source frame 0 lands on ``start_frame``. Raises MotionFileError (one line) for
    a file that is not a motion .npz, is damaged, or whose frames Blender cannot hold; nothing
    is built then.
    """
    from . import provenance, scene_builder

    path = Path(path)
    motion = load_motion_npz(path)
    options = scene_builder.SceneOptions(start_frame=start_frame, add_mesh=with_mesh,
                                         add_camera=False)
    record = provenance.build_record(
        checkpoint_path=None, checkpoint_sha256="", kind="import", inputs=[path],
        settings={"start_frame": start_frame, "add_mesh": with_mesh},
    )
    return scene_builder.build_scene(
        scene or bpy.context.scene, [scene_builder.Take(name or path.stem, motion)], body_model,
        options, record=record,
    )
