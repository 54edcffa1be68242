"""Multi-person tracking: stable ids from box overlap, constant-velocity prediction, assignment.

Each frame's person boxes are matched to the tracks' predicted boxes by minimum total cost
(Hungarian assignment, exact, numpy only so it runs inside Blender). The cost mixes box IoU
with the centre distance in units of box size, so a track whose person was hidden for a few
frames (occlusion, missed detection) is still found where its velocity says it should be, and
two people crossing keep their ids because each prediction follows its own velocity.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_INF = 1e18


def linear_sum_assignment(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Minimum-cost assignment of a rectangular cost matrix; returns (rows, cols) like scipy.

    Shortest augmenting path with dual potentials (Kuhn-Munkres, O(n^2 m)); each row of the
    smaller side gets exactly one column. Rows are returned in increasing order.
    """
    c = np.asarray(cost, dtype=np.float64)
    if c.ndim != 2:
        raise ValueError(f"cost must be 2-D, got shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise ValueError("cost matrix contains inf or nan; use a large finite value instead")
    transposed = c.shape[0] > c.shape[1]
    if transposed:
        c = c.T
    n, m = c.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    u = np.zeros(n + 1)  # row potentials (1-based, 0 = virtual)
    v = np.zeros(m + 1)  # column potentials
    p = np.zeros(m + 1, dtype=np.int64)  # p[j] = row matched to column j (0 = none)
    way = np.zeros(m + 1, dtype=np.int64)
    for i in range(1, n + 1):
        p[0] = i
        j0 = 0
        minv = np.full(m + 1, _INF)
        used = np.zeros(m + 1, dtype=bool)
        while True:
            used[j0] = True
            i0 = p[j0]
            free = ~used[1:]
            cur = c[i0 - 1] - u[i0] - v[1:]
            better = free & (cur < minv[1:])
            minv[1:][better] = cur[better]
            way[1:][better] = j0
            masked = np.where(free, minv[1:], np.inf)
            j1 = int(np.argmin(masked)) + 1
            delta = masked[j1 - 1]
            used_idx = np.nonzero(used)[0]
            u[p[used_idx]] += delta
            v[used_idx] -= delta
            minv[1:][free] -= delta
            j0 = j1
            if p[j0] == 0:
                break
        while j0:
            j1 = way[j0]
            p[j0] = p[j1]
            j0 = j1
    cols = np.nonzero(p[1:])[0]
    rows = p[1:][cols] - 1
    if transposed:
        rows, cols = cols, rows
    order = np.argsort(rows)
    return rows[order].astype(np.int64), cols[order].astype(np.int64)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of boxes a (N,4) and b (M,4), xyxy -> (N,M)."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=-1)
    area_a = np.prod(np.clip(a[:, 2:] - a[:, :2], 0, None), axis=-1)
    area_b = np.prod(np.clip(b[:, 2:] - b[:, :2], 0, None), axis=-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def _to_cwh(box: np.ndarray) -> np.ndarray:
    box = np.asarray(box, dtype=np.float64)
    return np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2,
                     box[2] - box[0], box[3] - box[1]])


def _to_xyxy(cwh: np.ndarray) -> np.ndarray:
    cx, cy, w, h = cwh
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


@dataclass
class Track:
    """One person over time: last observed box, velocity (per frame), frames seen."""

    track_id: int
    state: np.ndarray  # (cx, cy, w, h) at last_frame
    velocity: np.ndarray  # d(cx, cy, w, h)/frame
    last_frame: int
    first_frame: int
    hits: int = 1
    frames: list[int] = field(default_factory=list)

    def predict(self, frame: int) -> np.ndarray:
        """Constant-velocity box (xyxy) at `frame`; size changes are damped to stay positive."""
        dt = frame - self.last_frame
        cwh = self.state + self.velocity * dt
        cwh[2:] = np.maximum(cwh[2:], self.state[2:] * 0.5)
        return _to_xyxy(cwh)


