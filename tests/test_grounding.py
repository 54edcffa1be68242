"""Floor fit, world frame, contacts, two-bone IK and the depth solve, each against known answers."""

import numpy as np
import pytest

from dpose_core import grounding
from dpose_core.body_model import BodyModel
from dpose_core.foot_lock import foot_transform, rotation_between, two_bone_ik
from dpose_core.motion import Motion
from dpose_core.motion_io import load_motion_npz, save_motion_npz
from dpose_core.root_depth import DepthProblem, solve_depth
from dpose_core.rotations import axis_angle_to_matrix
from dpose_core.skeleton import NUM_JOINTS


@pytest.fixture(scope="module")
def body_model(body_model_npz):
    return BodyModel.load(body_model_npz)


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


def test_foot_points_sit_under_their_joints_at_the_sole(body_model):
    betas = np.linspace(-1, 1, 11)
    feet = grounding.foot_points(body_model, betas)
    rest = body_model.rest_joints(betas)
    points = rest[feet.joints] + feet.offsets
    assert np.allclose(points[:, [0, 2]], rest[feet.joints][:, [0, 2]])  # straight below
    assert points[0, 1] == pytest.approx(points[1, 1]) and points[2, 1] == pytest.approx(
        points[3, 1])  # heel and toe of a foot share the sole
    assert np.all(feet.offsets[:, 1] < 0)
    # The sole is (nearly) the lowest part of the foot's own vertices.
    verts = body_model.shaped_vertices(betas)
    owner = np.argmax(body_model.lbs_weights, axis=1)
    left = verts[np.isin(owner, (7, 10)), 1]
    assert np.mean(left < points[0, 1]) == pytest.approx(0.02, abs=0.01)
    # Posed at rest (identity rotations) the points are where the rest pose has them.
    out = body_model.forward(np.tile(np.eye(3), (1, NUM_JOINTS, 1, 1)), betas,
                             return_vertices=False)
    assert np.allclose(feet.posed(out.joint_world_transforms)[0], points, atol=1e-12)


def test_posed_skeleton_matches_the_body_model(body_model):
    rng = np.random.default_rng(5)
    rot = axis_angle_to_matrix(rng.normal(0, 0.4, (6, NUM_JOINTS, 3)))
    betas, transl = rng.normal(0, 1, 11), rng.normal(0, 1, (6, 3))
    full = body_model.forward(rot, betas, transl, return_vertices=False)
    fast = grounding.posed_skeleton(rot, body_model.rest_joints(betas), body_model.parents,
                                    transl)
    assert np.allclose(fast, full.joint_world_transforms[:, :22], atol=1e-12)


def test_fit_floor_finds_a_tilted_plane_among_outliers():
    rng = np.random.default_rng(0)
    normal = _unit(np.array([0.1, -0.95, 0.25]))
    offset = -1.6
    basis = np.linalg.svd(normal[None])[2][1:]  # two directions in the plane
    on = rng.uniform(-2, 2, (300, 2)) @ basis + (offset + rng.normal(0, 0.008, (300, 1))) * normal
    lift = rng.uniform(0.05, 0.5, (120, 1))  # swinging feet, well above the floor
    above = rng.uniform(-2, 2, (120, 2)) @ basis + (offset + lift) * normal
    pts = np.concatenate([on, above])
    floor = grounding.fit_floor(pts, np.ones(len(pts)), up_prior=np.array([0.0, -1.0, 0.0]))
    assert np.degrees(np.arccos(floor.normal @ normal)) < 0.5
    assert floor.offset == pytest.approx(offset, abs=0.005)
    assert np.abs(floor.height(on)).mean() < 0.01
    # Two points only: the plane through the lowest one, perpendicular to the prior.
    few = grounding.fit_floor(pts[:2], np.ones(2), np.array([0.0, 0.0, 1.0]))
    assert np.allclose(few.normal, [0, 0, 1]) and few.offset == pytest.approx(pts[:2, 2].min())
    with pytest.raises(ValueError):
        grounding.fit_floor(pts, np.zeros(len(pts)), np.array([0.0, 0.0, 1.0]))


def test_world_from_floor_puts_the_floor_at_z0_under_the_origin():
    floor = grounding.Floor(_unit(np.array([0.0, -0.97, 0.26])), -1.8)
    origin_point = np.array([0.3, 0.2, 4.0])
    world = grounding.world_from_floor(floor, np.array([0.0, 0.0, 1.0]), origin_point)
    assert np.allclose(world[:3, :3] @ world[:3, :3].T, np.eye(3))
    assert np.linalg.det(world[:3, :3]) == pytest.approx(1.0)
    assert np.allclose(world[:3, :3] @ floor.normal, [0, 0, 1])
    on_floor = np.array([1.0, 0.0, 0.0]) * 0.7 + floor.offset * floor.normal
    assert (world[:3, :3] @ on_floor + world[:3, 3])[2] == pytest.approx(0.0, abs=1e-12)
    mapped = world[:3, :3] @ origin_point + world[:3, 3]
    assert np.allclose(mapped[:2], 0.0) and mapped[2] == pytest.approx(floor.height(origin_point))
    assert (world[:3, :3] @ [0, 0, 1.0])[1] > 0.9  # the view direction is world +Y


