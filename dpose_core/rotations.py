"""Rotation conversions in numpy, batched over leading axes.

One implementation serves the network output (6D), the body model (matrices), motion files
(axis-angle) and Blender keyframes (quaternions, w first). Everything is float64 unless the
input is another float type; the robust branches near 0 and pi matter because poses from real
footage hit both (rest pose, fully bent joints, flipped global orientation).
"""

import numpy as np

_EPS = 1e-12


def _as_float(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        x = x.astype(np.float64)
    return x


def _check_last(x: np.ndarray, shape: tuple[int, ...], what: str) -> None:
    if x.shape[x.ndim - len(shape):] != shape or x.ndim < len(shape):
        raise ValueError(f"{what} must have trailing shape {shape}, got {x.shape}")


def skew(v: np.ndarray) -> np.ndarray:
    """Cross-product matrices [v]x of vectors (..., 3) -> (..., 3, 3)."""
    v = _as_float(v)
    _check_last(v, (3,), "vectors")
    zero = np.zeros_like(v[..., 0])
    x, y, z = v[..., 0], v[..., 1], v[..., 2]
    rows = [
        np.stack([zero, -z, y], axis=-1),
        np.stack([z, zero, -x], axis=-1),
        np.stack([-y, x, zero], axis=-1),
    ]
    return np.stack(rows, axis=-2)


def axis_angle_to_matrix(axis_angle: np.ndarray) -> np.ndarray:
    """Rodrigues: rotation vectors (..., 3) (angle = norm, radians) -> matrices (..., 3, 3).

    Uses the Taylor series of sin(t)/t and (1-cos t)/t^2 for tiny angles so that the
    result is exact to machine precision at and around the identity.
    """
    aa = _as_float(axis_angle)
    _check_last(aa, (3,), "axis-angle")
    theta2 = np.sum(aa * aa, axis=-1)
    theta = np.sqrt(theta2)
    small = theta < 1e-4
    safe = np.where(small, 1.0, theta)
    a = np.where(small, 1.0 - theta2 / 6.0, np.sin(safe) / safe)
    b = np.where(small, 0.5 - theta2 / 24.0, (1.0 - np.cos(safe)) / (safe * safe))
    k = skew(aa)
    eye = np.broadcast_to(np.eye(3, dtype=aa.dtype), k.shape)
    return eye + a[..., None, None] * k + b[..., None, None] * (k @ k)


def matrix_to_quaternion(matrix: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> unit quaternions (..., 4), (w, x, y, z), w >= 0.

    Shepperd's method: build the quaternion from whichever of w, x, y, z is largest, so no
    division by a small number happens anywhere (robust at 180 degrees).
    """
    m = _as_float(matrix)
    _check_last(m, (3, 3), "rotation matrices")
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    trace = m00 + m11 + m22
    # 4*q_i^2 for each component, one candidate quaternion per largest component.
    cand = np.stack(
        [
            np.stack([1.0 + trace, m21 - m12, m02 - m20, m10 - m01], axis=-1),
            np.stack([m21 - m12, 1.0 + m00 - m11 - m22, m01 + m10, m02 + m20], axis=-1),
            np.stack([m02 - m20, m01 + m10, 1.0 - m00 + m11 - m22, m12 + m21], axis=-1),
            np.stack([m10 - m01, m02 + m20, m12 + m21, 1.0 - m00 - m11 + m22], axis=-1),
        ],
        axis=-2,
    )  # (..., 4 candidates, 4)
    diag = np.stack([trace, m00, m11, m22], axis=-1)
    best = np.argmax(diag, axis=-1)
    q = np.take_along_axis(cand, best[..., None, None], axis=-2)[..., 0, :]
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    return np.where(q[..., :1] < 0, -q, q)


def quaternion_to_matrix(quaternion: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4), (w, x, y, z), any non-zero norm -> rotation matrices (..., 3, 3)."""
    q = _as_float(quaternion)
    _check_last(q, (4,), "quaternions")
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), _EPS)
    w, x, y, z = q[..., 0], q[..., 1], q[..., 2], q[..., 3]
    rows = [
        np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)], axis=-1),
        np.stack([2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)], axis=-1),
        np.stack([2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)], axis=-1),
    ]
    return np.stack(rows, axis=-2)


