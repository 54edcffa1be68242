"""Motion container and SMPL-X/AMASS motion files."""

import numpy as np
import pytest

from dpose_core.body_model import BodyModel
from dpose_core.errors import MotionFileError
from dpose_core.motion import FLAG_INTERPOLATED, FLAG_LOW_CONFIDENCE, Motion
from dpose_core.motion_io import load_motion_npz, motion_to_arrays, save_motion_npz
from dpose_core.rotations import axis_angle_to_matrix, quaternion_to_matrix


def _motion(n=6, seed=0, **extra) -> Motion:
    rng = np.random.default_rng(seed)
    return Motion.from_predictions(
        axis_angle_to_matrix(rng.normal(0, 0.5, (n, 22, 3))),
        rng.normal(0, 1, (n, 3)) + [0, 0, 5],
        rng.normal(0, 1, (n, 11)),
        fps=25.0,
        confidence=rng.uniform(0, 1, n),
        frame_indices=np.arange(n) * 2 + 10,
        boxes=rng.uniform(0, 500, (n, 4)),
        focal_px=np.full(n, 1100.0),
        principal_point=np.tile([320.0, 240.0], (n, 1)),
        image_size=(640, 480),
        **extra,
    )


def test_from_predictions_pads_identity_and_takes_median_betas():
    rng = np.random.default_rng(1)
    rot22 = axis_angle_to_matrix(rng.normal(0, 0.5, (5, 22, 3)))
    betas = rng.normal(0, 1, (5, 11))
    betas[2] = 100.0  # one bad frame does not move the shared shape much
    m = Motion.from_predictions(rot22, np.zeros((5, 3)), betas, fps=30)
    assert m.rotmats.shape == (5, 55, 3, 3) and m.num_frames == len(m) == 5
    np.testing.assert_array_equal(m.rotmats[:, :22], rot22)
    np.testing.assert_array_equal(m.rotmats[:, 22:], np.broadcast_to(np.eye(3), (5, 33, 3, 3)))
    np.testing.assert_array_equal(m.betas, np.median(betas, axis=0))
    assert np.all(np.abs(m.betas) < 100)
    np.testing.assert_array_equal(m.confidence, np.ones(5))
    np.testing.assert_array_equal(m.frame_indices, np.arange(5))
    np.testing.assert_array_equal(m.flags, np.zeros(5, np.uint8))
    assert m.coordinate_frame == "opencv_camera" and m.gender == "neutral"
    assert Motion.from_frames(rot22, np.zeros((5, 3)), betas[0], fps=30).betas.shape == (11,)


def test_median_betas_keep_the_pelvis_where_the_network_put_it(body_model_npz):
    model = BodyModel.load(body_model_npz)
    rng = np.random.default_rng(2)
    rot = axis_angle_to_matrix(rng.normal(0, 0.3, (4, 22, 3)))
    cam_t = rng.normal(0, 1, (4, 3))
    betas = rng.normal(0, 2, (4, 11))
    per_frame = model.forward(rot, betas, cam_t, return_vertices=False).joints[:, 0]
    m = Motion.from_predictions(rot, cam_t, betas, fps=30, body_model=model)
    np.testing.assert_allclose(m.body_output(model).joints[:, 0], per_frame, atol=1e-12)


def test_validation_errors_are_clear():
    m = _motion()
    with pytest.raises(ValueError, match="rotmats"):
        Motion(np.zeros((3, 22, 3, 3)), np.zeros((3, 3)), np.zeros(11), fps=30)
    with pytest.raises(ValueError, match="transl"):
        Motion(m.rotmats, np.zeros((5, 3)), m.betas, fps=30)
    with pytest.raises(ValueError, match="fps"):
        Motion(m.rotmats, m.transl, m.betas, fps=0)
    with pytest.raises(ValueError, match="betas"):
        Motion(m.rotmats, m.transl, np.zeros(10), fps=30)
    with pytest.raises(ValueError, match="confidence"):
        Motion(m.rotmats, m.transl, m.betas, fps=30, confidence=np.ones(2))
    with pytest.raises(ValueError, match="finite"):
        Motion(m.rotmats, m.transl * np.nan, m.betas, fps=30)
    with pytest.raises(ValueError, match="rotmats"):
        Motion.from_predictions(np.zeros((3, 21, 3, 3)), np.zeros((3, 3)), np.zeros(11), 30)


