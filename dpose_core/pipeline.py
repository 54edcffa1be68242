"""The use-case layer: one set of options, one image pipeline, one video pipeline.

The CLI (`cli.py`), the Blender panel jobs and the farm script (`dpose_blender/headless.py`)
are thin adapters over this module, so an option means the same thing everywhere and the same
input gives the same numbers everywhere.

    options = RunOptions(inputs=["clip.mp4"], stride=2, outputs=["motion.npz"])
    options.validate()                    # DPoseError, one line, before any work
    estimator = open_estimator(options)   # or pass a cached Estimator to the calls below
    video = estimate_video(options, estimator=estimator, progress=..., cancel=..., warn=...)
    video.tracks[0]          # Motion of track 0 (Motion.fps = the source rate)
    video.tracker_ids[0]     # its id in FrameResult.people (on_frame)
    video.maps[0]            # [(source frame, kept maps)] with keep_maps
    video.tracks[0].part_iou # (N,23) agreement with the network's part map (part_scores)
    save_tracks(video, "motion.npz")      # one file per track, written atomically
    images = estimate_images(RunOptions(inputs=["a.jpg", "b.jpg"]).validate())
    images.estimate          # Estimate, one row per person; image_index -> images.paths

Public API:
    RunOptions(...).validate(*, estimator=None) -> RunOptions
    open_estimator(options) -> Estimator
    estimate_images(options, *, estimator=None, progress=None, cancel=None, warn=None,
                    finder=None) -> ImagesResult
    estimate_video(options, *, estimator=None, progress=None, cancel=None, on_frame=None,
                   warn=None, keep_maps=False, finder=None, frame_maps=None) -> VideoResult
    save_tracks(result, output) -> dict[int, Path]
    refine_tracks(result, body_model, options, *, camera_to_world=None, warn=None)
        -> dict[int, RefineReport]        (the refine stage: after estimate_video/merge_video)
    refine_motions(motions, body_model, options, *, camera_to_world=None, warn=None)
        -> (dict[key, Motion], dict[key, RefineReport])   (the same for image takes)
    select_people(boxes, person) -> indices; is_video_input(path) -> bool
    part_scorer(body_model) -> sequence.PartScorer
Callbacks: progress(done, total) after each image/frame (total 0 when unknown);
warn(text) for one-line notices (a skipped image or frame, once each; nobody found yet);
cancel: a threading.Event, checked between images/frames.
Errors: every problem with the input raises a DPoseError subclass with a one-line message.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .errors import (
    CancelledError,
    CheckpointError,
    DPoseError,
    FrameError,
    NonFiniteOutputError,
    NoPersonError,
)
from .estimator import DEFAULT_MAX_BATCH
from .frames import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS
from .sequence import DEFAULT_LOW_CONFIDENCE, DEFAULT_MAX_GAP, MIN_TRACK_FRAMES

log = logging.getLogger(__name__)

DEFAULT_BATCH = DEFAULT_MAX_BATCH  # crops per network batch
DEFAULT_SMOOTH = 1.0  # One-Euro strength: 0 off, 1 default, 2 twice as smooth
NOBODY_WARNING_FRAMES = 100  # say at once when nobody has been found in this many frames
FOV_RANGE_DEG = (1.0, 179.0)
BACKENDS = ("auto", "onnx", "torch")
DEVICES = ("auto", "cpu", "cuda")
GROUND_CHOICES = ("auto", "none", "off")
DEFAULT_GROUND = "auto"  # grounded world-space motion unless asked otherwise (README)
DEFAULT_FOOT_LOCK = 1.0
BBOX_HINT = "pass --bbox x0,y0,x1,y1 (pixels) to say where the person is"

Progress = Callable[[int, int], None]
Warn = Callable[[str], None]


def is_video_input(path: str | os.PathLike) -> bool:
    """A folder of frames or a video file (anything else is read as one image)."""
    path = Path(path)
    return path.is_dir() or path.suffix.lower() in VIDEO_EXTENSIONS


def focal_from_fov(image_size: Sequence[float], fov_deg: float) -> float:
    """Focal length in px for a field of view (degrees) across the image's longer side."""
    return 0.5 * max(image_size) / math.tan(math.radians(fov_deg) / 2.0)


