"""The panel's two jobs as thin adapters: panel settings -> pipeline options -> scene builder.

``image_request`` / ``video_request`` read the panel (main thread) into a ``PanelRequest``:
the core's ``RunOptions`` (validated at once, so a bad setting is a one-line error before the
job starts) and the ``SceneOptions`` of the scene builder. ``run_image`` / ``run_video`` run
in the worker thread (no Blender data touched): they call ``pipeline.estimate_images`` /
``pipeline.estimate_video`` with the job's progress, cancel and warning hooks. ``build`` (main
thread) turns the outcome into objects through ``scene_builder``. The estimator is cached
between jobs so the second job starts at once.
"""

from __future__ import annotations

import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from ..dpose_core.errors import DPoseError
from . import scene_builder

PANEL_BOX_HINT = "turn on Person Box and draw a box around the person (pixels)"


@dataclass
class PanelRequest:
    """One job: what to estimate (the core's RunOptions) and how to build it."""

    kind: str  # "image" or "video"
    run: object  # dpose_core.pipeline.RunOptions, validated
    scene: scene_builder.SceneOptions
    camera_track: object = None  # the Camera to follow, sampled (world_setup.camera_track)
    scene_fps: float = 30.0  # an image's one-frame motion is keyed at the scene's rate

    @property
    def label(self) -> str:
        return "Image" if self.kind == "image" else "Sequence"

    def provenance_settings(self) -> dict:
        """The options that shaped the result (paths and private state left out)."""
        skip = ("inputs", "outputs", "checkpoint", "cache_dir", "body_model")
        run = {f.name: getattr(self.run, f.name) for f in fields(self.run)
               if not f.name.startswith("_") and f.name not in skip}
        return {**run, **asdict(self.scene)}


@dataclass
class Outcome:
    """What a worker hands back to the main thread."""

    result: object  # pipeline.ImagesResult or pipeline.VideoResult
    estimator: object
    checkpoint_sha256: str  # hashed in the worker: seconds for the real checkpoint
    part_overlay: object = None  # overlay_frames.OverlaySequence the worker wrote
    takes: list | None = None  # an image's people, grounded in the worker

    @property
    def skipped(self) -> int:
        return len(getattr(self.result, "failures", None) or getattr(self.result, "skipped", []))


# ----------------------------------------------------------------------------- estimator
_ESTIMATORS: dict = {}
_ESTIMATOR_LOCK = threading.Lock()


def load_estimator(options):
    """A cached ``Estimator`` per (checkpoint file state, device, body model, cache folder).

    Building one converts the checkpoint to an ONNX Runtime model (cached on disk) and loads
    it; keeping it between jobs makes the second job start at once.
    """
    from ..dpose_core import pipeline

    options = options.validated()
    path = Path(options.checkpoint)
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, options.backend, options.device,
           str(options.body_model or ""), str(options.cache_dir or ""))
    with _ESTIMATOR_LOCK:
        if key not in _ESTIMATORS:
            _ESTIMATORS.clear()  # one network in memory at a time
            _ESTIMATORS[key] = pipeline.open_estimator(options)
        return _ESTIMATORS[key]


# ----------------------------------------------------------------------------- requests
def estimator_settings(context) -> dict:
    """Checkpoint/device/cache/body model from the preferences (else $DPOSE_CHECKPOINT)."""
    import bpy

    from .preferences import default_cache_dir, get_preferences

    prefs = get_preferences(context)
    if prefs is None:
        return {"checkpoint": None, "device": "auto", "body_model": None,
                "cache_dir": default_cache_dir()}
    return {
        "checkpoint": bpy.path.abspath(prefs.checkpoint_path) or None,
        "device": prefs.device.lower(),
        "body_model": bpy.path.abspath(prefs.body_model_path) or None,
        "cache_dir": bpy.path.abspath(prefs.cache_dir) if prefs.cache_dir else default_cache_dir(),
    }


def _person(s) -> str | int:
    return {"ALL": "all", "LARGEST": "largest"}.get(s.people, int(s.person_index))


def _target_rig(context, s) -> str | None:
    from .rig import is_rig

    if not s.key_selected:
        return None
    obj = context.active_object
    if not is_rig(obj):
        raise DPoseError("Key Selected Rig is on but the active object is not a D-PoSE rig: "
                         "select one, or turn the option off to make a new rig.")
    if s.people == "ALL":
        raise DPoseError("Key Selected Rig keys one person: set People to Largest or Pick.")
    return obj.name


