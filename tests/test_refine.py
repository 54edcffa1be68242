"""The refine stage against synthetic ground truth: a known walk on a known floor, seen by a
known camera, with the per-frame errors of a single-image network added (tests/synth_walk.py).
"""

import json

import numpy as np
import pytest

from dpose_core.body_model import BodyModel
from dpose_core.errors import DPoseError
from dpose_core.grounding import body_height, foot_points
from dpose_core.motion_io import load_motion_npz, motion_to_arrays, save_motion_npz
from dpose_core.refine import refine_file, refine_motion
from dpose_core.rotations import axis_angle_to_matrix
from tests import synth_walk as sw

BETAS = np.random.default_rng(1).normal(0, 1, 11)
# A still camera 1.9 m up, pitched ~15 deg down, rolled 2 deg, looking across the walk.
STILL_CAMERA = sw.look_at((1.6, -4.2, 1.9), (1.0, 0.0, 0.8), roll_deg=2.0)


@pytest.fixture(scope="module")
def body_model(blob_body_npz):
    return BodyModel.load(blob_body_npz)  # the body the synthetic walk was tuned on


@pytest.fixture(scope="module")
def walk(body_model):
    """Truth, the exact camera view, the network-like solve and its refinement (still camera)."""
    truth = sw.walk(body_model, BETAS)
    exact = sw.to_camera(body_model, truth, STILL_CAMERA)
    raw = sw.network_solve(body_model, exact, seed=0)
    refined, report = refine_motion(raw, body_model, foot_lock=1.0)
    return truth, exact, raw, refined, report


def _posed(body_model, motion):
    out = body_model.forward(motion.rotmats, motion.betas, motion.transl, return_vertices=False)
    return out, foot_points(body_model, motion.betas).posed(out.joint_world_transforms)


def _project(points_cam):
    return points_cam[..., :2] / points_cam[..., 2:3] * sw.FOCAL + sw.IMAGE_SIZE / 2


def _to_camera(cam_to_world, points):
    inv = np.linalg.inv(cam_to_world)
    return np.einsum("nab,npb->npa", inv[:, :3, :3], points) + inv[:, None, :3, 3]


def test_truth_is_what_it_claims(body_model, walk):
    truth = walk[0]
    _, points = _posed(body_model, sw.Motion(truth.rotmats, truth.transl, truth.betas, 30.0))
    assert np.abs(points[..., 2][truth.contacts]).max() < 1e-9  # contacts on the floor
    both = truth.contacts[1:] & truth.contacts[:-1]
    assert np.linalg.norm(np.diff(points, axis=0), axis=-1)[both].max() < 1e-9  # and still
    assert points[..., 2].min() > -1e-9
    assert 0.3 < truth.contacts.mean() < 0.7


def test_still_camera_walk_is_grounded_and_locked(body_model, walk):
    truth, exact, raw, refined, report = walk
    contacts = truth.contacts
    _, raw_points = _posed(body_model, raw)
    posed, points = _posed(body_model, refined)
    both = contacts[1:] & contacts[:-1]
    skate_before = np.linalg.norm(np.diff(raw_points, axis=0), axis=-1)[both].mean() * 1000
    skate_after = np.linalg.norm(np.diff(points, axis=0), axis=-1)[both].mean() * 1000
    print(f"\nfoot skate during true contacts: {skate_before:.1f} -> {skate_after:.1f} mm/frame "
          f"({skate_before / skate_after:.0f}x)")
    print(f"penetration {max(-points[..., 2].min(), 0) * 100:.2f} cm, float during true contacts "
          f"{points[..., 2][contacts].max() * 100:.2f} cm max")
    assert skate_before / skate_after >= 5.0
    assert refined.coordinate_frame == "world_z_up"
    assert -points[..., 2].min() <= 0.01  # penetration
    assert points[..., 2][contacts].max() <= 0.02  # float during contact
    # Floor: normal and height, in the camera frame, against the truth.
    true_normal = STILL_CAMERA[:3, :3].T @ [0.0, 0.0, 1.0]
    cam = refined.camera_to_world[0]
    angle = np.degrees(np.arccos(np.clip(cam[2, :3] @ true_normal, -1, 1)))
    _, exact_points = _posed(body_model, exact)
    floor_height = (exact_points[contacts] @ cam[2, :3] + cam[2, 3])  # true contacts, est. floor
    print(f"floor normal off by {angle:.2f} deg; true contact points sit "
          f"{np.abs(floor_height).mean() * 100:.2f} cm (mean) from the estimated floor; camera "
          f"height {cam[2, 3]:.3f} m (true {STILL_CAMERA[2, 3]:.3f})")
    assert angle <= 2.0
    assert np.abs(floor_height).mean() <= 0.02
    # Contacts.
    f1 = 2 * (report.contacts & contacts).sum() / (report.contacts.sum() + contacts.sum())
    print(f"contact F1 {f1:.3f}")
    assert f1 >= 0.9
    assert np.array_equal(refined.contacts, report.contacts)


