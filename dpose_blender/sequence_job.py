"""Video / image folder -> keyed SMPL-X rigs: the plain functions behind the sequence operator.

``run_sequence`` is worker-safe (no Blender data): it calls the core's
``sequence.estimate_sequence`` with a cancel event and callbacks, keeps the per-frame depth
relief of each track for the depth plane, and reports frames that failed to decode (they are
skipped, not fatal). Cancelling returns what was finished. ``apply_sequence_result`` (main
thread) builds one rig per track, keys it in bulk, sets up the camera with the footage behind
it and the depth relief that follows the current frame, and stamps provenance.
``save_outputs`` writes the .blend and the requested exports (headless farm runs).
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from . import jobs


@dataclass
class SequenceSettings:
    source: str
    start: int = 0
    end: int | None = None  # exclusive source frame
    stride: int = 1
    person: str | int = "all"
    smooth: float = 0.5  # 0 = off, 1 = strongest
    fov_deg: float | None = None
    add_mesh: bool = False
    add_camera: bool = True
    add_depth_plane: bool = False
    depth_scale: float = 0.5
    bbox: tuple | None = None  # a person box (xyxy px) drawn by the user, every frame
    frame_start: int = 1  # Blender frame of source frame 0
    checkpoint: str | None = None
    device: str = "auto"
    body_model: str | None = None
    cache_dir: str | None = None

    @classmethod
    def from_namespace(cls, args) -> SequenceSettings:
        """From headless.py's parsed arguments."""
        person = args.person if args.person in ("all", "largest") else int(args.person)
        return cls(
            source=args.input, start=args.start, end=args.end, stride=args.stride,
            person=person, smooth=args.smooth, fov_deg=args.fov, add_mesh=args.mesh,
            add_depth_plane=args.depth_plane, frame_start=args.frame_start, bbox=args.bbox,
            checkpoint=args.checkpoint, device=args.device, body_model=args.body_model,
            cache_dir=args.cache_dir,
        )

    def provenance_settings(self) -> dict:
        skip = {"checkpoint", "cache_dir", "source"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass
class SequenceJobResult:
    motions: dict  # track id -> Motion (processed frames only)
    reliefs: dict = field(default_factory=dict)  # track id -> list[(frame index, relief)]
    failures: list = field(default_factory=list)  # one line per skipped frame
    cancelled: bool = False
    frames_done: int = 0
    frames_total: int = 0
    seconds: float = 0.0
    source: str = ""
    source_kind: str = ""
    fps: float = 30.0
    checkpoint_sha256: str = ""

    @property
    def frames_per_second(self) -> float:
        return self.frames_done / self.seconds if self.seconds > 0 else 0.0


# ------------------------------------------------------------------------------ estimator
_ESTIMATORS: dict = {}
_ESTIMATOR_LOCK = threading.Lock()


def load_estimator(checkpoint, *, device: str = "auto", body_model=None, cache_dir=None):
    """A cached ``Estimator`` per (checkpoint file state, device, body model, cache folder).

    Building one converts the checkpoint to an ONNX Runtime model (cached on disk) and loads it;
    keeping it between jobs makes the second job start at once.
    """
    from ..dpose_core.checkpoint import resolve_checkpoint
    from ..dpose_core.estimator import Estimator

    path = resolve_checkpoint(checkpoint)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, device, str(body_model or ""),
           str(cache_dir or ""))
    with _ESTIMATOR_LOCK:
        if key not in _ESTIMATORS:
            _ESTIMATORS.clear()  # one network in memory at a time
            _ESTIMATORS[key] = Estimator(path, device=device, cache_dir=cache_dir,
                                         body_model=body_model or None)
        return _ESTIMATORS[key]


# ------------------------------------------------------------------------------ worker side
class _RecordingFinder:
    """Wraps the core's person finder and keeps the last frame's detections.

    ``estimate_sequence`` fills each returned Detection's ``estimate``/``row`` before it calls
    ``on_frame`` (same objects, same order as ``FrameResult.people``), so the depth maps of
    every person can be kept without running the network again.
    """

    def __init__(self, inner) -> None:
        self.inner = inner
        self.last: list = []

    def find(self, image, hints=()):
        self.last = list(self.inner.find(image, hints))
        return self.last


def _focal_for(settings: SequenceSettings, source):
    """None (the image diagonal) or the focal length of the user's field of view."""
    if settings.fov_deg is None:
        return None
    from ..dpose_core.camera import focal_from_fov

    for record in source:  # the first readable frame gives the image size
        if record.ok:
            h, w = record.image.shape[:2]
            return focal_from_fov((w, h), settings.fov_deg)
    return None


def _largest_track(motions: dict) -> dict:
    """Keep the track whose median box is the largest (the panel's "Largest" choice)."""
    if len(motions) <= 1:
        return dict(motions)

    def area(m):
        if m.boxes is None:
            return 0.0
        sides = m.boxes[:, 2:] - m.boxes[:, :2]
        return float(np.median(sides[:, 0] * sides[:, 1]))

    track = max(motions, key=lambda t: area(motions[t]))
    return {track: motions[track]}


