"""The installed extension's operators on generated footage: rigs, keys, camera, relief,
cancel and corrupt frames; plus the worker-thread job runner on its own.

The linux zip (session fixture) is installed into bpy once for this module; every test enables
it again after the autouse factory reset. Inputs are tiny (a few 96x120 frames, one crop per
frame) because the random-weight network costs about a second per crop on a CPU.
"""

import argparse
import importlib
import json
import sys
import threading
import time

import numpy as np
import pytest

pytestmark = pytest.mark.blender

EXT = "bl_ext.user_default.dpose"
BOX = (20, 5, 80, 115)  # the generated figure, xyxy px


# ----------------------------------------------------------------------------- fixtures
def _addon_utils():
    """Blender's addon_utils (importable only once bpy is imported)."""
    import importlib

    import bpy  # noqa: F401

    return importlib.import_module("addon_utils")


@pytest.fixture(scope="module")
def installed(linux_extension_zip):
    import bpy

    addon_utils = _addon_utils()

    bpy.ops.wm.read_factory_settings(use_empty=True)
    assert bpy.ops.extensions.package_install_files(
        filepath=str(linux_extension_zip), repo="user_default", enable_on_install=False
    ) == {"FINISHED"}
    yield
    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.disable(EXT, default_set=True)
    repo_index = [r.module for r in bpy.context.preferences.extensions.repos].index("user_default")
    bpy.ops.extensions.package_uninstall(repo_index=repo_index, pkg_id="dpose")
    assert not hasattr(bpy.types.Scene, "dpose")
    assert not hasattr(bpy.types, "DPOSE_OT_estimate_sequence")
    assert not [h for h in bpy.app.handlers.load_pre if "dpose" in getattr(h, "__module__", "")]


@pytest.fixture
def ext(installed, checkpoint_path, onnx_cache_dir):
    """The enabled extension with the test checkpoint in its preferences; yields its modules."""
    import bpy

    addon_utils = _addon_utils()

    addon_utils.enable(EXT, default_set=True)
    prefs = bpy.context.preferences.addons[EXT].preferences
    prefs.checkpoint_path = str(checkpoint_path)
    prefs.device = "CPU"
    prefs.cache_dir = str(onnx_cache_dir)
    assert prefs.checkpoint_ok, prefs.status_checkpoint

    class Modules:
        def __getattr__(self, name):
            return sys.modules[f"{EXT}.dpose_blender.{name}"]

    import importlib

    for name in ("panel_jobs", "scene_builder", "operators", "jobs", "keyframes", "headless",
                 "anim_compat"):
        importlib.import_module(f"{EXT}.dpose_blender.{name}")
    yield Modules()
    sys.modules[f"{EXT}.dpose_blender.jobs"].cancel_all()
    addon_utils.disable(EXT, default_set=True)


def _figure(i, size=(120, 96)):
    import cv2

    h, w = size
    img = np.full((h, w, 3), 25, np.uint8)
    cv2.rectangle(img, (34 + i, 22), (62 + i, 104), (190, 170, 150), -1)
    cv2.circle(img, (48 + i, 14), 8, (220, 200, 180), -1)
    return img


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    import cv2

    path = tmp_path_factory.mktemp("image") / "person.png"
    cv2.imwrite(str(path), _figure(0)[:, :, ::-1])
    return path


@pytest.fixture(scope="module")
def video_file(tmp_path_factory):
    import cv2

    path = tmp_path_factory.mktemp("video") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (96, 120))
    for i in range(3):
        writer.write(_figure(i)[:, :, ::-1].copy())
    writer.release()
    return path


@pytest.fixture(scope="module")
def folder_with_corrupt_frame(tmp_path_factory):
    import cv2

    folder = tmp_path_factory.mktemp("corrupt")
    for i in range(4):
        path = folder / f"f{i:03d}.png"
        if i == 1:
            path.write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
        else:
            cv2.imwrite(str(path), _figure(i)[:, :, ::-1])
    return folder


def _rigs():
    import bpy

    return sorted((o for o in bpy.data.objects if o.type == "ARMATURE"), key=lambda o: o.name)


def _keyed_frames(ext, armature):
    motion = ext.keyframes.read_motion_keys(armature)
    return sorted(int(f) for f in motion.frame_indices + armature["dpose_frame_offset"])


# ----------------------------------------------------------------------------- preferences
def test_preferences_status_checks_files_and_device(ext, body_model_npz, tmp_path, monkeypatch):
    import bpy

    prefs = bpy.context.preferences.addons[EXT].preferences
    assert "checkpoint OK" in prefs.status_checkpoint
    assert "stored in the checkpoint" in prefs.status_body_model
    bad = tmp_path / "SMPLX_NEUTRAL.npz"
    bad.write_bytes(b"not a numpy file")
    prefs.body_model_path = str(bad)
    assert "OK" not in prefs.status_body_model
    prefs.body_model_path = str(body_model_npz)
    assert prefs.status_body_model.startswith("Body model OK")
    import onnxruntime

    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    prefs.device = "CUDA"  # without a CUDA provider the line says the CPU runs
    assert prefs.status_device == (
        "Device: CPU (CUDA requested, but ONNX Runtime has no CUDA provider)"
    )
    prefs.device = "CPU"
    assert prefs.status_device == "Device: CPU"
    prefs.checkpoint_path = str(body_model_npz)  # a file, but not the network
    assert not prefs.checkpoint_ok


