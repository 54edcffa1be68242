"""Video / image-folder to clean per-person motion: the engine behind the CLI, panel and farm.

estimate_sequence streams frames (frames.py), finds people (localise.py), gives them stable
ids (tracking.py), runs the network once per person and frame, and at the end turns each
track into a `Motion`: gaps and low-confidence frames filled by slerp and flagged, one body
shape, One-Euro smoothing (smoothing.py). Only compact per-frame numbers are kept (about
1 kB per person-frame), never images or network maps, so memory stays flat on long clips.
It is built to run in a worker thread: `cancel` (threading.Event) stops it between frames and
the frames done so far are returned; frame failures are reported, not raised.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .constants import NUM_PART_CLASSES
from .errors import DPoseError, NoPersonError
from .foot_evidence import feet_seen, foot_map_depth
from .frames import FrameSource, open_frames
from .localise import Detection, PersonFinder, crop_evidence, make_finder
from .motion import FLAG_INTERPOLATED, FLAG_LOW_CONFIDENCE, Motion
from .prefetch import prefetch
from .skeleton import NUM_BETAS, NUM_PREDICTED_JOINTS
from .smoothing import fill_gaps, robust_mean_betas, smooth_rotations, smooth_translation
from .tracking import Tracker

DEFAULT_LOW_CONFIDENCE = 0.3  # frames below this are replaced by interpolation and flagged
DEFAULT_MAX_GAP = 15  # frames a person may vanish (occlusion) and keep their track
MIN_TRACK_FRAMES = 3  # shorter tracks of found people are dropped as noise
SCORE_WIDTH = NUM_PART_CLASSES + 1  # a person-frame's scores: 23 part IoUs, silhouette IoU

# part_scorer(estimate, rows) -> (len(rows), SCORE_WIDTH) float: scores of those crops while
# the network's part map still exists (pipeline.part_scorer); only these numbers are kept.
PartScorer = Callable[[Any, list[int]], np.ndarray]


@dataclass
class PersonResult:
    """One person in one frame: track id, box (xyxy px), confidence in [0,1], finder name.

    estimate / row: the network's output for this person (only when estimate_sequence was
    asked for `frame_estimates`; None otherwise, so nothing per-pixel outlives the frame).
    """

    track_id: int
    box: np.ndarray
    confidence: float
    source: str
    estimate: Any = None
    row: int = 0


@dataclass
class FrameResult:
    """What happened on one frame (passed to `on_frame`); error is set when it failed."""

    index: int
    time_s: float
    people: list[PersonResult] = field(default_factory=list)
    error: str | None = None


@dataclass
class FrameFailure:
    index: int
    message: str


@dataclass
class RawTrack:
    """One person's raw solves (no smoothing, no filling), one row per solved source frame.

    What a farm chunk stores and what `build_motions` turns into motion, so a shot solved in
    one run and the same shot merged from chunks go through the same code.
    """

    frames: np.ndarray  # (n,) source frame numbers, increasing
    rotmats: np.ndarray  # (n,22,3,3) body joint rotations, camera frame
    cam_t: np.ndarray  # (n,3) metres
    betas: np.ndarray  # (n,11)
    boxes: np.ndarray  # (n,4) xyxy px
    focal: np.ndarray  # (n,2) px
    principal: np.ndarray  # (n,2) px
    confidence: np.ndarray  # (n,)
    # How well each raw solve agrees with the network's part map (part_agreement): per-part
    # IoU (n,23) and silhouette IoU (n,); NaN where not scored (scoring off, nothing drawn).
    part_iou: np.ndarray | None = None
    silhouette_iou: np.ndarray | None = None
    # The network's foot cues per heel/toe (foot_evidence.py), (n,4) each; NaN = unknown.
    feet_seen: np.ndarray | None = None
    foot_map_depth: np.ndarray | None = None

    FIELDS = ("frames", "rotmats", "cam_t", "betas", "boxes", "focal", "principal",
              "confidence", "part_iou", "silhouette_iou", "feet_seen", "foot_map_depth")

    def __post_init__(self) -> None:
        n = len(self.frames)
        if self.part_iou is None:
            self.part_iou = np.full((n, NUM_PART_CLASSES), np.nan, np.float32)
        if self.silhouette_iou is None:
            self.silhouette_iou = np.full(n, np.nan, np.float32)
        for name in ("feet_seen", "foot_map_depth"):
            if getattr(self, name) is None:
                setattr(self, name, np.full((n, 4), np.nan, np.float32))

    def __len__(self) -> int:
        return len(self.frames)

    def rows(self, mask: np.ndarray) -> RawTrack:
        return RawTrack(**{name: getattr(self, name)[mask] for name in self.FIELDS})

    @staticmethod
    def concatenate(parts: list[RawTrack]) -> RawTrack:
        return RawTrack(**{name: np.concatenate([getattr(p, name) for p in parts])
                           for name in RawTrack.FIELDS})


class SequenceResult(dict):
    """track id -> Motion, plus what the run saw: failures, frames processed, cancelled.

    raw_tracks (tracker id -> RawTrack, every track however short) and frame_indices (every
    source frame processed, in order) are the raw solves a farm chunk keeps.
    """

    def __init__(self):
        super().__init__()
        self.raw_tracks: dict[int, RawTrack] = {}
        self.frame_indices = np.zeros(0, np.int64)
        self.image_size: np.ndarray | None = None
        self.failures: list[FrameFailure] = []
        self.frames_processed = 0
        self.cancelled = False
        self.fps = 0.0
        self.track_lengths: dict[int, int] = {}  # track number -> frames seen
        self.tracker_ids: dict[int, int] = {}  # track number -> id in FrameResult.people


class _Rows:
    """Append-only float32 table in fixed-size chunks: no per-row objects, no copy spikes."""

    CHUNK = 1024

    def __init__(self, width: int):
        self.width = width
        self.chunks: list[np.ndarray] = []
        self.n = 0

    def append(self, row: np.ndarray) -> None:
        if self.n == len(self.chunks) * self.CHUNK:
            self.chunks.append(np.empty((self.CHUNK, self.width), np.float32))
        self.chunks[-1][self.n % self.CHUNK] = np.asarray(row, np.float32).reshape(-1)
        self.n += 1

    def set_last(self, row: np.ndarray) -> None:
        self.chunks[-1][(self.n - 1) % self.CHUNK] = np.asarray(row, np.float32).reshape(-1)

    def array(self) -> np.ndarray:
        return np.concatenate(self.chunks)[: self.n] if self.chunks else np.zeros((0, self.width))


class _TrackBuffer:
    """Per-frame numbers of one track (~1 kB a frame, float32; no images, no maps)."""

    FIELDS = {"rotmats": NUM_PREDICTED_JOINTS * 9, "cam_t": 3, "betas": NUM_BETAS, "box": 4,
              "focal": 2, "principal": 2, "confidence": 1, "scores": SCORE_WIDTH,
              "feet_seen": 4, "foot_map_depth": 4}

    def __init__(self):
        self.steps: list[int] = []
        self.rows = {name: _Rows(width) for name, width in self.FIELDS.items()}
        self.image_size: np.ndarray | None = None
        self._last_confidence = 0.0

    def add(self, step: int, estimate, row: int, box: np.ndarray, confidence: float,
            scores: np.ndarray | None = None) -> None:
        values = {
            "rotmats": estimate.rotmats[row], "cam_t": estimate.cam_t[row],
            "betas": estimate.betas[row], "box": box, "focal": estimate.focal_px[row],
            "principal": estimate.principal_point[row], "confidence": confidence,
            "scores": np.full(SCORE_WIDTH, np.nan) if scores is None else scores,
            # The maps die with the frame: keep what they say about the feet.
            "feet_seen": feet_seen(estimate.part_labels[row]),
            "foot_map_depth": foot_map_depth(estimate.depth[row], estimate.part_labels[row]),
        }
        if self.steps and self.steps[-1] == step:  # two boxes of one frame on one track
            if confidence > self._last_confidence:  # keep the better one
                for name, value in values.items():
                    self.rows[name].set_last(value)
                self._last_confidence = confidence
            return
        self._last_confidence = confidence
        self.steps.append(step)
        for name, value in values.items():
            self.rows[name].append(value)
        if self.image_size is None:
            self.image_size = np.asarray(estimate.image_size[row], np.float64)

    def column(self, name: str) -> np.ndarray:
        return self.rows[name].array()

    def raw(self, step_index: np.ndarray) -> RawTrack:
        scores = self.column("scores")
        return RawTrack(
            frames=step_index[np.asarray(self.steps, np.int64)],
            rotmats=self.column("rotmats").reshape(-1, NUM_PREDICTED_JOINTS, 3, 3),
            cam_t=self.column("cam_t"), betas=self.column("betas"), boxes=self.column("box"),
            focal=self.column("focal"), principal=self.column("principal"),
            confidence=self.column("confidence")[:, 0],
            part_iou=scores[:, :NUM_PART_CLASSES], silhouette_iou=scores[:, NUM_PART_CLASSES],
            feet_seen=self.column("feet_seen"), foot_map_depth=self.column("foot_map_depth"))


def _person_confidence(det: Detection, estimate, row: int, finder_ran_network: bool) -> float:
    """Finder's confidence combined with the network's own evidence for the box."""
    if finder_ran_network:  # segmentation finder: its confidence is already that evidence
        return float(det.confidence)
    return float(np.sqrt(max(det.confidence, 0.0) * crop_evidence(estimate, row, det.box)))


def _build_motion(track: RawTrack, frames: np.ndarray, fps: float, smooth: float,
                  low_confidence: float, image_size) -> Motion:
    """A track's raw solves -> Motion over its span of `frames` (the shot's source frames):
    unsolved and low-confidence frames filled by slerp and flagged, one body shape, smoothed."""
    pos_in_shot = np.searchsorted(frames, track.frames)
    first, last = pos_in_shot[0], pos_in_shot[-1]
    n = last - first + 1
    pos = pos_in_shot - first
    observed = np.zeros(n, bool)
    observed[pos] = True
    confidence = track.confidence.astype(np.float64)
    conf = np.zeros(n)
    conf[pos] = confidence
    rot = np.empty((n, NUM_PREDICTED_JOINTS, 3, 3))
    rot[:] = np.eye(3)
    rot[pos] = track.rotmats
    transl = np.zeros((n, 3))
    transl[pos] = track.cam_t
    good = observed & (conf >= low_confidence)
    if not good.any():
        good = observed
    flags = np.zeros(n, np.uint8)
    flags[~observed] |= FLAG_INTERPOLATED
    low = observed & ~good
    flags[low] |= FLAG_LOW_CONFIDENCE | FLAG_INTERPOLATED
    rot, transl = fill_gaps(rot, transl, good)

    def interp(values: np.ndarray) -> np.ndarray:
        arr = values.astype(np.float64)
        return np.stack([np.interp(np.arange(n), pos, arr[:, k]) for k in range(arr.shape[1])],
                        axis=1)

    frame_indices = frames[first:last + 1]
    times = frame_indices / fps
    rot = smooth_rotations(rot, times, smooth)
    transl = smooth_translation(transl, times, smooth)
    good_obs = good[pos]
    betas = robust_mean_betas(track.betas[good_obs], confidence[good_obs])
    motion = Motion.from_predictions(
        rot, transl, betas, fps, confidence=conf, frame_indices=frame_indices,
        boxes=interp(track.boxes), focal_px=interp(track.focal),
        principal_point=interp(track.principal), image_size=image_size, flags=flags)
    if np.isfinite(track.silhouette_iou).any():  # scored: interpolated frames stay NaN
        part_iou = np.full((n, NUM_PART_CLASSES), np.nan)
        silhouette_iou = np.full(n, np.nan)
        part_iou[pos[good_obs]] = track.part_iou[good_obs]
        silhouette_iou[pos[good_obs]] = track.silhouette_iou[good_obs]
        motion = motion.replace(part_iou=part_iou, silhouette_iou=silhouette_iou)
    cues = {}
    for name in ("feet_seen", "foot_map_depth"):  # filled frames: unknown
        cues[name] = np.full((n, 4), np.nan)
        cues[name][pos[good_obs]] = getattr(track, name)[good_obs]
    return motion.replace(**cues)


def build_motions(raw_tracks: dict[int, RawTrack], frames: np.ndarray, fps: float, *,
                  image_size, smooth: float = 1.0, low_confidence: float = DEFAULT_LOW_CONFIDENCE,
                  min_track_frames: int = MIN_TRACK_FRAMES, person: str | int = "all",
                  ) -> tuple[dict[int, Motion], dict[int, int], dict[int, int]]:
    """Raw tracks -> (track number -> Motion, track number -> raw id, track number -> frames).

    Tracks shorter than min_track_frames are dropped; the rest are numbered by first
    appearance, people appearing together from left to right. person: "all" or one number.
    frames: the shot's source frames in order (unsolved ones included).
    """
    kept = [(tid, t) for tid, t in raw_tracks.items() if len(t) >= min_track_frames]
    kept.sort(key=lambda item: (int(item[1].frames[0]), float(item[1].boxes[0, 0]), item[0]))
    motions, ids, lengths = {}, {}, {}
    for number, (tid, track) in enumerate(kept):
        ids[number], lengths[number] = tid, len(track)
        if person == "all" or number == person:
            motions[number] = _build_motion(track, frames, fps, smooth, low_confidence,
                                            image_size)
    return motions, ids, lengths


def estimate_sequence(
    source: str | Path | FrameSource,
    estimator,
    *,
    finder: PersonFinder | None = None,
    person: str | int = "all",
    smooth: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
    cancel: threading.Event | None = None,
    on_frame: Callable[[FrameResult], None] | None = None,
    start: int = 0,
    end: int | None = None,
    stride: int = 1,
    fps: float | None = None,
    focal_px=None,
    max_gap: int = DEFAULT_MAX_GAP,
    min_track_frames: int = MIN_TRACK_FRAMES,
    low_confidence: float = DEFAULT_LOW_CONFIDENCE,
    frame_estimates: bool = False,
    part_scorer: PartScorer | None = None,
) -> SequenceResult:
    """Estimate every person's motion over a video, image folder or FrameSource.

    finder: how people are found (default `make_finder(estimator, "auto")`: segmentation
    refinement with OpenCV proposals). person: "all", or the number of one track (tracks are
    numbered 0, 1, ... by first appearance, people appearing together left to right, after
    dropping tracks shorter than `min_track_frames`). smooth: One-Euro strength (0 = off).
    progress(done, total) after each frame (total 0 when unknown). cancel: set it to stop
    after the current frame; the frames done so far are returned. on_frame(FrameResult)
    after each frame, failed ones too.
    max_gap: frames a person may vanish (occlusion) and keep the id. Frames whose confidence
    is below `low_confidence` are replaced by interpolation and flagged.
    frame_estimates: hand each person's Estimate to on_frame (PersonResult.estimate / row).
    part_scorer: scores each person-frame against the network's part map while it exists
    (see PartScorer); the motions then carry part_iou / silhouette_iou, NaN where filled.
    Returns a SequenceResult (dict track id -> Motion) with .failures, .frames_processed,
    .cancelled; frame errors are reported there, never raised.
    """
    frames = open_frames(source, start=start, end=end, stride=stride, fps=fps)
    if finder is None:
        finder = make_finder(estimator, "auto", focal_px=focal_px)
    if person != "all":
        try:
            person = int(person)
        except (TypeError, ValueError) as exc:
            raise DPoseError(f"person must be 'all' or a track number, got {person!r}.") from exc
    tracker = Tracker(max_gap=max_gap)
    buffers: dict[int, _TrackBuffer] = {}
    step_index: list[int] = []
    result = SequenceResult()
    result.fps = frames.fps
    total = len(frames)
    for step, record in enumerate(prefetch(frames)):  # decode the next during the network
        if cancel is not None and cancel.is_set():
            result.cancelled = True
            break
        step_index.append(record.index)
        frame = FrameResult(record.index, record.time_s)
        if not record.ok:
            frame.error = record.error
        else:
            try:
                frame.people = _process_frame(record.image, step, estimator, finder, tracker,
                                              buffers, focal_px, frame_estimates, part_scorer)
            except DPoseError as exc:  # says itself what went wrong
                frame.error = f"Frame {record.index}: {exc}"
            except Exception as exc:  # one bad frame must not end a long job: report it
                frame.error = f"Frame {record.index}: {type(exc).__name__}: {exc}"
        if frame.error is not None:
            result.failures.append(FrameFailure(record.index, frame.error))
        result.frames_processed += 1
        if on_frame is not None:
            on_frame(frame)
        if progress is not None:
            progress(result.frames_processed, total)
    if cancel is not None and cancel.is_set():
        result.cancelled = True

    result.frame_indices = np.asarray(step_index, dtype=np.int64)
    result.raw_tracks = {tid: buf.raw(result.frame_indices) for tid, buf in buffers.items()}
    result.image_size = next((b.image_size for b in buffers.values()), None)
    motions, ids, lengths = build_motions(
        result.raw_tracks, result.frame_indices, frames.fps, image_size=result.image_size,
        smooth=smooth, low_confidence=low_confidence, min_track_frames=min_track_frames,
        person=person)
    result.update(motions)
    result.tracker_ids, result.track_lengths = ids, lengths
    if person != "all" and person not in result and not result.cancelled:
        if not ids:
            raise NoPersonError(f"Track {person} does not exist: nobody was found in "
                                f"{result.frames_processed} frames.")
        raise NoPersonError(f"Track {person} does not exist: {len(ids)} person track(s) were "
                            f"found (numbered 0 to {len(ids) - 1}). Use --person all to see "
                            "them all.")
    return result


def _process_frame(image, step, estimator, finder, tracker, buffers, focal_px,
                   frame_estimates: bool = False,
                   part_scorer: PartScorer | None = None) -> list[PersonResult]:
    hints = list(tracker.predicted_boxes(step).values())
    detections = finder.find(image, hints)
    if not detections:
        tracker.update(step, np.zeros((0, 4)))
        return []
    need = [k for k, d in enumerate(detections) if d.estimate is None]
    finder_ran_network = [d.estimate is not None for d in detections]
    if need:  # before the tracker moves on: a failing pass leaves it as it was
        est = estimator.estimate(image, np.stack([detections[k].box for k in need]),
                                 focal_px=focal_px)
        for row, k in enumerate(need):
            detections[k].estimate, detections[k].row = est, row
    scores = _score_detections(detections, part_scorer) if part_scorer is not None else None
    ids = tracker.update(step, np.stack([d.box for d in detections]))
    people = []
    for k, (det, tid, ran) in enumerate(zip(detections, ids, finder_ran_network, strict=True)):
        conf = _person_confidence(det, det.estimate, det.row, ran)
        buffers.setdefault(tid, _TrackBuffer()).add(
            step, det.estimate, det.row, det.box, conf, None if scores is None else scores[k])
        person = PersonResult(tid, np.asarray(det.box, float), conf, det.source)
        if frame_estimates:
            person.estimate, person.row = det.estimate, det.row
        people.append(person)
    return people


def _score_detections(detections: list[Detection], part_scorer: PartScorer) -> np.ndarray:
    """(len(detections), SCORE_WIDTH) scores, one scorer call per network pass of the frame."""
    scores = np.full((len(detections), SCORE_WIDTH), np.nan)
    passes: dict[int, list[int]] = {}  # id(estimate) -> detections it holds
    for k, det in enumerate(detections):
        passes.setdefault(id(det.estimate), []).append(k)
    for ks in passes.values():
        estimate = detections[ks[0]].estimate
        scores[ks] = part_scorer(estimate, [detections[k].row for k in ks])
    return scores


def track_output_paths(output: str | Path, track_ids: list[int]) -> dict[int, Path]:
    """motion.npz for one exported track; motion_track0.npz, motion_track1.npz ... for several."""
    output = Path(output)
    if len(track_ids) == 1:
        return {track_ids[0]: output}
    return {tid: output.with_name(f"{output.stem}_track{tid}{output.suffix}")
            for tid in track_ids}
