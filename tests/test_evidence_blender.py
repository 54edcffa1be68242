"""Part agreement and the part overlay in the scene: curves, markers, camera alignment,
and the scene left as it was when the overlay cannot be built."""

from types import SimpleNamespace

import numpy as np
import pytest

from dpose_core.body_model import BodyModel
from dpose_core.motion import Motion
from dpose_core.overlay_frames import OverlaySequence, overlay_file, write_still_overlay
from tests.blender_support import import_blender_module

pytestmark = pytest.mark.blender

W, H = 160, 120
FOCAL, PRINCIPAL = 150.0, (78.0, 63.0)


@pytest.fixture(scope="module")
def body(body_model_npz) -> BodyModel:
    return BodyModel.load(body_model_npz)


def _motion(n: int, mean_rows) -> Motion:
    """A still body over n frames whose only scored class (the head, 4) has these IoUs."""
    rot = np.broadcast_to(np.eye(3), (n, 22, 3, 3)).copy()
    part_iou = np.full((n, 23), np.nan)
    part_iou[:, 4] = mean_rows
    silhouette = np.asarray(mean_rows, float) + 0.05
    return Motion.from_predictions(
        rot, np.tile([0.0, 0.0, 3.0], (n, 1)), np.zeros(11), 25.0,
        frame_indices=np.arange(n), focal_px=np.full((n, 2), FOCAL),
        principal_point=np.tile(PRINCIPAL, (n, 1)), image_size=np.array([W, H]),
    ).replace(part_iou=part_iou, silhouette_iou=silhouette)


def _keys(rig, prop: str) -> np.ndarray:
    anim_compat = import_blender_module("anim_compat")
    fcurve = anim_compat.find_fcurve(rig, f'["{prop}"]')
    co = np.empty(2 * len(fcurve.keyframe_points), np.float32)
    fcurve.keyframe_points.foreach_get("co", co)
    return co.reshape(-1, 2)


def test_scores_are_keyed_and_low_runs_marked(body):
    import bpy

    scene_builder = import_blender_module("scene_builder")
    evidence = import_blender_module("evidence")
    means = [0.9, 0.2, 0.3, np.nan, 0.8, 0.1]
    take = scene_builder.Take("D-PoSE Track 0", _motion(6, means))
    options = scene_builder.SceneOptions(start_frame=11, low_part_iou=0.4)
    rig = scene_builder.build_scene(bpy.context.scene, [take], body, options)[0]
    keys = _keys(rig, evidence.PROP_PART_IOU_MEAN)
    np.testing.assert_array_equal(keys[:, 0], [11, 12, 13, 15, 16])  # frame 14 not scored
    np.testing.assert_allclose(keys[:, 1], [0.9, 0.2, 0.3, 0.8, 0.1], atol=1e-6)
    silhouette = _keys(rig, evidence.PROP_SILHOUETTE_IOU)
    np.testing.assert_allclose(silhouette[:, 1], [0.95, 0.25, 0.35, 0.85, 0.15], atol=1e-6)
    marked = sorted(m.frame for m in bpy.context.scene.timeline_markers
                    if m.name == evidence.LOW_PART_MARKER)
    assert marked == [12, 16]  # one marker per run of low frames
    # Keying the same range again replaces the keys and markers, never doubles them.
    evidence.key_part_scores(rig, _motion(6, [0.9] * 6), 11, bpy.context.scene, 0.4)
    np.testing.assert_allclose(_keys(rig, evidence.PROP_PART_IOU_MEAN)[:, 1], [0.9] * 6)
    assert not [m for m in bpy.context.scene.timeline_markers
                if m.name == evidence.LOW_PART_MARKER]


def _labels_with_a_box(rows: slice, cols: slice) -> np.ndarray:
    labels = np.zeros((1, 224, 224), np.uint8)
    labels[0, rows, cols] = 4  # the head class
    return labels


def _pixel_edges(png_path) -> tuple[float, float, float, float]:
    """Left, top, right, bottom edges (continuous px) of the painted pixels of an RGBA PNG."""
    import cv2

    rgba = cv2.imread(str(png_path), cv2.IMREAD_UNCHANGED)
    assert rgba.shape == (H, W, 4)
    ys, xs = np.nonzero(rgba[:, :, 3])
    return xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0