def test_still_camera_walk_keeps_the_image(body_model, walk):
    """What the camera sees barely changes: beyond sliding the body along its camera ray (the
    depth smoothing, which rescales a rigid body's image by the depth ratio) the body's
    projection moves <= 2 px on average, and the overlay on the true image gets better.

    Measured with the slide, no correct grounding could stay within 2 px of the raw solve: the
    true motion itself (what perfect grounding would give) projects ~6 px from it, because a
    root depth off by 3-5 % scales the raw body's image by as much (docs/grounding.md)."""
    truth, exact, raw, refined, report = walk
    raw_out, raw_points = _posed(body_model, raw)
    out, points = _posed(body_model, refined)
    exact_out, exact_points = _posed(body_model, exact)

    def body(o, p):
        return np.concatenate([o.joints[:, :22], p], axis=1)

    new = _to_camera(refined.camera_to_world, body(out, points))
    old = body(raw_out, raw_points)
    true = body(exact_out, exact_points)
    slide = np.linalg.norm(new[:, 0], axis=1) / np.linalg.norm(old[:, 0], axis=1) - 1
    old_slid = old + slide[:, None, None] * old[:, :1]
    moved = np.linalg.norm(_project(new) - _project(old_slid), axis=-1)
    with_slide = np.linalg.norm(_project(new) - _project(old), axis=-1)
    overlay_raw = np.linalg.norm(_project(old) - _project(true), axis=-1).mean()
    overlay_new = np.linalg.norm(_project(new) - _project(true), axis=-1).mean()
    legs = [4, 5, 7, 8, 10, 11, 22, 23, 24, 25]  # knees, ankles, feet, contact points
    print(f"\n2D change from the raw solve: {moved.mean():.2f} px mean (legs "
          f"{moved[:, legs].mean():.2f}) beyond the slide, {with_slide.mean():.2f} px with it "
          f"(report: {report.summary()['reprojection_px_mean']}); overlay error on the true "
          f"image {overlay_raw:.2f} -> {overlay_new:.2f} px")
    assert moved.mean() <= 2.0
    assert overlay_raw > 2.0  # the truth is this far from the raw solve in the image
    assert overlay_new < overlay_raw
    assert np.allclose(report.reprojection_px, with_slide.mean(axis=1), atol=1e-6)
    assert np.allclose(report.reprojection_beyond_slide_px, moved.mean(axis=1), atol=1e-6)
    # The upper body is not touched by the locks: only the slide moves it.
    assert np.abs(moved[:, [0, 3, 6, 9, 12, 15, 16, 17, 20, 21]]).max() < 1e-6


def test_foot_lock_strength_is_used(body_model, walk):
    truth, _, raw, locked, _ = walk
    free, report = refine_motion(raw, body_model, foot_lock=0.0)
    _, free_points = _posed(body_model, free)
    _, locked_points = _posed(body_model, locked)
    # Without locks a leg only changes where it had to be lifted onto the floor.
    for leg, joints in ((0, [1, 4, 7]), (1, [2, 5, 8])):
        above = free_points[:, 2 * leg:2 * leg + 2, 2].min(axis=1) > 1e-6
        assert above.mean() > 0.3
        assert np.allclose(free.rotmats[above][:, joints], raw.rotmats[above][:, joints])
        assert not np.allclose(locked.rotmats[above][:, joints], raw.rotmats[above][:, joints])
    both = truth.contacts[1:] & truth.contacts[:-1]

    def skate(p):
        return np.linalg.norm(np.diff(p, axis=0), axis=-1)[both].mean()

    assert skate(locked_points) < 0.5 * skate(free_points)
    assert -free_points[..., 2].min() <= 0.01  # still nothing below the floor


