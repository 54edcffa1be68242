"""Part agreement against synthetic truth: the body's own part masks are the "network" labels.

The scene: the tube body (tests/synth_tube_body.py, built on the synthetic SMPL-X skeleton)
in a known pose, seen by a known camera, cropped as the estimator crops a detection box. Its
part masks, rendered through body_model.forward, stand in for the network's part map.
"""

import json

import numpy as np
import pytest

from dpose_core import camera, preprocess, rasterise
from dpose_core.body_model import BodyModel
from dpose_core.constants import CROP_SIZE, NUM_PART_CLASSES
from dpose_core.estimator import Estimate
from dpose_core.motion import Motion
from dpose_core.motion_io import load_motion_npz, save_motion_npz
from dpose_core.part_agreement import (
    compare_part_labels,
    crop_boxes_of,
    motion_part_agreement,
    part_agreement,
    part_agreement_arrays,
    project_to_crop,
    render_part_labels,
    skinned_vertices,
    with_agreement,
)
from dpose_core.part_labels import (
    CLASS_NAMES,
    JOINT_CLASS,
    PART_CLASS,
    body_model_part_classes,
    vertex_part_classes,
)
from dpose_core.rasterise import rasterise_labels
from dpose_core.rotations import axis_angle_to_matrix
from dpose_core.skeleton import JOINT_NAMES
from tests.synth_tube_body import tube_body_from_npz

IMAGE_W, IMAGE_H = 640, 480
FOCAL = np.array([[820.0, 820.0]])
PRINCIPAL = np.array([[IMAGE_W / 2, IMAGE_H / 2]])
CAM_T = np.array([[0.1, 0.15, 5.0]])  # metres, OpenCV camera frame
J = {name: i for i, name in enumerate(JOINT_NAMES)}


def _true_pose() -> np.ndarray:
    """Upright facing the camera, turned 15 degrees, elbows and knees bent: (1,22,3,3)."""
    aa = np.zeros((22, 3))
    aa[0] = (np.pi, 0.0, 0.0)  # model y-up -> camera y-down, facing the camera
    aa[J["left_elbow"]] = (0.0, 0.5, 0.0)
    aa[J["right_elbow"]] = (0.0, -0.4, 0.0)
    aa[J["left_knee"]] = (0.3, 0.0, 0.0)
    aa[J["right_knee"]] = (0.2, 0.0, 0.0)
    rot = axis_angle_to_matrix(aa)[None]
    turn = axis_angle_to_matrix(np.array([0.0, np.radians(15), 0.0]))
    rot[0, 0] = turn @ rot[0, 0]
    return rot


@pytest.fixture(scope="module")
def scene(body_model_npz):
    """(tube body, true rotmats, crop box (1,4), truth labels (1,224,224), person box (4,))."""
    body = tube_body_from_npz(body_model_npz)
    rot = _true_pose()
    verts = body.forward(rot, np.zeros(11), CAM_T, pose_correctives=False).vertices
    uv = camera.project(verts - CAM_T[:, None], CAM_T, FOCAL, PRINCIPAL)[0]
    person_box = [*uv.min(axis=0), *uv.max(axis=0)]  # what a detector would find
    centre, scale = preprocess.box_to_center_scale(person_box)
    crop_box = preprocess.crop_box(centre, scale)[None]
    truth = render_part_labels(
        verts, body.faces, body_model_part_classes(body), FOCAL, PRINCIPAL, crop_box
    )
    return body, rot, crop_box, truth, np.array(person_box)


def _score(scene, rot=None, cam_t=CAM_T):
    body, true_rot, crop_box, truth, _ = scene
    return part_agreement_arrays(
        body, true_rot if rot is None else rot, np.zeros(11), cam_t, FOCAL, PRINCIPAL,
        crop_box, truth,
    )  # fmt: skip


# ---------------------------------------------------------------------------- part labels
def test_joint_classes_are_the_22_trained_parts_and_never_class_1():
    assert set(JOINT_CLASS.tolist()) == set(range(2, NUM_PART_CLASSES))
    assert PART_CLASS["rightHand"] == PART_CLASS["rightUpLeg"] == 2  # merged by the training
    assert PART_CLASS["leftArm"] == 3 and PART_CLASS["hips"] == 22


