"""Operators: a few lines each that gather settings, call plain functions and report.

Every operator has a synchronous ``execute()`` (headless, scripts, ``INVOKE_DEFAULT`` in
background mode) over the same plain functions that ``invoke()`` runs in a worker thread: the
panel's settings become a ``panel_jobs.PanelRequest`` (checked at once: a bad setting never
starts a job), the worker runs the core pipeline (no Blender data touched), a modal operator's
TIMER events drain its queue on the main thread and, when it ends, the scene builder makes the
rigs, keys, camera and relief there. Esc or the panel's Cancel button sets the job's cancel
event; a cancelled sequence still keys the frames it finished. A run that finds nobody is a
warning with the reason, never "done".
"""

from pathlib import Path

import bpy
from bpy.props import (
    BoolProperty,
    EnumProperty,
    FloatProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)
from bpy_extras.io_utils import ImportHelper

from ..dpose_core.evidence_report import DEFAULT_LOW_PART_IOU
from ..dpose_core.frames import DEFAULT_FOLDER_FPS
from ..dpose_core.pipeline import DEFAULT_SMOOTH, FOV_RANGE_DEG
from ..dpose_core.relief import DEFAULT_DEPTH_SCALE
from . import jobs

TIMER_INTERVAL_S = 0.05
MAX_WARNINGS_SHOWN = 5  # each skipped frame is printed; the report shows the first few