def quaternion_to_axis_angle(quaternion: np.ndarray) -> np.ndarray:
    """Quaternions (..., 4), w first -> rotation vectors (..., 3) with angle in [0, pi]."""
    q = _as_float(quaternion)
    _check_last(q, (4,), "quaternions")
    q = q / np.maximum(np.linalg.norm(q, axis=-1, keepdims=True), _EPS)
    q = np.where(q[..., :1] < 0, -q, q)  # angle in [0, pi]
    w = q[..., 0]
    xyz = q[..., 1:]
    s = np.linalg.norm(xyz, axis=-1)
    angle = 2.0 * np.arctan2(s, w)
    small = s < 1e-8
    # angle / sin(angle/2) -> 2 (1 + angle^2/24) as s -> 0; w ~ 1 there.
    factor = np.where(small, 2.0 / np.where(small, w, 1.0), angle / np.where(small, 1.0, s))
    return xyz * factor[..., None]


def matrix_to_axis_angle(matrix: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) -> rotation vectors (..., 3), angle in [0, pi].

    Goes through Shepperd's quaternion, which stays accurate near 0 and near pi where the
    arccos-of-trace formula loses the axis.
    """
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def axis_angle_to_quaternion(axis_angle: np.ndarray) -> np.ndarray:
    """Rotation vectors (..., 3) -> unit quaternions (..., 4), (w, x, y, z)."""
    aa = _as_float(axis_angle)
    _check_last(aa, (3,), "axis-angle")
    theta = np.linalg.norm(aa, axis=-1)
    half = 0.5 * theta
    small = theta < 1e-6
    safe = np.where(small, 1.0, theta)
    k = np.where(small, 0.5 - theta * theta / 48.0, np.sin(half) / safe)
    return np.concatenate([np.cos(half)[..., None], aa * k[..., None]], axis=-1)


def _normalize(v: np.ndarray) -> np.ndarray:
    """v / max(|v|, 1e-12), as torch.nn.functional.normalize does."""
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), _EPS)


def rot6d_to_matrix(rot6d: np.ndarray) -> np.ndarray:
    """D-PoSE 6D rotations (..., 6) -> matrices (..., 3, 3) (docs/network.md#6d-rotations).

    The 6 numbers are a 3x2 matrix in row-major order, so the two raw basis vectors are the
    columns (a0, a2, a4) and (a1, a3, a5). Gram-Schmidt gives b1, b2; b3 = b1 x b2; and the
    rotation has b1, b2, b3 as its COLUMNS. Norms are clamped to >= 1e-12 like F.normalize.
    """
    x = _as_float(rot6d)
    _check_last(x, (6,), "6D rotations")
    m = x.reshape(*x.shape[:-1], 3, 2)
    b1 = _normalize(m[..., :, 0])
    v = m[..., :, 1]
    b2 = _normalize(v - np.sum(b1 * v, axis=-1, keepdims=True) * b1)
    b3 = np.cross(b1, b2)
    return np.stack([b1, b2, b3], axis=-1)


def matrix_to_rot6d(matrix: np.ndarray) -> np.ndarray:
    """Inverse of rot6d_to_matrix for rotations: the first two columns, row-major (..., 6)."""
    m = _as_float(matrix)
    _check_last(m, (3, 3), "rotation matrices")
    return m[..., :, :2].reshape(*m.shape[:-2], 6)


def make_quaternions_continuous(quaternions: np.ndarray, axis: int = 0) -> np.ndarray:
    """Flip signs along `axis` (time) so that neighbouring quaternions have dot product >= 0.

    q and -q are the same rotation, but Blender interpolates quaternion F-curves component-
    wise: a sign jump between two keys makes the joint spin the long way round. The first
    element keeps its sign; each later one is flipped to agree with its (already fixed)
    predecessor.
    """
    q = np.array(_as_float(quaternions), copy=True)
    _check_last(q, (4,), "quaternions")
    q = np.moveaxis(q, axis, 0)
    if q.shape[0] > 1:
        dots = np.sum(q[1:] * q[:-1], axis=-1)
        # Flip parity accumulates: element i is flipped iff an odd number of negative dots
        # occur up to i (in the original signs).
        flips = np.cumsum(dots < 0, axis=0) % 2 == 1
        q[1:] = np.where(flips[..., None], -q[1:], q[1:])
    return np.moveaxis(q, 0, axis)


def quaternion_multiply(q0: np.ndarray, q1: np.ndarray) -> np.ndarray:
    """Hamilton product q0 * q1 of (..., 4) quaternions, w first (rotate by q1, then q0)."""
    a = _as_float(q0)
    b = _as_float(q1)
    w0, x0, y0, z0 = np.moveaxis(a, -1, 0)
    w1, x1, y1, z1 = np.moveaxis(b, -1, 0)
    return np.stack(
        [
            w0 * w1 - x0 * x1 - y0 * y1 - z0 * z1,
            w0 * x1 + x0 * w1 + y0 * z1 - z0 * y1,
            w0 * y1 - x0 * z1 + y0 * w1 + z0 * x1,
            w0 * z1 + x0 * y1 - y0 * x1 + z0 * w1,
        ],
        axis=-1,
    )


def quaternion_slerp(q0: np.ndarray, q1: np.ndarray, t: np.ndarray | float) -> np.ndarray:
    """Shortest-path spherical interpolation of unit quaternions (..., 4), w first.

    t broadcasts against the leading axes (t=0 -> q0, t=1 -> q1 up to sign). Falls back to
    normalised linear interpolation when the two are almost equal.
    """
    a = _as_float(q0)
    b = _as_float(q1)
    _check_last(a, (4,), "quaternions")
    _check_last(b, (4,), "quaternions")
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), _EPS)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), _EPS)
    t = np.asarray(t, dtype=np.result_type(a.dtype, np.float32))[..., None]
    dot = np.sum(a * b, axis=-1, keepdims=True)
    b = np.where(dot < 0, -b, b)
    dot = np.abs(dot)
    close = dot > 0.9995
    omega = np.arccos(np.clip(dot, -1.0, 1.0))
    sin_omega = np.where(close, 1.0, np.sin(omega))
    wa = np.where(close, 1.0 - t, np.sin((1.0 - t) * omega) / sin_omega)
    wb = np.where(close, t, np.sin(t * omega) / sin_omega)
    out = wa * a + wb * b
    return out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), _EPS)


def orthonormalize(matrix: np.ndarray) -> np.ndarray:
    """Nearest rotation (SVD, det +1) to each (..., 3, 3) matrix, e.g. after averaging."""
    m = _as_float(matrix)
    _check_last(m, (3, 3), "matrices")
    u, _, vt = np.linalg.svd(m)
    det = np.linalg.det(u @ vt)
    d = np.ones(m.shape[:-1], dtype=m.dtype)
    d[..., 2] = np.sign(np.where(det == 0, 1.0, det))
    return (u * d[..., None, :]) @ vt


def rotation_about_axis(axis: str, angle: float) -> np.ndarray:
    """A single 3x3 rotation by `angle` radians about 'x', 'y' or 'z' (right-handed)."""
    c, s = np.cos(angle), np.sin(angle)
    if axis == "x":
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    if axis == "y":
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    if axis == "z":
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    raise ValueError(f"axis must be 'x', 'y' or 'z', got {axis!r}")