@pytest.mark.parametrize(
    ("joint", "name"),
    [
        ("left_shoulder", "left upper arm"), ("right_elbow", "right forearm"),
        ("left_hip", "left thigh"), ("right_knee", "right lower leg"),
        ("spine1", "lower spine"), ("spine3", "chest"), ("left_collar", "left shoulder"),
        ("jaw", "head"), ("left_index2", "left hand"), ("right_thumb3", "right hand + right thigh"),
    ],
)  # fmt: skip
def test_smplx_joint_maps_to_its_part(joint, name):
    assert CLASS_NAMES[JOINT_CLASS[J[joint]]] == name


def test_vertex_class_is_the_dominant_joints_part():
    weights = np.zeros((3, 55))
    weights[0, [J["left_elbow"], J["left_wrist"]]] = (0.7, 0.3)
    weights[1, [J["left_elbow"], J["left_wrist"]]] = (0.3, 0.7)
    weights[2, [J["pelvis"], J["spine1"], J["left_hip"]]] = (0.3, 0.3, 0.4)
    classes = vertex_part_classes(weights)
    assert [CLASS_NAMES[c] for c in classes] == ["left forearm", "left hand", "left thigh"]


def test_tube_body_parts_follow_its_bones(body_model_npz):
    body = tube_body_from_npz(body_model_npz)
    classes = body_model_part_classes(body)
    rest = body.rest_joints(np.zeros(11))
    for owner, child, name in [
        ("left_shoulder", "left_elbow", "left upper arm"),
        ("right_knee", "right_ankle", "right lower leg"),
        ("left_hip", "left_knee", "left thigh"),
    ]:
        middle = (rest[J[owner]] + rest[J[child]]) / 2
        near = np.linalg.norm(body.v_template - middle, axis=1) < 0.08
        assert near.sum() > 20
        assert set(CLASS_NAMES[c] for c in classes[near]) == {name}


# ---------------------------------------------------------------------------- rasteriser
def _brute_force(xy, inv_z, faces, labels, size):
    """Per pixel, per triangle: the reference the vectorised fill must equal."""
    out = np.zeros((size, size), np.uint8)
    best = np.zeros((size, size))
    for face in faces:
        (xa, ya), (xb, yb), (xc, yc) = xy[face]
        za, zb, zc = inv_z[face]
        if not (np.all(np.isfinite(xy[face])) and min(za, zb, zc) > 0):
            continue
        area = (xb - xa) * (yc - ya) - (xc - xa) * (yb - ya)
        if area == 0:
            continue
        for row in range(size):
            for col in range(size):
                cx, cy = col + 0.5, row + 0.5
                w = np.array([
                    (xb - cx) * (yc - cy) - (xc - cx) * (yb - cy),
                    (xc - cx) * (ya - cy) - (xa - cx) * (yc - cy),
                    (xa - cx) * (yb - cy) - (xb - cx) * (ya - cy),
                ]) * np.sign(area)  # fmt: skip
                if np.any(w < 0):
                    continue
                bary = w / abs(area)
                depth = bary @ np.array([za, zb, zc])
                if depth > best[row, col]:
                    best[row, col] = depth
                    out[row, col] = labels[face[np.argmax(bary)]]
    return out


@pytest.mark.parametrize("pass_size", [None, 37])  # one pass; many passes over the boxes
def test_rasteriser_equals_a_per_pixel_reference(pass_size, monkeypatch):
    if pass_size is not None:
        monkeypatch.setattr(rasterise, "_MAX_CANDIDATES", pass_size)
    rng = np.random.default_rng(3)
    size, n_faces = 24, 40
    xy = rng.uniform(-6, size + 6, (3 * n_faces, 2))
    inv_z = rng.uniform(0.1, 1.0, 3 * n_faces)
    inv_z[5] = -0.2  # a corner behind the camera: its triangle is skipped
    xy[10] = np.nan  # a broken vertex: its triangle is skipped
    faces = np.arange(3 * n_faces).reshape(n_faces, 3)
    labels = rng.integers(1, 23, 3 * n_faces).astype(np.uint8)
    got = rasterise_labels(xy, inv_z, faces, labels, size)
    expected = _brute_force(xy, inv_z, faces, labels, size)
    assert (expected > 0).sum() > 200  # the test covers real overlaps
    np.testing.assert_array_equal(got, expected)