def test_checkpoint_from_the_environment_shows_ok_when_enabled(installed, checkpoint_path,
                                                               monkeypatch):
    """Jobs use $DPOSE_CHECKPOINT when the path is empty: the status says so at start-up."""
    import bpy

    addon_utils = _addon_utils()
    monkeypatch.setenv("DPOSE_CHECKPOINT", str(checkpoint_path))
    addon_utils.enable(EXT, default_set=True)
    try:
        prefs = bpy.context.preferences.addons[EXT].preferences
        assert prefs.checkpoint_path == ""
        assert prefs.checkpoint_ok and str(checkpoint_path) in prefs.status_checkpoint
        monkeypatch.delenv("DPOSE_CHECKPOINT")
        addon_utils.disable(EXT, default_set=False)
        addon_utils.enable(EXT, default_set=False)  # Blender restarted without it
        prefs = bpy.context.preferences.addons[EXT].preferences
        assert not prefs.checkpoint_ok and "Set the D-PoSE checkpoint" in prefs.status_checkpoint
    finally:
        addon_utils.disable(EXT, default_set=True)


# ----------------------------------------------------------------------------- panel
class _RecordingLayout:
    """Stands in for UILayout (no UI in bpy-as-a-module): checks every property and operator
    the panels draw exists, and records progress bars."""

    def __init__(self, log):
        self.log = log
        self.enabled = self.alert = True

    def _child(self, *args, **kwargs):
        return _RecordingLayout(self.log)

    row = column = box = split = _child

    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties, name
        self.log.append(("prop", name))

    def operator(self, idname, **kwargs):
        import bpy

        category, op = idname.split(".")
        assert hasattr(getattr(bpy.ops, category), op), idname
        self.log.append(("operator", idname))

        class _Props:
            pass

        return _Props()

    def label(self, text="", **kwargs):
        self.log.append(("label", text))

    def progress(self, factor=0.0, type="BAR", text=""):
        self.log.append(("progress", factor, text))


def _draw_all(ext, context):
    import bpy

    log = []
    for name in ("DPOSE_PT_main", "DPOSE_PT_image", "DPOSE_PT_sequence", "DPOSE_PT_files"):
        panel_cls = getattr(bpy.types, name)
        fake = type("P", (), {"layout": _RecordingLayout(log)})()
        panel_cls.draw(fake, context)
    return log


def test_panels_draw_settings_progress_and_cancel(ext):
    import bpy

    context = bpy.context
    log = _draw_all(ext, context)
    assert ("operator", "dpose.estimate_image") in log
    assert ("operator", "dpose.estimate_sequence") in log
    assert not [e for e in log if e[0] == "progress"]

    release = threading.Event()
    job = ext.jobs.Job(lambda ctx: (ctx.progress(2, 8), release.wait(10)), label="Sequence")
    ext.jobs.set_active_job(job)
    job.start()
    try:
        time.sleep(0.05)
        ext.operators.show_progress(context.scene, job)
        log = _draw_all(ext, context)
        bars = [e for e in log if e[0] == "progress"]
        assert bars and bars[0][1] == pytest.approx(0.25) and "2/8 frames" in bars[0][2]
        assert ("operator", "dpose.cancel_job") in log
        assert bpy.ops.dpose.cancel_job() == {"FINISHED"} and job.cancel_event.is_set()
    finally:
        release.set()
        job.wait(timeout=10)


# ----------------------------------------------------------------------------- job runner
def test_job_runner_posts_items_and_cancels(ext):
    jobs = ext.jobs
    got = []

    def work(ctx):
        for i in range(1000):
            if ctx.cancelled:
                return i
            ctx.post(i)
            ctx.progress(i + 1, 1000)
            time.sleep(0.001)
        return 1000

    job = jobs.Job(work, on_item=got.append).start()
    while len(got) < 5:
        job.drain()
        time.sleep(0.005)
    job.cancel()
    assert job.wait(timeout=10)
    assert job.state == jobs.CANCELLED
    assert got == list(range(len(got))) and job.result >= len(got) - 1 and job.result < 1000
    assert job.progress.text().startswith(f"{job.progress.done}/1000 frames")


def test_job_runner_reports_worker_errors_on_the_main_thread(ext):
    jobs = ext.jobs
    main = threading.get_ident()
    seen = []

    def work(ctx):
        ctx.warn("frame 3: unreadable")
        raise ValueError("boom")

    job = jobs.Job(work, on_warning=lambda t: seen.append((t, threading.get_ident())))
    job.start().wait(timeout=10)
    assert job.state == jobs.FAILED and "boom" in str(job.error)
    assert seen == [("frame 3: unreadable", main)]


