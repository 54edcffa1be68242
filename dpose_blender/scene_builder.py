"""One scene builder: a pipeline result becomes Blender objects the same way for every job.

The image job, the video job, Import Motion and the farm script all describe what they have as
``Take``s (one person's Motion, optionally the depth relief of each frame), the footage it came
from (``Footage``: path, kind, camera intrinsics, the source frames used) and ``SceneOptions``;
``build_scene`` turns that into rigs with keys (or keys on an existing rig), the matching
camera with the footage behind it, the depth relief, timeline markers and provenance, and
what the network saw (``evidence``: part-agreement curves and markers, the part overlay).

Timing, one rule for all: source frame ``footage.first_source_frame + i`` is keyed at scene
frame ``options.start_frame + i``, and the footage plays in step with it, so running the same
job again with the same Start Frame replaces the same frames.

Everything is checked before the first object is made, and a failure midway removes what was
built (``rollback.SceneSnapshot``): the scene is left as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..dpose_core.errors import DPoseError
from ..dpose_core.evidence_report import DEFAULT_LOW_PART_IOU
from ..dpose_core.motion import Motion
from ..dpose_core.relief import (
    DEFAULT_DEPTH_SCALE,
    DepthReliefFrame,
    relief_frame_from_estimate,
    save_relief_cache,
)

FOOTAGE_KINDS = ("image", "video", "folder")


@dataclass
class Take:
    """One person's motion, named for the scene; reliefs: (source frame, relief) pairs."""

    label: str
    motion: Motion
    reliefs: list[tuple[int, DepthReliefFrame]] = field(default_factory=list)
    report: object = None  # the refine stage's RefineReport, when it grounded the motion


@dataclass(frozen=True)
class Footage:
    """Where the takes came from: the file or folder, and the pinhole camera that saw it."""

    path: str
    kind: str  # "image", "video" or "folder"
    image_size: tuple[int, int]  # (w, h) px
    focal_px: float
    principal_point: tuple[float, float]
    first_source_frame: int = 0  # the source frame keyed at SceneOptions.start_frame
    last_source_frame: int = 0  # the last source frame used (inclusive)
    folder_files: tuple[str, ...] = ()  # a folder's images in source-frame order

    @property
    def frame_count(self) -> int:
        return self.last_source_frame - self.first_source_frame + 1


@dataclass
class SceneOptions:
    """How the result goes into the scene (the panel's settings, or a script's)."""

    start_frame: int = 1  # scene frame of footage.first_source_frame (1-based, like Blender)
    add_mesh: bool = False
    add_camera: bool = True
    add_depth_plane: bool = False
    depth_scale: float = DEFAULT_DEPTH_SCALE
    target_rig: str | None = None  # key the one take onto this rig instead of a new one
    collection_name: str | None = None  # None: straight into the scene collection
    set_scene_timing: bool = True  # scene fps and frame range follow the first new rig
    relief_cache_dir: str | None = None  # where a sequence's per-frame relief is kept
    low_part_iou: float = DEFAULT_LOW_PART_IOU  # part agreement below this gets a marker
    part_overlay: bool = False  # the job writes the part map for a camera background
    add_floor: bool = False  # grounded motion: a plane at Z = 0 (world_setup.floor_plane)


def frame_offset(options: SceneOptions, footage: Footage | None) -> int:
    """Blender frame = frame_offset + source frame index."""
    first = footage.first_source_frame if footage is not None else 0
    return int(options.start_frame) - int(first)


def check_request(takes: list[Take], options: SceneOptions, footage: Footage | None) -> None:
    """Every reason to refuse, before anything is built (one line each)."""
    from . import keyframes

    if footage is not None and footage.kind not in FOOTAGE_KINDS:
        raise DPoseError(f"Unknown footage kind {footage.kind!r}; expected {FOOTAGE_KINDS}.")
    if options.target_rig is not None and len(takes) != 1:
        raise DPoseError(
            f"Key Selected Rig keys one person, but {len(takes)} were estimated: set People to "
            f"Largest or Pick, or turn Key Selected Rig off."
        )
    offset = frame_offset(options, footage)
    for take in takes:
        keyframes.check_frame_range(take.motion, offset)


def build_scene(
    scene,
    takes: list[Take],
    body_model,
    options: SceneOptions,
    *,
    footage: Footage | None = None,
    record: dict | None = None,
    part_overlay=None,
) -> list:
    """Build the takes into ``scene``; returns the objects made (or keyed), rigs first.

    part_overlay: the overlay_frames.OverlaySequence the job wrote (SceneOptions.part_overlay),
    shown over the footage through the camera.

    Raises DPoseError for a request that cannot be built; on any failure the scene is put
    back as it was.
    """
    from .rollback import KeysBackup, SceneSnapshot

    check_request(takes, options, footage)
    target = _target_rig(options.target_rig)
    backup = KeysBackup(target) if target is not None else None
    snapshot = SceneSnapshot(scene)
    try:
        created = _build(scene, takes, body_model, options, footage, record, target,
                         part_overlay)
    except BaseException:
        if backup is not None:
            backup.restore()
        snapshot.restore()
        raise
    if backup is not None:
        backup.discard()
    return created