def test_rasteriser_covers_exactly_the_pixel_centres_inside():
    # Rectangle [2.5, 7.5] x [3.2, 5.9]: centres i + 0.5 inside for columns 2..7, rows 3..5.
    xy = np.array([[2.5, 3.2], [7.5, 3.2], [7.5, 5.9], [2.5, 5.9]])
    faces = np.array([[0, 1, 2], [0, 2, 3]])
    out = rasterise_labels(xy, np.ones(4), faces, np.full(4, 9, np.uint8), 12)
    expected = np.zeros((12, 12), np.uint8)
    expected[3:6, 2:8] = 9
    np.testing.assert_array_equal(out, expected)


def test_rasteriser_nearer_triangle_wins_in_either_order_and_batches():
    xy = np.array([[1, 1], [15, 1], [1, 15], [2, 2], [16, 3], [3, 16]], dtype=float)
    inv_z = np.array([0.5, 0.5, 0.5, 0.25, 0.25, 0.25])  # first triangle at 2 m, second at 4 m
    labels = np.array([4, 4, 4, 7, 7, 7], np.uint8)
    a = rasterise_labels(xy, inv_z, np.array([[0, 1, 2], [3, 4, 5]]), labels, 16)
    b = rasterise_labels(xy, inv_z, np.array([[3, 4, 5], [0, 1, 2]]), labels, 16)
    np.testing.assert_array_equal(a, b)
    assert a[4, 4] == 4 and a[6, 10] == 7 and a[0, 0] == 0  # front where both cover
    batch = rasterise_labels(
        np.stack([xy, xy[::-1]]), np.stack([inv_z, inv_z[::-1]]),
        np.array([[0, 1, 2], [3, 4, 5]]), labels, 16,
    )  # fmt: skip
    np.testing.assert_array_equal(batch[0], a)
    flipped = rasterise_labels(xy[::-1], inv_z[::-1], np.array([[0, 1, 2], [3, 4, 5]]), labels,
                               16)  # fmt: skip
    np.testing.assert_array_equal(batch[1], flipped)


def test_skinned_vertices_equal_the_body_model(body_model_npz):
    body = BodyModel.load(body_model_npz)
    rng = np.random.default_rng(1)
    rot = axis_angle_to_matrix(rng.normal(0, 0.5, (3, 55, 3)))  # fingers and jaw too
    betas = rng.normal(0, 1, (3, 11))
    transl = rng.normal(0, 1, (3, 3))
    for r in (rot, rot[:, :22]):
        for b in (betas, betas[0]):
            expected = body.forward(r, b, transl, pose_correctives=False).vertices
            np.testing.assert_allclose(skinned_vertices(body, r, b, transl), expected, atol=1e-12)


def test_projection_into_the_crop_follows_the_crop_box():
    points = np.array([[[0.1, -0.2, 2.0], [0.0, 0.0, -1.0]]])
    xy, inv_z = project_to_crop(points, FOCAL, PRINCIPAL, np.array([[100.0, 50.0, 380.0, 330.0]]))
    u = 820 * 0.05 + 320
    v = 820 * -0.1 + 240
    np.testing.assert_allclose(xy[0, 0], [(u - 100) * 224 / 280, (v - 50) * 224 / 280])
    assert inv_z[0, 0] == 0.5 and inv_z[0, 1] == 0.0  # behind the camera: not drawn


# ---------------------------------------------------------------------------- scores
def test_true_pose_agrees_with_its_own_part_masks(scene):
    truth = scene[3]
    assert len(set(np.unique(truth)) - {0}) >= 18  # most parts are visible in the crop
    scores = _score(scene)
    assert scores.mean_iou[0] >= 0.99
    assert scores.silhouette_iou[0] >= 0.99
    present = np.isin(np.arange(NUM_PART_CLASSES), truth)
    assert np.all(scores.part_iou[0, present] >= 0.99)
    assert np.all(np.isnan(scores.part_iou[0, ~present]))


