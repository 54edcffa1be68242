"""Rotation conversions agree with scipy and stay accurate at 0 and pi."""

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from dpose_core import rotations as rot


def _random_rotvecs(rng, n):
    axis = rng.normal(size=(n, 3))
    axis /= np.linalg.norm(axis, axis=-1, keepdims=True)
    return axis * rng.uniform(0, np.pi, (n, 1))


def test_axis_angle_to_matrix_matches_scipy():
    rng = np.random.default_rng(0)
    aa = _random_rotvecs(rng, 200).reshape(10, 20, 3)
    ours = rot.axis_angle_to_matrix(aa)
    ref = Rotation.from_rotvec(aa.reshape(-1, 3)).as_matrix().reshape(10, 20, 3, 3)
    assert ours.shape == (10, 20, 3, 3)
    np.testing.assert_allclose(ours, ref, atol=1e-14)


def test_matrix_to_axis_angle_round_trip_including_zero_and_pi():
    rng = np.random.default_rng(1)
    aa = _random_rotvecs(rng, 300)
    axis = aa / np.linalg.norm(aa, axis=-1, keepdims=True)
    special = np.concatenate(
        [
            np.zeros((1, 3)),
            axis[:5] * 1e-9,
            axis[5:10] * np.pi,
            axis[10:15] * (np.pi - 1e-7),
            np.array([[np.pi, 0, 0], [0, np.pi, 0], [0, 0, np.pi]]),
        ]
    )
    aa = np.concatenate([aa, special])
    back = rot.matrix_to_axis_angle(rot.axis_angle_to_matrix(aa))
    np.testing.assert_allclose(
        rot.axis_angle_to_matrix(back), rot.axis_angle_to_matrix(aa), atol=1e-12
    )
    assert np.all(np.linalg.norm(back, axis=-1) <= np.pi + 1e-12)
    # Away from pi the rotation vector itself comes back (unique there).
    away = np.linalg.norm(aa, axis=-1) < np.pi - 1e-3
    np.testing.assert_allclose(back[away], aa[away], atol=1e-12)


def test_quaternions_w_first_and_match_scipy():
    rng = np.random.default_rng(2)
    mats = Rotation.random(500, random_state=3).as_matrix()
    q = rot.matrix_to_quaternion(mats)
    ref = Rotation.from_matrix(mats).as_quat()  # x, y, z, w
    ref = np.concatenate([ref[:, 3:], ref[:, :3]], axis=-1)
    ref *= np.sign(ref[:, :1])
    np.testing.assert_allclose(q, ref, atol=1e-12)
    np.testing.assert_allclose(rot.quaternion_to_matrix(q), mats, atol=1e-12)
    # Not normalised input still gives a rotation.
    scaled = q * rng.uniform(0.5, 3, (500, 1))
    np.testing.assert_allclose(rot.quaternion_to_matrix(scaled), mats, atol=1e-12)


def test_matrix_to_quaternion_at_half_turns():
    for aa in ([np.pi, 0, 0], [0, np.pi, 0], [0, 0, np.pi], [np.pi / np.sqrt(2)] * 2 + [0]):
        m = rot.axis_angle_to_matrix(np.array(aa))
        q = rot.matrix_to_quaternion(m)
        assert abs(np.linalg.norm(q) - 1) < 1e-14
        np.testing.assert_allclose(rot.quaternion_to_matrix(q), m, atol=1e-14)


def test_rot6d_layout_columns_from_row_major_pairs():
    # rows (0,1),(1,0),(0,0): first column (0,1,0), second column (1,0,0)
    r = rot.rot6d_to_matrix(np.array([0.0, 1.0, 1.0, 0.0, 0.0, 0.0]))
    np.testing.assert_allclose(r, [[0, 1, 0], [1, 0, 0], [0, 0, -1]], atol=1e-15)
    np.testing.assert_allclose(rot.rot6d_to_matrix(np.array([1.0, 0, 0, 1, 0, 0])), np.eye(3))