# ----------------------------------------------------------------------------- options
@dataclass
class RunOptions:
    """Everything a run needs; one meaning per option for every entry point.

    inputs: image files, or one video file / image folder. outputs: the files the caller
    will write (checked: never an input, never twice). person: "all", "largest" or a number
    (images: index among that image's people, largest first; videos: track number, tracks
    numbered by first appearance). bbox: person boxes x0,y0,x1,y1 in pixels, used as given
    (a box may reach outside the image; a video takes one). focal_px or fov_deg (degrees
    across the longer side) set the camera; default: focal = image diagonal. smooth: 0 off,
    1 default, 2 twice as smooth. start/end/stride: source frame numbers, end exclusive.
    fps: override the video's rate; image folders default to frames.DEFAULT_FOLDER_FPS.
    chunk_overlap: solve a farm chunk, frames [start, end) plus this many before start, into
    raw solves (VideoResult.chunk) for `merge_video`. strict: adapters fail the run when any
    frame was skipped or interpolated (VideoResult.problem_frames).
    """

    inputs: Sequence[str | os.PathLike] = ()
    outputs: Sequence[str | os.PathLike] = ()
    checkpoint: str | os.PathLike | None = None
    body_model: str | os.PathLike | None = None
    backend: str = "auto"
    device: str = "auto"
    cache_dir: str | os.PathLike | None = None
    batch: int = DEFAULT_BATCH
    person: str | int = "all"
    bbox: Any = ()
    focal_px: float | None = None
    fov_deg: float | None = None
    smooth: float = DEFAULT_SMOOTH
    start: int = 0
    end: int | None = None
    stride: int = 1
    fps: float | None = None
    low_confidence: float = DEFAULT_LOW_CONFIDENCE
    max_gap: int = DEFAULT_MAX_GAP
    chunk_overlap: int | None = None
    strict: bool = False
    part_scores: bool = True
    ground: str = DEFAULT_GROUND
    foot_lock: float = DEFAULT_FOOT_LOCK
    subject_height: float | None = None
    # Run state, not options (so dataclasses.asdict leaves them out): set by validate().
    _valid: ClassVar[bool] = False
    _loaded_body_model: ClassVar[Any] = None

    def __setattr__(self, name: str, value) -> None:
        if not name.startswith("_"):  # any change needs validating again
            object.__setattr__(self, "_valid", False)
        object.__setattr__(self, name, value)

    # -------------------------------------------------------------- derived
    @property
    def is_video(self) -> bool:
        """True for one video file or image folder, False for image files."""
        return any(is_video_input(p) for p in self.inputs)

    @property
    def boxes(self) -> np.ndarray:
        """bbox as a (K,4) float array (K = 0 when people are to be found)."""
        return _boxes(self.bbox)

    # -------------------------------------------------------------- validation
    def validate(self, *, estimator=None) -> RunOptions:
        """Check every option and input before any work; returns self, normalised.

        Raises a DPoseError with one line saying what is wrong and what to do. Given an
        `estimator`, the checkpoint and body model are the estimator's and are not checked.
        """
        inputs = [Path(p).expanduser() for p in self.inputs]
        if not inputs:
            raise FrameError("No input given: pass image files, a video or an image folder.")
        for path in inputs:
            if not path.exists():
                raise FrameError(f"Input {path} does not exist.")
        video = any(is_video_input(p) for p in inputs)
        if video and len(inputs) != 1:
            raise FrameError(f"Give one video or image folder at a time (got {len(inputs)} "
                             "inputs).")
        _check_choice("backend", self.backend, BACKENDS)
        _check_choice("device", self.device, DEVICES)
        if not isinstance(self.batch, int | np.integer) or self.batch < 1:
            raise DPoseError(f"--batch must be a whole number of at least 1, got {self.batch}.")
        person = _parse_person(self.person)
        boxes = _boxes(self.bbox)
        if video and len(boxes) > 1:
            raise DPoseError("A video takes one --bbox (the person to follow), "
                             f"got {len(boxes)}.")
        _check_frame_range(self.start, self.end, self.stride)
        for name, value in (("--fps", self.fps), ("--focal", self.focal_px)):
            if value is not None and not (np.isfinite(value) and value > 0):
                raise DPoseError(f"{name} must be a positive number, got {value}.")
        if self.fov_deg is not None:
            lo, hi = FOV_RANGE_DEG
            if not (np.isfinite(self.fov_deg) and lo <= self.fov_deg <= hi):
                raise DPoseError(f"--fov must be between {lo:g} and {hi:g} degrees, "
                                 f"got {self.fov_deg}.")
            if self.focal_px is not None:
                raise DPoseError("Give --focal or --fov, not both.")
        if not (np.isfinite(self.smooth) and self.smooth >= 0):
            raise DPoseError(f"--smooth must be 0 (off) or more (1 default, 2 twice as "
                             f"smooth), got {self.smooth}.")
        if not video:
            given = [name for name, value, default in (
                ("--start", self.start, 0), ("--end", self.end, None),
                ("--stride", self.stride, 1), ("--smooth", self.smooth, DEFAULT_SMOOTH))
                if value != default]
            if given:
                verb = "applies" if len(given) == 1 else "apply"
                raise DPoseError(f"{', '.join(given)} {verb} to a video or an image folder, "
                                 "not to image files.")
        if not 0.0 <= self.low_confidence <= 1.0:
            raise DPoseError(f"low_confidence must be between 0 and 1, got "
                             f"{self.low_confidence}.")
        if self.max_gap < 0:
            raise DPoseError(f"max_gap must be 0 or more frames, got {self.max_gap}.")
        if not isinstance(self.part_scores, bool | np.bool_):
            raise DPoseError(f"part_scores must be True or False, got {self.part_scores!r}.")
        check_refine_options(self)
        if self.chunk_overlap is not None:
            if not isinstance(self.chunk_overlap, int | np.integer) or self.chunk_overlap < 0:
                raise DPoseError(f"--chunk-overlap must be 0 or more frames, got "
                                 f"{self.chunk_overlap}.")
            if not video:
                raise DPoseError("--chunk-overlap solves a chunk of a video or image folder; "
                                 "image files need no chunks.")
        outputs = [Path(p).expanduser() for p in self.outputs]
        _check_outputs(inputs, outputs, video)
        if video:
            _check_source(inputs[0], self.start, self.end, self.stride, self.fps)
        body_model = None
        checkpoint = self.checkpoint
        if estimator is None:
            checkpoint = _check_checkpoint(self.checkpoint)
            if self.body_model is not None:
                from .body_model import BodyModel

                body_model = BodyModel.load(self.body_model)
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "outputs", outputs)
        object.__setattr__(self, "person", person)
        object.__setattr__(self, "bbox", [tuple(float(v) for v in b) for b in boxes])
        object.__setattr__(self, "checkpoint", checkpoint)
        object.__setattr__(self, "_loaded_body_model", body_model)
        object.__setattr__(self, "_valid", True)
        return self

    def validated(self, estimator=None) -> RunOptions:
        """self, validated unless nothing changed since the last validate()."""
        return self if self._valid else self.validate(estimator=estimator)


