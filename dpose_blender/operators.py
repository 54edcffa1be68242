"""Operators: a few lines each that gather settings, call plain functions and report.

Every operator has a synchronous ``execute()`` (headless, scripts, ``INVOKE_DEFAULT`` in
background mode) over the same plain functions that ``invoke()`` runs in a worker thread: the
worker does the network work (``image_estimate.estimate_image`` / ``sequence_job.run_sequence``,
no Blender data touched), a modal operator's TIMER events drain its queue on the main thread
and, when it ends, ``apply_*`` builds rigs, keys, camera and relief there. Esc or the panel's
Cancel button sets the job's cancel event; a cancelled sequence still keys the frames it
finished.
"""

import bpy
from bpy.props import (
    BoolProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)

from . import jobs

TIMER_INTERVAL_S = 0.05

PEOPLE_ITEMS = [
    ("ALL", "All", "One rig per person"),
    ("LARGEST", "Largest", "Only the largest person"),
    ("INDEX", "Pick", "One person, by number (0 = largest / first track)"),
]
FOCAL_ITEMS = [
    ("DIAGONAL", "Image Diagonal", "Focal length = image diagonal in pixels (as the network)"),
    ("FOV", "Field of View", "A field of view across the longer image side"),
]


class DPOSE_PG_settings(bpy.types.PropertyGroup):
    """Panel settings, stored per scene so a .blend remembers how it was made."""

    image_path: StringProperty(name="Image", subtype="FILE_PATH",
                               description="Empty: the active camera's background image")
    sequence_path: StringProperty(name="Footage", subtype="FILE_PATH",
                                  description="A video file or a folder of images")
    people: EnumProperty(name="People", items=PEOPLE_ITEMS, default="ALL")
    person_index: IntProperty(name="Person", min=0, default=0)
    focal_mode: EnumProperty(name="Focal Length", items=FOCAL_ITEMS, default="DIAGONAL")
    fov_deg: FloatProperty(name="Field of View", min=1.0, max=179.0, default=55.0,
                           subtype="NONE", description="Degrees across the longer image side")
    add_mesh: BoolProperty(name="Mesh", default=False,
                           description="Add the skinned SMPL-X mesh to each rig")
    add_depth_plane: BoolProperty(name="Depth Plane", default=False,
                                  description="Add the predicted depth map as a textured relief")
    depth_scale: FloatProperty(name="Depth Scale", default=0.5, soft_min=-2.0, soft_max=2.0,
                               unit="LENGTH", description="Metres per unit of relative depth")
    key_selected: BoolProperty(
        name="Key Selected Rig", default=False,
        description="Key the pose onto the selected D-PoSE rig at the current frame instead "
                    "of creating a new rig")
    use_box: BoolProperty(name="Person Box", default=False,
                          description="Use this box (pixels) on every frame instead of "
                                      "finding people")
    box: bpy.props.IntVectorProperty(name="Box", size=4, min=0, default=(0, 0, 100, 200),
                                     description="x0, y0, x1, y1 in image pixels (y down)")
    frame_first: IntProperty(name="First", min=0, default=0, description="First source frame")
    frame_last: IntProperty(name="Last", min=-1, default=-1,
                            description="Last source frame (-1: to the end)")
    stride: IntProperty(name="Stride", min=1, default=1, description="Use every N-th frame")
    smooth: FloatProperty(name="Smoothing", min=0.0, max=1.0, default=0.5, subtype="FACTOR")
    # Read by the panel while a job runs (written on the main thread only).
    job_label: StringProperty(default="")
    job_text: StringProperty(default="")
    job_fraction: FloatProperty(default=0.0, min=0.0, max=1.0)
    last_report: StringProperty(default="")


# ----------------------------------------------------------------------------- helpers
def scene_settings(context) -> DPOSE_PG_settings:
    return context.scene.dpose


def _prefs(context):
    from .preferences import get_preferences

    return get_preferences(context)


def estimator_options(context) -> dict:
    """Checkpoint/device/cache/body model from the preferences (or $DPOSE_CHECKPOINT)."""
    from .preferences import default_cache_dir

    prefs = _prefs(context)
    if prefs is None:
        return {"checkpoint": None, "device": "auto", "body_model": None,
                "cache_dir": default_cache_dir()}
    return {
        "checkpoint": bpy.path.abspath(prefs.checkpoint_path) or None,
        "device": prefs.device.lower(),
        "body_model": bpy.path.abspath(prefs.body_model_path) or None,
        "cache_dir": bpy.path.abspath(prefs.cache_dir) if prefs.cache_dir else default_cache_dir(),
    }