def _match_tracks(motions: dict, observed: dict) -> dict:
    """Map the core's final track numbers to the tracker ids seen in ``on_frame``.

    Each motion keeps the box of every observed frame; the tracker id whose recorded box at the
    motion's first frame is nearest is the same person.
    """
    mapping = {}
    for number, motion in motions.items():
        if motion.boxes is None:
            continue
        frame = int(motion.frame_indices[0])
        candidates = [(np.abs(box - motion.boxes[0]).sum(), tid)
                      for (tid, f), box in observed.items() if f == frame]
        if candidates:
            mapping[number] = min(candidates)[1]
    return mapping


def run_sequence(estimator, settings: SequenceSettings, *, progress=None, cancel=None,
                 warn=None, keep_relief: bool | None = None) -> SequenceJobResult:
    """Worker-safe: estimate every frame; returns processed frames even when cancelled.

    progress(jobs.Progress) is called after every frame; warn(text) once per skipped frame.
    """
    from ..dpose_core import frames, localise, sequence
    from ..dpose_core.checkpoint import checkpoint_hash
    from ..dpose_core.relief import relief_frame_from_estimate

    keep_relief = settings.add_depth_plane if keep_relief is None else keep_relief
    cancel = cancel or threading.Event()
    source = frames.open_frames(settings.source, start=settings.start, end=settings.end,
                                stride=settings.stride)
    state = jobs.Progress(total=len(source))
    result = SequenceJobResult(motions={}, source=str(Path(settings.source).resolve()),
                               source_kind=source.kind, fps=source.fps,
                               frames_total=len(source),
                               checkpoint_sha256=checkpoint_hash(estimator.checkpoint_path))
    focal = _focal_for(settings, source)
    inner = (localise.ManualBoxFinder(settings.bbox) if settings.bbox is not None
             else localise.make_finder(estimator, "auto", focal_px=focal))
    finder = _RecordingFinder(inner)
    reliefs: dict = {}  # (tracker id, frame index) -> relief
    observed: dict = {}  # (tracker id, frame index) -> box

    def on_progress(done: int, total: int) -> None:
        state.done = int(done)
        if total:
            state.total = int(total)
        if progress is not None:
            progress(state)

    def on_frame(frame) -> None:
        if frame.error:
            text = f"frame {frame.index} skipped: {frame.error}"
            result.failures.append(text)
            if warn is not None:
                warn(text)
            return
        for person, det in zip(frame.people, finder.last, strict=False):
            observed[(person.track_id, frame.index)] = np.asarray(person.box, np.float64)
            if keep_relief and det.estimate is not None:
                reliefs[(person.track_id, frame.index)] = (
                    relief_frame_from_estimate(det.estimate, det.row))

    started = time.perf_counter()
    person = "all" if settings.person in ("all", "largest") else int(settings.person)
    motions = sequence.estimate_sequence(
        source, estimator, finder=finder, person=person, smooth=settings.smooth,
        progress=on_progress, cancel=cancel, on_frame=on_frame, focal_px=focal,
        # A drawn box means the user knows there is a person: keep even a one-frame track
        # (e.g. a job cancelled early); found people need 3 frames to count as a track.
        min_track_frames=1 if settings.bbox is not None else min(3, max(1, len(source))),
    )
    result.seconds = time.perf_counter() - started
    result.cancelled = bool(motions.cancelled or cancel.is_set())
    result.frames_done = motions.frames_processed
    kept = {int(k): m for k, m in motions.items() if len(m)}
    if settings.person == "largest":
        kept = _largest_track(kept)
    result.motions = kept
    for number, tid in _match_tracks(kept, observed).items():
        result.reliefs[number] = sorted(
            ((f, r) for (t, f), r in reliefs.items() if t == tid), key=lambda item: item[0]
        )
    return result


# ------------------------------------------------------------------------------ main thread
def apply_sequence_result(scene, result: SequenceJobResult, settings: SequenceSettings, *,
                          estimator) -> list:
    """Rigs keyed with the processed frames, the camera and footage, the relief; returns them."""
    import bpy

    from . import motion_import, provenance, scene_camera

    record = provenance.build_record(
        checkpoint_path=estimator.checkpoint_path,
        checkpoint_sha256=result.checkpoint_sha256,
        settings={**settings.provenance_settings(), "cancelled": result.cancelled,
                  "frames_done": result.frames_done, "skipped": len(result.failures)},
        inputs=[result.source],
        backend=estimator.backend,
        device=estimator.device,
        kind="sequence",
    )
    created = []
    if not result.motions:
        return created
    collection = bpy.data.collections.new(f"D-PoSE {Path(result.source).stem}")
    scene.collection.children.link(collection)
    first_motion = None
    for track, motion in sorted(result.motions.items()):
        armature = motion_import.import_motion(
            motion, estimator.body_model, name=f"D-PoSE Track {track}",
            with_mesh=settings.add_mesh, frame_offset=settings.frame_start, scene=scene,
            collection=collection, set_scene_timing=first_motion is None,
        )
        created += [c for c in armature.children if c.type == "MESH"]
        provenance.stamp(armature, record)
        created.append(armature)
        first_motion = first_motion or motion
    if settings.add_camera and first_motion.image_size is not None:
        cam = scene_camera.ensure_camera(
            scene, image_size=tuple(int(v) for v in first_motion.image_size),
            focal_px=first_motion.focal_px[0], principal_point=first_motion.principal_point[0],
            name="D-PoSE Camera",
        )
        for coll in list(cam.users_collection):
            coll.objects.unlink(cam)
        collection.objects.link(cam)
        footage = _footage(result, settings)
        if footage is not None:
            scene_camera.set_camera_background(cam, footage, frame_start=settings.frame_start,
                                               frame_duration=_source_length(result, settings))
        provenance.stamp(cam, record)
        created.append(cam)
    if settings.add_depth_plane:
        created += _depth_planes(scene, collection, result, settings, record)
    return created