def check_refine_options(options: RunOptions) -> None:
    """The refine stage's options (ground, foot_lock, subject_height), one line each."""
    from .refine import _HEIGHT_RANGE_M

    _check_choice("ground", options.ground, GROUND_CHOICES)
    lock = options.foot_lock
    if isinstance(lock, bool) or not isinstance(lock, int | float | np.number) or not (
            np.isfinite(lock) and 0.0 <= lock <= 1.0):
        raise DPoseError(f"--foot-lock must be between 0 (off) and 1 (feet fixed while they "
                         f"touch the floor), got {lock}.")
    height = options.subject_height
    if height is not None:
        lo, hi = _HEIGHT_RANGE_M
        if isinstance(height, bool) or not isinstance(height, int | float | np.number) or not (
                np.isfinite(height) and lo <= height <= hi):
            raise DPoseError(f"--subject-height must be the person's standing height in "
                             f"metres, {lo:g} to {hi:g}, got {height}.")
    if options.ground == "off" and height is not None:
        raise DPoseError("--subject-height rescales the grounded motion: it needs --ground "
                         "auto or none, not off.")


def _check_choice(name: str, value: str, choices: Sequence[str]) -> None:
    if value not in choices:
        raise DPoseError(f"--{name} must be one of {', '.join(choices)}, got {value!r}.")


def _parse_person(person) -> str | int:
    if person in ("all", "largest"):
        return person
    if isinstance(person, int | np.integer) and not isinstance(person, bool) and person >= 0:
        return int(person)
    if isinstance(person, str) and person.isdigit():
        return int(person)
    raise DPoseError(f"--person must be 'all', 'largest' or a number 0, 1, ..., got {person!r}.")