# ----------------------------------------------------------------------------- image
def test_image_operator_creates_rigs_camera_and_depth_plane(ext, image_file):
    import bpy

    scene = bpy.context.scene
    s = scene.dpose
    s.image_path = str(image_file)
    s.people = "ALL"
    s.add_depth_plane = True
    scene.frame_set(7)
    assert bpy.ops.dpose.estimate_image() == {"FINISHED"}

    rigs = _rigs()
    found = json.loads(rigs[0]["dpose_provenance"])["settings"]["people"]
    assert len(rigs) == found >= 1  # one rig per person the pipeline returned
    for rig in rigs:
        assert _keyed_frames(ext, rig) == [7]  # one key, at the current frame
        assert rig["dpose_checkpoint_sha256"] and str(image_file.resolve()) in rig["dpose_input"]
    cam = scene.camera
    assert cam is not None and cam.data.background_images[0].image.filepath
    assert (scene.render.resolution_x, scene.render.resolution_y) == (96, 120)
    planes = [o for o in bpy.data.objects if o.name.startswith("D-PoSE Depth")]
    assert len(planes) == found
    assert s.last_report == f"Image: done, {found} rig(s)"


@pytest.mark.parametrize("ground", ["OFF", "NONE"])
def test_rig_joints_project_onto_network_joints(ext, image_file, ground):
    """Through the created camera the rig's joints land on the network's 2D joints: exactly
    for the camera-frame solve; in the world frame, within what the refine stage reports it
    moved them. (The random-weight network puts no foot on screen here, so "Floor" would keep
    the camera frame: test_world_setup covers the floor.)"""
    import bpy

    from dpose_core.relief import relief_frame_from_estimate, relief_geometry
    from dpose_core.skeleton import JOINT_NAMES

    scene = bpy.context.scene
    scene.dpose.image_path = str(image_file)
    scene.dpose.people = "LARGEST"
    scene.dpose.add_depth_plane = True
    scene.dpose.ground = ground
    job = ext.operators.start_job(bpy.context, ext.panel_jobs.image_request(bpy.context))
    assert job.wait(timeout=300) and job.state == ext.jobs.DONE, job.error_text
    estimate = job.result.result.estimate
    rig = next(o for o in job.created if o.type == "ARMATURE")
    scene.frame_set(scene.frame_current)
    world = np.array([(rig.matrix_world @ rig.pose.bones[n].head)[:] for n in JOINT_NAMES])
    scene_camera = sys.modules[f"{EXT}.dpose_blender.scene_camera"]
    pixels = scene_camera.project_to_pixels(scene, scene.camera, world)
    error = np.linalg.norm(pixels - estimate.joints2d[0, : len(JOINT_NAMES)], axis=1)
    if ground == "OFF":
        assert error.max() < 0.5
        assert "dpose_contact_left_heel" not in rig
    else:
        (take,) = job.result.takes
        assert take.motion.coordinate_frame == "world_z_up" and "dpose_contact_left_heel" in rig
        moved = float(take.report.reprojection_px[0])  # mean px over the body, core's own
        assert error[:22].mean() <= moved + 0.5
    # The relief from the same estimate projects onto its depth-map pixel centres.
    plane = next(o for o in job.created if o.name.startswith("D-PoSE Depth"))
    centres = relief_geometry(relief_frame_from_estimate(estimate, 0), 0.5).pixels
    verts = np.array([(plane.matrix_world @ v.co)[:] for v in plane.data.vertices])
    assert len(verts) == len(centres) > 0
    on_screen = scene_camera.project_to_pixels(scene, scene.camera, verts)
    assert np.abs(on_screen - centres).max() < 0.01


def test_image_keys_onto_selected_rig_at_current_frame(ext, image_file, body_model_npz):
    import bpy

    scene = bpy.context.scene
    scene.dpose.image_path = str(image_file)
    scene.dpose.people = "LARGEST"
    scene.frame_set(1)
    assert bpy.ops.dpose.estimate_image() == {"FINISHED"}
    (rig,) = _rigs()
    bpy.context.view_layer.objects.active = rig
    scene.dpose.key_selected = True
    scene.dpose.image_path = ""  # now the image comes from the active camera's background
    assert ext.panel_jobs.background_image_path(scene) == str(image_file)
    # The same SMPL-X model, now from its own file (the preferences' SMPL-X Model).
    bpy.context.preferences.addons[EXT].preferences.body_model_path = str(body_model_npz)
    scene.frame_set(12)
    assert bpy.ops.dpose.estimate_image() == {"FINISHED"}
    assert _rigs() == [rig]
    assert _keyed_frames(ext, rig) == [1, 12]
    assert json.loads(rig["dpose_provenance"])["settings"]["target_rig"] == rig.name
    # Nothing selected: say so instead of quietly making a new rig.
    bpy.context.view_layer.objects.active = None
    with pytest.raises(RuntimeError, match="not a D-PoSE rig"):
        bpy.ops.dpose.estimate_image()
    assert _rigs() == [rig]