def test_overlay_sits_on_the_crop_pixels_through_the_blender_camera(body, tmp_path):
    import bpy
    import cv2
    import mathutils

    scene_builder = import_blender_module("scene_builder")
    scene_camera = import_blender_module("scene_camera")
    footage_png = tmp_path / "photo.png"
    cv2.imwrite(str(footage_png), np.full((H, W, 3), 90, np.uint8))
    crop_box = np.array([[20.0, -10.0, 140.0, 110.0]])  # 120 px square, partly above the image
    estimate = SimpleNamespace(part_labels=_labels_with_a_box(slice(40, 180), slice(60, 150)),
                               crop_box=crop_box)
    folder = tmp_path / "overlay"
    folder.mkdir()
    write_still_overlay(overlay_file(folder, 0), estimate, [0], (W, H))
    scale = 120.0 / 224.0
    boundary = np.array([20 + 60 * scale, -10 + 40 * scale, 20 + 150 * scale, -10 + 180 * scale])
    np.testing.assert_allclose(_pixel_edges(overlay_file(folder, 0)), boundary, atol=0.5)

    footage = scene_builder.Footage(path=str(footage_png), kind="image", image_size=(W, H),
                                    focal_px=FOCAL, principal_point=PRINCIPAL)
    take = scene_builder.Take("D-PoSE Person 0", _motion(1, [0.7]))
    created = scene_builder.build_scene(
        bpy.context.scene, [take], body, scene_builder.SceneOptions(), footage=footage,
        part_overlay=OverlaySequence(folder, 0, 0))
    cam = next(o for o in created if o.type == "CAMERA")
    backgrounds = list(cam.data.background_images)
    assert len(backgrounds) == 2 and backgrounds[0].image.filepath.endswith("photo.png")
    overlay = backgrounds[1]
    assert overlay.image.filepath.endswith(overlay_file(folder, 0).name)
    assert tuple(overlay.image.size) == (W, H) and overlay.frame_method == "STRETCH"
    assert (bpy.context.scene.render.resolution_x, bpy.context.scene.render.resolution_y) == (W, H)
    # Label boundary corners, 3 m in front of the camera (OpenCV), projected by Blender's own
    # camera: they land on the overlay's painted edges (stretched over the camera frame).
    corners = np.array([[boundary[0], boundary[1]], [boundary[2], boundary[3]],
                        [boundary[0], boundary[3]], [boundary[2], boundary[1]]])
    depth = 3.0
    cv_points = np.column_stack([(corners[:, 0] - PRINCIPAL[0]) / FOCAL * depth,
                                 (corners[:, 1] - PRINCIPAL[1]) / FOCAL * depth,
                                 np.full(4, depth)])
    blender_cam = cv_points * [1.0, -1.0, -1.0]  # OpenCV camera axes -> Blender camera axes
    world = np.array([list(cam.matrix_world @ mathutils.Vector(p)) for p in blender_cam])
    projected = scene_camera.project_to_pixels(bpy.context.scene, cam, world)
    edges = _pixel_edges(overlay_file(folder, 0))
    painted = np.array([[edges[0], edges[1]], [edges[2], edges[3]], [edges[0], edges[3]],
                        [edges[2], edges[1]]])
    assert np.abs(projected - painted).max() <= 0.5


def test_an_overlay_that_cannot_load_leaves_the_scene_as_it_was(body, tmp_path):
    import bpy

    from dpose_core.errors import DPoseError

    scene_builder = import_blender_module("scene_builder")
    scene = bpy.context.scene
    before = (len(bpy.data.objects), len(bpy.data.actions), len(scene.timeline_markers),
              len(bpy.data.cameras))
    footage = scene_builder.Footage(path=str(tmp_path / "none.png"), kind="image",
                                    image_size=(W, H), focal_px=FOCAL, principal_point=PRINCIPAL)
    take = scene_builder.Take("D-PoSE Person 0", _motion(3, [0.1, 0.2, 0.9]))
    with pytest.raises(DPoseError, match="part overlay"):
        scene_builder.build_scene(scene, [take], body, scene_builder.SceneOptions(),
                                  footage=footage,
                                  part_overlay=OverlaySequence(tmp_path / "missing", 0, 2))
    assert (len(bpy.data.objects), len(bpy.data.actions), len(scene.timeline_markers),
            len(bpy.data.cameras)) == before


def test_the_legend_has_a_swatch_per_predicted_class():
    evidence = import_blender_module("evidence")
    from dpose_core.overlay import legend

    icons = evidence.legend_icons()
    assert [name for name, _ in icons] == [name for _, name, _ in legend()] and len(icons) == 21
    for (_, preview), (_, _, rgb) in zip(icons, legend(), strict=True):
        pixels = np.empty(16 * 16 * 4, np.float32)
        preview.image_pixels_float.foreach_get(pixels)
        np.testing.assert_allclose(pixels.reshape(-1, 4)[0], [*(np.array(rgb) / 255.0), 1.0],
                                   atol=1e-6)
    evidence.release_icons()


