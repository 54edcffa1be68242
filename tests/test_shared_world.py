"""Moving one person's grounded world into another's (shared_world.py)."""

import numpy as np

from dpose_core.motion import Motion
from dpose_core.rotations import axis_angle_to_matrix
from dpose_core.shared_world import moved_motion, world_moves


def _rigid(rng) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = axis_angle_to_matrix(rng.normal(0, 0.5, 3))
    m[:3, 3] = rng.normal(0, 2, 3)
    return m


def test_moves_carry_one_world_onto_the_other_even_where_the_first_has_no_frame():
    rng = np.random.default_rng(0)
    gauge = _rigid(rng)  # the first world seen from this one
    cams = np.stack([_rigid(rng) for _ in range(10)])  # a moving camera in this world
    frames = np.arange(100, 110)
    first_frames = frames[3:7]  # the first person is there for 4 of the 10 frames
    moves = world_moves(frames, cams, first_frames, (gauge @ cams)[3:7])
    np.testing.assert_allclose(moves, np.broadcast_to(gauge, moves.shape), atol=1e-9)
    # No frame in common: the two frames nearest in time set one move for all.
    far = world_moves(frames[:3], cams[:3], frames[6:], (gauge @ cams)[6:])
    expected = (gauge @ cams)[6] @ np.linalg.inv(cams[2])
    np.testing.assert_allclose(far, np.broadcast_to(expected, far.shape), atol=1e-9)


def test_a_moved_motion_turns_its_root_about_the_pelvis():
    rng = np.random.default_rng(1)
    n = 4
    rot = np.tile(np.eye(3), (n, 55, 1, 1))
    rot[:, 0] = axis_angle_to_matrix(rng.normal(0, 0.4, (n, 3)))
    motion = Motion(rot, rng.normal(0, 1, (n, 3)), np.zeros(11), 30.0,
                    camera_to_world=np.tile(np.eye(4), (n, 1, 1)))
    pelvis_rest = np.array([0.0, -0.3, 0.02])
    moves = np.stack([_rigid(rng) for _ in range(n)])
    out = moved_motion(motion, moves, pelvis_rest)
    pelvis = motion.transl + pelvis_rest
    want = np.einsum("nab,nb->na", moves[:, :3, :3], pelvis) + moves[:, :3, 3]
    np.testing.assert_allclose(out.transl + pelvis_rest, want, atol=1e-12)
    np.testing.assert_allclose(out.rotmats[:, 0], moves[:, :3, :3] @ rot[:, 0], atol=1e-12)
    np.testing.assert_allclose(out.camera_to_world, moves, atol=1e-12)
    np.testing.assert_array_equal(out.rotmats[:, 1:], rot[:, 1:])