def test_rotation_between_and_fractions():
    rng = np.random.default_rng(1)
    a, b = _unit(rng.normal(size=(50, 3))), _unit(rng.normal(size=(50, 3)))
    rot = rotation_between(a, b)
    assert np.allclose(np.einsum("nab,nb->na", rot, a), b, atol=1e-12)
    assert np.allclose(rotation_between(a, b, 0.0), np.eye(3))
    half = rotation_between(a, b, 0.5)
    mid = np.einsum("nab,nb->na", half, a)
    assert np.allclose(np.sum(mid * a, -1), np.sum(mid * b, -1))  # halfway


def test_two_bone_ik_reaches_and_keeps_the_knee_plane():
    rng = np.random.default_rng(2)
    n = 200
    hip = rng.normal(size=(n, 3))
    thigh = _unit(rng.normal(size=(n, 3))) * 0.42
    knee = hip + thigh
    bend = axis_angle_to_matrix(_unit(np.cross(thigh, rng.normal(size=(n, 3)))) * 0.6)
    shin = np.einsum("nab,nb->na", bend, thigh) * (0.40 / 0.42)
    ankle = knee + shin
    target = hip + _unit(rng.normal(size=(n, 3))) * rng.uniform(0.15, 0.8, (n, 1))
    swing, knee_bend, reached = two_bone_ik(hip, knee, ankle, target, np.cross(thigh, shin))
    assert np.allclose(reached, target, atol=1e-9)
    new_knee = hip + np.einsum("nab,nb->na", swing, thigh)
    new_ankle = new_knee + np.einsum("nab,nb->na", swing @ knee_bend, shin)
    assert np.allclose(new_ankle, target, atol=1e-9)
    assert np.allclose(np.linalg.norm(new_knee - hip, axis=1), 0.42)
    # The new knee lies in the plane through hip, target and the old knee.
    normal = np.cross(target - hip, knee - hip)
    assert np.abs(np.sum((new_knee - hip) * _unit(normal), -1)).max() < 1e-9
    assert np.all(np.sum((new_knee - hip) * np.cross(_unit(normal), target - hip), -1) > 0)
    # Out of reach: the leg points straight at the target.
    far = hip + _unit(target - hip) * 2.0
    _, _, reached = two_bone_ik(hip, knee, ankle, far, np.cross(thigh, shin))
    assert np.allclose(_unit(reached - hip), _unit(far - hip), atol=1e-6)
    assert np.allclose(np.linalg.norm(reached - hip, axis=1), 0.82, atol=1e-3)


def test_foot_transform_locks_heel_only_by_moving_the_foot():
    heel, toe = np.array([[0.0, 0.0, 0.05]]), np.array([[0.15, 0.0, 0.0]])
    goal_heel, goal_toe = np.array([[0.02, 0.01, 0.0]]), np.array([[0.2, 0.0, 0.0]])
    rot, shift = foot_transform(heel, toe, goal_heel, goal_toe, np.array([1.0]), np.array([0.0]))
    assert np.allclose(rot, np.eye(3)) and np.allclose(shift, goal_heel - heel)
    turn = axis_angle_to_matrix(np.array([0.0, 0.3, 0.1]))
    goal_heel, goal_toe = heel @ turn.T + [0.1, 0.2, 0.0], toe @ turn.T + [0.1, 0.2, 0.0]
    rot, shift = foot_transform(heel, toe, goal_heel, goal_toe, np.array([1.0]), np.array([1.0]))
    assert np.allclose(rot[0] @ heel[0] + shift[0], goal_heel[0], atol=1e-12)
    assert np.allclose(rot[0] @ toe[0] + shift[0], goal_toe[0], atol=1e-12)


def test_contacts_hysteresis_short_runs_and_evidence():
    fps = 30.0
    n = 60
    heights = np.full((n, 4), 0.2)
    speeds = np.full((n, 4), 2.0)
    heights[10:30, 0] = 0.005 + 0.008 * np.sin(np.arange(20))  # a noisy stance
    speeds[10:30, 0] = 0.1
    heights[20, 0] = 0.03  # one frame halfway up: hysteresis holds the contact
    heights[40:42, 0] = 0.0  # a two-frame blip: too short
    speeds[40:42, 0] = 0.0
    heights[:, 1] = heights[:, 0] + 0.10  # toe far above: never in contact
    states, conf = grounding.detect_contacts(heights, speeds, fps)
    # One contact, the stance (its edges may move by a frame: heights are smoothed over time).
    assert len(grounding.runs(states[:, 0])) == 1
    assert states[11:29, 0].all() and not states[:9, 0].any() and not states[31:, 0].any()
    assert not states[:, 1:].any()
    assert np.all((conf >= 0) & (conf <= 1))