@pytest.mark.parametrize("joints", [("left_shoulder", "right_shoulder"), ("left_hip", "right_hip")])
def test_score_falls_as_the_pose_is_perturbed_further(scene, joints):
    means, silhouettes = [], []
    for degrees in (0, 5, 10, 20):
        rot = scene[1].copy()
        for joint, sign in zip(joints, (1, -1), strict=True):
            # About the body's forward axis: the limbs swing in the image plane.
            swing = axis_angle_to_matrix(np.array([0.0, 0.0, sign * np.radians(degrees)]))
            rot[0, J[joint]] = swing @ rot[0, J[joint]]
        scores = _score(scene, rot=rot)
        means.append(scores.mean_iou[0])
        silhouettes.append(scores.silhouette_iou[0])
    assert means[0] >= 0.99
    assert np.all(np.diff(means) < 0), means
    assert np.all(np.diff(silhouettes) < 0), silhouettes


def test_score_falls_as_the_body_moves_sideways(scene):
    means, silhouettes = [], []
    for metres in (0.0, 0.02, 0.05, 0.10):
        scores = _score(scene, cam_t=CAM_T + [metres, 0.0, 0.0])
        means.append(scores.mean_iou[0])
        silhouettes.append(scores.silhouette_iou[0])
    assert means[0] >= 0.99
    assert np.all(np.diff(means) < 0), means
    assert np.all(np.diff(silhouettes) < 0), silhouettes


def test_compare_counts_classes_and_silhouette():
    rendered = np.zeros((1, 4, 4), np.uint8)
    network = np.zeros((1, 4, 4), np.uint8)
    rendered[0, :2, :2] = 3  # 4 px
    network[0, :2, :1] = 3  # 2 px, inside
    network[0, 3, 3] = 5  # a part the body does not show
    scores = compare_part_labels(rendered, network)
    assert scores.part_iou[0, 3] == 0.5 and scores.part_iou[0, 5] == 0.0
    assert scores.mean_iou[0] == 0.25  # mean over the two parts present in either
    assert scores.silhouette_iou[0] == 2 / 5
    np.testing.assert_allclose(scores.part_iou[0, 0], 11 / 14)  # background: 11 of 14


def test_empty_frames_score_nan_and_missing_body_scores_zero():
    empty = np.zeros((2, 8, 8), np.uint8)
    seen = empty.copy()
    seen[1, 2:4, 2:4] = 7
    scores = compare_part_labels(empty, seen)
    assert np.isnan(scores.mean_iou[0]) and np.isnan(scores.silhouette_iou[0])
    assert scores.mean_iou[1] == 0.0 and scores.silhouette_iou[1] == 0.0
    np.testing.assert_array_equal(scores.low_frames(0.5), [1])  # NaN frames are not flagged


def test_compare_refuses_bad_labels():
    with pytest.raises(ValueError, match="both be"):
        compare_part_labels(np.zeros((1, 4, 4), np.uint8), np.zeros((1, 5, 5), np.uint8))
    with pytest.raises(ValueError, match="classes 0..22"):
        compare_part_labels(np.zeros((1, 4, 4), np.uint8), np.full((1, 4, 4), 23, np.uint8))


def test_estimate_scores_equal_the_array_scores(scene):
    body, rot, crop_box, truth, _ = scene
    estimate = Estimate(
        rotmats=rot.astype(np.float32), pose_axis_angle=np.zeros((1, 22, 3)),
        betas=np.zeros((1, 11), np.float32), cam_crop=np.zeros((1, 3)), cam_t=CAM_T,
        focal_px=FOCAL, principal_point=PRINCIPAL, joints3d=np.zeros((1, 127, 3)),
        joints2d=np.zeros((1, 127, 2)), depth=np.zeros((1, CROP_SIZE, CROP_SIZE)),
        part_logits=np.zeros((1, 23, 1, 1)), part_labels=truth, crop_box=crop_box,
        box_center=np.zeros((1, 2)), box_scale=np.ones(1), image_size=np.array([[640, 480]]),
        image_index=np.zeros(1, np.int64),
    )  # fmt: skip
    scores = part_agreement(estimate, body)
    np.testing.assert_allclose(scores.part_iou, _score(scene).part_iou, atol=1e-6)
    # With pose correctives (zero for this body) the slow path gives the same numbers.
    slow = part_agreement(estimate, body, pose_correctives=True)
    np.testing.assert_array_equal(slow.part_iou, scores.part_iou)