def test_import_motion_reads_the_body_model_without_building_the_network(ext, tmp_path):
    """The import runs on the main thread: it must not convert/load the network."""
    import bpy

    from dpose_core.motion import Motion
    from dpose_core.motion_io import save_motion_npz

    n = 3
    path = tmp_path / "walk.npz"
    save_motion_npz(path, Motion(rotmats=np.tile(np.eye(3), (n, 55, 1, 1)),
                                 transl=np.zeros((n, 3)), betas=np.zeros(11), fps=30.0))
    cache = tmp_path / "empty-cache"
    cache.mkdir()
    bpy.context.preferences.addons[EXT].preferences.cache_dir = str(cache)
    ext.panel_jobs._ESTIMATORS.clear()
    assert bpy.ops.dpose.import_motion(filepath=str(path)) == {"FINISHED"}
    (rig,) = _rigs()
    assert rig.name == "walk" and len(_keyed_frames(ext, rig)) == n
    assert not ext.panel_jobs._ESTIMATORS and not any(cache.iterdir())


# ----------------------------------------------------------------------------- sequences
def _start_sequence(ext, source, **props):
    """Start the panel's sequence job on `source`: the largest person, the fixed box."""
    import bpy

    s = bpy.context.scene.dpose
    s.sequence_path, s.people, s.use_box, s.box = str(source), "LARGEST", True, BOX
    for name, value in props.items():
        setattr(s, name, value)
    return ext.operators.start_job(bpy.context, ext.panel_jobs.video_request(bpy.context))


def test_sequence_operator_keys_every_frame_of_a_video(ext, video_file):
    import bpy

    scene = bpy.context.scene
    s = scene.dpose
    s.sequence_path = str(video_file)
    s.people = "LARGEST"
    s.smooth = 0.3
    s.use_box, s.box = True, BOX  # deterministic with random weights: one person, every frame
    s.add_depth_plane = True
    assert bpy.ops.dpose.estimate_sequence("INVOKE_DEFAULT") == {"FINISHED"}
    (rig,) = _rigs()
    assert _keyed_frames(ext, rig) == [scene.frame_start + i for i in range(3)]
    # The depth relief follows the current frame (frame_change_post handler + cached maps).
    (plane,) = [o for o in bpy.data.objects if o.name.startswith("D-PoSE Depth")]
    shapes = []
    for i in range(3):
        scene.frame_set(scene.frame_start + i)
        shapes.append(np.array([v.co[:] for v in plane.data.vertices]))
    assert len(shapes[0]) > 0
    pairs = zip(shapes[:-1], shapes[1:], strict=True)
    assert any(len(a) != len(b) or np.abs(a - b).max() > 1e-6 for a, b in pairs)
    assert scene.camera.data.background_images[0].image.source == "MOVIE"
    assert '"kind": "sequence"' in rig["dpose_provenance"]


def test_sequence_follows_an_animated_camera_and_keys_contacts(ext, video_file):
    """Ground + Camera: the body follows a keyed camera (as a Motion Tracking solve would be):
    the D-PoSE camera moves along the tracked path (turned into the floor's world and scaled
    by the track scale the refine stage found), and the contacts are keyed on the rig."""
    import bpy

    scene = bpy.context.scene
    tracked = bpy.data.objects.new("Tracked", bpy.data.cameras.new("Tracked"))
    scene.collection.objects.link(tracked)
    tracked.rotation_euler = (1.45, 0.0, 0.0)
    for frame, x in ((1, 0.0), (3, 0.4)):
        tracked.location = (x, -4.0, 1.5)
        tracked.keyframe_insert("location", frame=frame)
    s = scene.dpose
    s.sequence_path, s.people, s.start_frame = str(video_file), "LARGEST", 1
    s.use_box, s.box = True, BOX
    s.ground, s.foot_lock, s.follow_camera = "NONE", 1.0, tracked
    job = ext.operators.start_job(bpy.context, ext.panel_jobs.video_request(bpy.context))
    assert job.wait(timeout=300) and job.state == ext.jobs.DONE, job.error_text
    report = job.result.result.refine_reports[0]
    assert report.track_scale is not None and report.track_scale > 0
    (rig,) = _rigs()
    cam = scene.camera
    assert cam.name.startswith("D-PoSE Camera") and cam.animation_data is not None
    poses, track = [], []
    for frame in (1, 2, 3):
        scene.frame_set(frame)
        poses.append(np.array(cam.matrix_world, dtype=np.float64))
        track.append(np.array(tracked.matrix_world, dtype=np.float64))
    turn = poses[0][:3, :3] @ track[0][:3, :3].T  # tracked world -> D-PoSE world
    for k in (1, 2):
        np.testing.assert_allclose(poses[k][:3, :3], turn @ track[k][:3, :3], atol=1e-4)
        step = poses[k][:3, 3] - poses[0][:3, 3]
        expected = report.track_scale * (turn @ (track[k][:3, 3] - track[0][:3, 3]))
        np.testing.assert_allclose(step, expected, atol=1e-5)
    for name in ("dpose_contact_left_heel", "dpose_contact_right_toe", "dpose_foot_skate_mm"):
        fcurve = ext.anim_compat.find_fcurve(rig, f'["{name}"]')
        assert fcurve is not None and len(fcurve.keyframe_points) == 3, name