def _person_choice(s: DPOSE_PG_settings):
    return {"ALL": "all", "LARGEST": "largest"}.get(s.people, int(s.person_index))


def image_settings(context):
    from .image_estimate import ImageSettings, background_image_path

    s = scene_settings(context)
    path = bpy.path.abspath(s.image_path) if s.image_path else background_image_path(
        context.scene)
    target = None
    if s.key_selected:
        obj = context.active_object
        from .rig import PROP_RIG

        if obj is None or obj.type != "ARMATURE" or PROP_RIG not in obj:
            raise ValueError("Key Selected Rig is on but the active object is not a D-PoSE "
                             "rig: select one, or turn the option off to make a new rig.")
        target = obj.name
    return ImageSettings(
        image_path=path or "",
        person=_person_choice(s),
        fov_deg=s.fov_deg if s.focal_mode == "FOV" else None,
        add_mesh=s.add_mesh,
        add_depth_plane=s.add_depth_plane,
        depth_scale=s.depth_scale,
        target_rig=target,
        **estimator_options(context),
    )


def sequence_settings(context):
    from .sequence_job import SequenceSettings

    s = scene_settings(context)
    return SequenceSettings(
        source=bpy.path.abspath(s.sequence_path),
        start=s.frame_first,
        end=None if s.frame_last < 0 else s.frame_last + 1,
        stride=s.stride,
        person=_person_choice(s),
        smooth=s.smooth,
        fov_deg=s.fov_deg if s.focal_mode == "FOV" else None,
        add_mesh=s.add_mesh,
        add_depth_plane=s.add_depth_plane,
        depth_scale=s.depth_scale,
        frame_start=context.scene.frame_start,
        bbox=tuple(s.box) if s.use_box else None,
        **estimator_options(context),
    )


def _tag_redraw(context=None) -> None:
    wm = bpy.context.window_manager if context is None else context.window_manager
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type in {"VIEW_3D", "PROPERTIES"}:
                area.tag_redraw()


def show_progress(scene, job: jobs.Job) -> None:
    s = scene.dpose
    with job._lock:
        s.job_text = job.progress.text()
        s.job_fraction = job.progress.fraction
    s.job_label = job.label


# ------------------------------------------------------------------ job start / finish
def start_image_job(context, settings) -> jobs.Job:
    """Run ``estimate_image`` in a worker; ``apply_image_result`` when drained to the end."""
    from . import image_estimate

    scene = context.scene

    def work(ctx: jobs.JobContext):
        ctx.progress(0, 1, "loading the network")
        return image_estimate.estimate_image(settings, progress=ctx.progress, warn=ctx.warn)

    def finish(job: jobs.Job) -> None:
        if job.state == jobs.DONE:
            _apply_or_roll_back(job, scene, lambda: image_estimate.apply_image_result(
                scene, job.result, settings))
        _finish_message(scene, job)

    return _start(context, "Image", work, finish)


def start_sequence_job(context, settings) -> jobs.Job:
    """Run ``run_sequence`` in a worker; key whatever finished when it ends or is cancelled."""
    from . import sequence_job

    scene = context.scene

    def work(ctx: jobs.JobContext):
        ctx.progress(0, 0, "loading the network")
        estimator = sequence_job.load_estimator(
            settings.checkpoint, device=settings.device, body_model=settings.body_model,
            cache_dir=settings.cache_dir,
        )
        return sequence_job.run_sequence(
            estimator, settings, progress=lambda p: ctx.progress(p.done, p.total, ""),
            cancel=ctx.cancel_event, warn=ctx.warn,
        ), estimator

    def finish(job: jobs.Job) -> None:
        if job.result is not None and job.state in (jobs.DONE, jobs.CANCELLED):
            result, estimator = job.result
            _apply_or_roll_back(job, scene, lambda: sequence_job.apply_sequence_result(
                scene, result, settings, estimator=estimator))
        _finish_message(scene, job)

    return _start(context, "Sequence", work, finish)