def _source_length(result: SequenceJobResult, settings: SequenceSettings) -> int:
    """Source frames up to the last one used (the footage plays 1:1 with the keys)."""
    last = max((int(m.frame_indices[-1]) for m in result.motions.values() if len(m)), default=0)
    return last + 1


def _footage(result: SequenceJobResult, settings: SequenceSettings):
    """The footage as a Blender image: the movie, or the folder's first image as a sequence."""
    from ..dpose_core import frames
    from . import scene_camera

    try:
        if result.source_kind == "video":
            return scene_camera.load_footage(result.source)
        if result.source_kind == "folder":
            files = frames.list_images(result.source)
            return scene_camera.load_footage(files[0], sequence_length=len(files))
        return scene_camera.load_footage(result.source)
    except RuntimeError:  # a format Blender cannot show; the rigs are still fine
        return None


def _depth_planes(scene, collection, result, settings, record) -> list:
    from ..dpose_core.relief import save_relief_cache
    from . import depth_plane, provenance
    from .preferences import default_cache_dir

    created = []
    footage = _footage(result, settings)
    cache_root = Path(settings.cache_dir or default_cache_dir()).expanduser().resolve() / "relief"
    for track, entries in sorted(result.reliefs.items()):
        if not entries:
            continue
        indices = [i for i, _ in entries]
        reliefs = [r for _, r in entries]
        stamp = f"{Path(result.source).stem}-{result.checkpoint_sha256[:8]}-{int(time.time())}"
        cache = save_relief_cache(
            cache_root / f"{stamp}-track{track}.npz", reliefs,
            scene_frames=[settings.frame_start + i for i in indices],
        )
        plane = depth_plane.create_depth_plane(
            collection, reliefs[0], image=footage, depth_scale=settings.depth_scale,
            name=f"D-PoSE Depth {track}", frame_start=settings.frame_start,
            frame_duration=_source_length(result, settings),
        )
        plane[depth_plane.CACHE_PROP] = str(cache)
        provenance.stamp(plane, record)
        created.append(plane)
    depth_plane.update_relief_objects(scene)
    return created


def save_outputs(created: list, result: SequenceJobResult, *, blend: str, npz: str | None = None,
                 fbx: str | None = None, bvh: str | None = None) -> None:
    """Write the requested files (main thread; used by headless runs).

    With several people, the motion and BVH files are one per track, named as the CLI names
    them (motion_track0.npz, motion_track1.npz, ...); the .blend and the FBX hold every rig.
    """
    import bpy

    from ..dpose_core import motion_io
    from ..dpose_core.sequence import track_output_paths

    armatures = [o for o in created if o.type == "ARMATURE"]
    if npz and result.motions:
        paths = track_output_paths(npz, sorted(result.motions))
        for track, motion in result.motions.items():
            motion_io.save_motion_npz(paths[track], motion)
    if fbx:
        _enable_addon("io_scene_fbx")
        _select_only(armatures + [o for o in created if o.type == "MESH"])
        bpy.ops.export_scene.fbx(filepath=fbx, use_selection=True, bake_anim=True,
                                 add_leaf_bones=False)
    if bvh and armatures:
        _enable_addon("io_anim_bvh")
        scene = bpy.context.scene
        tracks = sorted(result.motions)  # rigs are built in this order
        paths = track_output_paths(bvh, tracks)
        for track, armature in zip(tracks, armatures, strict=True):
            _select_only([armature])  # the BVH exporter writes the active rig
            bpy.context.view_layer.objects.active = armature
            bpy.ops.export_anim.bvh(filepath=str(paths[track]), frame_start=scene.frame_start,
                                    frame_end=scene.frame_end, root_transform_only=False)
    bpy.ops.wm.save_as_mainfile(filepath=blend)


def _enable_addon(module: str) -> None:
    import addon_utils

    addon_utils.enable(module, default_set=False)


def _select_only(objects: list) -> None:
    import bpy

    for obj in bpy.context.view_layer.objects:
        obj.select_set(False)
    for obj in objects:
        obj.select_set(True)
    if objects:
        bpy.context.view_layer.objects.active = objects[0]
