"""The refine stage wired into the pipeline, `dpose refine`, `dpose estimate/merge --ground`
and the quality report: a synthetic walk (tests/synth_walk.py) through a network stand-in."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from dpose_core.body_model import BodyModel
from dpose_core.chunks import write_chunk
from dpose_core.errors import DPoseError
from dpose_core.estimator import Estimate
from dpose_core.grounding import foot_points
from dpose_core.motion import FLAG_INTERPOLATED, FRAME_OPENCV_CAMERA, FRAME_WORLD_Z_UP
from dpose_core.motion_io import load_motion_npz, save_motion_npz
from dpose_core.pipeline import (
    RunOptions,
    estimate_video,
    merge_video,
    refine_motions,
    refine_tracks,
)
from dpose_core.refine import refine_motion
from dpose_core.report import bad_frames, build_report, write_report
from tests import synth_walk as sw

REPO = Path(__file__).resolve().parents[1]
BETAS = np.random.default_rng(1).normal(0, 1, 11)
STILL_CAMERA = sw.look_at((1.6, -4.2, 1.9), (1.0, 0.0, 0.8), roll_deg=2.0)
FRAME_STEP = 3  # pixel value of frame k in the stand-in footage = FRAME_STEP * k


@pytest.fixture(scope="module")
def body_model(body_model_npz):
    return BodyModel.load(body_model_npz)


@pytest.fixture(scope="module")
def raw(body_model):
    """The network-like camera-frame solve of the walk (still camera)."""
    truth = sw.walk(body_model, BETAS)
    return sw.network_solve(body_model, sw.to_camera(body_model, truth, STILL_CAMERA), seed=0)


class WalkNetwork:
    """Estimator stand-in: frame k of the footage (pixel value FRAME_STEP * k) gets the raw
    solve's frame k, whatever the box. Its part map is `part` everywhere, or with `maps` the
    hips above and the four heel/toe parts below, the depth map telling their depth."""

    backend, device = "stand-in", "cpu"
    MAP_SCALE = 0.45  # metres per depth-map unit of the stand-in's maps

    def __init__(self, motion, body_model, part=1, maps=False):
        self.motion, self.body_model, self.part = motion, body_model, part
        self.map_depth = None
        if maps:  # the solve's own heel/toe-minus-pelvis depth, in map units
            self.map_depth = sw.depth_map_of(body_model, motion, self.MAP_SCALE)

    def _maps(self, rows):
        n = len(rows)
        labels = np.full((n, 16, 16), self.part, np.uint8)
        depth = np.full((n, 16, 16), 0.5, np.float32)
        if self.map_depth is not None:
            from dpose_core.part_labels import PART_CLASS

            labels[:, :8] = PART_CLASS["hips"]
            for p, name in enumerate(("leftFoot", "leftToeBase", "rightFoot", "rightToeBase")):
                labels[:, 8:, 4 * p:4 * p + 4] = PART_CLASS[name]
                depth[:, 8:, 4 * p:4 * p + 4] = 0.5 + self.map_depth[rows, p, None, None]
        return labels, depth

    def estimate_batch(self, images, boxes_per_image, focal_px=None):
        m = self.motion
        rows = [int(round(im[0, 0, 0] / FRAME_STEP)) for im, b in
                zip(images, boxes_per_image, strict=True) for _ in np.reshape(b, (-1, 4))]
        n = len(rows)
        box = np.concatenate([np.reshape(b, (-1, 4)) for b in boxes_per_image])
        size = np.tile(sw.IMAGE_SIZE, (n, 1))
        labels, depth = self._maps(rows)
        return Estimate(
            rotmats=m.rotmats[rows, :22], pose_axis_angle=np.zeros((n, 22, 3)),
            betas=np.tile(m.betas, (n, 1)), cam_crop=np.zeros((n, 3)), cam_t=m.transl[rows],
            focal_px=np.full((n, 2), sw.FOCAL), principal_point=size / 2,
            joints3d=np.zeros((n, 127, 3)), joints2d=np.zeros((n, 127, 2)),
            depth=depth, part_logits=np.zeros((n, 2, 4, 4), np.float32),
            part_labels=labels, crop_box=box,
            box_center=(box[:, :2] + box[:, 2:]) / 2, box_scale=np.ones(n), image_size=size,
            image_index=np.arange(n))

    def estimate(self, image, boxes, focal_px=None):
        return self.estimate_batch([image], [boxes])


@pytest.fixture(scope="module")
def footage(tmp_path_factory, raw):
    folder = tmp_path_factory.mktemp("walk") / "frames"
    folder.mkdir()
    for k in range(raw.num_frames):
        cv2.imwrite(str(folder / f"f{k:03d}.png"), np.full((36, 64, 3), FRAME_STEP * k, np.uint8))
    return folder


def _options(footage, **kw):
    return RunOptions(inputs=[footage], bbox=(8, 2, 40, 34), smooth=0.0, fps=30.0, **kw)


def test_pipeline_stage_grounds_a_video_run_like_the_core(footage, raw, body_model):
    options = _options(footage)
    assert (options.ground, options.foot_lock) == ("auto", 1.0)  # the default is grounded
    result = estimate_video(options, estimator=WalkNetwork(raw, body_model))
    before = result.tracks[0]
    assert before.coordinate_frame == FRAME_OPENCV_CAMERA
    reports = refine_tracks(result, body_model, options)
    motion = result.tracks[0]
    assert motion.coordinate_frame == FRAME_WORLD_Z_UP
    assert motion.camera_to_world.shape == (raw.num_frames, 4, 4)
    assert motion.contacts.shape == (raw.num_frames, 4) and motion.contacts.any()
    assert sorted(reports) == [0] and result.refine_reports[0] is reports[0]
    assert reports[0].summary()["penetration_mm_max"] <= 10.0
    expected, _ = refine_motion(before, body_model, foot_lock=1.0)
    np.testing.assert_allclose(motion.transl, expected.transl, atol=1e-9)
    points = foot_points(body_model, motion.betas).posed(
        body_model.forward(motion.rotmats, motion.betas, motion.transl,
                           return_vertices=False).joint_world_transforms)
    assert points[..., 2].min() > -0.01  # nothing under the floor


def test_ground_off_none_and_options_mean_what_they_say(footage, raw, body_model):
    net = WalkNetwork(raw, body_model)
    off = estimate_video(_options(footage, ground="off"), estimator=net)
    assert refine_tracks(off, body_model, _options(footage, ground="off")) == {}
    assert off.tracks[0].coordinate_frame == FRAME_OPENCV_CAMERA
    level = estimate_video(_options(footage, ground="none", foot_lock=0.0), estimator=net)
    refine_tracks(level, body_model, _options(footage, ground="none", foot_lock=0.0))
    report = level.refine_reports[0]
    assert (report.ground, report.foot_lock) == ("none", 0.0)
    np.testing.assert_allclose(level.tracks[0].camera_to_world[0, :3, 3], 0.0, atol=1e-12)
    tall = _options(footage, subject_height=1.9)
    run = estimate_video(tall, estimator=net)
    refine_tracks(run, body_model, tall)
    assert abs(run.refine_reports[0].subject_height_m - 1.9) < 0.01


@pytest.mark.parametrize("change, message", [
    ({"ground": "floor"}, "--ground must be one of auto, none, off"),
    ({"foot_lock": 1.5}, "--foot-lock must be between 0 (off) and 1"),
    ({"foot_lock": float("nan")}, "--foot-lock must be between"),
    ({"subject_height": 4.0}, "--subject-height must be the person's standing height"),
    ({"subject_height": 1.7, "ground": "off"}, "needs --ground auto or none"),
])
def test_bad_refine_options_are_refused_before_work(footage, change, message):
    with pytest.raises(DPoseError) as excinfo:
        _options(footage, **change).validate()
    assert message in str(excinfo.value) and "\n" not in str(excinfo.value)


def test_a_motion_that_cannot_be_grounded_is_kept_and_said(raw, body_model):
    close_up = raw.replace(image_size=np.array([1280.0, 300.0]),
                           principal_point=np.tile([640.0, 150.0], (raw.num_frames, 1)))
    said = []
    out, reports, problems = refine_motions({0: close_up, 1: raw}, body_model, RunOptions(),
                                            warn=said.append)
    assert out[0] is close_up and sorted(reports) == [1] and list(problems) == [0]
    assert len(said) == 1 and said[0].startswith("track 0 not grounded, kept in the camera")
    assert "No foot is on screen" in said[0]


def test_a_single_image_is_grounded_without_locks(body_model):
    truth = sw.standing(body_model, BETAS)
    one = sw.to_camera(body_model, truth, STILL_CAMERA)
    out, reports, _ = refine_motions({"person 0": one}, body_model, RunOptions())
    motion = out["person 0"]
    assert motion.coordinate_frame == FRAME_WORLD_Z_UP and reports["person 0"].foot_lock == 0.0
    points = foot_points(body_model, motion.betas).posed(
        body_model.forward(motion.rotmats, motion.betas, motion.transl,
                           return_vertices=False).joint_world_transforms)
    assert abs(points[0, :, 2].min()) < 0.01  # feet on Z = 0


def test_a_farm_merge_is_grounded_once_like_one_run(footage, raw, body_model, tmp_path):
    net = WalkNetwork(raw, body_model, maps=True)
    whole = estimate_video(_options(footage), estimator=net)
    refine_tracks(whole, body_model, _options(footage))
    paths = []
    for a, b in ((0, 30), (30, raw.num_frames)):
        chunk = estimate_video(_options(footage, start=a, end=b, chunk_overlap=min(a, 8)),
                               estimator=net)
        with pytest.raises(DPoseError, match="after dpose merge"):
            refine_tracks(chunk, body_model, _options(footage))
        write_chunk(tmp_path / f"chunk_{a}.npz", chunk.chunk)
        paths.append(tmp_path / f"chunk_{a}.npz")
    merged = merge_video(paths, RunOptions(smooth=0.0))
    refine_tracks(merged, body_model, RunOptions())
    np.testing.assert_allclose(merged.tracks[0].transl, whole.tracks[0].transl, atol=1e-6)
    np.testing.assert_array_equal(merged.tracks[0].contacts, whole.tracks[0].contacts)
    # The network's foot cues travel in the chunks: the contacts weigh them alike.
    for name in ("feet_seen", "foot_map_depth", "contact_confidence"):
        np.testing.assert_allclose(getattr(merged.tracks[0], name),
                                   getattr(whole.tracks[0], name), atol=1e-6, err_msg=name)
    assert merged.refine_reports[0].map_contact_evidence is not None


def test_people_of_one_shot_share_one_world(raw, body_model):
    """Two walkers 1.55 m apart, seen by one still camera over overlapping spans: grounded one
    by one, the second is carried into the first one's world; through the camera each body
    stays where it was (legs lifted out of the first one's floor aside), and the second still
    stands on that floor."""
    from dpose_core.shared_world import world_moves

    truth = sw.walk(body_model, BETAS)
    n = len(truth.transl)
    beside = sw.Truth(truth.rotmats, truth.transl + [0.4, 1.5, 0.0], truth.contacts,
                      truth.betas, truth.fps)
    a = raw.select(np.arange(0, 55))
    b = sw.network_solve(body_model, sw.to_camera(body_model, beside, STILL_CAMERA),
                         seed=3).select(np.arange(12, n))
    out, reports, problems = refine_motions({0: a, 1: b}, body_model, RunOptions())
    assert problems == {} and "world of track 0" in " ".join(reports[1].notes)
    first, second = out[0], out[1]
    np.testing.assert_allclose(second.camera_to_world,
                               np.broadcast_to(first.camera_to_world[0], (n - 12, 4, 4)),
                               atol=1e-9)  # one still camera
    pelvis = body_model.rest_joints(BETAS)[0]
    apart = (second.transl[:43] + pelvis) - (first.transl[12:55] + pelvis)
    print(f"\nsecond walker from the first in the shared world: "
          f"{np.linalg.norm(apart[:, :2], axis=1).mean():.3f} m across (true 1.552), "
          f"{apart[:, 2].mean() * 100:.2f} cm up")
    assert np.linalg.norm(apart[:, :2], axis=1).mean() == pytest.approx(np.hypot(0.4, 1.5),
                                                                         abs=0.03)
    assert np.abs(apart[:, 2]).max() < 0.02
    posed = body_model.forward(second.rotmats, second.betas, second.transl,
                               return_vertices=False)
    heights = foot_points(body_model, second.betas).posed(posed.joint_world_transforms)[..., 2]
    print(f"its contacting feet in that world: {heights[second.contacts].min() * 100:.2f} to "
          f"{heights[second.contacts].max() * 100:.2f} cm")
    assert np.abs(heights[second.contacts]).max() < 0.02 and heights.min() > -1e-6
    alone, _ = refine_motion(b, body_model)  # its own world: the same image

    def seen(m):  # body joints in the motion's own camera
        joints = body_model.forward(m.rotmats, m.betas, m.transl, return_vertices=False).joints
        inv = np.linalg.inv(m.camera_to_world)
        return np.einsum("nab,npb->npa", inv[:, :3, :3], joints[:, :22]) + inv[:, None, :3, 3]

    upper = [0, 3, 6, 9, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21]  # the legs may be lifted
    np.testing.assert_allclose(seen(second)[:, upper], seen(alone)[:, upper], atol=1e-9)
    moved = np.linalg.norm(_px(seen(second)) - _px(seen(alone)), axis=-1)
    print(f"legs lifted out of the floor moved {moved.max():.2f} px at most")
    assert moved.max() < 10.0
    again = world_moves(second.frame_indices, second.camera_to_world, first.frame_indices,
                        first.camera_to_world)
    np.testing.assert_allclose(again, np.broadcast_to(np.eye(4), again.shape), atol=1e-9)
    # Without a floor (ground none) both worlds are the camera's own, turned Z up: nothing to
    # move, nothing to lift (Z = 0 is the camera's level there, not a floor).
    level, _, _ = refine_motions({0: a, 1: b}, body_model, RunOptions(ground="none"))
    own, _ = refine_motion(b, body_model, ground="none")
    np.testing.assert_allclose(level[1].rotmats, own.rotmats, atol=1e-9)
    np.testing.assert_allclose(level[1].transl, own.transl, atol=1e-9)


def _px(points_cam):
    return points_cam[..., :2] / points_cam[..., 2:3] * sw.FOCAL + sw.IMAGE_SIZE / 2


def test_report_per_track_and_frame(footage, raw, body_model, tmp_path):
    result = estimate_video(_options(footage), estimator=WalkNetwork(raw, body_model))
    refine_tracks(result, body_model, _options(footage))
    report = build_report(result, extra_sections={"part_agreement": {"mean": 0.9}})
    with pytest.raises(ValueError, match="already exists"):
        build_report(result, extra_sections={"tracks": []})
    path = write_report(tmp_path / "r.json", report)
    data = json.loads(path.read_text())
    assert data["format"] == "dpose-quality-report" and data["part_agreement"] == {"mean": 0.9}
    track = data["tracks"][0]
    n = raw.num_frames
    assert track["track"] == 0 and track["grounded"] and len(track["frames"]) == n
    per_frame = track["refine"]["per_frame"]
    for name in ("contacts", "skate_mm", "float_mm", "penetration_mm", "reprojection_px",
                 "confidence"):
        assert len(per_frame[name]) == n, name
    assert len(track["confidence"]) == n and len(track["flags"]) == n


def test_bad_frames_name_their_reasons(raw, body_model):
    refined, report = refine_motion(raw, body_model)
    report.penetration_mm[5] = 25.0
    report.skate_mm[7] = 40.0
    flags = refined.flags.copy()
    flags[9] = FLAG_INTERPOLATED
    bad = bad_frames(refined.replace(flags=flags), report)
    assert bad[5] == ["penetration"] and bad[7] == ["foot skate"] and bad[9] == ["interpolated"]


# ------------------------------------------------------------------------------- the CLI
def _cli(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "dpose_core.cli", *map(str, args)],
                          cwd=cwd or REPO, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(REPO)})
    return proc


def test_dpose_refine_writes_world_motion_and_report(raw, body_model_npz, tmp_path):
    src = save_motion_npz(tmp_path / "walk.npz", raw)
    proc = _cli("refine", src, "-o", tmp_path / "out.npz", "--body-model", body_model_npz,
                "--foot-lock", "0.8", "--report", tmp_path / "r.json")
    assert proc.returncode == 0, proc.stderr
    assert "grounded" in proc.stdout and "mm/frame" in proc.stdout
    motion = load_motion_npz(tmp_path / "out.npz")
    assert motion.coordinate_frame == FRAME_WORLD_Z_UP and motion.contacts is not None
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["tracks"][0]["track"] == "walk"
    assert data["tracks"][0]["refine"]["foot_lock"] == 0.8


@pytest.mark.parametrize("case, message", [
    ("nan", "NaN"),
    ("single_lock", "single frame"),
    ("mismatch", "vertices"),
    ("same_path", "is an input of this run"),
    ("report_is_output", "--report must end in .json"),
    ("foot_lock", "--foot-lock must be between"),
    ("height", "--subject-height must be"),
    ("missing", "does not exist"),
    ("text", "npz"),
])
def test_dpose_refine_bad_input_one_line_exit_2(case, message, raw, body_model_npz, tmp_path):
    src = save_motion_npz(tmp_path / "in.npz", raw)
    out = tmp_path / "out.npz"
    out.write_bytes(b"the user's previous result")
    extra = []
    if case == "nan":
        with np.load(src) as npz:
            arrays = {k: npz[k] for k in npz.files}
        arrays["trans"][3, 2] = np.nan
        np.savez(src, **arrays)
    elif case == "single_lock":
        save_motion_npz(src, raw.select(np.array([4])))
    elif case == "mismatch":
        with np.load(body_model_npz) as npz:
            data = {k: npz[k] for k in npz.files}
        for key in ("v_template", "shapedirs", "posedirs", "weights"):
            data[key] = data[key][:6890]
        data["J_regressor"], data["f"] = data["J_regressor"][:, :6890], data["f"] % 6890
        np.savez(tmp_path / "SMPL.npz", **data)
        body_model_npz = tmp_path / "SMPL.npz"
    elif case == "same_path":
        out = src
    elif case == "report_is_output":
        extra = ["--report", out]
    elif case == "foot_lock":
        extra = ["--foot-lock", "2"]
    elif case == "height":
        extra = ["--subject-height", "7"]
    elif case == "missing":
        src = tmp_path / "nope.npz"
    elif case == "text":
        src.write_text("not a motion file")
    before = out.read_bytes() if out.exists() else None
    proc = _cli("refine", src, "-o", out, "--body-model", body_model_npz, *extra)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("dpose: error:"), proc.stderr
    assert message in lines[0] and "Traceback" not in proc.stderr
    if before is not None:
        assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_dpose_merge_grounds_the_shot_and_reports(footage, raw, body_model, body_model_npz,
                                                 tmp_path):
    net = WalkNetwork(raw, body_model)
    chunks = []
    for a, b in ((0, 30), (30, raw.num_frames)):
        chunk = estimate_video(_options(footage, start=a, end=b, chunk_overlap=min(a, 8)),
                               estimator=net).chunk
        write_chunk(tmp_path / f"chunk_{a}.npz", chunk)
        chunks.append(tmp_path / f"chunk_{a}.npz")
    out, report = tmp_path / "motion.npz", tmp_path / "report.json"
    proc = _cli("merge", *chunks, "-o", out, "--body-model", body_model_npz, "--smooth", "0",
                "--report", report, "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    assert "track 0: grounded" in proc.stderr
    motion = load_motion_npz(out)
    assert motion.coordinate_frame == FRAME_WORLD_Z_UP and len(motion) == raw.num_frames
    data = json.loads(report.read_text())
    assert data["tracks"][0]["grounded"] and data["frames_processed"] == raw.num_frames
    out.write_bytes(b"previous")
    env_less = _cli("merge", *chunks, "-o", out, "--checkpoint", tmp_path / "missing.ckpt")
    assert env_less.returncode == 2 and "Grounding the merged shot needs" in env_less.stderr
    assert len(env_less.stderr.strip().splitlines()) == 1 and out.read_bytes() == b"previous"


def test_dpose_estimate_grounds_a_video_and_writes_the_report(footage, raw, body_model,
                                                              checkpoint_path, tmp_path,
                                                              monkeypatch, capsys):
    import dpose_core.pipeline as pipeline
    from dpose_core.cli import main

    monkeypatch.setattr(pipeline, "open_estimator", lambda options: WalkNetwork(raw, body_model))
    base = ["estimate", str(footage), "--checkpoint", str(checkpoint_path), "--bbox", "8,2,40,34",
            "--fps", "30", "--smooth", "0", "--progress", "none"]
    out, report = tmp_path / "motion.npz", tmp_path / "report.json"
    assert main([*base, "-o", str(out), "--foot-lock", "0.7", "--report", str(report)]) == 0
    assert "track 0: grounded" in capsys.readouterr().err
    motion = load_motion_npz(out)
    assert motion.coordinate_frame == FRAME_WORLD_Z_UP and motion.contacts is not None
    data = json.loads(report.read_text())
    assert data["tracks"][0]["refine"]["foot_lock"] == 0.7 and data["source_fps"] == 30.0
    assert main([*base, "-o", str(out), "--ground", "off"]) == 0
    assert load_motion_npz(out).coordinate_frame == FRAME_OPENCV_CAMERA
    assert main([*base, "-o", str(out), "--report", str(out)]) == 2  # not over the motion
    assert "must end in .json" in capsys.readouterr().err


def test_feet_seen_in_the_part_map_raise_the_contact_confidence(footage, raw, body_model):
    from dpose_core.foot_evidence import feet_seen
    from dpose_core.part_labels import PART_CLASS

    labels = np.zeros((224, 224), np.uint8)
    labels[:10, :10] = PART_CLASS["leftFoot"]  # 100 px: the left heel fully shown
    labels[20, :20] = PART_CLASS["rightToeBase"]  # 20 px: the right toe partly
    np.testing.assert_allclose(feet_seen(labels), [1.0, 0.0, 0.0, 0.4])
    confidence = {}
    for part in (1, PART_CLASS["leftFoot"]):  # nothing of the feet / the left foot everywhere
        result = estimate_video(_options(footage), estimator=WalkNetwork(raw, body_model, part))
        expected = 1.0 if part != 1 else 0.0
        np.testing.assert_array_equal(result.tracks[0].feet_seen[:, 0], expected)
        refine_tracks(result, body_model, _options(footage))
        motion = result.tracks[0]
        confidence[part] = motion.contact_confidence[:, 0][motion.contacts[:, 0]].mean()
    assert confidence[PART_CLASS["leftFoot"]] > 1.5 * confidence[1]


def test_the_depth_map_on_the_feet_reaches_the_refine_stage(footage, raw, body_model,
                                                           tmp_path):
    network = WalkNetwork(raw, body_model, maps=True)
    result = estimate_video(_options(footage), estimator=network)
    np.testing.assert_allclose(result.tracks[0].foot_map_depth, network.map_depth, atol=1e-5)
    # The cues travel in the motion file, so `dpose refine` on it weighs them alike.
    path = save_motion_npz(tmp_path / "raw.npz", result.tracks[0])
    from_file, file_report = refine_motion(load_motion_npz(path), body_model)
    reports = refine_tracks(result, body_model, _options(footage))
    evidence = reports[0].map_contact_evidence
    assert evidence is not None and evidence.shape == (raw.num_frames, 4)
    assert evidence[result.tracks[0].contacts].mean() > 0.8  # its own map backs the contacts
    np.testing.assert_allclose(file_report.map_contact_evidence, evidence, atol=1e-5)
    np.testing.assert_allclose(from_file.contact_confidence, result.tracks[0].contact_confidence,
                               atol=1e-5)
    plain = estimate_video(_options(footage), estimator=WalkNetwork(raw, body_model))
    assert np.isnan(plain.tracks[0].foot_map_depth).all()  # no hips on that map: no depth
    assert refine_tracks(plain, body_model, _options(footage))[0].map_contact_evidence is None