def test_missing_frames_break_locks_not_the_walk(body_model, walk):
    truth, _, raw, full, _ = walk
    keep = np.r_[0:30, 45:raw.num_frames]  # 15 frames lost (nobody found, say)
    gappy, report = refine_motion(raw.select(keep), body_model)
    _, gappy_points = _posed(body_model, gappy)
    _, full_points = _posed(body_model, full.select(keep))
    # Locks never pull a foot across the gap: each side matches the unbroken refinement (up to
    # the frames at its edge, whose contacts now have fewer frames to average).
    distance = np.linalg.norm(gappy_points - full_points, axis=-1)
    print(f"\nfeet with / without 15 missing frames: {distance.mean() * 100:.2f} cm mean, "
          f"{distance.max() * 100:.2f} cm max")
    assert distance.mean() < 0.02 and distance.max() < 0.10
    assert report.skate_mm[30] == 0.0  # no skate is counted across the gap either
    # The same frames numbered as if none were missing: the leap is found and treated alike.
    hidden, hidden_report = refine_motion(
        raw.select(keep).replace(frame_indices=np.arange(len(keep))), body_model)
    assert "jumps across the image" in " ".join(hidden_report.notes)
    assert np.abs(hidden.transl - gappy.transl).max() < 1e-6


def test_report_is_json_and_consistent(walk):
    report = walk[4]
    data = json.loads(json.dumps(report.to_dict(), allow_nan=False))
    n = report.frames
    assert data["contact_points"] == ["left_heel", "left_toe", "right_heel", "right_toe"]
    for key in ("confidence", "skate_mm", "float_mm", "penetration_mm", "reprojection_px"):
        assert len(data["per_frame"][key]) == n
    assert np.array(data["per_frame"]["contacts"]).shape == (n, 4)
    summary = data["summary"]
    assert summary["skate_mm_per_frame"] * 5 < summary["skate_mm_per_frame_before"]
    assert summary["penetration_mm_max"] <= 10.0


def test_moving_camera_track_scale_is_fixed_from_the_body(body_model):
    truth = sw.walk(body_model, BETAS)
    n = len(truth.transl)
    t = np.arange(n) / truth.fps
    pelvis_true = truth.transl + body_model.rest_joints(BETAS)[0]
    cams = np.stack([
        sw.look_at((0.2 + 0.8 * ti, -4.0 + 0.4 * np.sin(0.8 * ti), 1.8 + 0.05 * np.sin(3 * ti)),
                   (p[0] + 0.3, 0.0, 0.8), roll_deg=1.5)
        for ti, p in zip(t, pelvis_true, strict=True)
    ])  # fmt: skip
    exact = sw.to_camera(body_model, truth, cams)
    raw = sw.network_solve(body_model, exact, seed=1)
    # The track lives in its own world (turned, moved) and its own unit: 0.37 of a metre.
    gauge = np.eye(4)
    gauge[:3, :3] = axis_angle_to_matrix(np.array([0.05, 0.02, np.radians(30)]))
    gauge[:3, 3] = (5.0, -2.0, 1.0)
    track = gauge @ cams
    track[:, :3, 3] *= 0.37
    refined, report = refine_motion(raw, body_model, camera_to_world=track)
    pelvis = refined.transl + body_model.rest_joints(BETAS)[0]
    # Compare up to the world's free heading and horizontal origin.
    a = pelvis[:, :2] - pelvis[:, :2].mean(0)
    b = pelvis_true[:, :2] - pelvis_true[:, :2].mean(0)
    u, _, vt = np.linalg.svd(a.T @ b)
    turn = (u @ vt).T
    aligned = a @ turn.T + pelvis_true[:, :2].mean(0)
    error = np.hypot(np.linalg.norm(aligned - pelvis_true[:, :2], axis=1),
                     pelvis[:, 2] - pelvis_true[:, 2])
    print(f"\ntrack scale {report.track_scale:.4f} (true {1 / 0.37:.4f}); world trajectory "
          f"error {error.mean() * 100:.2f} cm mean, {error.max() * 100:.2f} cm max")
    assert report.track_scale == pytest.approx(1 / 0.37, rel=0.05)
    assert error.max() <= 0.03
    # Through the camera the pelvis is exactly where the raw solve saw it (it only slid).
    pelvis_cam = _to_camera(refined.camera_to_world, pelvis[:, None])[:, 0]
    raw_pelvis = raw.transl + body_model.rest_joints(BETAS)[0]
    assert np.abs(_project(pelvis_cam) - _project(raw_pelvis)).max() < 1e-6