class Tracker:
    """Assigns stable ids to per-frame person boxes.

    max_gap: frames a track may go unseen (occlusion, missed detection) and still be resumed.
    min_iou / max_distance: a detection joins a track only if it overlaps the prediction by
    `min_iou` or its centre lies within `max_distance` box sizes (the allowance grows with the
    gap, since an unseen person's position is less certain). velocity_smoothing: weight of the
    old velocity in the running estimate.
    """

    def __init__(self, max_gap: int = 15, min_iou: float = 0.1, max_distance: float = 0.6,
                 distance_growth: float = 0.1, velocity_smoothing: float = 0.6):
        self.max_gap = int(max_gap)
        self.min_iou = float(min_iou)
        self.max_distance = float(max_distance)
        self.distance_growth = float(distance_growth)
        self.velocity_smoothing = float(velocity_smoothing)
        self.tracks: list[Track] = []  # alive tracks
        self.finished: list[Track] = []
        self._next_id = 0

    def active(self, frame: int) -> list[Track]:
        """Tracks still alive at `frame` (seen within max_gap frames)."""
        return [t for t in self.tracks if frame - t.last_frame <= self.max_gap]

    def predicted_boxes(self, frame: int) -> dict[int, np.ndarray]:
        """Where each alive track is expected at `frame` (xyxy), e.g. as search hints."""
        return {t.track_id: t.predict(frame) for t in self.active(frame)}

    def _cost(self, tracks: list[Track], boxes: np.ndarray, frame: int):
        preds = np.stack([t.predict(frame) for t in tracks]) if tracks else np.zeros((0, 4))
        iou = box_iou(preds, boxes)
        pc = np.stack([_to_cwh(p) for p in preds]) if tracks else np.zeros((0, 4))
        dc = np.stack([_to_cwh(b) for b in boxes]) if len(boxes) else np.zeros((0, 4))
        size = np.sqrt(np.clip(pc[:, None, 2] * pc[:, None, 3], 1e-6, None))
        dist = np.linalg.norm(pc[:, None, :2] - dc[None, :, :2], axis=-1) / size
        log_scale = np.abs(np.log(np.clip(dc[None, :, 3], 1e-6, None)
                                  / np.clip(pc[:, None, 3], 1e-6, None)))
        gaps = np.array([frame - t.last_frame for t in tracks], dtype=np.float64)
        allowed = self.max_distance + self.distance_growth * np.maximum(gaps - 1, 0)
        gate = (iou >= self.min_iou) | (dist <= allowed[:, None])
        cost = (1.0 - iou) + dist + 0.5 * log_scale
        return cost, gate

    def update(self, frame: int, boxes: np.ndarray) -> list[int]:
        """Match this frame's boxes (K,4 xyxy) to tracks; returns a track id per box.

        Unmatched boxes start new tracks; tracks unseen for more than max_gap frames end.
        """
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        for t in self.tracks:
            if frame - t.last_frame > self.max_gap:
                self.finished.append(t)
        self.tracks = [t for t in self.tracks if frame - t.last_frame <= self.max_gap]
        ids = [-1] * len(boxes)
        if self.tracks and len(boxes):
            cost, gate = self._cost(self.tracks, boxes, frame)
            big = float(cost.max()) * 10 + 1e3
            rows, cols = linear_sum_assignment(np.where(gate, cost, big))
            for r, c in zip(rows, cols, strict=True):
                if gate[r, c]:
                    self._observe(self.tracks[r], frame, boxes[c])
                    ids[c] = self.tracks[r].track_id
        for k, box in enumerate(boxes):
            if ids[k] < 0:
                track = Track(self._next_id, _to_cwh(box), np.zeros(4), frame, frame,
                              frames=[frame])
                self._next_id += 1
                self.tracks.append(track)
                ids[k] = track.track_id
        return ids

    def _observe(self, track: Track, frame: int, box: np.ndarray) -> None:
        cwh = _to_cwh(box)
        dt = max(frame - track.last_frame, 1)
        step = (cwh - track.state) / dt
        a = self.velocity_smoothing if track.hits > 1 else 0.0
        track.velocity = a * track.velocity + (1 - a) * step
        track.state = cwh
        track.last_frame = frame
        track.hits += 1
        track.frames.append(frame)

    def all_tracks(self) -> list[Track]:
        """Every track ever started, in id order."""
        return sorted(self.finished + self.tracks, key=lambda t: t.track_id)