def _target_rig(name: str | None):
    import bpy

    from .rig import is_rig

    if name is None:
        return None
    target = bpy.data.objects.get(name)
    if not is_rig(target):
        raise DPoseError(f"The rig '{name}' to key was renamed or deleted while D-PoSE ran: "
                         f"select a D-PoSE rig and run again.")
    return target


def _build(scene, takes, body_model, options, footage, record, target, part_overlay) -> list:
    import bpy

    from . import evidence, keyframes, motion_import, provenance, world_setup

    offset = frame_offset(options, footage)
    collection = scene.collection
    if options.collection_name and target is None:
        collection = bpy.data.collections.new(options.collection_name)
        scene.collection.children.link(collection)
    created = []
    if target is not None:
        take = takes[0]
        if take.motion.coordinate_frame != target.get("dpose_world_frame"):
            raise DPoseError(f"The rig '{target.name}' is in the {target.get('dpose_world_frame')}"
                             f" frame but the new motion is in {take.motion.coordinate_frame}: "
                             "make a new rig, or set Ground to match the rig.")
        rig_offset = int(target.get(keyframes.PROP_FRAME_OFFSET, offset))
        motion = take.motion.replace(
            frame_indices=take.motion.frame_indices + (offset - rig_offset))
        keyframes.write_motion_keys(target, motion, frame_offset=rig_offset, scene=scene,
                                    set_scene_timing=False)
        evidence.key_part_scores(target, motion, rig_offset, scene, options.low_part_iou)
        created.append(target)
    else:
        for k, take in enumerate(takes):
            armature = motion_import.import_motion(
                take.motion, body_model, name=take.label, with_mesh=options.add_mesh,
                frame_offset=offset, scene=scene, collection=collection,
                set_scene_timing=options.set_scene_timing and k == 0,
            )
            evidence.key_part_scores(armature, take.motion, offset, scene, options.low_part_iou)
            created.append(armature)
            created += [c for c in armature.children if c.type == "MESH"]
    image = _footage_image(footage) if footage is not None else None
    camera = None
    if options.add_camera and footage is not None:
        camera = _camera(scene, collection, footage, image, options)
        if part_overlay is not None:
            evidence.add_part_overlay(camera, str(part_overlay.first_file),
                                      frame_count=part_overlay.frame_count,
                                      frame_start=offset + part_overlay.first_frame)
        created.append(camera)
    planes = []
    if options.add_depth_plane and footage is not None:
        planes = _depth_planes(scene, collection, takes, footage, image, options)
        created += planes
    rigs = [o for o in created if o.type == "ARMATURE"]  # grounded: camera, floor, contacts
    created += world_setup.apply_grounding(scene, collection, takes, rigs, camera, offset,
                                           add_floor=options.add_floor, planes=planes)
    if record is not None:
        for obj in created:
            provenance.stamp(obj, record)
    return created


def _footage_image(footage: Footage):
    """The footage as a Blender image (a still, a movie or an image sequence), or None when
    Blender cannot show the format (the rigs are still fine)."""
    from . import scene_camera

    try:
        if footage.kind == "folder" and footage.folder_files:
            return scene_camera.load_footage(footage.folder_files[0],
                                             sequence_length=len(footage.folder_files))
        return scene_camera.load_footage(footage.path)
    except RuntimeError:
        return None


def _camera(scene, collection, footage: Footage, image, options: SceneOptions):
    from . import scene_camera

    cam = scene_camera.ensure_camera(
        scene, image_size=footage.image_size, focal_px=footage.focal_px,
        principal_point=footage.principal_point, name="D-PoSE Camera",
    )
    if collection is not scene.collection:
        for coll in list(cam.users_collection):
            coll.objects.unlink(cam)
        collection.objects.link(cam)
    if image is not None:
        scene_camera.set_camera_background(
            cam, image, frame_start=options.start_frame,
            first_source_frame=footage.first_source_frame, frame_duration=footage.frame_count)
    return cam


def _depth_planes(scene, collection, takes, footage: Footage, image, options) -> list:
    """One relief per take: a still for one frame, else one that follows the scene frame."""
    from . import depth_plane

    planes = []
    offset = frame_offset(options, footage)
    for take in takes:
        if not take.reliefs:
            continue
        entries = sorted(take.reliefs, key=lambda item: item[0])
        plane = depth_plane.create_depth_plane(
            collection, entries[0][1], image=image, depth_scale=options.depth_scale,
            name=take.label.replace("D-PoSE", "D-PoSE Depth", 1)
            if take.label.startswith("D-PoSE") else f"D-PoSE Depth {take.label}",
            frame_start=options.start_frame, first_source_frame=footage.first_source_frame,
            frame_duration=footage.frame_count,
        )
        if len(entries) > 1:
            plane[depth_plane.CACHE_PROP] = str(_save_reliefs(take, entries, footage, offset,
                                                              options))
        planes.append(plane)
    if any(depth_plane.CACHE_PROP in p for p in planes):
        depth_plane.update_relief_objects(scene)
    return planes