PEOPLE_ITEMS = [
    ("ALL", "All", "One rig per person"),
    ("LARGEST", "Largest", "Only the largest person"),
    ("INDEX", "Pick", "One person, by number (0 = largest / first track)"),
]
GROUND_ITEMS = [  # the core's RunOptions.ground, one meaning everywhere
    ("AUTO", "Floor", "Rigs in a Z-up world on the floor found at Z = 0, the camera placed to "
     "match (dpose --ground auto)"),
    ("NONE", "Level", "Rigs in a Z-up world at the camera's level, no floor (--ground none)"),
    ("OFF", "Camera", "The network's camera-frame solve, camera at the origin (--ground off)"),
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
    fov_deg: FloatProperty(name="Field of View", min=FOV_RANGE_DEG[0], max=FOV_RANGE_DEG[1],
                           default=55.0,
                           subtype="NONE", description="Degrees across the longer image side")
    add_mesh: BoolProperty(name="Mesh", default=False,
                           description="Add the skinned SMPL-X mesh to each rig (also for "
                                       "Import Motion)")
    add_depth_plane: BoolProperty(name="Depth Plane", default=False,
                                  description="Add the predicted depth map as a textured relief")
    depth_scale: FloatProperty(name="Depth Scale", default=DEFAULT_DEPTH_SCALE, soft_min=-2.0,
                               soft_max=2.0,
                               unit="LENGTH", description="Metres per unit of relative depth")
    part_overlay: BoolProperty(
        name="Part Overlay", default=False,
        description="Show the body parts the network saw over the footage (a second camera "
                    "background image; PNGs in the cache folder)")
    low_part_iou: FloatProperty(
        name="Low Part Agreement", default=DEFAULT_LOW_PART_IOU, min=0.0, max=1.0,
        description="Frames whose solve overlaps the network's part map less than this (mean "
                    "part IoU) get a 'low part agreement' timeline marker")
    key_selected: BoolProperty(
        name="Key Selected Rig", default=False,
        description="Key the pose onto the selected D-PoSE rig instead of creating a new rig "
                    "(one person: People set to Largest or Pick)")
    use_box: BoolProperty(name="Person Box", default=False,
                          description="Use this box (pixels) on every frame instead of "
                                      "finding people")
    box: bpy.props.IntVectorProperty(
        name="Box", size=4, default=(0, 0, 100, 200),
        description="x0, y0, x1, y1 in image pixels (y down); it may reach past the edges")
    frame_first: IntProperty(name="First", min=0, default=0,
                             description="First source frame used (0-based)")
    frame_last: IntProperty(name="Last", min=-1, default=-1,
                            description="Last source frame used (-1: to the end)")
    stride: IntProperty(name="Stride", min=1, default=1, description="Use every N-th frame")
    start_frame: IntProperty(
        name="Start Frame", min=0, default=1,
        description="Scene frame where the first source frame used is keyed (1-based, like "
                    "the timeline); running again with the same value replaces the same "
                    "frames, and Import Motion puts a file's frame 0 here")
    fps: FloatProperty(name="Frame Rate", min=0.0, default=0.0,
                       description=f"Frames per second of the footage; 0: the video's own "
                                   f"rate, {DEFAULT_FOLDER_FPS:g} for a folder of images")
    smooth: FloatProperty(name="Smoothing", min=0.0, soft_max=3.0, default=DEFAULT_SMOOTH,
                          description="0: off, 1: the default, 2: twice as smooth")
    ground: EnumProperty(name="Ground", items=GROUND_ITEMS, default="AUTO",
                         description="Where the motion goes: on the floor, level, or as solved")
    foot_lock: FloatProperty(name="Foot Lock", min=0.0, max=1.0, default=1.0, subtype="FACTOR",
                             description="Hold contacting heels and toes still: 0 off, 1 fixed")
    subject_height: FloatProperty(
        name="Subject Height", min=0.0, soft_max=2.5, default=0.0, unit="LENGTH",
        description="The person's standing height (rescales the body and the scene); 0: the "
                    "body's own")
    follow_camera: PointerProperty(
        name="Camera", type=bpy.types.Object, poll=lambda _self, obj: obj.type == "CAMERA",
        description="A camera that moves with the footage (a Motion Tracking solve, any keyed "
                    "camera): the body follows its path, the track's scale set from the body")
    add_floor: BoolProperty(name="Floor Plane", default=True,
                            description="Add a plane at Z = 0 under grounded rigs")
    # Read by the panel while a job runs (written on the main thread only).
    job_label: StringProperty(default="")
    job_text: StringProperty(default="")
    job_fraction: FloatProperty(default=0.0, min=0.0, max=1.0)
    last_report: StringProperty(default="")
    last_report_level: StringProperty(default="INFO")  # INFO, WARNING or ERROR: the icon


# ----------------------------------------------------------------------------- helpers
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


def set_report(scene, text: str, level: str = "INFO") -> None:
    """The panel's status line (replaces the previous job's)."""
    scene.dpose.last_report, scene.dpose.last_report_level = text, level


# ------------------------------------------------------------------ job start / finish
def start_job(context, request) -> jobs.Job:
    """Run the request's pipeline call in a worker; build the scene when it is drained."""
    from . import panel_jobs

    scene = context.scene
    run = panel_jobs.run_image if request.kind == "image" else panel_jobs.run_video

    def finish(job: jobs.Job) -> None:
        if job.result is not None and job.state in (jobs.DONE, jobs.CANCELLED):
            try:
                job.created = panel_jobs.build(scene, request, job.result)
            except Exception as exc:  # noqa: BLE001 - the builder already restored the scene
                import traceback

                job.error_text = traceback.format_exc()
                print(job.error_text)
                job.state, job.error = jobs.FAILED, exc
        _finish_message(scene, job)

    running = jobs.active_job()
    if running is not None and not running.finished:
        raise RuntimeError("A D-PoSE job is already running: cancel it or wait for it.")
    job = jobs.Job(lambda ctx: run(request, ctx), label=request.label, on_finish=finish,
                   on_warning=lambda text: print(f"D-PoSE warning: {text}"))
    job.created = []
    jobs.set_active_job(job)
    set_report(scene, "")
    s = scene.dpose
    s.job_label, s.job_text, s.job_fraction = request.label, "starting", 0.0
    return job.start()


def _finish_message(scene, job: jobs.Job) -> None:
    from ..dpose_core.errors import NoPersonError
    from .panel_jobs import panel_message

    outcome = job.result
    skipped = outcome.skipped if outcome is not None else 0
    tail = f", {skipped} frame(s) skipped" if skipped else ""
    rigs = len([o for o in job.created if o.type == "ARMATURE"])
    if job.state == jobs.FAILED and isinstance(job.error, NoPersonError):
        set_report(scene, f"{job.label}: nothing created: {panel_message(job.error)}", "WARNING")
    elif job.state == jobs.FAILED:
        set_report(scene, f"{job.label} failed: {panel_message(job.error)}", "ERROR")
    elif job.state == jobs.CANCELLED and rigs:
        set_report(scene, f"{job.label}: cancelled, keyed the {outcome.result.frames_processed} "
                          f"frame(s) done{tail}", "WARNING")
    elif job.state == jobs.CANCELLED:
        set_report(scene, f"{job.label}: cancelled before anyone was keyed{tail}", "WARNING")
    else:
        set_report(scene, f"{job.label}: done, {rigs} rig(s){tail}")
    s = scene.dpose
    s.job_label = s.job_text = ""
    s.job_fraction = 0.0
    if jobs.active_job() is job:
        jobs.set_active_job(None)


def run_job_blocking(job: jobs.Job) -> jobs.Job:
    """Headless / execute(): wait on the main thread, draining as the timer would."""
    job.wait()
    return job


# ----------------------------------------------------------------------------- operators
_TIMERS: list = []  # (window_manager, timer) held by running modal operators


class _JobOperator:
    """Shared invoke/modal: check the settings, start the worker, drain on TIMER, Esc cancels."""

    _job = None  # jobs.Job, set by invoke()
    _timer = None
    _label = ""

    def _request(self, context):
        raise NotImplementedError

    def _start(self, context):
        """The started job, or None after reporting why it could not start."""
        from ..dpose_core.errors import DPoseError
        from .panel_jobs import panel_message

        try:
            return start_job(context, self._request(context))
        except (DPoseError, RuntimeError, ValueError, OSError) as exc:
            text = panel_message(exc)
            set_report(context.scene, f"{self._label} did not start: {text}", "ERROR")
            self.report({"ERROR"}, text)
            return None

    def execute(self, context):
        job = self._start(context)
        if job is None:
            return {"CANCELLED"}
        run_job_blocking(job)
        return self._report_end(job)

    def invoke(self, context, event):
        if bpy.app.background or context.window is None:
            return self.execute(context)
        self._job = self._start(context)
        if self._job is None:
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
        for text in job.warnings[:MAX_WARNINGS_SHOWN]:
            self.report({"WARNING"}, text)
        if len(job.warnings) > MAX_WARNINGS_SHOWN:
            self.report({"WARNING"}, f"... and {len(job.warnings) - MAX_WARNINGS_SHOWN} more "
                                     f"(see the system console)")
        s = bpy.context.scene.dpose
        self.report({s.last_report_level}, s.last_report)
        return {"FINISHED"} if job.created else {"CANCELLED"}


class DPOSE_OT_estimate_image(_JobOperator, bpy.types.Operator):
    """Estimate SMPL-X pose and shape from one image: rigs, a matching camera, a depth plane"""

    bl_idname = "dpose.estimate_image"
    bl_label = "Estimate Pose from Image"
    bl_options = {"REGISTER", "UNDO"}
    _label = "Image"

    def _request(self, context):
        from .panel_jobs import image_request

        return image_request(context)


class DPOSE_OT_estimate_sequence(_JobOperator, bpy.types.Operator):
    """Estimate every frame of a video or image folder and key the rigs"""

    bl_idname = "dpose.estimate_sequence"
    bl_label = "Video / Sequence to Keyframes"
    bl_options = {"REGISTER", "UNDO"}
    _label = "Sequence"

    def _request(self, context):
        from .panel_jobs import video_request

        return video_request(context)


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


class DPOSE_OT_import_motion(bpy.types.Operator, ImportHelper):
    """Import an SMPL-X / AMASS motion .npz as a keyed D-PoSE rig"""

    bl_idname = "dpose.import_motion"
    bl_label = "Import Motion (.npz)"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".npz"
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})
    add_mesh: BoolProperty(name="Mesh", default=False,
                           description="Add the skinned SMPL-X mesh (default: the panel's Mesh "
                                       "option)")

    def invoke(self, context, event):
        if not self.properties.is_property_set("add_mesh"):
            self.add_mesh = context.scene.dpose.add_mesh
        return ImportHelper.invoke(self, context, event)

    def execute(self, context):
        from ..dpose_core.errors import DPoseError
        from . import motion_import

        s = context.scene.dpose
        with_mesh = self.add_mesh if self.properties.is_property_set("add_mesh") else s.add_mesh
        path = bpy.path.abspath(self.filepath)
        set_report(context.scene, "")
        try:
            created = motion_import.import_motion_file(
                path, body_model_for(context), scene=context.scene, start_frame=s.start_frame,
                with_mesh=with_mesh)
        except DPoseError as exc:
            text = str(exc).strip().splitlines()[0]
            set_report(context.scene, f"Import failed: {text}", "ERROR")
            self.report({"ERROR"}, text)
            return {"CANCELLED"}
        set_report(context.scene, f"Imported {created[0].name} from {Path(path).name}")
        return {"FINISHED"}