def test_focal_broadcasts_and_slice_keeps_per_frame_fields():
    m = _motion(n=8, flags=np.array([0, 1, 0, 2, 3, 0, 0, 1]))
    np.testing.assert_array_equal(m.focal_px, np.full((8, 2), 1100.0))
    part = m.slice(2, 6)
    assert part.num_frames == 4
    np.testing.assert_array_equal(part.rotmats, m.rotmats[2:6])
    np.testing.assert_array_equal(part.frame_indices, m.frame_indices[2:6])
    np.testing.assert_array_equal(part.boxes, m.boxes[2:6])
    np.testing.assert_array_equal(part.flags & FLAG_LOW_CONFIDENCE, [0, 2, 2, 0])
    np.testing.assert_array_equal(part.betas, m.betas)
    np.testing.assert_array_equal(part.image_size, [640, 480])
    picked = m.select(m.flags & FLAG_INTERPOLATED == 0)
    assert picked.num_frames == 5
    np.testing.assert_allclose(m.frame_times(), m.frame_indices / 25.0)


def test_quaternions_are_continuous_and_match_rotations():
    rng = np.random.default_rng(3)
    # a root spinning past 180 degrees: Shepperd alone would flip sign there
    angles = np.linspace(0, 2.5 * np.pi, 40)
    aa = np.zeros((40, 22, 3))
    aa[:, 0, 1] = angles
    aa[:, 1:] = rng.normal(0, 0.3, (40, 21, 3))
    m = Motion.from_predictions(axis_angle_to_matrix(aa), np.zeros((40, 3)), np.zeros(11), 30)
    q = m.quaternions()
    assert q.shape == (40, 55, 4)
    assert np.all(np.sum(q[1:] * q[:-1], axis=-1) >= 0)
    np.testing.assert_allclose(quaternion_to_matrix(q), m.rotmats, atol=1e-12)


def test_as_axis_angle_matches_rotmats():
    m = _motion()
    aa = m.as_axis_angle()
    assert aa.shape == (6, 55, 3)
    np.testing.assert_allclose(axis_angle_to_matrix(aa), m.rotmats, atol=1e-12)


def test_save_load_round_trip_exact(tmp_path):
    m = _motion(flags=np.array([0, 1, 2, 3, 0, 0], np.uint8))
    first = save_motion_npz(tmp_path / "take1.npz", m)
    back = load_motion_npz(first)
    np.testing.assert_allclose(back.rotmats, m.rotmats, rtol=0, atol=1e-12)
    for name in ("transl", "betas", "confidence", "frame_indices", "boxes", "focal_px",
                 "principal_point", "image_size", "flags"):
        np.testing.assert_array_equal(getattr(back, name), getattr(m, name), err_msg=name)
    assert back.fps == 25.0 and back.gender == "neutral"
    assert back.coordinate_frame == "opencv_camera"
    assert back.flags.dtype == np.uint8 and back.frame_indices.dtype == np.int64
    second = save_motion_npz(tmp_path / "take2.npz", back)
    with np.load(first) as a, np.load(second) as b:
        assert sorted(a.files) == sorted(b.files)
        for key in a.files:
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        assert a["poses"].shape == (6, 165) and a["pose_hand"].shape == (6, 90)
        assert str(a["surface_model_type"]) == "smplx" and a["gender"].shape == ()
        # every 2nd frame of 25 fps footage: rows play at 12.5 per second; the source rate
        # is kept beside it so frame_indices / fps stays seconds
        assert float(a["mocap_frame_rate"]) == 12.5 and float(a["dpose_source_fps"]) == 25.0
        np.testing.assert_array_equal(
            a["poses"][:, 3:66], a["pose_body"]
        )
    # editing the rotations after loading drops the cached axis-angle
    back.rotmats[:, 1] = np.eye(3)
    np.testing.assert_allclose(back.as_axis_angle()[:, 1], 0.0, atol=1e-15)