def _motion(scene, n=3):
    rot55 = np.broadcast_to(np.eye(3), (n, 55, 3, 3)).copy()
    rot55[:, :22] = scene[1][0]
    transl = np.repeat(CAM_T, n, axis=0)
    transl[1, 0] += 0.05  # the middle frame is 5 cm off
    return Motion(
        rotmats=rot55, transl=transl, betas=np.zeros(11), fps=25.0,
        focal_px=np.repeat(FOCAL, n, 0), principal_point=np.repeat(PRINCIPAL, n, 0),
    )  # fmt: skip


def test_motion_scores_fill_unlabelled_rows_with_nan(scene):
    motion = _motion(scene)
    crop_box, truth = scene[2], scene[3]
    scores = motion_part_agreement(
        motion, scene[0], np.repeat(truth, 2, 0), np.repeat(crop_box, 2, 0), rows=[0, 1]
    )
    assert scores.mean_iou[0] >= 0.99 and scores.mean_iou[1] < 0.9
    assert np.isnan(scores.mean_iou[2]) and np.all(np.isnan(scores.part_iou[2]))
    np.testing.assert_array_equal(scores.low_frames(0.9), [1])
    summary = json.loads(json.dumps(scores.summary(), allow_nan=False))
    assert summary["frames"] == 3 and summary["frames_scored"] == 2
    assert summary["part_iou_per_class"][1] is None  # class 1 is never drawn nor predicted
    row = json.loads(json.dumps(scores.frame_summary(0), allow_nan=False))
    assert row["mean_part_iou"] == 1.0 and len(row["part_iou"]) == 23 and row["part_iou"][1] is None
    assert json.loads(json.dumps(scores.frame_summary(2)))["silhouette_iou"] is None


def test_motion_crop_boxes_come_from_its_person_boxes(scene):
    motion = _motion(scene).replace(boxes=scene[4])
    np.testing.assert_array_equal(crop_boxes_of(motion.boxes[:1]), scene[2])
    derived = motion_part_agreement(motion, scene[0], np.repeat(scene[3], 3, 0))
    given = motion_part_agreement(motion, scene[0], np.repeat(scene[3], 3, 0),
                                  np.repeat(scene[2], 3, 0))  # fmt: skip
    np.testing.assert_array_equal(derived.part_iou, given.part_iou)
    with pytest.raises(ValueError, match="crop boxes"):
        motion_part_agreement(_motion(scene), scene[0], np.repeat(scene[3], 3, 0))


def test_motion_file_keeps_the_scores(scene, tmp_path):
    motion = _motion(scene)
    scores = motion_part_agreement(motion, scene[0], np.repeat(scene[3], 3, 0),
                                   np.repeat(scene[2], 3, 0))  # fmt: skip
    scored = with_agreement(motion, scores)
    loaded = load_motion_npz(save_motion_npz(tmp_path / "m.npz", scored))
    np.testing.assert_array_equal(loaded.part_iou, scores.part_iou)  # NaN columns included
    np.testing.assert_array_equal(loaded.silhouette_iou, scores.silhouette_iou)
    np.testing.assert_array_equal(loaded.select([2, 0]).silhouette_iou,
                                  scores.silhouette_iou[[2, 0]])  # fmt: skip
    assert load_motion_npz(save_motion_npz(tmp_path / "plain.npz", motion)).part_iou is None
    with pytest.raises(ValueError, match="score rows"):
        with_agreement(motion.slice(0, 2), scores)


def test_tube_body_file_loads_as_the_same_body(body_model_npz, tmp_path):
    from tests.synth_tube_body import write_tube_smplx_npz

    loaded = BodyModel.load(write_tube_smplx_npz(tmp_path / "SMPLX_NEUTRAL.npz", body_model_npz))
    body = tube_body_from_npz(body_model_npz)
    rot = _true_pose()
    np.testing.assert_allclose(
        loaded.forward(rot, np.ones(11), CAM_T).vertices,
        body.forward(rot, np.zeros(11), CAM_T).vertices, atol=1e-12,
    )  # fmt: skip