def test_single_image_stands_on_the_floor(body_model):
    truth = sw.standing(body_model, BETAS)
    camera = sw.look_at((1.0, -3.5, 1.7), (0.3, 0.2, 0.8), roll_deg=2.0)
    raw = sw.network_solve(body_model, sw.to_camera(body_model, truth, camera), seed=2)
    refined, report = refine_motion(raw, body_model, foot_lock=0.0)
    _, points = _posed(body_model, refined)
    print(f"\nstanding feet heights: {np.round(points[0, :, 2] * 100, 2)} cm")
    assert np.abs(points[..., 2]).max() <= 0.01
    assert report.contacts.all()
    assert report.reprojection_px[0] < 1.0  # one image: nothing moves but the floor
    with pytest.raises(DPoseError, match="single frame"):
        refine_motion(raw, body_model, foot_lock=0.5)


def test_ground_none_keeps_the_camera_level_at_the_origin(body_model, walk):
    raw = walk[2]
    refined, report = refine_motion(raw, body_model, ground="none", foot_lock=1.0)
    assert np.allclose(refined.camera_to_world[:, :3, 3], 0.0)
    assert np.allclose(refined.camera_to_world[0, :3, :3] @ [0, -1.0, 0], [0, 0, 1])
    assert report.floor_normal_camera is None and report.camera_height_m is None
    assert report.contacts.any()  # from stillness alone


def test_subject_height_reshapes_body_and_scene(body_model, walk):
    raw = walk[2]
    height = body_height(body_model, raw.betas)
    refined, report = refine_motion(raw, body_model, foot_lock=0.0,
                                    subject_height=round(height * 1.03, 3))
    assert body_height(body_model, refined.betas) == pytest.approx(height * 1.03, abs=0.002)
    assert report.subject_height_m == pytest.approx(height * 1.03, abs=0.002)
    assert report.reprojection_px.mean() < 15.0
    with pytest.raises(DPoseError, match="subject height"):
        refine_motion(raw, body_model, subject_height=7.0)


def test_foot_evidence_scales_contact_confidence(body_model, walk):
    raw = walk[2]
    _, seen = refine_motion(raw.replace(feet_seen=np.ones((raw.num_frames, 4))), body_model)
    _, unseen = refine_motion(raw.replace(feet_seen=np.zeros((raw.num_frames, 4))), body_model)
    assert np.array_equal(seen.contacts, unseen.contacts)
    assert unseen.contact_confidence.mean() < 0.6 * seen.contact_confidence.mean()


def test_depth_map_backs_or_doubts_the_contacts(body_model, walk):
    """The network's depth map on the feet, in its own unit: where it agrees with the floor the
    contacts keep their confidence; where it lifts a planted heel 20 cm towards the camera
    (off the floor) that contact's confidence drops; a map unrelated to the body is not used."""
    truth, exact, raw, _, _ = walk
    n = raw.num_frames
    true_map = sw.depth_map_of(body_model, exact, 0.45) + 0.1
    _, plain = refine_motion(raw, body_model)
    _, agreeing = refine_motion(raw.replace(foot_map_depth=true_map), body_model)
    held = plain.contacts
    print(f"\nmap evidence on the detected contacts: "
          f"{agreeing.map_contact_evidence[held].mean():.3f} (true map); notes {agreeing.notes}")
    assert np.array_equal(agreeing.contacts, plain.contacts)  # evidence is confidence only
    assert agreeing.map_contact_evidence[held].mean() > 0.9
    assert agreeing.contact_confidence.mean() > 0.9 * plain.contact_confidence.mean()

    start, stop = next((a, b) for a, b in _runs(truth.contacts[:, 0]) if b - a >= 8)
    lifted = true_map.copy()
    lifted[start:stop, 0] -= 0.2 / 0.45
    _, doubted = refine_motion(raw.replace(foot_map_depth=lifted), body_model)
    span = np.zeros(n, bool)
    span[start:stop] = True
    here = span & doubted.contacts[:, 0]
    drop = doubted.contact_confidence[here, 0].mean() / agreeing.contact_confidence[here, 0].mean()
    print(f"left heel lifted by the map in frames {start}-{stop}: confidence x{drop:.2f}")
    assert here.sum() >= 5 and drop < 0.7
    away = np.convolve(span, np.ones(9), "same") == 0  # 4 frames clear of it (smoothing)
    np.testing.assert_allclose(doubted.contact_confidence[away], agreeing.contact_confidence[away],
                               atol=0.05)

    noise = np.random.default_rng(5).normal(0, 1, (n, 4))
    _, unrelated = refine_motion(raw.replace(foot_map_depth=noise), body_model)
    assert unrelated.map_contact_evidence is None
    assert any("does not follow" in note for note in unrelated.notes)
    np.testing.assert_array_equal(unrelated.contact_confidence, plain.contact_confidence)
    data = agreeing.to_dict()
    assert np.array(data["per_frame"]["map_contact_evidence"]).shape == (n, 4)
    assert data["summary"]["map_contact_evidence_mean"] > 0.5