def test_foot_cues_round_trip_with_their_unknowns(tmp_path):
    m = _motion()
    seen = np.linspace(0, 1, 24).reshape(6, 4)
    depth = np.linspace(-0.3, 0.3, 24).reshape(6, 4)
    depth[2] = np.nan  # a filled frame: unknown
    back = load_motion_npz(save_motion_npz(tmp_path / "cues.npz",
                                           m.replace(feet_seen=seen, foot_map_depth=depth)))
    np.testing.assert_array_equal(back.feet_seen, seen)
    np.testing.assert_array_equal(back.foot_map_depth, depth)
    np.testing.assert_array_equal(back.select([1, 2]).foot_map_depth, depth[1:3])
    depth[0, 0] = np.inf
    with pytest.raises(ValueError, match="foot_map_depth must be a number or NaN"):
        m.replace(foot_map_depth=depth)
    with pytest.raises(ValueError, match="feet_seen must have shape"):
        m.replace(feet_seen=seen[:, :2])


def test_amass_style_split_arrays_only(tmp_path):
    rng = np.random.default_rng(4)
    n = 7
    parts = {"root_orient": rng.normal(0, 1, (n, 3)), "pose_body": rng.normal(0, 0.3, (n, 63)),
             "pose_hand": rng.normal(0, 0.3, (n, 90)), "pose_jaw": rng.normal(0, 0.1, (n, 3)),
             "pose_eye": rng.normal(0, 0.1, (n, 6))}
    np.savez(tmp_path / "amass.npz", trans=rng.normal(0, 1, (n, 3)), betas=rng.normal(0, 1, 16),
             gender=np.array(b"female"), mocap_framerate=np.array(120.0),
             surface_model_type=np.array("smplx"), **parts)
    m = load_motion_npz(tmp_path / "amass.npz")
    assert m.num_frames == n and m.fps == 120.0 and m.gender == "female"
    assert m.coordinate_frame == "world_z_up"
    aa = m.as_axis_angle()
    np.testing.assert_array_equal(aa[:, 0], parts["root_orient"])
    np.testing.assert_array_equal(aa[:, 1:22].reshape(n, 63), parts["pose_body"])
    np.testing.assert_array_equal(aa[:, 22], parts["pose_jaw"])
    np.testing.assert_array_equal(aa[:, 23:25].reshape(n, 6), parts["pose_eye"])
    np.testing.assert_array_equal(aa[:, 25:].reshape(n, 90), parts["pose_hand"])
    assert m.betas.shape == (11,)


def test_minimal_files_default_trans_fps_and_smplh_poses(tmp_path):
    rng = np.random.default_rng(5)
    poses = rng.normal(0, 0.3, (4, 156))
    np.savez(tmp_path / "smplh.npz", poses=poses, betas=np.ones(10), fps=np.array([60]),
             gender=np.array("male"))
    m = load_motion_npz(tmp_path / "smplh.npz")
    np.testing.assert_array_equal(m.transl, np.zeros((4, 3)))
    assert m.fps == 60.0 and m.gender == "male"
    np.testing.assert_array_equal(m.betas, [1] * 10 + [0])
    aa = m.as_axis_angle()
    np.testing.assert_array_equal(aa[:, 22:25], 0.0)
    np.testing.assert_array_equal(aa[:, 25:].reshape(4, 90), poses[:, 66:])
    np.savez(tmp_path / "rate.npz", poses=np.zeros((2, 165)), frame_rate=np.array(24.0))
    assert load_motion_npz(tmp_path / "rate.npz").fps == 24.0


def test_axis_angle_near_pi_survives_files(tmp_path):
    n = 3
    aa = np.zeros((n, 55, 3))
    axis = np.array([1.0, 2.0, -0.5]) / np.linalg.norm([1.0, 2.0, -0.5])
    aa[0, 0] = axis * np.pi
    aa[1, 0] = axis * (np.pi - 1e-9)
    aa[2, 0] = -axis * (np.pi + 1e-3)  # files may hold angles slightly over pi
    np.savez(tmp_path / "pi.npz", poses=aa.reshape(n, 165), trans=np.zeros((n, 3)),
             mocap_frame_rate=30.0)
    m = load_motion_npz(tmp_path / "pi.npz")
    np.testing.assert_allclose(m.rotmats, axis_angle_to_matrix(aa), atol=1e-14)
    fresh = Motion(m.rotmats.copy(), m.transl, m.betas, fps=30)  # no cached axis-angle
    np.testing.assert_allclose(axis_angle_to_matrix(fresh.as_axis_angle()), m.rotmats,
                               atol=1e-12)
    save_motion_npz(tmp_path / "again.npz", m)
    with np.load(tmp_path / "again.npz") as again:
        np.testing.assert_array_equal(again["poses"], aa.reshape(n, 165))