def test_headless_overlay_and_scores_in_the_blend(tmp_path, checkpoint_path, onnx_cache_dir):
    """The farm script: --overlay puts the part map behind the rig as an image sequence; the
    rig carries the part-agreement curve, the npz the scores."""
    import json
    import subprocess
    import sys

    import cv2

    from tests.test_headless import HEADLESS

    frames = tmp_path / "frames"
    frames.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        img = rng.uniform(0, 40, (120, 96, 3)).astype(np.uint8)
        cv2.rectangle(img, (34 + i, 20), (62 + i, 100), (200, 180, 160), -1)
        cv2.imwrite(str(frames / f"frame_{i:04d}.png"), img)
    out_blend, cache = tmp_path / "out.blend", tmp_path / "cache"
    proc = subprocess.run(
        [sys.executable, str(HEADLESS), "--", "--input", str(frames), "--output", str(out_blend),
         "--checkpoint", str(checkpoint_path), "--device", "cpu", "--cache-dir", str(cache),
         "--npz", str(tmp_path / "m.npz"), "--bbox", "20,5,80,115", "--overlay",
         "--frame-start", "5", "--low-part-iou", "1"],
        capture_output=True, text=True, timeout=400, cwd=tmp_path,
        env={**__import__("os").environ, "DPOSE_CACHE": str(onnx_cache_dir)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with np.load(tmp_path / "m.npz") as npz:
        part_iou, silhouette = npz["dpose_part_iou"], npz["dpose_silhouette_iou"]
    assert part_iou.shape == (3, 23) and silhouette.shape == (3,)
    overlays = sorted((cache / "overlay").glob("*/part_overlay_*.png"))
    assert [p.name for p in overlays] == [f"part_overlay_{f:06d}.png" for f in range(3)]
    script = (
        "import bpy, json\n"
        f"bpy.ops.wm.open_mainfile(filepath={str(out_blend)!r})\n"
        "rig = next(o for o in bpy.data.objects if o.type == 'ARMATURE')\n"
        "cam = bpy.context.scene.camera\n"
        "act = rig.animation_data.action\n"  # slotted actions from 4.4, legacy in 4.2
        "fcs = (act.layers[0].strips[0].channelbags[0].fcurves if getattr(act, 'layers', None)"
        " else act.fcurves)\n"
        "fc = fcs.find('[\"dpose_part_iou_mean\"]')\n"
        "bgs = cam.data.background_images\n"
        "user = bgs[1].image_user\n"
        "print('RESULT', json.dumps({'keys': [list(k.co) for k in fc.keyframe_points],"
        " 'backgrounds': len(bgs), 'source': bgs[1].image.source,"
        " 'first_shown': 5 - user.frame_start + user.frame_offset + 1,"
        " 'markers': sorted(m.frame for m in bpy.context.scene.timeline_markers"
        " if m.name == 'D-PoSE: low part agreement')}))\n")
    opened = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    line = next(ln for ln in opened.stdout.splitlines() if ln.startswith("RESULT"))
    info = json.loads(line[len("RESULT "):])
    assert info["backgrounds"] == 2 and info["source"] == "SEQUENCE"
    assert info["first_shown"] == 0  # scene frame 5 (--frame-start) shows part_overlay_000000
    from dpose_core.evidence_report import motion_scores
    from dpose_core.motion_io import load_motion_npz

    means = motion_scores(load_motion_npz(tmp_path / "m.npz")).mean_iou
    scored = np.flatnonzero(np.isfinite(means))
    np.testing.assert_allclose(info["keys"], np.column_stack([5 + scored, means[scored]]),
                               atol=1e-6)
    assert info["markers"] == [5]  # every scored frame is below 1: one run, one marker


@pytest.mark.parametrize("extra, message", [
    (["--merge", "c.npz"], "--overlay is drawn while the network runs"),
    (["--input", "x", "--chunk-output", "c.npz"], "--overlay is drawn while the network runs"),
])
def test_headless_refuses_an_overlay_without_part_maps(extra, message, tmp_path):
    from tests.test_headless import _run

    code, out = _run(["--output", tmp_path / "o.blend", "--overlay", *extra], tmp_path)
    assert code == 2 and f"error: {message}" in out, out