def _runs(mask):
    edges = np.flatnonzero(np.diff(np.r_[0, mask.astype(int), 0]))
    return list(zip(edges[::2], edges[1::2], strict=True))


# ---------------------------------------------------------------------------- files
def test_refine_file_round_trip(tmp_path, body_model_npz, walk):
    raw = walk[2]
    src = save_motion_npz(tmp_path / "raw.npz", raw)
    report_path = tmp_path / "report.json"
    report = refine_file(src, tmp_path / "out.npz", body_model=body_model_npz,
                         report_path=report_path)
    out = load_motion_npz(tmp_path / "out.npz")
    assert out.coordinate_frame == "world_z_up"
    assert out.camera_to_world.shape == (raw.num_frames, 4, 4)
    assert out.contacts.shape == (raw.num_frames, 4)
    with np.load(tmp_path / "out.npz") as npz:
        assert str(npz["dpose_coordinate_frame"]) == "world_z_up"
        assert {"dpose_camera_to_world", "dpose_contacts", "dpose_contact_confidence"} <= set(
            npz.files)
    assert json.loads(report_path.read_text())["frames"] == report.frames
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.npz", "raw.npz", "report.json"]
    # A refined file goes back through its own camera and comes out the same.
    again = refine_file(tmp_path / "out.npz", tmp_path / "again.npz", body_model=body_model_npz)
    second = load_motion_npz(tmp_path / "again.npz")
    assert np.abs(second.transl - out.transl).max() < 0.05
    assert again.summary()["skate_mm_per_frame"] < 0.2 * report.summary()[
        "skate_mm_per_frame_before"]


def test_refine_file_reads_the_model_type_however_stored(tmp_path, body_model_npz, walk):
    arrays = motion_to_arrays(walk[2])
    arrays["surface_model_type"] = np.array(b"SMPLX")
    np.savez(tmp_path / "in.npz", **arrays)
    report = refine_file(tmp_path / "in.npz", tmp_path / "out.npz", body_model=body_model_npz,
                         foot_lock=0.0)
    assert report.frames == walk[2].num_frames


def test_depth_never_runs_off(body_model, walk, monkeypatch):
    """Whatever the solve says, no frame slides more than 30 % of its distance (so never
    behind the camera), and the report says so."""
    import dpose_core.refine as refine_module

    real = refine_module.solve_depth

    def wild(problem, **kwargs):
        solution = real(problem, **kwargs)
        solution.slides[10] = -10.0
        return solution

    monkeypatch.setattr(refine_module, "solve_depth", wild)
    raw = walk[2]
    refined, report = refine_motion(raw, body_model)
    pelvis = _to_camera(refined.camera_to_world, (refined.transl + body_model.rest_joints(
        BETAS)[0])[:, None])[:, 0]
    distance = np.linalg.norm(raw.transl + body_model.rest_joints(BETAS)[0], axis=1)
    assert np.linalg.norm(pelvis[10]) == pytest.approx(0.7 * distance[10])
    assert "held to within 30%" in " ".join(report.notes)


def test_no_contacts_is_said(body_model, walk):
    jumping = walk[2].copy()
    jumping.transl[:, 1] -= 0.5 * np.sin(np.arange(jumping.num_frames) / 3) ** 2  # never still
    _, report = refine_motion(jumping, body_model, ground="none")
    assert not report.contacts.any()
    assert "no foot contacts" in " ".join(report.notes)


def _error_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and message
    return message


