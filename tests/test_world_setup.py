"""Grounded motion in Blender: the rig on the floor, the D-PoSE camera placed (and keyed when
it moves) so the overlay holds, contacts and quality keyed on the rig, markers, the floor, an
animated Blender camera read back as a camera track, and the scene left alone on failure."""

import numpy as np
import pytest

from dpose_core.body_model import BodyModel
from dpose_core.refine import refine_motion
from dpose_core.skeleton import JOINT_NAMES
from tests import synth_walk as sw
from tests.blender_support import import_blender_module

pytestmark = pytest.mark.blender

BETAS = np.random.default_rng(1).normal(0, 1, 11)
STILL_CAMERA = sw.look_at((1.6, -4.2, 1.9), (1.0, 0.0, 0.8), roll_deg=2.0)
START = 5  # scene frame of source frame 0


@pytest.fixture(scope="module")
def body_model(body_model_npz):
    return BodyModel.load(body_model_npz)


@pytest.fixture(scope="module")
def walk(body_model):
    truth = sw.walk(body_model, BETAS, seconds=1.2)
    raw = sw.network_solve(body_model, sw.to_camera(body_model, truth, STILL_CAMERA), seed=0)
    refined, report = refine_motion(raw, body_model)
    return raw, refined, report


def _footage(n):
    sb = import_blender_module("scene_builder")
    return sb.Footage(path="/nonexistent/walk.mp4", kind="video",
                      image_size=tuple(int(v) for v in sw.IMAGE_SIZE), focal_px=sw.FOCAL,
                      principal_point=tuple(sw.IMAGE_SIZE / 2), last_source_frame=n - 1)


def _build(takes, body_model, **options):
    import bpy

    sb = import_blender_module("scene_builder")
    return sb.build_scene(bpy.context.scene, takes, body_model,
                          sb.SceneOptions(start_frame=START, **options),
                          footage=_footage(max(len(t.motion) for t in takes)))


def _project(points_cam):
    return points_cam[..., :2] / points_cam[..., 2:3] * sw.FOCAL + sw.IMAGE_SIZE / 2


def _heads(rig):
    return np.array([(rig.matrix_world @ rig.pose.bones[n].head)[:] for n in JOINT_NAMES[:22]])


def test_grounded_rig_stands_on_the_floor_and_keeps_the_overlay(body_model, walk):
    import bpy

    sb = import_blender_module("scene_builder")
    scene_camera = import_blender_module("scene_camera")
    raw, refined, report = walk
    created = _build([sb.Take("D-PoSE Track 0", refined, report=report)], body_model,
                     add_floor=True)
    rig = next(o for o in created if o.type == "ARMATURE")
    scene = bpy.context.scene
    cam = scene.camera
    floor = bpy.data.objects["D-PoSE Floor"]
    assert max(abs(v.co.z) for v in floor.data.vertices) == 0.0
    world = body_model.forward(refined.rotmats, refined.betas, refined.transl,
                               return_vertices=False).joints[:, :22]
    raw_joints = body_model.forward(raw.rotmats, raw.betas, raw.transl,
                                    return_vertices=False).joints[:, :22]
    extra = []
    for t in (0, 11, len(refined) - 1):
        scene.frame_set(START + t)
        heads = _heads(rig)
        assert np.abs(heads - world[t]).max() < 1e-4  # the rig is the grounded body
        got = scene_camera.project_to_pixels(scene, cam, heads)
        inv = np.linalg.inv(refined.camera_to_world[t])
        exact = _project(world[t] @ inv[:3, :3].T + inv[:3, 3])
        assert np.abs(got - exact).max() <= 0.5  # overlay through the placed camera
        raw_px = _project(raw_joints[t])
        extra.append(np.linalg.norm(got - raw_px, axis=1).mean()
                     - np.linalg.norm(exact - raw_px, axis=1).mean())
    assert max(abs(e) for e in extra) <= 0.5  # no residual beyond what the core reports
    assert world[..., 2].min() > 0.0  # every joint above the floor


def test_contacts_and_quality_are_keyed_on_the_rig(body_model, walk):
    import bpy

    sb = import_blender_module("scene_builder")
    anim_compat = import_blender_module("anim_compat")
    world_setup = import_blender_module("world_setup")
    _, refined, report = walk
    report.penetration_mm[3:5] = 30.0  # two frames to look at
    try:
        created = _build([sb.Take("D-PoSE Track 0", refined, report=report)], body_model)
    finally:
        report.penetration_mm[3:5] = 0.0
    rig = next(o for o in created if o.type == "ARMATURE")
    n = len(refined)
    for k, prop in enumerate(world_setup.CONTACT_PROPS):
        assert prop in rig
        fc = anim_compat.find_fcurve(rig, f'["{prop}"]')
        co = np.empty(2 * n, np.float32)
        fc.keyframe_points.foreach_get("co", co)
        np.testing.assert_array_equal(co[1::2], refined.contacts[:, k].astype(np.float32))
        np.testing.assert_array_equal(co[0::2], START + refined.frame_indices)
        assert {p.interpolation for p in fc.keyframe_points} == {"CONSTANT"}
    skate = anim_compat.find_fcurve(rig, '["dpose_foot_skate_mm"]')
    assert len(skate.keyframe_points) == n
    assert skate.evaluate(START + 7) == pytest.approx(report.skate_mm[7], abs=1e-3)
    markers = [m for m in bpy.context.scene.timeline_markers if "penetration" in m.name]
    assert [m.frame for m in markers] == [START + 3]