def test_corrupt_frame_is_reported_and_skipped(ext, folder_with_corrupt_frame):
    import bpy

    scene = bpy.context.scene
    job = _start_sequence(ext, folder_with_corrupt_frame)
    assert job.wait(timeout=300)
    assert job.state == ext.jobs.DONE, job.error_text
    assert len(job.warnings) == 1 and "f001.png" in job.warnings[0]
    assert scene.dpose.last_report == "Sequence: done, 1 rig(s), 1 frame(s) skipped"
    (rig,) = _rigs()
    # The skipped frame is not estimated: its key is interpolated from its neighbours and
    # flagged as such (keyframe type BREAKDOWN), so the action stays continuous.
    motion = ext.keyframes.read_motion_keys(rig)
    assert _keyed_frames(ext, rig) == [scene.frame_start + i for i in range(4)]
    from dpose_core.motion import FLAG_INTERPOLATED

    interpolated = (motion.flags & FLAG_INTERPOLATED) != 0
    assert interpolated[1] and not interpolated[[0, 2, 3]].any()


def test_opening_a_file_during_a_job_abandons_it(ext, video_file, tmp_path):
    """File > Open while a job runs: the job stops, never builds into the new file, and does
    not block the next job."""
    import bpy

    other = tmp_path / "other.blend"
    bpy.ops.wm.save_as_mainfile(filepath=str(other))
    job = _start_sequence(ext, video_file)
    bpy.ops.wm.open_mainfile(filepath=str(other))
    assert ext.jobs.active_job() is None and job.cancel_event.is_set()
    assert job.wait(timeout=300)
    assert not _rigs() and not bpy.data.collections
    assert bpy.context.scene.dpose.last_report == ""


def test_cancel_keeps_processed_frames(ext, folder_with_corrupt_frame, tmp_path):
    """Cancel after the first processed frame, driving the modal loop's drain by hand."""
    import shutil

    import bpy

    folder = tmp_path / "frames"
    folder.mkdir()
    for p in sorted(folder_with_corrupt_frame.iterdir()):
        if p.name != "f001.png":
            shutil.copy(p, folder / p.name)
    scene = bpy.context.scene
    job = _start_sequence(ext, folder)
    deadline = time.time() + 300
    while not job.drain():
        if job.progress.done >= 1 and not job.cancel_event.is_set():
            job.cancel()  # what Esc / the Cancel button do
        assert time.time() < deadline
        time.sleep(0.01)
    assert job.state == ext.jobs.CANCELLED, job.error_text
    (rig,) = _rigs()
    frames = _keyed_frames(ext, rig)
    assert 1 <= len(frames) < 3
    assert frames == [scene.frame_start + i for i in range(len(frames))]
    # A valid action: every channel holds exactly the processed frames.
    counts = {len(fc.keyframe_points) for fc in ext.anim_compat.iter_fcurves(rig)}
    assert counts == {len(frames)}


def test_failure_while_building_rolls_back_and_reports(ext, image_file, monkeypatch):
    """An error after the rigs exist (here: the camera step) leaves the scene as it was."""
    import bpy

    scene = bpy.context.scene
    scene.frame_start, scene.frame_end = 3, 9
    before = {kind: len(getattr(bpy.data, kind))
              for kind in ("objects", "collections", "armatures", "actions", "cameras")}

    def refuse(*args, **kwargs):
        raise RuntimeError("camera refused")

    import importlib

    scene_camera = importlib.import_module(f"{EXT}.dpose_blender.scene_camera")
    monkeypatch.setattr(scene_camera, "ensure_camera", refuse)
    scene.dpose.image_path = str(image_file)
    scene.dpose.people = "LARGEST"
    with pytest.raises(RuntimeError, match="camera refused"):
        bpy.ops.dpose.estimate_image()
    after = {kind: len(getattr(bpy.data, kind)) for kind in before}
    assert after == before
    assert (scene.frame_start, scene.frame_end, scene.camera) == (3, 9, None)
    assert scene.dpose.last_report == "Image failed: camera refused"
    assert ext.jobs.active_job() is None

    # Keying onto a rig that was deleted while the job ran: a message saying what to do.
    monkeypatch.undo()
    request = ext.panel_jobs.image_request(bpy.context)
    job = ext.operators.start_job(bpy.context, request)
    job.wait(timeout=300)
    request.scene.target_rig = "Deleted rig"
    from dpose_core.errors import DPoseError

    with pytest.raises(Exception, match="renamed or deleted.*select a D-PoSE rig") as info:
        ext.panel_jobs.build(scene, request, job.result)
    assert type(info.value).__name__ == DPoseError.__name__