def _scene_options(context, s, *, start_frame: int, collection: str) -> scene_builder.SceneOptions:
    settings = estimator_settings(context)
    return scene_builder.SceneOptions(
        start_frame=start_frame, add_mesh=s.add_mesh, add_depth_plane=s.add_depth_plane,
        depth_scale=s.depth_scale, target_rig=_target_rig(context, s),
        part_overlay=s.part_overlay, low_part_iou=s.low_part_iou,
        collection_name=f"D-PoSE {collection}", relief_cache_dir=settings["cache_dir"],
        add_floor=s.add_floor and s.ground != "OFF",
    )


def image_request(context) -> PanelRequest:
    """The image job from the panel: the image (or the active camera's background), keyed at
    the current frame."""
    import bpy

    from ..dpose_core.pipeline import RunOptions

    s = context.scene.dpose
    path = bpy.path.abspath(s.image_path) if s.image_path else background_image_path(
        context.scene)
    if not path:
        raise DPoseError("Choose an image (or give the active camera a background image).")
    run = RunOptions(inputs=[path], person=_person(s), fov_deg=_fov(s), **_grounding(s),
                     **estimator_settings(context))
    run.validate()
    if run.is_video:
        raise DPoseError(f"{Path(path).name} is a video or folder: use Video / Sequence to "
                         f"Keyframes for it.")
    frame = context.scene.frame_current
    return PanelRequest("image", run, _scene_options(
        context, s, start_frame=frame, collection=Path(path).stem),
        camera_track=_camera_track(context, s, [0], frame), scene_fps=_scene_fps(context.scene))


def video_request(context) -> PanelRequest:
    """The sequence job from the panel: source frames First..Last keyed from Start Frame."""
    import bpy

    from ..dpose_core.pipeline import RunOptions

    s = context.scene.dpose
    if not s.sequence_path:
        raise DPoseError("Choose a video file or a folder of images.")
    path = bpy.path.abspath(s.sequence_path)
    box = tuple(float(v) for v in s.box) if s.use_box else ()
    run = RunOptions(
        inputs=[path], person=_person(s), bbox=box, fov_deg=_fov(s), smooth=s.smooth,
        start=s.frame_first, end=None if s.frame_last < 0 else s.frame_last + 1,
        stride=s.stride, fps=s.fps or None, **_grounding(s), **estimator_settings(context),
    )
    run.validate()
    if not run.is_video:
        raise DPoseError(f"{Path(path).name} is one image: use Estimate Pose from Image for "
                         f"it, or choose a video or a folder of images.")
    if box:
        check_box_inside(run)
    track = None
    if s.follow_camera is not None and run.ground != "off":
        from ..dpose_core.frames import open_frames

        count = len(open_frames(run.inputs[0], start=run.start, end=run.end, stride=run.stride))
        track = _camera_track(context, s, range(run.start, run.start + count * run.stride,
                                                run.stride), s.start_frame - run.start)
    return PanelRequest("video", run, _scene_options(
        context, s, start_frame=s.start_frame, collection=Path(path).stem), camera_track=track)


def _grounding(s) -> dict:
    """The refine stage's options from the panel (the same RunOptions fields as the CLI)."""
    return {"ground": s.ground.lower(), "foot_lock": float(s.foot_lock),
            "subject_height": float(s.subject_height) if s.subject_height > 0 else None}


def _camera_track(context, s, source_frames, frame_offset: int):
    """The Camera to follow, sampled now (main thread) at the frames the job will solve."""
    from . import world_setup

    if s.follow_camera is None or s.ground == "OFF":
        return None
    return world_setup.camera_track(s.follow_camera, context.scene, frame_offset,
                                    source_frames)


def _fov(s) -> float | None:
    return s.fov_deg if s.focal_mode == "FOV" else None


def check_box_inside(run) -> None:
    """The Person Box must overlap the frames: refused before any frame is estimated."""
    from ..dpose_core.frames import open_frames

    x0, y0, x1, y1 = run.boxes[0]
    for record in open_frames(run.inputs[0], start=run.start, end=run.end, stride=run.stride):
        if record.ok:
            h, w = record.image.shape[:2]
            if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
                raise DPoseError(
                    f"The Person Box {x0:g}, {y0:g}, {x1:g}, {y1:g} lies outside the {w}x{h} "
                    f"frames of {run.inputs[0].name}: draw it in image pixels (x right, y down)."
                )
            return