def _save_reliefs(take: Take, entries, footage: Footage, offset: int, options) -> Path:
    from .preferences import default_cache_dir

    root = Path(options.relief_cache_dir or default_cache_dir()).expanduser().resolve()
    safe_label = "".join(c if c.isalnum() else "_" for c in take.label)
    name = f"{Path(footage.path).stem}-{safe_label}-{time.time_ns()}.npz"
    return save_relief_cache(root / "relief" / name, [r for _, r in entries],
                             scene_frames=[offset + int(i) for i, _ in entries])


def overlay_folder(options: SceneOptions, footage_path: str) -> Path:
    """A fresh folder in the cache for one job's part overlay PNGs."""
    from .preferences import default_cache_dir

    root = Path(options.relief_cache_dir or default_cache_dir()).expanduser().resolve()
    safe = "".join(c if c.isalnum() else "_" for c in Path(footage_path).stem)
    return root / "overlay" / f"{safe}-{time.time_ns()}"


def still_overlay(result, image: int, options: SceneOptions):
    """The part overlay of input image ``image`` of an ImagesResult, written to the cache."""
    from ..dpose_core.overlay_frames import OverlaySequence, overlay_file, write_still_overlay

    rows = result.rows_of_image(image)
    folder = overlay_folder(options, str(result.paths[image]))
    folder.mkdir(parents=True, exist_ok=True)
    size = tuple(int(v) for v in result.estimate.image_size[rows[0]])
    write_still_overlay(overlay_file(folder, 0), result.estimate, rows, size)
    return OverlaySequence(folder, 0, 0)


def overlay_writer(options: SceneOptions, footage_path):
    """The frame hook writing a video job's part overlay (SceneOptions.part_overlay), or
    None; its finish() is the OverlaySequence to pass to build_scene."""
    if not options.part_overlay:
        return None
    from ..dpose_core.overlay_frames import PartOverlayWriter

    return PartOverlayWriter(overlay_folder(options, str(footage_path)))


# ------------------------------------------------------------ pipeline results -> takes
def takes_from_images(result, image: int, fps: float, *, with_relief: bool) -> list[Take]:
    """The people of input image ``image`` of a ``pipeline.ImagesResult``, largest first.

    Each becomes a one-frame Motion (source frame 0) at the scene's rate.
    """
    rows = result.rows_of_image(image)
    takes = []
    for k, row in enumerate(rows):
        one = result.estimate.select(int(row))
        motion = Motion.from_estimate(one, fps=fps, frame_indices=np.array([0]))
        if result.scores is not None:  # the crop's part agreement, keyed like a video's
            motion = motion.replace(part_iou=result.scores.part_iou[[row]],
                                    silhouette_iou=result.scores.silhouette_iou[[row]])
        reliefs = [(0, relief_frame_from_estimate(one, 0))] if with_relief else []
        takes.append(Take(f"D-PoSE Person {k}", motion, reliefs))
    return takes


def footage_from_images(result, image: int) -> Footage:
    """The still image ``image`` of an ImagesResult and the camera its first person was solved
    with (every person of one image shares it)."""
    row = int(result.rows_of_image(image)[0])
    est = result.estimate
    return Footage(
        path=str(Path(result.paths[image]).resolve()), kind="image",
        image_size=tuple(int(v) for v in est.image_size[row]),
        focal_px=float(est.focal_px[row, 0]),
        principal_point=tuple(float(v) for v in est.principal_point[row]),
    )


def takes_from_video(result) -> list[Take]:
    """The tracks of a ``pipeline.VideoResult`` in track order; reliefs from ``result.maps``
    when the run kept them (``keep_maps=relief_keeper``)."""
    reports = getattr(result, "refine_reports", {})
    return [Take(f"D-PoSE Track {number}", motion, list(result.maps.get(number, [])),
                 reports.get(number))
            for number, motion in sorted(result.tracks.items())]


def footage_from_video(result, first_source_frame: int) -> Footage:
    """The video or image folder of a VideoResult, from ``first_source_frame`` (the run's
    start) to the last frame any track used."""
    from ..dpose_core.frames import list_images

    motions = [m for m in result.tracks.values() if len(m)]
    first = motions[0]
    last = max(int(m.frame_indices.max()) for m in motions)
    source = Path(result.source).resolve()
    files = tuple(str(p) for p in list_images(source)) if result.source_kind == "folder" else ()
    return Footage(
        path=str(source), kind="folder" if result.source_kind == "folder" else "video",
        image_size=tuple(int(v) for v in first.image_size),
        focal_px=float(first.focal_px[0, 0]),
        principal_point=tuple(float(v) for v in first.principal_point[0]),
        first_source_frame=int(first_source_frame), last_source_frame=last,
        folder_files=files,
    )


def relief_keeper(estimate, row: int) -> DepthReliefFrame:
    """What a video run keeps per person-frame for the relief (``keep_maps=relief_keeper``):
    the subsampled depth (float16, as the cache stores it) and mask, about 40 kB instead of
    the full maps."""
    frame = relief_frame_from_estimate(estimate, row)
    frame.depth = frame.depth.astype(np.float16)
    return frame