def _apply_or_roll_back(job: jobs.Job, scene, apply) -> None:
    """Build the result, or on any error remove what was built and mark the job failed.

    Runs inside ``Job.drain`` on the main thread (a modal TIMER event or ``execute()``): an
    exception escaping from here would leave a half-built scene, the modal timer registered
    and a traceback instead of a report.
    """
    import traceback

    from .rollback import SceneSnapshot

    snapshot = SceneSnapshot(scene)
    try:
        job.created = apply()
    except Exception as exc:  # noqa: BLE001 - any failure: the scene goes back as it was
        job.error_text = traceback.format_exc()
        print(job.error_text)
        snapshot.restore()
        job.created = []
        job.state, job.error = jobs.FAILED, exc


def _start(context, label, work, finish) -> jobs.Job:
    running = jobs.active_job()
    if running is not None and not running.finished:
        raise RuntimeError("A D-PoSE job is already running: cancel it or wait for it.")
    scene = context.scene
    job = jobs.Job(work, label=label, on_finish=finish,
                   on_warning=lambda text: print(f"D-PoSE warning: {text}"))
    job.created = []
    jobs.set_active_job(job)
    scene.dpose.job_label, scene.dpose.job_text, scene.dpose.job_fraction = label, "starting", 0
    return job.start()


def _finish_message(scene, job: jobs.Job) -> None:
    s = scene.dpose
    skipped = f", {len(job.warnings)} frame(s) skipped" if job.warnings else ""
    if job.state == jobs.DONE:
        s.last_report = f"{job.label}: done{skipped}"
    elif job.state == jobs.CANCELLED:
        s.last_report = f"{job.label}: cancelled, kept the processed frames{skipped}"
    else:
        s.last_report = f"{job.label} failed: {_first_line(job.error)}"
    s.job_label = s.job_text = ""
    s.job_fraction = 0.0
    if jobs.active_job() is job:
        jobs.set_active_job(None)


def _first_line(exc) -> str:
    return str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else repr(exc)


def run_job_blocking(job: jobs.Job) -> jobs.Job:
    """Headless / execute(): wait on the main thread, draining as the timer would."""
    job.wait()
    return job


# ----------------------------------------------------------------------------- operators
_TIMERS: list = []  # (window_manager, timer) held by running modal operators


class _JobOperator:
    """Shared invoke/modal: start the worker, drain on TIMER, Esc cancels."""

    _job = None  # jobs.Job, set by invoke()
    _timer = None

    def _settings(self, context):
        raise NotImplementedError

    def _starter(self):
        raise NotImplementedError

    def execute(self, context):
        try:
            job = self._starter()(context, self._settings(context))
        except (RuntimeError, ValueError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        run_job_blocking(job)
        return self._report_end(job)

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        try:
            self._job = self._starter()(context, self._settings(context))
        except (RuntimeError, ValueError, OSError) as exc:
            self.report({"ERROR"}, str(exc))
            return {"CANCELLED"}
        wm = context.window_manager
        self._timer = wm.event_timer_add(TIMER_INTERVAL_S, window=context.window)
        _TIMERS.append((wm, self._timer))
        wm.modal_handler_add(self)
        return {"RUNNING_MODAL"}

    def modal(self, context, event):
        job = self._job
        if event.type == "ESC" and event.value == "PRESS":
            job.cancel()
        if event.type != "TIMER":
            return {"PASS_THROUGH"}
        finished = job.drain()
        if not finished:
            show_progress(context.scene, job)
            _tag_redraw(context)
            return {"PASS_THROUGH"}
        self._remove_timer(context)
        _tag_redraw(context)
        return self._report_end(job)

    def _remove_timer(self, context) -> None:
        if self._timer is not None:
            context.window_manager.event_timer_remove(self._timer)
            _TIMERS[:] = [(w, t) for (w, t) in _TIMERS if t is not self._timer]
            self._timer = None

    def _report_end(self, job: jobs.Job):
        for text in job.warnings:
            self.report({"WARNING"}, text)
        if job.state == jobs.FAILED:
            self.report({"ERROR"}, f"D-PoSE: {_first_line(job.error)}")
            return {"CANCELLED"}
        self.report({"INFO"}, bpy.context.scene.dpose.last_report or "D-PoSE: done")
        return {"FINISHED"}


class DPOSE_OT_estimate_image(_JobOperator, bpy.types.Operator):
    """Estimate SMPL-X pose and shape from one image: rigs, a matching camera, a depth plane"""

    bl_idname = "dpose.estimate_image"
    bl_label = "Estimate Pose from Image"
    bl_options = {"REGISTER", "UNDO"}

    def _settings(self, context):
        settings = image_settings(context)
        if not settings.image_path:
            raise ValueError("Choose an image (or give the active camera a background image).")
        return settings

    def _starter(self):
        return start_image_job


class DPOSE_OT_estimate_sequence(_JobOperator, bpy.types.Operator):
    """Estimate every frame of a video or image folder and key the rigs"""

    bl_idname = "dpose.estimate_sequence"
    bl_label = "Video / Sequence to Keyframes"
    bl_options = {"REGISTER", "UNDO"}

    def _settings(self, context):
        settings = sequence_settings(context)
        if not scene_settings(context).sequence_path:
            raise ValueError("Choose a video file or a folder of images.")
        return settings

    def _starter(self):
        return start_sequence_job


class DPOSE_OT_cancel_job(bpy.types.Operator):
    """Stop the running D-PoSE job (frames already processed are kept)"""

    bl_idname = "dpose.cancel_job"
    bl_label = "Cancel"

    @classmethod
    def poll(cls, context):
        job = jobs.active_job()
        return job is not None and not job.finished

    def execute(self, context):
        jobs.active_job().cancel()
        return {"FINISHED"}


class DPOSE_OT_import_motion(bpy.types.Operator):
    """Import an SMPL-X / AMASS motion .npz as a keyed D-PoSE rig"""

    bl_idname = "dpose.import_motion"
    bl_label = "Import Motion (.npz)"
    bl_options = {"REGISTER", "UNDO"}

    filepath: StringProperty(subtype="FILE_PATH")
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})

    def invoke(self, context, event):
        context.window_manager.fileselect_add(self)
        return {"RUNNING_MODAL"}

    def execute(self, context):
        from ..dpose_core.errors import DPoseError
        from . import motion_import

        try:
            body_model = body_model_for(context)
            motion_import.import_motion_file(
                bpy.path.abspath(self.filepath), body_model, with_mesh=False,
                scene=context.scene,
            )
        except DPoseError as exc:
            self.report({"ERROR"}, str(exc).splitlines()[0])
            return {"CANCELLED"}
        return {"FINISHED"}