def test_bad_files_raise_motion_file_error(tmp_path):
    with pytest.raises(MotionFileError, match="does not exist"):
        load_motion_npz(tmp_path / "nope.npz")
    np.savez(tmp_path / "empty.npz", trans=np.zeros((2, 3)))
    with pytest.raises(MotionFileError, match="poses"):
        load_motion_npz(tmp_path / "empty.npz")
    np.savez(tmp_path / "wrong.npz", poses=np.zeros((2, 100)))
    with pytest.raises(MotionFileError, match="165"):
        load_motion_npz(tmp_path / "wrong.npz")
    np.savez(tmp_path / "trans.npz", poses=np.zeros((2, 165)), trans=np.zeros((3, 3)))
    with pytest.raises(MotionFileError, match="trans"):
        load_motion_npz(tmp_path / "trans.npz")
    np.savez(tmp_path / "obj.npz", poses=np.zeros((2, 165)), meta=np.array([{"a": 1}], object))
    with pytest.raises(MotionFileError, match="unpickle"):
        load_motion_npz(tmp_path / "obj.npz")
    (tmp_path / "junk.npz").write_bytes(b"definitely not a zip file")
    with pytest.raises(MotionFileError):
        load_motion_npz(tmp_path / "junk.npz")
    np.savez(tmp_path / "conf.npz", poses=np.zeros((2, 165)), dpose_confidence=np.ones(5))
    with pytest.raises(MotionFileError, match="confidence"):
        load_motion_npz(tmp_path / "conf.npz")
    bad = {
        "text_poses": ({"poses": np.array([["a"] * 165])}, "wrong type"),
        "text_trans": ({"poses": np.zeros((2, 165)), "trans": np.full((2, 3), "x")}, "wrong type"),
        "text_frames": ({"poses": np.zeros((2, 165)), "dpose_frame_indices": np.array(["a", "b"])},
                        "wrong type"),
        "nan_betas": ({"poses": np.zeros((2, 165)), "betas": np.full(10, np.nan)}, "finite"),
        "no_frames": ({"poses": np.zeros((0, 165))}, "no frames"),
    }
    for name, (arrays, message) in bad.items():
        np.savez(tmp_path / f"{name}.npz", **arrays)
        with pytest.raises(MotionFileError, match=message):
            load_motion_npz(tmp_path / f"{name}.npz")


def test_body_output_uses_transl(body_model_npz):
    model = BodyModel.load(body_model_npz)
    m = _motion(n=3)
    out = m.body_output(model)
    np.testing.assert_allclose(out.joints[:, 0], model.rest_joints(m.betas)[0] + m.transl,
                               atol=1e-12)
    assert out.vertices is None
    arrays = motion_to_arrays(m)
    assert arrays["poses"].shape == (3, 165) and arrays["dpose_focal_px"].shape == (3, 2)


def test_from_estimate_reads_the_estimate_fields():
    from types import SimpleNamespace

    rng = np.random.default_rng(6)
    est = SimpleNamespace(
        rotmats=axis_angle_to_matrix(rng.normal(0, 0.4, (3, 22, 3))).astype(np.float32),
        cam_t=rng.normal(0, 1, (3, 3)), betas=rng.normal(0, 1, (3, 11)),
        focal_px=np.full((3, 2), 800.0), principal_point=np.tile([320.0, 180.0], (3, 1)),
        image_size=np.tile([640.0, 360.0], (3, 1)),
    )
    m = Motion.from_estimate(est, fps=30, frame_indices=[4, 5, 7])
    np.testing.assert_allclose(m.rotmats[:, :22], est.rotmats, atol=1e-7)
    np.testing.assert_array_equal(m.transl, est.cam_t)
    np.testing.assert_array_equal(m.image_size, [640, 360])
    np.testing.assert_array_equal(m.frame_indices, [4, 5, 7])
    np.testing.assert_array_equal(m.focal_px, est.focal_px)


@pytest.mark.parametrize("head, says", [
    (b"frame,x\n0,1\n", "walk.npz is a text file, not a motion .npz archive"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "walk.npz is a PNG image, not a motion .npz"),
])
def test_a_file_that_is_not_an_npz_is_named_for_what_it_is(tmp_path, head, says):
    path = tmp_path / "walk.npz"
    path.write_bytes(head)
    with pytest.raises(MotionFileError, match=says):
        load_motion_npz(path)