def _boxes(bbox) -> np.ndarray:
    """() / one box / several boxes -> (K,4) float; DPoseError for anything else."""
    if bbox is None or (not isinstance(bbox, np.ndarray) and len(bbox) == 0):
        return np.zeros((0, 4))
    try:
        arr = np.asarray(bbox, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DPoseError(f"--bbox must be x0,y0,x1,y1 in pixels, got {bbox!r}.") from exc
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != 4:
        raise DPoseError(f"--bbox must be x0,y0,x1,y1 in pixels, got {bbox!r}.")
    for x0, y0, x1, y1 in arr:
        if not np.all(np.isfinite([x0, y0, x1, y1])):
            raise DPoseError(f"--bbox {x0:g},{y0:g},{x1:g},{y1:g} must be finite numbers.")
        if not (x1 > x0 and y1 > y0):
            raise DPoseError(f"--bbox {x0:g},{y0:g},{x1:g},{y1:g}: need x0 < x1 and y0 < y1.")
    return arr


def _check_frame_range(start, end, stride) -> None:
    if not isinstance(start, int | np.integer) or start < 0:
        raise DPoseError(f"--start must be a frame number 0 or more, got {start}.")
    if not isinstance(stride, int | np.integer) or stride < 1:
        raise DPoseError(f"--stride must be a whole number of at least 1, got {stride}.")
    if end is not None and (not isinstance(end, int | np.integer) or end <= start):
        raise DPoseError(f"--end ({end}) must be a frame number after --start ({start}).")


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
    except OSError:
        pass
    return os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


def _check_outputs(inputs: list[Path], outputs: list[Path], video: bool) -> None:
    """An output is never an input (nor an image in an input folder), never given twice."""
    read = list(inputs)
    if video and inputs[0].is_dir():
        read += [p for p in inputs[0].iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS]
    from .atomic_io import check_writable

    for k, out in enumerate(outputs):
        if out.is_dir() or out.parent.is_dir():  # a missing folder is the caller's to make
            check_writable(out)
        for source in read:
            if _same_file(out, source):
                raise DPoseError(f"The output {out} is an input of this run; writing it would "
                                 "destroy the input: choose another output name.")
        for other in outputs[:k]:
            if _same_file(out, other):
                raise DPoseError(f"The output {out} is given twice; each output needs its own "
                                 "file name.")


def _check_source(path: Path, start: int, end: int | None, stride: int, fps) -> None:
    """The frame range lies inside the video/folder (when its length is known)."""
    from .frames import open_frames

    source = open_frames(path, start=start, end=end, stride=stride, fps=fps)
    total = source.total_frames
    if total is not None and start >= total:
        raise FrameError(f"--start {start} is past the end of {path}: it has {total} frame(s), "
                         f"numbered 0 to {total - 1}.")


def _check_checkpoint(checkpoint) -> Path:
    from .checkpoint import checkpoint_info, resolve_checkpoint

    path = resolve_checkpoint(checkpoint)
    info = checkpoint_info(path)  # reads no tensors
    if not info.valid:
        raise CheckpointError(f"{path} is not the D-PoSE checkpoint: {info.problem}")
    return path


# ----------------------------------------------------------------------------- estimator
def open_estimator(options: RunOptions):
    """The Estimator the options ask for (checkpoint, backend, device, body model, batch)."""
    from .estimator import Estimator

    options = options.validated()
    body_model = options._loaded_body_model or options.body_model
    return Estimator(options.checkpoint, backend=options.backend, device=options.device,
                     cache_dir=options.cache_dir, body_model=body_model,
                     max_batch=options.batch)


_FINITE_FIELDS = ("rotmats", "betas", "cam_t", "joints2d", "depth")


class _CheckedEstimator:
    """The estimator with its outputs checked: non-finite numbers raise NonFiniteOutputError.

    Everything that runs the network (the person finder too) goes through this, so a damaged
    checkpoint is an error (images) or a failed, flagged frame (videos), never NaN in a file.
    """

    def __init__(self, inner):
        self._inner = inner
        self.non_finite_calls = 0

    def __getattr__(self, name: str):
        return getattr(self._inner, name)

    def _checked(self, estimate):
        for name in _FINITE_FIELDS:
            value = getattr(estimate, name, None)
            if value is not None and not np.all(np.isfinite(value)):
                self.non_finite_calls += 1
                raise NonFiniteOutputError(
                    f"The network returned non-finite numbers (NaN or inf) in '{name}': the "
                    "checkpoint's weights are damaged; download paper_arxiv.ckpt again.")
        return estimate

    def estimate(self, image, boxes, focal_px=None):
        return self._checked(self._inner.estimate(image, boxes, focal_px=focal_px))

    def estimate_batch(self, images, boxes_per_image, focal_px=None):
        return self._checked(self._inner.estimate_batch(images, boxes_per_image, focal_px))


def _checked(estimator) -> _CheckedEstimator:
    return estimator if isinstance(estimator, _CheckedEstimator) else _CheckedEstimator(estimator)


def part_scorer(body_model):
    """sequence.PartScorer of a body model: scores (k, 24) of some crops of an Estimate,
    23 part IoUs then the silhouette IoU (part_agreement), while their part map exists."""
    from .part_agreement import part_agreement_arrays

    def score(estimate, rows: list[int]) -> np.ndarray:
        scores = part_agreement_arrays(
            body_model, estimate.rotmats[rows], estimate.betas[rows], estimate.cam_t[rows],
            estimate.focal_px[rows], estimate.principal_point[rows], estimate.crop_box[rows],
            estimate.part_labels[rows])
        return np.column_stack([scores.part_iou, scores.silhouette_iou])

    return score


def _body_model_to_score(options: RunOptions, net):
    """The body model that scores part agreement, or None: scoring off, or a network
    stand-in without one."""
    return getattr(net, "body_model", None) if options.part_scores else None


def _focal(options: RunOptions, width: int, height: int) -> float | None:
    if options.fov_deg is not None:
        return focal_from_fov((width, height), options.fov_deg)
    return options.focal_px


def _outside(box: np.ndarray, width: int, height: int) -> bool:
    x0, y0, x1, y1 = box
    return x1 <= 0 or y1 <= 0 or x0 >= width or y0 >= height


def _box_text(box) -> str:
    return ",".join(f"{v:g}" for v in box)


class UserBoxFinder:
    """The user's box, as typed (it may reach outside the frame), on every frame."""

    def __init__(self, box):
        self.box = _boxes(box)[0]

    def find(self, image: np.ndarray, hints=()) -> list:
        from .localise import Detection

        h, w = image.shape[:2]
        if _outside(self.box, w, h):
            raise FrameError(f"--bbox {_box_text(self.box)} lies outside the {w}x{h} frame.")
        return [Detection(self.box.copy(), 1.0, "manual")]


def select_people(boxes: np.ndarray, person: str | int) -> np.ndarray:
    """Indices into `boxes` for "all" (largest first), "largest" or a number (largest = 0)."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.argsort(-area, kind="stable")
    if person == "all":
        return order
    if person == "largest":
        return order[:1]
    return order[int(person):int(person) + 1]


def _notify(warn: Warn | None, text: str) -> None:
    if warn is not None:
        warn(text)
    else:
        log.warning(text)


# ----------------------------------------------------------------------------- images
@dataclass
class ImageSkip:
    """An input image that gave no result, and why."""

    path: Path
    message: str


@dataclass
class ImagesResult:
    """People found in image files: one row per person, ordered by image.

    estimate: Estimate (K rows; estimate.image_index -> paths); boxes (K,4) the person boxes
    (xyxy px: --bbox as given, or the finder's); confidence (K,) in [0,1]; sources (K,) how
    each person was found ("manual", "segmentation", "full-frame", ...); skipped: images that
    gave nothing (unreadable, box outside, no such person), each also reported once by warn.
    scores: part_agreement.AgreementScores per row (None when RunOptions.part_scores is off).
    """

    estimate: Any
    boxes: np.ndarray
    confidence: np.ndarray
    sources: list[str]
    paths: list[Path]
    skipped: list[ImageSkip]
    backend: str = ""
    device: str = ""
    scores: Any = None

    def __len__(self) -> int:
        return len(self.boxes)

    def rows_of_image(self, image: int) -> np.ndarray:
        """Row numbers of the people of input image `image`."""
        return np.flatnonzero(np.asarray(self.estimate.image_index) == image)


def estimate_images(options: RunOptions, *, estimator=None, progress: Progress | None = None,
                    cancel: threading.Event | None = None, warn: Warn | None = None,
                    finder=None) -> ImagesResult:
    """People in each image file: found (the finder's own network pass is kept, never run
    again on an unpadded box) or the --bbox boxes; the whole image when nobody is found.

    An unreadable image among several is skipped and reported once (warn); a single image
    that cannot be used, every image failing, or non-finite network output raise.
    finder: a person finder to use instead of the default (segmentation refinement with
    OpenCV proposals); ignored when the options give boxes.
    """
    from .frames import read_image
    from .localise import make_finder

    options = options.validated(estimator)
    if options.is_video:
        raise DPoseError("estimate_images takes image files; use estimate_video for a video "
                         "or an image folder.")
    net = _checked(estimator if estimator is not None else open_estimator(options))
    paths = list(options.inputs)
    user_boxes = options.boxes
    finders: dict[Any, Any] = {} if finder is None else {"given": finder}
    rows: list[tuple[int, np.ndarray, float, str, Any]] = []  # image, box, conf, source, est
    pending: list[tuple[int, np.ndarray, np.ndarray, Any]] = []  # image, pixels, boxes, focal
    pending_rows: list[list[int]] = []
    skipped: list[ImageSkip] = []

    def run_pending() -> None:
        if not pending:
            return
        est = net.estimate_batch([p[1] for p in pending], [p[2] for p in pending],
                                 [p[3] for p in pending])
        flat = [r for rs in pending_rows for r in rs]
        for k, slot in enumerate(flat):
            i, box, conf, source, _ = rows[slot]
            rows[slot] = (i, box, conf, source, est.select(k))
        pending.clear()
        pending_rows.clear()

    def skip(path: Path, message: str, error: type[DPoseError] = FrameError) -> None:
        if len(paths) == 1:
            raise error(message)
        skipped.append(ImageSkip(path, message))
        _notify(warn, f"skipped: {message}")

    for i, path in enumerate(paths):
        if cancel is not None and cancel.is_set():
            raise CancelledError("Cancelled.")
        try:
            image = read_image(path)
        except FrameError as exc:
            skip(path, str(exc))
        else:
            h, w = image.shape[:2]
            focal = _focal(options, w, h)
            people = _people_in_image(image, path, user_boxes, net, finders, focal, make_finder)
            if isinstance(people, str):
                skip(path, people)
            else:
                chosen = select_people(np.array([p[0] for p in people]).reshape(-1, 4),
                                       options.person)
                if len(chosen) == 0:
                    skip(path, f"{path}: person {options.person} was asked for, but "
                               f"{len(people)} person(s) were found (numbered from 0, largest "
                               "first).", NoPersonError)
                todo = []
                for k in chosen:
                    box, conf, source, est = people[k]
                    rows.append((i, box, conf, source, est))
                    if est is None:
                        todo.append(len(rows) - 1)
                if todo:
                    queued = sum(len(r) for r in pending_rows)
                    if pending and queued + len(todo) > options.batch:
                        run_pending()
                    pending.append((i, image, np.stack([rows[t][1] for t in todo]), focal))
                    pending_rows.append(todo)
        if progress is not None:
            progress(i + 1, len(paths))
    run_pending()
    if len(skipped) == len(paths):
        raise FrameError(f"None of the {len(paths)} images could be used (each is listed "
                         "above).")
    if not rows:
        raise NoPersonError(f"Nobody was found in the {len(paths)} images; {BBOX_HINT}.")
    from .estimator import Estimate

    estimates = []
    for i, _, _, _, est in rows:
        est.image_index = np.full(len(est), i, dtype=np.int64)
        estimates.append(est)
    merged = Estimate(**{f.name: np.concatenate([getattr(e, f.name) for e in estimates])
                         for f in dataclasses.fields(Estimate)})
    body_model = _body_model_to_score(options, net)
    scores = None
    if body_model is not None:
        from .part_agreement import part_agreement

        scores = part_agreement(merged, body_model)
    return ImagesResult(
        estimate=merged, boxes=np.stack([r[1] for r in rows]),
        confidence=np.array([r[2] for r in rows], dtype=np.float64),
        sources=[r[3] for r in rows], paths=paths, skipped=skipped,
        backend=str(getattr(net, "backend", "")), device=str(getattr(net, "device", "")),
        scores=scores)


def _people_in_image(image, path, user_boxes, net, finders, focal, make_finder):
    """[(box, confidence, source, single-crop Estimate or None)], or a skip message."""
    h, w = image.shape[:2]
    if len(user_boxes):
        for box in user_boxes:
            if _outside(box, w, h):
                return (f"--bbox {_box_text(box)} lies outside the {w}x{h} image {path}; "
                        "give x0,y0,x1,y1 in pixels of the image.")
        return [(box.copy(), 1.0, "manual", None) for box in user_boxes]
    key = "given" if "given" in finders else focal
    if key not in finders:  # the finder's focal length is fixed: one finder per focal
        finders[key] = make_finder(net, "auto", focal_px=focal)
    found = finders[key].find(image)
    if found:
        return [(np.asarray(d.box, np.float64), float(d.confidence), d.source,
                 None if d.estimate is None else d.estimate.select(d.row)) for d in found]
    return [(np.array([0.0, 0.0, float(w), float(h)]), 0.0, "full-frame", None)]


# ----------------------------------------------------------------------------- video
@dataclass
class VideoResult:
    """Motion per person track of a video or image folder, and what the run saw.

    tracks: track number -> Motion (source frame numbers in Motion.frame_indices; Motion.fps
    is the source rate); tracker_ids: track number -> id used in FrameResult.people;
    track_lengths: frames each track was seen; failures: frames skipped (unreadable, network
    failure, non-finite output), each also reported once by warn; maps: with keep_maps,
    track number -> [(source frame, kept maps)] in frame order.
    """

    tracks: dict[int, Any]
    tracker_ids: dict[int, int]
    track_lengths: dict[int, int]
    failures: list
    maps: dict[int, list[tuple[int, Any]]]
    frames_processed: int
    frames_total: int
    cancelled: bool
    fps: float
    stride: int
    source: Path
    source_kind: str
    seconds: float = 0.0
    backend: str = ""
    device: str = ""
    chunk: Any = None  # chunk mode: the raw solves (chunks.ChunkSolve) to write
    gaps: list[tuple[int, int]] = field(default_factory=list)  # merge: unsolved [a, b) ranges
    provenance: dict = field(default_factory=dict)  # merge: what solved the chunks
    first_frame: int = 0  # the shot's first source frame (the run's start)
    refine_reports: dict = field(default_factory=dict)  # refine_tracks: track -> RefineReport
    not_refined: dict = field(default_factory=dict)  # refine_tracks: track -> why not

    @property
    def rows_fps(self) -> float:
        """Rate of the rows of each motion: the source rate over the stride."""
        return self.fps / self.stride

    def problem_frames(self, interpolated: bool = True) -> list[int]:
        """Source frames that were skipped (unreadable, failed), left unsolved (a gap between
        farm chunks) or, with `interpolated`, filled by interpolation: what --strict refuses.
        Sorted."""
        from .motion import FLAG_INTERPOLATED

        frames = {int(f.index) for f in self.failures}
        if self.chunk is not None:  # a chunk answers for its own frames, not its warm-up
            frames = {f for f in frames if self.chunk.own_start <= f < self.chunk.own_end}
        for a, b in self.gaps:
            frames.update(range(a, b, self.stride))
        for motion in self.tracks.values() if interpolated else ():
            if motion.flags is not None and motion.frame_indices is not None:
                hit = (np.asarray(motion.flags) & FLAG_INTERPOLATED) != 0
                frames.update(int(f) for f in np.asarray(motion.frame_indices)[hit])
        return sorted(frames)


def _slim(estimate, row: int):
    """One crop of an Estimate without the 23-channel logits (what the depth relief needs)."""
    one = estimate.select(row)
    if hasattr(one, "part_logits"):
        one.part_logits = np.zeros((1, 0, 0, 0), np.float32)
    return one


def estimate_video(options: RunOptions, *, estimator=None, progress: Progress | None = None,
                   cancel: threading.Event | None = None, on_frame: Callable | None = None,
                   warn: Warn | None = None, keep_maps: bool | Callable = False,
                   finder=None, frame_maps: Callable | None = None) -> VideoResult:
    """Every person's motion over one video or image folder.

    on_frame(sequence.FrameResult) after each frame (failed ones too). keep_maps: False (no
    per-pixel data: memory stays flat), True (each person-frame's Estimate without the logits:
    depth, part_labels, crop_box, camera), or a function (estimate, row) -> anything, whose
    result is kept instead (e.g. a subsampled depth relief). frame_maps(FrameResult): called
    after each frame with its people's Estimates, nothing kept (e.g. a
    overlay_frames.PartOverlayWriter writing the part map to disk). finder: a person finder to use
    instead of the default (--bbox box, else segmentation refinement with OpenCV proposals).
    When nobody has been found in the first NOBODY_WARNING_FRAMES frames, warn says so at once.
    Cancelling returns the frames done so far. Raises NoPersonError when the run ends with
    nobody, FrameError when no frame could be read or --start lies past the end,
    NonFiniteOutputError when the network gave only non-finite numbers.
    """
    from .frames import open_frames
    from .localise import make_finder
    from .sequence import estimate_sequence

    options = options.validated(estimator)
    if not options.is_video:
        raise DPoseError("estimate_video takes one video or image folder; use "
                         "estimate_images for image files.")
    net = _checked(estimator if estimator is not None else open_estimator(options))
    path = options.inputs[0]
    chunked = options.chunk_overlap is not None
    solve_start = max(0, options.start - options.chunk_overlap) if chunked else options.start
    frames = open_frames(path, start=solve_start, end=options.end, stride=options.stride,
                         fps=options.fps)  # image folders: DEFAULT_FOLDER_FPS
    user_boxes = options.boxes
    focal = options.focal_px
    if options.fov_deg is not None or len(user_boxes):
        size = _first_frame_size(frames)
        if size is not None:
            if options.fov_deg is not None:
                focal = focal_from_fov(size, options.fov_deg)
            if len(user_boxes) and _outside(user_boxes[0], *size):
                raise FrameError(f"--bbox {_box_text(user_boxes[0])} lies outside the "
                                 f"{size[0]}x{size[1]} frames of {path}.")
    if finder is None:
        finder = (UserBoxFinder(user_boxes[0]) if len(user_boxes)
                  else make_finder(net, "auto", focal_px=focal))
    total = len(frames)
    min_frames = 1 if len(user_boxes) else min(MIN_TRACK_FRAMES, total or MIN_TRACK_FRAMES)
    maps: dict[tuple[int, int], tuple[float, Any]] = {}  # (tracker id, frame) -> (conf, data)
    state = {"frames": 0, "people": 0, "warned": False}

    def frame_done(frame) -> None:
        state["frames"] += 1
        if frame.error is not None:
            _notify(warn, f"skipped: {frame.error}")
        state["people"] += len(frame.people)
        if (not state["warned"] and state["people"] == 0
                and state["frames"] >= NOBODY_WARNING_FRAMES):
            state["warned"] = True
            _notify(warn, f"Nobody found in the first {state['frames']} frames of {path.name}; "
                          f"if someone is there, {BBOX_HINT}.")
        if keep_maps:
            for person in frame.people:
                key = (person.track_id, frame.index)
                if key in maps and maps[key][0] >= person.confidence:
                    continue
                data = (keep_maps(person.estimate, person.row) if callable(keep_maps)
                        else _slim(person.estimate, person.row))
                maps[key] = (person.confidence, data)
        if frame_maps is not None:
            frame_maps(frame)
        if not keep_maps:  # nothing per-pixel outlives the frame
            for person in frame.people:
                person.estimate = None
        if on_frame is not None:
            on_frame(frame)

    body_model = _body_model_to_score(options, net)
    started = time.perf_counter()
    seq = estimate_sequence(  # every track: a missing one is told apart from a failed run below
        frames, net, finder=finder, person="all", smooth=options.smooth, progress=progress,
        cancel=cancel, on_frame=frame_done, focal_px=focal, max_gap=options.max_gap,
        min_track_frames=min_frames, low_confidence=options.low_confidence,
        frame_estimates=bool(keep_maps) or frame_maps is not None,
        part_scorer=None if body_model is None else part_scorer(body_model))
    tracks = {int(k): m for k, m in seq.items()}
    if options.person == "largest":
        tracks = _largest_track(tracks)
    elif options.person != "all" and tracks:
        if options.person not in tracks and not seq.cancelled:
            raise NoPersonError(f"Track {options.person} does not exist: {len(tracks)} person "
                                f"track(s) were found (numbered 0 to {len(tracks) - 1}); use "
                                "--person all to see them all.")
        tracks = {k: m for k, m in tracks.items() if k == options.person}
    result = VideoResult(
        tracks=tracks, tracker_ids=dict(seq.tracker_ids), track_lengths=dict(seq.track_lengths),
        failures=list(seq.failures), maps={}, frames_processed=seq.frames_processed,
        frames_total=total, cancelled=seq.cancelled, fps=frames.fps, stride=options.stride,
        source=path, source_kind=frames.kind, seconds=time.perf_counter() - started,
        first_frame=options.start,
        backend=str(getattr(net, "backend", "")), device=str(getattr(net, "device", "")))
    if keep_maps:
        for number in tracks:
            tid = result.tracker_ids[number]
            result.maps[number] = sorted(((f, data) for (t, f), (_, data) in maps.items()
                                          if t == tid), key=lambda item: item[0])
    if chunked:
        if result.frames_processed == 0 or len(result.failures) == result.frames_processed:
            _raise_nothing_found(result, options, net.non_finite_calls)
        result.chunk = _chunk_of(seq, options, frames, net)
    elif not tracks and not result.cancelled:
        _raise_nothing_found(result, options, net.non_finite_calls)
    return result


# ----------------------------------------------------------------------------- farm chunks
# The options that change raw solves: chunks solved with different ones are not merged.
_SOLVE_OPTIONS = ("bbox", "focal_px", "fov_deg", "stride", "fps", "max_gap", "backend")


def _chunk_of(seq, options: RunOptions, frames, net):
    """The raw solves of a chunk run, with what identifies the run (see chunks.py)."""
    from .checkpoint import checkpoint_hash
    from .chunks import ChunkSolve, input_identity

    own_end = options.end
    if frames.total_frames is not None:
        own_end = min(own_end or frames.total_frames, frames.total_frames)
    elif own_end is None:
        own_end = int(seq.frame_indices[-1]) + 1
    checkpoint = getattr(net, "checkpoint_path", None) or options.checkpoint
    provenance = {
        "checkpoint_sha256": checkpoint_hash(checkpoint) if checkpoint else None,
        "input": input_identity(options.inputs[0]),
        "options": {name: getattr(options, name) for name in _SOLVE_OPTIONS},
    }
    provenance["options"]["backend"] = str(getattr(net, "backend", options.backend))
    return ChunkSolve(
        own_start=options.start, own_end=int(own_end), frames=seq.frame_indices,
        fps=frames.fps,
        image_size=np.zeros(2) if seq.image_size is None else np.asarray(seq.image_size),
        provenance=json.loads(json.dumps(provenance)),
        source=str(Path(options.inputs[0]).resolve()), source_kind=frames.kind,
        tracks=[seq.raw_tracks[tid] for tid in sorted(seq.raw_tracks)],
        failures=[(int(f.index), f.message) for f in seq.failures])


def open_body_model(options: RunOptions):
    """The SMPL-X body model alone (the options' file, else the checkpoint's own buffers),
    for work that builds rigs without running the network (a farm merge)."""
    from .body_model import BODY_MODEL_PREFIX, BodyModel
    from .checkpoint import load_checkpoint_arrays, resolve_checkpoint

    if options.body_model is not None:
        return BodyModel.load(options.body_model)
    arrays = load_checkpoint_arrays(resolve_checkpoint(options.checkpoint),
                                    only=BODY_MODEL_PREFIX)
    return BodyModel.from_arrays(arrays, prefix=BODY_MODEL_PREFIX)


def merge_video(chunk_paths: Sequence[str | os.PathLike], options: RunOptions, *,
                frames: tuple[int, int] | None = None, allow_gaps: bool = False,
                outputs: Sequence[str | os.PathLike] = (),
                warn: Warn | None = None) -> VideoResult:
    """One shot from farm chunk files: tracks matched at the seams, then smoothing, gap
    filling and one body shape per person run once over the whole shot, exactly as in a
    single run (sequence.build_motions). options: smooth, person, low_confidence (the
    solve options come from the chunks). frames: (first, last) source frames the chunks must
    cover. outputs: the files the caller will write, refused when one is a chunk. Raises
    ChunkError (one line) for mixed runs, overlaps and, unless allow_gaps, missing chunks;
    NoPersonError when nobody was found in the whole shot.
    """
    from .chunks import merge_chunks, read_chunk
    from .sequence import FrameFailure, build_motions

    paths = [Path(p) for p in chunk_paths]
    _check_outputs(paths, [Path(p) for p in outputs], video=False)
    merged = merge_chunks([read_chunk(p) for p in paths], frames=frames,
                          allow_gaps=allow_gaps, names=[p.name for p in paths])
    for a, b in merged.gaps:
        _notify(warn, f"no chunk solved source frames {a}-{b - 1}: filled and flagged.")
    for _, message in merged.failures:
        _notify(warn, f"skipped: {message}")
    solve = merged.provenance["options"]
    person = "all" if options.person in ("all", "largest") else _parse_person(options.person)
    raw = dict(enumerate(merged.tracks))
    min_frames = 1 if solve.get("bbox") else min(MIN_TRACK_FRAMES, len(merged.frames))
    tracks, ids, lengths = build_motions(
        raw, merged.frames, merged.fps, image_size=merged.image_size, smooth=options.smooth,
        low_confidence=options.low_confidence, min_track_frames=min_frames, person=person)
    if options.person == "largest":
        tracks = _largest_track(tracks)
    result = VideoResult(
        tracks=tracks, tracker_ids=ids, track_lengths=lengths,
        failures=[FrameFailure(f, m) for f, m in merged.failures], maps={},
        frames_processed=len(merged.frames), frames_total=len(merged.frames), cancelled=False,
        fps=merged.fps, stride=int(solve.get("stride") or 1), source=Path(merged.source),
        source_kind=merged.source_kind, gaps=merged.gaps, backend=str(solve.get("backend", "")),
        provenance=merged.provenance, first_frame=int(merged.frames[0]))
    if not tracks:
        raise NoPersonError(f"Nobody was found in the {len(merged.frames)} frames of the "
                            f"{len(paths)} chunks; {BBOX_HINT} when solving them.")
    return result


def _first_frame_size(frames) -> tuple[int, int] | None:
    """(width, height) of the first readable frame of the range, None when none is."""
    for record in frames:
        if record.ok:
            h, w = record.image.shape[:2]
            return w, h
    return None


def _largest_track(tracks: dict) -> dict:
    """The track whose median box area is the largest (--person largest)."""
    if len(tracks) <= 1:
        return dict(tracks)

    def area(motion) -> float:
        if motion.boxes is None:
            return 0.0
        sides = motion.boxes[:, 2:] - motion.boxes[:, :2]
        return float(np.median(sides[:, 0] * sides[:, 1]))

    best = max(tracks, key=lambda t: area(tracks[t]))
    return {best: tracks[best]}


def _raise_nothing_found(result: VideoResult, options: RunOptions, non_finite: int) -> None:
    """The one right error for a run that ended with no track."""
    src, n = result.source, result.frames_processed
    if n == 0:
        if options.start > 0:
            raise FrameError(f"--start {options.start} is past the end of {src}: no frame "
                             "was read.")
        raise FrameError(f"No frame could be read from {src}.")
    if len(result.failures) == n:
        if non_finite:
            raise NonFiniteOutputError(
                f"The network returned non-finite numbers (NaN or inf) on {non_finite} of {n} "
                "frames: the checkpoint's weights are damaged; download paper_arxiv.ckpt again.")
        raise FrameError(f"None of the {n} frames of {src} could be read (each is listed "
                         "above).")
    raise NoPersonError(f"Nobody was found in {src} ({n} frames); {BBOX_HINT}.")


def save_tracks(result: VideoResult, output: str | os.PathLike) -> dict[int, Path]:
    """Write each track as an SMPL-X/AMASS .npz (atomically): `output` for one track,
    name_track0.npz, name_track1.npz ... for several. Returns track -> path written."""
    from .motion_io import save_motion_npz
    from .sequence import track_output_paths

    paths = track_output_paths(output, sorted(result.tracks))
    return {track: save_motion_npz(path, result.tracks[track]) for track, path in paths.items()}


# ----------------------------------------------------------------------------- refine stage
CameraTrack = Callable[[np.ndarray], np.ndarray]  # source frame numbers (N,) -> (N,4,4)


def refine_motions(motions: dict, body_model, options: RunOptions, *,
                   camera_to_world: CameraTrack | None = None, warn: Warn | None = None
                   ) -> tuple[dict, dict, dict]:
    """The refine stage over camera-frame motions (options.ground/foot_lock/subject_height).

    Returns (motions, reports, not_grounded): each motion grounded in a Z-up world with its
    camera per frame (dpose_core.refine), all of them in the first grounded one's world
    (shared_world.py), its RefineReport, and key -> why for the motions
    that could not be grounded. camera_to_world maps a motion's source frame
    numbers to OpenCV-camera-to-world matrices (N,4,4) of a moving camera (any scale: fixed
    from the body); None for a still camera. A one-frame motion (an image) is grounded without
    locks (locks need time). A motion the stage cannot ground (no foot on screen, no contact to
    put a floor under) is kept as it was, in the camera frame, and warn says why once: the
    network's work is never thrown away. The network's foot cues a motion carries (feet_seen,
    foot_map_depth) scale the contacts' confidence. ground "off" returns the motions
    unchanged. Raises DPoseError for options or a body model that do not fit (one line).
    """
    from .refine import check_body_model, refine_motion

    check_refine_options(options)
    if options.ground == "off" or not motions:
        return dict(motions), {}, {}
    check_body_model(body_model)
    out, reports, problems = dict(motions), {}, {}
    for key, motion in motions.items():
        track = None
        if camera_to_world is not None:
            track = np.asarray(camera_to_world(np.asarray(motion.frame_indices)), np.float64)
        lock = options.foot_lock if motion.num_frames > 1 else 0.0
        try:
            out[key], reports[key] = refine_motion(
                motion, body_model, ground=options.ground, foot_lock=lock,
                subject_height=options.subject_height, camera_to_world=track)
        except DPoseError as exc:
            line = str(exc).strip().splitlines()[0]
            _notify(warn, f"{_motion_name(key)} not grounded, kept in the camera frame: {line}")
            problems[key] = line
    _share_world(out, reports, body_model, floored=options.ground == "auto")
    return out, reports, problems


def _share_world(motions: dict, reports: dict, body_model, floored: bool) -> None:
    """One camera, one world: every grounded motion moved into the first one's (in place),
    its feet kept above that world's floor when there is one."""
    from .refine import lift_onto_floor
    from .shared_world import moved_motion, world_moves

    grounded = [key for key in motions if key in reports]
    if len(grounded) < 2:
        return
    first = motions[grounded[0]]
    for key in grounded[1:]:
        m = motions[key]
        moves = world_moves(m.frame_indices, m.camera_to_world, first.frame_indices,
                            first.camera_to_world)
        motions[key] = moved_motion(m, moves, body_model.rest_joints(m.betas)[0])
        if floored:
            motions[key] = lift_onto_floor(motions[key], body_model)
        reports[key].notes.append(f"moved into the world of {_motion_name(grounded[0])}, the "
                                  f"first person grounded (one camera, one world); its floor "
                                  f"and camera height above are its own fit")


def refine_tracks(result: VideoResult, body_model, options: RunOptions, *,
                  camera_to_world: CameraTrack | None = None,
                  warn: Warn | None = None) -> dict:
    """The refine stage on every track of a video run or a farm merge (the whole shot once).

    Replaces result.tracks with the refined motions; returns track -> RefineReport for the
    tracks grounded (also kept as result.refine_reports; result.not_refined says why the
    others were not). See refine_motions for the options and camera_to_world.
    """
    if result.chunk is not None:
        raise DPoseError("A farm chunk holds raw solves: ground the shot after dpose merge.")
    result.tracks, result.refine_reports, result.not_refined = refine_motions(
        result.tracks, body_model, options, camera_to_world=camera_to_world, warn=warn)
    return dict(result.refine_reports)


def _motion_name(key) -> str:
    return f"track {key}" if isinstance(key, int | np.integer) else str(key)