def test_farm_exports_one_motion_and_bvh_file_per_person(ext, body_model_npz, tmp_path):
    """Several people: every track gets its own .npz and .bvh (named as the CLI names them)."""
    import bpy

    motion_mod = sys.modules[f"{EXT}.dpose_core.motion"]
    body_model = sys.modules[f"{EXT}.dpose_core.body_model"].BodyModel.load(body_model_npz)
    motion_import = importlib.import_module(f"{EXT}.dpose_blender.motion_import")
    rng = np.random.default_rng(3)
    motions, created = {}, []
    for track in (0, 1):
        rotmats = np.tile(np.eye(3), (4, 55, 1, 1))
        rotmats[:, 1] = _rotation_about_z(rng.uniform(-1, 1, 4))
        motions[track] = motion_mod.Motion(rotmats=rotmats, transl=rng.normal(0, 1, (4, 3)),
                                           betas=np.zeros(11), fps=25.0)
        created.append(motion_import.import_motion(motions[track], body_model, with_mesh=False,
                                                   name=f"D-PoSE Track {track}"))
    takes = [ext.scene_builder.Take(f"D-PoSE Track {t}", motions[t]) for t in (0, 1)]
    args = argparse.Namespace(output=str(tmp_path / "out.blend"), npz=str(tmp_path / "m.npz"),
                              fbx=None, bvh=str(tmp_path / "m.bvh"))
    ext.headless.save_outputs(created, takes, args)
    for track in (0, 1):
        with np.load(tmp_path / f"m_track{track}.npz", allow_pickle=False) as saved:
            np.testing.assert_allclose(saved["pose_body"][:, :3],
                                       motions[track].as_axis_angle()[:, 1], atol=1e-12)
        assert (tmp_path / f"m_track{track}.bvh").read_text().startswith("HIERARCHY")
    assert not (tmp_path / "m.npz").exists() and (tmp_path / "out.blend").is_file()
    assert bpy.data.filepath == str(tmp_path / "out.blend")


def _rotation_about_z(angles):
    c, s = np.cos(angles), np.sin(angles)
    out = np.zeros((len(angles), 3, 3))
    out[:, 0, 0], out[:, 0, 1], out[:, 1, 0], out[:, 1, 1], out[:, 2, 2] = c, -s, s, c, 1
    return out


# ----------------------------------------------------------------------------- panel behaviour
def test_rerun_with_the_same_start_frame_replaces_the_same_frames(ext, video_file):
    """Source frames First.. land from Start Frame, the footage in step; a re-run lands on the
    same frames (it used to move 10 frames later each time), onto the selected rig too."""
    import bpy

    scene = bpy.context.scene
    job = _start_sequence(ext, video_file, frame_first=1, start_frame=20)
    assert job.wait(timeout=300) and job.state == ext.jobs.DONE, job.error_text
    (rig,) = _rigs()
    assert _keyed_frames(ext, rig) == [20, 21]
    assert (scene.frame_start, scene.frame_end) == (20, 21)
    user = scene.camera.data.background_images[0].image_user
    assert 20 - user.frame_start + user.frame_offset == 1  # source frame 1 shows at frame 20

    bpy.context.view_layer.objects.active = rig
    job = _start_sequence(ext, video_file, frame_first=1, start_frame=20, key_selected=True)
    assert job.wait(timeout=300) and job.state == ext.jobs.DONE, job.error_text
    assert _rigs() == [rig] and _keyed_frames(ext, rig) == [20, 21]
    assert {len(fc.keyframe_points) for fc in ext.anim_compat.iter_fcurves(rig)} == {2}


def test_nobody_found_is_a_warning_with_the_reason_and_nothing_is_done(ext, video_file,
                                                                      monkeypatch):
    import bpy

    class NobodyFinder:
        def find(self, image, hints=()):
            return []

    localise = sys.modules[f"{EXT}.dpose_core.localise"]
    monkeypatch.setattr(localise, "make_finder", lambda *args, **kwargs: NobodyFinder())
    s = bpy.context.scene.dpose
    s.sequence_path, s.people = str(video_file), "ALL"
    assert bpy.ops.dpose.estimate_sequence() == {"CANCELLED"}
    assert not _rigs() and not bpy.data.collections
    assert s.last_report_level == "WARNING"
    assert s.last_report.startswith("Sequence: nothing created: Nobody was found in")
    assert "turn on Person Box" in s.last_report and "done" not in s.last_report


