"""The root's depth along its camera ray (and a camera track's scale), solved over the whole clip.

A single-image network is least sure how far away the person is: its root depth jitters by a
few per cent from frame to frame, while the direction of the root seen from the camera is
reliable. So each frame's body may only slide along the ray through its pelvis (delta_t
metres; the pelvis stays where the footage shows it), and one linear least-squares problem
picks all slides at once from:

- a prior: the network's own depth (sigma = a few per cent of the distance);
- smoothness: small acceleration of the pelvis' distance along its ray;
- locks: a contacting heel/toe does not move between consecutive contact frames;
- the floor: a contacting point lies on the plane normal . x = offset (offset unknown).

With a moving camera whose track has an unknown scale k (metres per track unit), the world
position of a camera-frame point p is k c_t + R_t (p + delta_t u_t): still linear, so k is
solved with the slides. The slides form a banded system (bandwidth 2); k and the floor offset
are a few dense columns eliminated by their Schur complement. Cost O(N).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class DepthProblem:
    """Per-frame data in the working frame (the track's world, or the camera for a still camera).

    rays (N,3) unit pelvis rays in the working frame (R_t u_t); pelvis (N,3) and points (N,P,3)
    the raw positions R_t p (no track translation); centres (N,3) track camera centres (track
    units, None for a still camera); prior_sigma (N,) metres; frame_step seconds; adjacent
    (N-1,) bool, False where frames are missing between two rows (no smoothness or lock rows
    reach across such a gap), None when every row follows the previous one.
    """

    rays: np.ndarray
    pelvis: np.ndarray
    points: np.ndarray
    centres: np.ndarray | None
    prior_sigma: np.ndarray
    frame_step: float
    adjacent: np.ndarray | None = None


@dataclass
class DepthSolution:
    slides: np.ndarray  # (N,) metres along each frame's pelvis ray
    scale: float  # track scale k (1.0 for a still camera)
    floor_offset: float | None


MAX_ACCELERATION = 2.0  # m/s^2: acceleration along the line of sight, one sigma of smoothness
LOCK_SIGMA = 0.01  # metres: how far a locked point may drift between frames (one sigma)
FLOOR_SIGMA = 0.01  # metres: height of a contacting point above the floor (one sigma)
_ROBUST_SCALE = 3.0  # Cauchy weights: a residual of 3 sigma counts half, 10 sigma ~1/12
_ROBUST_PASSES = 8


def solve_depth(
    problem: DepthProblem, *, contacts: np.ndarray | None = None,
    contact_weights: np.ndarray | None = None, floor_normal: np.ndarray | None = None,
    scale_prior: tuple[float, float] | None = None, robust: bool = True,
) -> DepthSolution:
    """Slides, track scale and floor offset minimising the weighted squared residuals.

    contacts (N,P) bool pick the lock and floor rows; contact_weights (N,P) scale them;
    floor_normal enables the floor rows (with an unknown offset); scale_prior (k0, sigma) keeps
    the track scale near k0 when the track's motion says little about it. robust=False gives
    the plain least-squares solution (no reweighting of outlying rows).
    """
    n = len(problem.rays)
    moving = problem.centres is not None
    has_contacts = contacts is not None and bool(contacts.any())
    with_floor = floor_normal is not None and has_contacts
    dense = (["scale"] if moving else []) + (["offset"] if with_floor else [])
    col = {name: i for i, name in enumerate(dense)}
    c = problem.centres if moving else np.zeros((n, 3))
    rays = problem.rays
    adjacent = np.ones(max(n - 1, 0), bool) if problem.adjacent is None else problem.adjacent
    blocks = _Blocks()
    # The network's own depth: delta_t ~ 0 (robust too: a glitched frame's depth is an outlier).
    blocks.add(np.arange(n)[:, None], np.ones((n, 1)) / problem.prior_sigma[:, None],
               _dense_row(n, col), np.zeros(n), blocks.new_groups(n))

    # Smoothness: second difference of the pelvis' distance along its ray. (Not of its 3-D
    # position: that would reward shrinking the whole scene towards the camera, where every
    # sideways acceleration gets smaller.)
    if n >= 3:
        sigma = MAX_ACCELERATION * problem.frame_step**2
        t = np.flatnonzero(adjacent[:-1] & adjacent[1:]) + 1
        frames = np.stack([t - 1, t, t + 1], axis=1)
        coef = np.array([1.0, -2.0, 1.0])
        distance = np.linalg.norm(problem.pelvis, axis=1)
        known = (coef * distance[frames]).sum(1) / sigma
        blocks.add(frames, np.broadcast_to(coef / sigma, frames.shape), _dense_row(len(t), col),
                   -known, blocks.new_groups(len(t), robust=False))

    if has_contacts:
        w = np.ones(contacts.shape) if contact_weights is None else contact_weights
        # Locks: a point in contact at t-1 and t stays put.
        tt, pp = np.nonzero(contacts[1:] & contacts[:-1] & adjacent[:, None])
        tt = tt + 1
        if len(tt):
            frames = np.stack([tt - 1, tt], axis=1)
            weight = np.sqrt(np.minimum(w[tt, pp], w[tt - 1, pp])) / LOCK_SIGMA
            groups = blocks.new_groups(len(tt), robust=False)
            for axis in range(3):
                a = np.stack([-rays[tt - 1, axis], rays[tt, axis]], 1) * weight[:, None]
                known = (problem.points[tt, pp, axis] - problem.points[tt - 1, pp, axis]) * weight
                e = _dense_row(len(tt), col, scale=(c[tt, axis] - c[tt - 1, axis]) * weight)
                blocks.add(frames, a, e, -known, groups)
        # Floor: normal . (k c + R p + delta u) - offset = 0 for contacting points.
        if with_floor:
            tt, pp = np.nonzero(contacts)
            weight = np.sqrt(w[tt, pp]) / FLOOR_SIGMA
            a = (rays[tt] @ floor_normal * weight)[:, None]
            known = problem.points[tt, pp] @ floor_normal * weight
            e = _dense_row(len(tt), col, scale=c[tt] @ floor_normal * weight, offset=-weight)
            blocks.add(tt[:, None], a, e, -known, blocks.new_groups(len(tt), robust=False))

    # Iteratively reweighted (Cauchy) prior rows: a glitched frame's own depth loses its weight
    # instead of bending its neighbours towards it. Smoothness, lock and floor rows stay plain:
    # a robust smoothness would let one frame's noisy foot points (through its locks) pull it
    # off the walk; locks and floor carry the scale and the floor, and contact detection
    # already vetted them.
    weights = np.ones(blocks.count)
    robust_rows = blocks.robust_mask()
    for _ in range(_ROBUST_PASSES if robust else 1):
        system = _System(n, len(dense))
        if scale_prior is not None and moving:
            k0, sk = scale_prior
            system.add_dense_only(col["scale"], 1.0 / sk, k0 / sk)
        blocks.into(system, weights)
        slides, extra = system.solve()
        norms = blocks.residual_norms(slides, extra)
        new = np.where(robust_rows, 1.0 / (1.0 + (norms / _ROBUST_SCALE) ** 2), 1.0)
        if np.allclose(new, weights, atol=1e-3):
            break
        weights = new
    return DepthSolution(
        slides=slides,
        scale=float(extra[col["scale"]]) if moving else 1.0,
        floor_offset=float(extra[col["offset"]]) if "offset" in col else None,
    )


class _Blocks:
    """Rows of the least-squares terms in groups (one group = one residual, 1-D or 3-D);
    robust groups may be reweighted, the others keep weight 1."""

    def __init__(self) -> None:
        self.items: list[tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray,
                               np.ndarray]] = []  # fmt: skip
        self.robust: list[np.ndarray] = []

    @property
    def count(self) -> int:
        return sum(len(r) for r in self.robust)

    def new_groups(self, rows: int, robust: bool = True) -> np.ndarray:
        ids = np.arange(self.count, self.count + rows)
        self.robust.append(np.full(rows, robust))
        return ids

    def robust_mask(self) -> np.ndarray:
        return np.concatenate(self.robust) if self.robust else np.zeros(0, bool)

    def add(self, frames, a, e, b, groups) -> None:
        self.items.append((frames, a, e, b, groups))

    def into(self, system: _System, weights: np.ndarray) -> None:
        for frames, a, e, b, groups in self.items:
            root = np.sqrt(weights[groups])
            system.add(frames, a * root[:, None], None if e is None else e * root[:, None],
                       b * root)

    def residual_norms(self, slides: np.ndarray, extra: np.ndarray) -> np.ndarray:
        squares = np.zeros(self.count)
        for frames, a, e, b, groups in self.items:
            r = (a * slides[frames]).sum(axis=1) - b
            if e is not None:
                r = r + e @ extra
            np.add.at(squares, groups, r * r)
        return np.sqrt(squares)


def _dense_row(rows: int, col: dict[str, int], **values) -> np.ndarray | None:
    if not col:
        return None
    e = np.zeros((rows, len(col)))
    for name, value in values.items():
        if name in col:
            e[:, col[name]] = value
    return e


class _System:
    """Normal equations of a least-squares problem: banded in the slides, plus dense columns."""

    BAND = 3  # diagonal + two off-diagonals

    def __init__(self, n: int, num_dense: int) -> None:
        self.n = n
        self.band = np.zeros((self.BAND, n))  # band[o, t] = M[t, t + o]
        self.cross = np.zeros((n, num_dense))  # M[t, dense]
        self.dense = np.zeros((num_dense, num_dense))
        self.rhs = np.zeros(n)
        self.rhs_dense = np.zeros(num_dense)

    def add(self, frames: np.ndarray, a: np.ndarray, e: np.ndarray | None, b: np.ndarray) -> None:
        """Rows sum_j a[:, j] delta[frames[:, j]] + e . x_dense = b (frames increasing per row)."""
        m = frames.shape[1]
        for j in range(m):
            for k in range(j, m):
                offset = frames[:, k] - frames[:, j]
                np.add.at(self.band, (offset, frames[:, j]), a[:, j] * a[:, k])
            np.add.at(self.rhs, frames[:, j], a[:, j] * b)
            if e is not None:
                np.add.at(self.cross, frames[:, j], a[:, j, None] * e)
        if e is not None:
            self.dense += e.T @ e
            self.rhs_dense += e.T @ b

    def add_dense_only(self, index: int, coef: float, b: float) -> None:
        self.dense[index, index] += coef * coef
        self.rhs_dense[index] += coef * b

    def solve(self) -> tuple[np.ndarray, np.ndarray]:
        band = self.band.copy()
        band[0] += 1e-12 + 1e-9 * band[0].max()
        factor = _banded_cholesky(band)
        sol = _banded_solve(factor, np.column_stack([self.rhs, self.cross]))
        if self.cross.shape[1] == 0:
            return sol[:, 0], np.zeros(0)
        schur = self.dense - self.cross.T @ sol[:, 1:]
        schur += np.eye(len(schur)) * 1e-12 * max(1.0, float(np.abs(schur).max()))
        extra = np.linalg.solve(schur, self.rhs_dense - self.cross.T @ sol[:, 0])
        return sol[:, 0] - sol[:, 1:] @ extra, extra


def _banded_cholesky(band: np.ndarray) -> np.ndarray:
    """L of M = L L^T for a symmetric positive definite matrix with two off-diagonals.

    Returns (3, n): L[t, t], L[t+1, t], L[t+2, t].
    """
    d0, d1, d2 = (band[i].tolist() for i in range(3))
    n = len(d0)
    l0, l1, l2 = [0.0] * n, [0.0] * n, [0.0] * n
    for t in range(n):
        s = d0[t] - (l1[t - 1] ** 2 if t >= 1 else 0.0) - (l2[t - 2] ** 2 if t >= 2 else 0.0)
        diag = s**0.5 if s > 0 else 1e-12
        l0[t] = diag
        if t + 1 < n:
            l1[t] = (d1[t] - (l2[t - 1] * l1[t - 1] if t >= 1 else 0.0)) / diag
        if t + 2 < n:
            l2[t] = d2[t] / diag
    return np.array([l0, l1, l2])


def _banded_solve(factor: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """Solve L L^T x = rhs (n, m) with the banded factor."""
    l0, l1, l2 = factor
    n = len(l0)
    y = np.array(rhs, dtype=np.float64, copy=True)
    for t in range(n):
        if t >= 1:
            y[t] -= l1[t - 1] * y[t - 1]
        if t >= 2:
            y[t] -= l2[t - 2] * y[t - 2]
        y[t] /= l0[t]
    for t in range(n - 1, -1, -1):
        if t + 1 < n:
            y[t] -= l1[t] * y[t + 1]
        if t + 2 < n:
            y[t] -= l2[t] * y[t + 2]
        y[t] /= l0[t]
    return y