def test_rot6d_gram_schmidt_and_round_trip():
    rng = np.random.default_rng(4)
    raw = rng.normal(size=(7, 22, 6))
    r = rot.rot6d_to_matrix(raw)
    np.testing.assert_allclose(r @ np.swapaxes(r, -1, -2), np.broadcast_to(np.eye(3), r.shape),
                               atol=1e-12)
    np.testing.assert_allclose(np.linalg.det(r), 1.0, atol=1e-12)
    # first column is the normalised first raw vector (a0, a2, a4)
    u = raw[..., [0, 2, 4]]
    np.testing.assert_allclose(r[..., :, 0], u / np.linalg.norm(u, axis=-1, keepdims=True))
    mats = Rotation.random(50, random_state=5).as_matrix()
    np.testing.assert_allclose(rot.rot6d_to_matrix(rot.matrix_to_rot6d(mats)), mats, atol=1e-12)
    # zero input does not produce NaN (norm clamp)
    assert np.all(np.isfinite(rot.rot6d_to_matrix(np.zeros(6))))


def test_rot6d_matches_torch_reference_formula():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    raw = rng.normal(size=(30, 6)).astype(np.float32)
    x = torch.from_numpy(raw).view(-1, 3, 2)
    a1, a2 = x[:, :, 0], x[:, :, 1]
    b1 = torch.nn.functional.normalize(a1)
    b2 = torch.nn.functional.normalize(a2 - torch.einsum("bi,bi->b", b1, a2).unsqueeze(-1) * b1)
    b3 = torch.linalg.cross(b1, b2, dim=1)
    ref = torch.stack((b1, b2, b3), dim=-1).numpy()
    ours = rot.rot6d_to_matrix(raw)
    assert ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_make_quaternions_continuous_flips_signs_along_time():
    rng = np.random.default_rng(7)
    aa = np.cumsum(rng.normal(0, 0.2, (50, 4, 3)), axis=0)
    q = rot.axis_angle_to_quaternion(aa)
    flipped = q * rng.choice([-1.0, 1.0], (50, 4, 1))
    cont = rot.make_quaternions_continuous(flipped, axis=0)
    assert np.all(np.sum(cont[1:] * cont[:-1], axis=-1) >= 0)
    np.testing.assert_allclose(np.abs(np.sum(cont * q, axis=-1)), 1.0, atol=1e-12)
    np.testing.assert_array_equal(cont[0], flipped[0])
    # axis other than 0
    cont1 = rot.make_quaternions_continuous(np.swapaxes(flipped, 0, 1), axis=1)
    np.testing.assert_allclose(np.swapaxes(cont1, 0, 1), cont)


def test_quaternion_slerp_endpoints_midpoint_and_shortest_path():
    q0 = rot.axis_angle_to_quaternion(np.array([0.0, 0.0, 0.2]))
    q1 = rot.axis_angle_to_quaternion(np.array([0.0, 0.0, 1.0]))
    np.testing.assert_allclose(rot.quaternion_slerp(q0, q1, 0.0), q0, atol=1e-14)
    np.testing.assert_allclose(rot.quaternion_slerp(q0, q1, 1.0), q1, atol=1e-14)
    mid = rot.quaternion_slerp(q0, -q1, 0.5)  # sign of q1 must not matter
    np.testing.assert_allclose(rot.quaternion_to_axis_angle(mid), [0, 0, 0.6], atol=1e-12)
    ts = np.linspace(0, 1, 5)
    many = rot.quaternion_slerp(q0[None], q1[None], ts)
    np.testing.assert_allclose(
        rot.quaternion_to_axis_angle(many)[:, 2], 0.2 + 0.8 * ts, atol=1e-12
    )


def test_quaternion_multiply_composes_like_matrices():
    mats = Rotation.random(20, random_state=8).as_matrix()
    q = rot.matrix_to_quaternion(mats)
    prod = rot.quaternion_multiply(q[:10], q[10:])
    np.testing.assert_allclose(rot.quaternion_to_matrix(prod), mats[:10] @ mats[10:], atol=1e-12)


def test_orthonormalize_and_axis_rotations():
    mats = Rotation.random(5, random_state=9).as_matrix()
    noisy = mats + np.random.default_rng(10).normal(0, 1e-3, mats.shape)
    fixed = rot.orthonormalize(noisy)
    np.testing.assert_allclose(np.linalg.det(fixed), 1.0, atol=1e-12)
    assert np.max(np.abs(fixed - mats)) < 5e-3
    np.testing.assert_allclose(rot.rotation_about_axis("x", np.pi / 2) @ [0, 1, 0], [0, 0, 1],
                               atol=1e-15)
    with pytest.raises(ValueError):
        rot.rotation_about_axis("w", 1.0)


def test_bad_shapes_raise():
    with pytest.raises(ValueError):
        rot.axis_angle_to_matrix(np.zeros((4, 2)))
    with pytest.raises(ValueError):
        rot.rot6d_to_matrix(np.zeros(5))