def test_a_job_that_cannot_start_replaces_the_old_status_line(ext, video_file):
    import bpy

    s = bpy.context.scene.dpose
    s.last_report = "Sequence: done, 1 rig(s)"
    s.sequence_path, s.use_box, s.box = str(video_file), True, (200, 300, 260, 400)
    with pytest.raises(RuntimeError, match="Person Box 200, 300, 260, 400 lies outside the "
                                           "96x120 frames"):
        bpy.ops.dpose.estimate_sequence()
    assert s.last_report.startswith("Sequence did not start: The Person Box")
    assert s.last_report_level == "ERROR"
    assert ext.jobs.active_job() is None and not _rigs()
    s.sequence_path = ""
    with pytest.raises(RuntimeError, match="Choose a video file"):
        bpy.ops.dpose.estimate_sequence()
    assert s.last_report == "Sequence did not start: Choose a video file or a folder of images."


def _saved_motion(tmp_path, n=3, **extra):
    from dpose_core.motion import Motion
    from dpose_core.motion_io import save_motion_npz

    motion = Motion(rotmats=np.tile(np.eye(3), (n, 55, 1, 1)), transl=np.zeros((n, 3)) + 3.0,
                    betas=np.zeros(11), fps=30.0, **extra)
    return save_motion_npz(tmp_path / "walk.npz", motion)


def test_import_motion_is_in_file_import_and_honours_mesh_and_start_frame(ext, tmp_path):
    import bpy

    assert ext.operators.menu_import in bpy.types.TOPBAR_MT_file_import._dyn_ui_initialize()
    s = bpy.context.scene.dpose
    s.add_mesh, s.start_frame = True, 5
    assert bpy.ops.dpose.import_motion(filepath=str(_saved_motion(tmp_path))) == {"FINISHED"}
    (rig,) = _rigs()
    assert _keyed_frames(ext, rig) == [5, 6, 7]
    assert [c.type for c in rig.children] == ["MESH"]
    assert bpy.ops.dpose.import_motion(filepath=str(tmp_path / "walk.npz"),
                                       add_mesh=False) == {"FINISHED"}
    assert len(_rigs()) == 2 and not _rigs()[1].children


@pytest.mark.parametrize("content, message", [
    (b"frame,x\n0,1\n", "walk.npz is a text file, not a motion .npz archive"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "walk.npz is a PNG image, not a motion .npz"),
])
def test_import_motion_names_a_file_that_is_no_npz(ext, tmp_path, content, message):
    import bpy

    (tmp_path / "walk.npz").write_bytes(content)
    with pytest.raises(RuntimeError, match=message):
        bpy.ops.dpose.import_motion(filepath=str(tmp_path / "walk.npz"))
    assert not bpy.data.objects


def test_import_motion_with_huge_frame_numbers_builds_nothing(ext, tmp_path):
    import bpy

    path = _saved_motion(tmp_path, n=2, frame_indices=[0, 2**40])
    with pytest.raises(RuntimeError, match="outside Blender's 0..1048574"):
        bpy.ops.dpose.import_motion(filepath=str(path))
    assert not (bpy.data.objects or bpy.data.armatures or bpy.data.actions)
    assert bpy.context.scene.dpose.last_report.startswith("Import failed: The motion's frames")


def _world_head(obj, bone):
    return np.array(obj.matrix_world) @ np.array([*obj.pose.bones[bone].head, 1.0])


def test_exports_from_the_panel_write_npz_fbx_bvh_and_gltf(ext, tmp_path):
    import bpy

    from dpose_core.motion_io import load_motion_npz

    assert bpy.ops.dpose.import_motion(filepath=str(_saved_motion(tmp_path))) == {"FINISHED"}
    (rig,) = _rigs()
    bpy.context.view_layer.objects.active = rig
    bpy.context.scene.frame_set(1)
    pelvis, head = _world_head(rig, "pelvis"), _world_head(rig, "head")
    out = tmp_path / "out"
    out.mkdir()
    assert bpy.ops.dpose.export_npz(filepath=str(out / "m.npz")) == {"FINISHED"}
    back = load_motion_npz(out / "m.npz")
    np.testing.assert_allclose(back.transl, 3.0, atol=1e-6)
    assert len(back) == 3
    assert bpy.ops.dpose.export_fbx(filepath=str(out / "m.fbx")) == {"FINISHED"}
    assert (out / "m.fbx").read_bytes().startswith(b"Kaydara FBX Binary")
    assert bpy.ops.dpose.export_fbx(filepath=str(out / "ue.fbx"), preset="unreal") == {
        "FINISHED"}
    assert bpy.ops.dpose.export_bvh(filepath=str(out / "m.bvh")) == {"FINISHED"}
    assert (out / "m.bvh").read_text().startswith("HIERARCHY")
    assert bpy.ops.dpose.export_gltf(filepath=str(out / "m.glb")) == {"FINISHED"}
    assert (out / "m.glb").read_bytes()[:4] == b"glTF"
    assert sorted(p.name for p in out.iterdir()) == ["m.bvh", "m.fbx", "m.glb", "m.npz",
                                                      "ue.fbx"]  # no temp left
    # The BVH is Y-up now: Blender's importer puts every joint where the rig has it.
    before = set(bpy.data.objects)
    bpy.ops.import_anim.bvh(filepath=str(out / "m.bvh"))
    (imported,) = [o for o in bpy.data.objects if o not in before]
    bpy.context.scene.frame_set(1)
    np.testing.assert_allclose(_world_head(imported, "pelvis"), pelvis, atol=1e-3)
    np.testing.assert_allclose(_world_head(imported, "head"), head, atol=1e-3)
    assert np.linalg.norm(head - pelvis) > 0.3  # so the test sees a flip
    bpy.data.objects.remove(imported)
    bpy.context.view_layer.objects.active = rig
    # The file the rig was made from is never overwritten.
    before = (tmp_path / "walk.npz").read_bytes()
    with pytest.raises(RuntimeError, match="is an input of this scene"):
        bpy.ops.dpose.export_npz(filepath=str(tmp_path / "walk.npz"))
    assert (tmp_path / "walk.npz").read_bytes() == before
    panel_log = _draw_all(ext, bpy.context)
    assert {("operator", f"dpose.export_{f}") for f in ("npz", "fbx", "bvh", "gltf")} <= set(
        panel_log)