def body_model_for(context):
    """The SMPL-X model from the preferences' file, else the one inside the checkpoint.

    Read straight from the checkpoint (a fraction of a second): building the network just for
    its body model would freeze Blender for seconds on the main thread.
    """
    from ..dpose_core.body_model import BODY_MODEL_PREFIX, BodyModel
    from ..dpose_core.checkpoint import load_checkpoint_arrays, resolve_checkpoint
    from .panel_jobs import estimator_settings

    settings = estimator_settings(context)
    if settings["body_model"]:
        return BodyModel.load(settings["body_model"])
    arrays = load_checkpoint_arrays(resolve_checkpoint(settings["checkpoint"]),
                                    only=BODY_MODEL_PREFIX)
    return BodyModel.from_arrays(arrays)


def menu_import(self, context) -> None:
    self.layout.operator(DPOSE_OT_import_motion.bl_idname, text="D-PoSE Motion (.npz)")


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


def register_menus() -> None:
    from .export_ops import menu_export

    bpy.types.TOPBAR_MT_file_import.append(menu_import)
    bpy.types.TOPBAR_MT_file_export.append(menu_export)


def unregister_menus() -> None:
    from .export_ops import menu_export

    bpy.types.TOPBAR_MT_file_import.remove(menu_import)
    bpy.types.TOPBAR_MT_file_export.remove(menu_export)


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