def test_a_moving_camera_is_keyed_and_other_people_join_the_first_world(body_model):
    import bpy

    sb = import_blender_module("scene_builder")
    scene_camera = import_blender_module("scene_camera")
    truth = sw.walk(body_model, BETAS, seconds=1.0)
    n = len(truth.transl)
    cams = np.stack([sw.look_at((0.2 + 0.03 * i, -4.0, 1.8), (1.0, 0.0, 0.8)) for i in range(n)])
    raw = sw.network_solve(body_model, sw.to_camera(body_model, truth, cams), seed=2)
    first, report = refine_motion(raw, body_model, camera_to_world=cams)
    second, _ = refine_motion(raw, body_model, ground="none", foot_lock=0.0)  # another world
    created = _build([sb.Take("A", first, report=report), sb.Take("B", second)], body_model)
    scene = bpy.context.scene
    rig_a, rig_b = [o for o in created if o.type == "ARMATURE"]
    assert scene.camera.animation_data is not None  # keyed: the camera moves
    def seen(motion, t):  # the body's joints through its own camera (the core's overlay)
        joints = body_model.forward(motion.rotmats[t:t + 1], motion.betas,
                                    motion.transl[t:t + 1], return_vertices=False).joints[0, :22]
        inv = np.linalg.inv(motion.camera_to_world[t])
        return _project(joints @ inv[:3, :3].T + inv[:3, 3])

    for t in (0, n // 2, n - 1):
        scene.frame_set(START + t)
        pose = first.camera_to_world[t] @ np.diag([1.0, -1.0, -1.0, 1.0])
        assert np.abs(np.array(scene.camera.matrix_world) - pose).max() < 1e-4
        a = scene_camera.project_to_pixels(scene, scene.camera, _heads(rig_a))
        b = scene_camera.project_to_pixels(scene, scene.camera, _heads(rig_b))
        assert np.abs(a - seen(first, t)).max() <= 0.5
        assert np.abs(b - seen(second, t)).max() <= 0.5  # moved into A's world, still on B


def test_an_animated_blender_camera_becomes_the_camera_track():
    import bpy

    world_setup = import_blender_module("world_setup")
    scene = bpy.context.scene
    cam = bpy.data.objects.new("Tracked", bpy.data.cameras.new("Tracked"))
    scene.collection.objects.link(cam)
    for frame, x in ((10, 0.0), (20, 2.0)):
        cam.location = (x, -5.0, 1.5)
        cam.rotation_euler = (1.4, 0.0, 0.1 * x)
        cam.keyframe_insert("location", frame=frame)
        cam.keyframe_insert("rotation_euler", frame=frame)
    scene.frame_set(3)
    track = world_setup.camera_track(cam, scene, 10, [0, 5, 10])
    assert scene.frame_current == 3  # put back
    got = track(np.array([10, 0]))
    scene.frame_set(20)
    expected = np.array(cam.matrix_world) @ np.diag([1.0, -1.0, -1.0, 1.0])
    np.testing.assert_allclose(got[0], expected, atol=1e-6)
    assert got[1][0, 3] == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(Exception, match="not sampled at source frame 7"):
        track(np.array([7]))


def test_a_failure_leaves_the_scene_as_it_was(body_model, walk, monkeypatch):
    import bpy

    sb = import_blender_module("scene_builder")
    world_setup = import_blender_module("world_setup")
    _, refined, report = walk
    before = {o.name for o in bpy.data.objects}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(world_setup, "floor_plane", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        _build([sb.Take("D-PoSE Track 0", refined, report=report)], body_model, add_floor=True)
    assert {o.name for o in bpy.data.objects} == before
    assert len(bpy.data.actions) == 0


def test_an_images_people_are_grounded_with_the_feet_the_network_saw(body_model):
    from types import SimpleNamespace

    from dpose_core.part_labels import PART_CLASS
    from dpose_core.pipeline import RunOptions

    sb = import_blender_module("scene_builder")
    world_setup = import_blender_module("world_setup")
    one = sw.to_camera(body_model, sw.standing(body_model, BETAS), STILL_CAMERA)
    confidence = {}
    for part in (0, PART_CLASS["leftFoot"]):
        images = SimpleNamespace(rows_of_image=lambda image: np.array([0]),
                                 estimate=SimpleNamespace(
                                     part_labels=np.full((1, 224, 224), part, np.uint8)))
        (take,) = world_setup.refine_takes([sb.Take("D-PoSE Person 0", one)], body_model,
                                           RunOptions(), images=images)
        assert take.motion.coordinate_frame == "world_z_up" and take.report is not None
        assert take.report.foot_lock == 0.0  # one frame: grounded, not locked
        confidence[part] = take.motion.contact_confidence[0, 0]
    assert confidence[PART_CLASS["leftFoot"]] > confidence[0]