# ----------------------------------------------------------------------------- one pipeline
@pytest.fixture(scope="module")
def astronaut_png(tmp_path_factory):
    """A real photo shipped with scikit-image (512 x 512), written as a PNG."""
    import cv2
    from skimage import data

    path = tmp_path_factory.mktemp("photo") / "astronaut.png"
    cv2.imwrite(str(path), data.astronaut()[:, :, ::-1])
    return path


def test_cli_panel_and_farm_script_agree_on_a_real_photo(ext, astronaut_png, checkpoint_path,
                                                         onnx_cache_dir, tmp_path, monkeypatch):
    """The same photo and options, people found automatically, through the three entry
    points: the CLI's JSON, the panel's rigs seen through the panel's camera and the farm
    script's motion files give the same 2D joints (<= 0.5 px) and rotations (<= 1e-5)."""
    import bpy

    from dpose_core.body_model import BODY_MODEL_PREFIX, BodyModel
    from dpose_core.camera import project
    from dpose_core.checkpoint import load_checkpoint_arrays
    from dpose_core.cli import main as cli_main
    from dpose_core.motion_io import load_motion_npz
    from dpose_core.sequence import track_output_paths
    from dpose_core.skeleton import JOINT_NAMES

    monkeypatch.setenv("DPOSE_CACHE", str(onnx_cache_dir))
    cli_json = tmp_path / "cli.json"
    assert cli_main(["estimate", str(astronaut_png), "--checkpoint", str(checkpoint_path),
                     "--device", "cpu", "-o", str(cli_json)]) == 0
    cli = json.loads(cli_json.read_text())
    cli_rotmats, cli_joints2d = np.array(cli["rotmats"]), np.array(cli["joints2d"])[:, :55]
    people = len(cli_rotmats)
    assert people >= 1

    # The panel: one rig per person, keyed at the current frame, and the matching camera.
    scene = bpy.context.scene
    scene.dpose.image_path, scene.dpose.people = str(astronaut_png), "ALL"
    scene.dpose.ground = "OFF"  # the camera-frame solve, as in the CLI's per-crop JSON
    assert bpy.ops.dpose.estimate_image() == {"FINISHED"}
    rigs = [bpy.data.objects[f"D-PoSE Person {k}"] for k in range(people)]
    assert len(_rigs()) == people
    scene_camera = sys.modules[f"{EXT}.dpose_blender.scene_camera"]
    for k, rig in enumerate(rigs):
        heads = np.array([(rig.matrix_world @ rig.pose.bones[n].head)[:] for n in JOINT_NAMES])
        panel_2d = scene_camera.project_to_pixels(scene, scene.camera, heads)
        assert np.abs(panel_2d - cli_joints2d[k]).max() <= 0.5
        panel_rot = ext.keyframes.read_motion_keys(rig).rotmats[0, :22]
        assert np.abs(panel_rot - cli_rotmats[k]).max() <= 1e-5

    # The farm script: one motion file per person, named as the CLI names them.
    npz = tmp_path / "farm.npz"
    code = ext.headless.main(["blender", "--", "--input", str(astronaut_png),
                              "--output", str(tmp_path / "farm.blend"), "--npz", str(npz),
                              "--checkpoint", str(checkpoint_path), "--device", "cpu",
                              "--cache-dir", str(onnx_cache_dir), "--ground", "off"])
    assert code == 0
    body = BodyModel.from_arrays(load_checkpoint_arrays(checkpoint_path, only=BODY_MODEL_PREFIX))
    for k, path in track_output_paths(npz, list(range(people))).items():
        motion = load_motion_npz(path)
        assert np.abs(motion.rotmats[0, :22] - cli_rotmats[k]).max() <= 1e-5
        joints = motion.body_output(body).joints[:, :55]
        farm_2d = project(joints, np.zeros((1, 3)), motion.focal_px[:1],
                          motion.principal_point[:1])[0]
        assert np.abs(farm_2d - cli_joints2d[k]).max() <= 0.5