def test_depth_solve_matches_dense_least_squares():
    """The banded normal equations give the same answer as a dense solve of the residuals."""
    rng = np.random.default_rng(3)
    n, num_points = 40, 4
    rays = _unit(rng.normal([0, 0, 1], 0.2, (n, 3)))
    pelvis = rays * rng.uniform(3, 5, (n, 1))
    points = pelvis[:, None] + rng.normal(0, 0.5, (n, num_points, 3))
    centres = np.cumsum(rng.normal(0, 0.1, (n, 3)), axis=0)
    problem = DepthProblem(rays, pelvis, points, centres, np.full(n, 0.2), 1 / 30)
    contacts = rng.random((n, num_points)) < 0.5
    weights = rng.uniform(0.2, 1.0, (n, num_points))
    normal = _unit(np.array([0.0, -1.0, 0.2]))
    sol = solve_depth(problem, contacts=contacts, contact_weights=weights, floor_normal=normal,
                      scale_prior=(2.0, 0.5), robust=False)

    def residuals(x):
        slides, k, d = x[:n], x[n], x[n + 1]
        dist = np.linalg.norm(pelvis, axis=1) + slides  # along each ray
        pts = k * centres[:, None] + points + slides[:, None, None] * rays[:, None]
        out = [slides / 0.2, [(k - 2.0) / 0.5]]
        sigma = 2.0 / 30**2
        out.append((dist[2:] - 2 * dist[1:-1] + dist[:-2]) / sigma)
        both = contacts[1:] & contacts[:-1]
        w = np.sqrt(np.minimum(weights[1:], weights[:-1])) / 0.01
        out.append(((pts[1:] - pts[:-1]) * (w * both)[..., None]).ravel())
        out.append(((pts @ normal - d) * np.sqrt(weights) / 0.01 * contacts).ravel())
        return np.concatenate([np.ravel(o) for o in out])

    base = residuals(np.zeros(n + 2))
    jac = np.stack([residuals(e) - base for e in np.eye(n + 2)], axis=1)
    dense = np.linalg.lstsq(jac, -base, rcond=None)[0]
    assert np.allclose(sol.slides, dense[:n], atol=1e-6)
    assert sol.scale == pytest.approx(dense[n], abs=1e-6)
    assert sol.floor_offset == pytest.approx(dense[n + 1], abs=1e-6)


def test_depth_solve_shrugs_off_a_glitch():
    """One frame 40 % too far: least squares bends its neighbours, the robust solve does not."""
    n = 60
    t = np.arange(n) / 30
    pelvis = np.stack([0.8 * t - 0.4, 0.1 + 0 * t, 4.0 + 0.3 * t], axis=1)  # straight walk
    rays = _unit(pelvis)
    raw = pelvis.copy()
    raw[30] *= 1.4
    problem = DepthProblem(rays, raw, raw[:, None], None, 0.05 * np.linalg.norm(raw, axis=1),
                           1 / 30)
    clean = DepthProblem(rays, pelvis, pelvis[:, None], None,
                         0.05 * np.linalg.norm(pelvis, axis=1), 1 / 30)
    baseline = np.linalg.norm(pelvis, axis=1) + solve_depth(clean).slides  # no glitch
    raw_distance = np.linalg.norm(raw, axis=1)
    plain = raw_distance + solve_depth(problem, robust=False).slides - baseline
    robust = raw_distance + solve_depth(problem).slides - baseline
    near = np.r_[25:30, 31:36]
    assert np.abs(robust[near]).max() < 0.01
    assert np.abs(plain[near]).max() > 3 * np.abs(robust[near]).max()
    assert abs(robust[30]) < 0.05  # the glitch itself is pulled back onto the walk


def test_motion_file_keeps_world_camera_and_contacts(tmp_path):
    n = 5
    rng = np.random.default_rng(4)
    cams = np.tile(np.eye(4), (n, 1, 1))
    cams[:, :3, 3] = rng.normal(size=(n, 3))
    motion = Motion(rotmats=np.tile(np.eye(3), (n, NUM_JOINTS, 1, 1)), transl=rng.normal(
        size=(n, 3)), betas=np.zeros(11), fps=30, coordinate_frame="world_z_up",
        camera_to_world=cams, contacts=rng.random((n, 4)) < 0.5,
        contact_confidence=rng.random((n, 4)))
    back = load_motion_npz(save_motion_npz(tmp_path / "m.npz", motion))
    assert back.coordinate_frame == "world_z_up"
    assert np.array_equal(back.camera_to_world, cams)
    assert np.array_equal(back.contacts, motion.contacts) and back.contacts.dtype == bool
    assert np.array_equal(back.contact_confidence, motion.contact_confidence)
    part = back.select(np.array([1, 3]))
    assert np.array_equal(part.camera_to_world, cams[[1, 3]])
    with pytest.raises(ValueError):
        motion.replace(camera_to_world=np.full((n, 4, 4), np.nan))