@pytest.mark.parametrize("case", ["nan", "single_lock", "no_feet", "mismatch", "smplh",
                                  "same_path", "foot_lock_range", "world_no_camera"])
def test_refine_file_refuses_bad_input_in_one_line(case, tmp_path, body_model_npz, walk):
    raw = walk[2]
    src = tmp_path / "in.npz"
    dst = tmp_path / "out.npz"
    dst.write_bytes(b"the user's previous result")
    kwargs = {"body_model": body_model_npz}
    arrays = motion_to_arrays(raw)
    if case == "nan":
        arrays["trans"] = arrays["trans"].copy()
        arrays["trans"][3, 2] = np.nan
    elif case == "single_lock":
        arrays = motion_to_arrays(raw.select(np.array([5])))
    elif case == "no_feet":  # a close-up: the image ends above the knees
        arrays["dpose_image_size"] = np.array([1280.0, 300.0])
        arrays["dpose_principal_point"] = np.tile([640.0, 150.0], (raw.num_frames, 1))
    elif case == "mismatch":
        kwargs["body_model"] = _smpl_sized_model(tmp_path, body_model_npz)
    elif case == "smplh":
        arrays["surface_model_type"] = np.array("smplh")
    elif case == "same_path":
        dst = src
    elif case == "foot_lock_range":
        kwargs["foot_lock"] = 1.5
    elif case == "world_no_camera":
        arrays["dpose_coordinate_frame"] = np.array("world_z_up")
    np.savez(src, **arrays)
    before = dst.read_bytes()
    expected = {"nan": "NaN", "single_lock": "single frame", "no_feet": "No foot is on screen",
                "mismatch": "vertices", "smplh": "smplh", "same_path": "also an input",
                "foot_lock_range": "between 0 and 1", "world_no_camera": "without a camera"}
    with pytest.raises(DPoseError) as excinfo:
        refine_file(src, dst, **kwargs)
    assert expected[case] in _error_line(excinfo)
    assert dst.read_bytes() == before  # nothing lost
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def _smpl_sized_model(tmp_path, body_model_npz):
    """An SMPL-sized model (6890 vertices): a body model that does not fit SMPL-X motion."""
    with np.load(body_model_npz) as npz:
        data = {k: npz[k] for k in npz.files}
    v = 6890
    for key in ("v_template", "shapedirs", "posedirs", "weights"):
        data[key] = data[key][:v]
    data["J_regressor"] = data["J_regressor"][:, :v]
    data["f"] = data["f"] % v
    path = tmp_path / "SMPL_SIZED.npz"
    np.savez(path, **data)
    return path


def test_failed_write_keeps_the_old_output(tmp_path, body_model_npz, walk, monkeypatch):
    raw = walk[2]
    src = save_motion_npz(tmp_path / "in.npz", raw)
    dst = tmp_path / "out.npz"
    dst.write_bytes(b"previous")

    def broken_savez(fh, **arrays):
        fh.write(b"half a file")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(DPoseError) as excinfo:
        refine_file(src, dst, body_model=body_model_npz)
    assert "No space left" in _error_line(excinfo)
    assert dst.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.npz", "out.npz"]


@pytest.mark.blender
def test_blender_camera_from_camera_to_world_keeps_the_overlay(body_model, walk):
    """A Blender camera placed at camera_to_world @ diag(1,-1,-1,1) sees the refined world
    body where the OpenCV camera does (what docs/grounding.md tells the scene builder)."""
    import bpy
    import mathutils

    from tests.blender_support import import_blender_module

    scene_camera = import_blender_module("scene_camera")
    refined = walk[3]
    out, points = _posed(body_model, refined)
    world = np.concatenate([out.joints[:, :22], points], axis=1)
    expected = _project(_to_camera(refined.camera_to_world, world))
    scene = bpy.context.scene
    cam = scene_camera.ensure_camera(scene, image_size=tuple(int(v) for v in sw.IMAGE_SIZE),
                                     focal_px=sw.FOCAL)
    for t in (0, 35, refined.num_frames - 1):
        pose = refined.camera_to_world[t] @ np.diag([1.0, -1.0, -1.0, 1.0])
        cam.matrix_world = mathutils.Matrix(pose.tolist())
        bpy.context.view_layer.update()
        got = scene_camera.project_to_pixels(scene, cam, world[t])
        assert np.abs(got - expected[t]).max() < 0.5