def body_model_for(context):
    """The SMPL-X model from the preferences' file, else the one inside the checkpoint.

    Read straight from the checkpoint (a fraction of a second): building the network just for
    its body model would freeze Blender for seconds on the main thread.
    """
    from ..dpose_core.body_model import BODY_MODEL_PREFIX, BodyModel
    from ..dpose_core.checkpoint import load_checkpoint_arrays, resolve_checkpoint

    opts = estimator_options(context)
    if opts["body_model"]:
        return BodyModel.load(opts["body_model"])
    arrays = load_checkpoint_arrays(resolve_checkpoint(opts["checkpoint"]), only=BODY_MODEL_PREFIX)
    return BodyModel.from_arrays(arrays)


classes = (
    DPOSE_PG_settings,
    DPOSE_OT_estimate_image,
    DPOSE_OT_estimate_sequence,
    DPOSE_OT_cancel_job,
    DPOSE_OT_import_motion,
)


def register_properties() -> None:
    bpy.types.Scene.dpose = PointerProperty(type=DPOSE_PG_settings)


def unregister_properties() -> None:
    if hasattr(bpy.types.Scene, "dpose"):
        del bpy.types.Scene.dpose


@bpy.app.handlers.persistent
def abandon_job_on_file_load(*_args) -> None:
    """File > Open / New while a job runs: stop it and never apply it to the new file.

    Opening a file frees the scene the job would build into and ends the modal operator that
    drains it; without this the job would stay "running" and block every later job.
    """
    job = jobs.active_job()
    if job is not None:
        job.abandon()
        jobs.set_active_job(None)


def register_handlers() -> None:
    if abandon_job_on_file_load not in bpy.app.handlers.load_pre:
        bpy.app.handlers.load_pre.append(abandon_job_on_file_load)


def unregister_handlers() -> None:
    handlers = bpy.app.handlers.load_pre
    for func in [f for f in handlers if getattr(f, "__name__", "") == "abandon_job_on_file_load"
                 and getattr(f, "__module__", "").endswith("dpose_blender.operators")]:
        handlers.remove(func)


def unregister_timers() -> None:
    """Remove modal timers still held (the add-on was disabled while a job ran)."""
    while _TIMERS:
        wm, timer = _TIMERS.pop()
        try:
            wm.event_timer_remove(timer)
        except (ReferenceError, ValueError, RuntimeError):
            pass