def background_image_path(scene) -> str | None:
    """The file behind the active camera's first background image, if any."""
    import bpy

    cam = scene.camera
    if cam is None or cam.type != "CAMERA":
        return None
    for bg in cam.data.background_images:
        image = bg.image if bg.source == "IMAGE" else None
        if image is not None and image.filepath:
            return bpy.path.abspath(image.filepath, library=image.library)
    return None


# ----------------------------------------------------------------------------- worker side
def run_image(request: PanelRequest, ctx) -> Outcome:
    """Worker: find the people of the image and estimate them (the finder's own pass)."""
    from ..dpose_core import pipeline
    from ..dpose_core.checkpoint import checkpoint_hash

    ctx.progress(0, 1, "loading the network")
    estimator = load_estimator(request.run)
    ctx.progress(0, 1, "finding people")
    result = pipeline.estimate_images(
        request.run, estimator=estimator, progress=lambda done, total: ctx.progress(done, total),
        cancel=ctx.cancel_event, warn=ctx.warn)
    from . import world_setup

    overlay = (scene_builder.still_overlay(result, 0, request.scene)
               if request.scene.part_overlay else None)
    takes = scene_builder.takes_from_images(result, 0, request.scene_fps,
                                            with_relief=request.scene.add_depth_plane)
    takes = world_setup.refine_takes(takes, estimator.body_model, request.run,
                                     camera_to_world=request.camera_track, warn=ctx.warn,
                                     images=result)
    return Outcome(result, estimator, checkpoint_hash(estimator.checkpoint_path), overlay, takes)


def run_video(request: PanelRequest, ctx) -> Outcome:
    """Worker: every frame of the footage; a cancelled run returns the frames done."""
    from ..dpose_core import pipeline
    from ..dpose_core.checkpoint import checkpoint_hash

    ctx.progress(0, 0, "loading the network")
    estimator = load_estimator(request.run)
    ctx.progress(0, 0, "")
    writer = scene_builder.overlay_writer(request.scene, request.run.inputs[0])
    result = pipeline.estimate_video(
        request.run, estimator=estimator,
        progress=lambda done, total: ctx.progress(done, total, ""),
        cancel=ctx.cancel_event, warn=ctx.warn,
        keep_maps=scene_builder.relief_keeper if request.scene.add_depth_plane else False,
        frame_maps=writer)
    if result.tracks and request.run.ground != "off":  # a cancelled run: the frames done
        ctx.progress(result.frames_processed, result.frames_total, "grounding")
        pipeline.refine_tracks(result, estimator.body_model, request.run,
                               camera_to_world=request.camera_track, warn=ctx.warn)
    return Outcome(result, estimator, checkpoint_hash(estimator.checkpoint_path),
                   None if writer is None else writer.finish())


def panel_message(exc: BaseException) -> str:
    """An error's first line, with the CLI's --bbox hint said the panel's way."""
    from ..dpose_core.pipeline import BBOX_HINT

    text = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
    return text.replace(BBOX_HINT, PANEL_BOX_HINT)


# ----------------------------------------------------------------------------- main thread
def build(scene, request: PanelRequest, outcome: Outcome) -> list:
    """The outcome in the scene through the one scene builder; returns the objects made."""
    from . import provenance

    result, estimator = outcome.result, outcome.estimator
    if request.kind == "image":
        takes = outcome.takes
        footage = scene_builder.footage_from_images(result, 0)
    else:
        if not result.tracks:
            return []
        takes = scene_builder.takes_from_video(result)
        footage = scene_builder.footage_from_video(result, request.run.start)
    record = provenance.build_record(
        checkpoint_path=estimator.checkpoint_path,
        checkpoint_sha256=outcome.checkpoint_sha256,
        settings={**request.provenance_settings(), **_run_facts(result)},
        inputs=[footage.path], backend=estimator.backend, device=estimator.device,
        kind="image" if request.kind == "image" else "sequence",
    )
    return scene_builder.build_scene(scene, takes, estimator.body_model, request.scene,
                                     footage=footage, record=record,
                                     part_overlay=outcome.part_overlay)


def _run_facts(result) -> dict:
    if not hasattr(result, "tracks"):
        return {"people": len(result)}
    return {"cancelled": bool(result.cancelled), "frames_done": int(result.frames_processed),
            "skipped": len(result.failures), "tracks": sorted(int(t) for t in result.tracks)}


def _scene_fps(scene) -> float:
    return float(scene.render.fps / scene.render.fps_base)
