"""Finding people without a downloaded detector, each box reported with a confidence.

Finders share one method, `find(image, hints=()) -> list[Detection]`; hints are boxes where
people are expected (e.g. the tracker's predictions), which iterative finders start from.
- SegmentationFinder: the network's own part segmentation. Start from a box (the full frame,
  a hint or a proposal), crop, take the person's extent from the predicted part labels, re-crop,
  until the box is stable. The last forward pass is kept, so a converged frame costs one pass.
- OpenCVPersonFinder: detectors shipped inside opencv-python (HOG people detector for full
  bodies, Haar face cascade for close-ups, face box -> body box by proportions).
- OnnxPersonDetector: a user-supplied YOLO export (v8 (1,84,N) or v5 (1,N,85)), NMS in numpy.
- ManualBoxFinder: a box the user drew.
Confidence is evidence, not a constant: segmentation coverage of the box and agreement
between the box and the network's projected body joints (`crop_evidence`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .errors import DPoseError, FrameError
from .frames import to_rgb8
from .tracking import box_iou

BODY_JOINTS = np.r_[0:22, 55:76]  # skeleton body joints + feet/face/fingertip vertex joints


@dataclass
class Detection:
    """A person box (xyxy px) with a confidence in [0,1] and where it came from.

    `estimate` / `row`: when the finder already ran the network on this person (segmentation
    finder), the Estimate and its crop index, so the caller need not run it again.
    """

    box: np.ndarray
    confidence: float
    source: str
    estimate: Any = None
    row: int = 0


class PersonFinder(Protocol):
    def find(self, image: np.ndarray, hints: Sequence[np.ndarray] = ()) -> list[Detection]:
        ...


# --- box helpers ---------------------------------------------------------------------------


def clip_box(box: np.ndarray, width: int, height: int) -> np.ndarray:
    box = np.asarray(box, dtype=np.float64).reshape(4).copy()
    box[[0, 2]] = np.clip(box[[0, 2]], 0, width)
    box[[1, 3]] = np.clip(box[[1, 3]], 0, height)
    return box


def square_box(box: np.ndarray, pad: float = 1.0) -> np.ndarray:
    """Square (side = longer side x pad) with the same centre: what the crop will cover."""
    x0, y0, x1, y1 = np.asarray(box, dtype=np.float64).reshape(4)
    half = max(x1 - x0, y1 - y0) * pad / 2
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    return np.array([cx - half, cy - half, cx + half, cy + half])


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.45) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, best first."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        if order.size == 1:
            break
        iou = box_iou(boxes[i:i + 1], boxes[order[1:]])[0]
        order = order[1:][iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


# --- evidence from the network's output ----------------------------------------------------


def _mask_components(estimate, row: int) -> list[tuple[np.ndarray, float, np.ndarray, float]]:
    """Connected person regions of a crop's part segmentation, biggest first.

    Each: (box xyxy image px, mask fraction of the crop, touches (4,) bool: reaches the crop's
    left/top/right/bottom edge, distance of its centroid from the crop centre in crop sides).
    A small dilation first joins limbs to their body.
    """
    import cv2

    mask = (np.asarray(estimate.part_labels[row]) > 0).astype(np.uint8)
    size = mask.shape[0]
    if mask.sum() < 0.002 * mask.size:
        return []
    joined = cv2.dilate(mask, np.ones((5, 5), np.uint8), iterations=2)
    n, comp, stats, centroids = cv2.connectedComponentsWithStats(joined, connectivity=8)
    cb = np.asarray(estimate.crop_box[row], dtype=np.float64)
    px = (cb[2] - cb[0]) / size
    py = (cb[3] - cb[1]) / size
    out = []
    for k in np.argsort(-stats[1:, cv2.CC_STAT_AREA]) + 1:
        person = (comp == k) & (mask > 0)
        if not person.any():
            continue
        ys, xs = np.nonzero(person)
        x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
        touches = np.array([x0 <= 1, y0 <= 1, x1 >= size - 1, y1 >= size - 1])
        box = np.array([cb[0] + x0 * px, cb[1] + y0 * py, cb[0] + x1 * px, cb[1] + y1 * py])
        dist = float(np.linalg.norm(centroids[k] - size / 2) / size)
        out.append((box, float(person.mean()), touches, dist))
    return out


def person_mask_box(estimate, row: int = 0) -> tuple[np.ndarray | None, float, np.ndarray]:
    """Box (xyxy image px) of the main person in a crop's part segmentation.

    Returns (box or None, mask fraction of the crop, touches (4,) bool: mask reaches the
    crop's left/top/right/bottom edge). The big component nearest the crop centre is the
    person; others are bystanders.
    """
    comps = _mask_components(estimate, row)
    if not comps:
        return None, 0.0, np.zeros(4, bool)
    biggest = max(c[1] for c in comps)
    box, frac, touches, _ = max(comps, key=lambda c: c[1] / biggest - c[3])
    return box, frac, touches


def crop_evidence(estimate, row: int, box: np.ndarray) -> float:
    """How much the network's own output supports a person in `box`, in [0,1].

    Two cues, multiplied: segmentation coverage (a person fills roughly half of a tight box;
    an empty box gets 0) and joint agreement (the projected body joints fall inside the box and
    span a good part of it).
    """
    box = np.asarray(box, dtype=np.float64).reshape(4)
    w, h = box[2] - box[0], box[3] - box[1]
    if w <= 1 or h <= 1:
        return 0.0
    cb = np.asarray(estimate.crop_box[row], dtype=np.float64)
    labels = np.asarray(estimate.part_labels[row])
    size = labels.shape[0]
    sx = size / max(cb[2] - cb[0], 1e-6)
    sy = size / max(cb[3] - cb[1], 1e-6)
    c0 = np.clip(np.floor([(box[0] - cb[0]) * sx, (box[1] - cb[1]) * sy]), 0, size).astype(int)
    c1 = np.clip(np.ceil([(box[2] - cb[0]) * sx, (box[3] - cb[1]) * sy]), 0, size).astype(int)
    region = labels[c0[1]:c1[1], c0[0]:c1[0]]
    coverage = float((region > 0).mean()) if region.size else 0.0
    coverage_score = min(1.0, coverage / 0.3)
    joints = np.asarray(estimate.joints2d[row], dtype=np.float64)[BODY_JOINTS]
    size = getattr(estimate, "image_size", None)
    if size is not None:  # joints beyond the frame (legs of a close-up) cannot be judged
        iw, ih = np.asarray(size[row], dtype=np.float64)
        visible = np.all((joints >= 0) & (joints <= [iw, ih]), axis=1)
        if not visible.any():
            return 0.0
        joints = joints[visible]
    margin = 0.1 * np.array([w, h])
    inside = np.all((joints >= box[:2] - margin) & (joints <= box[2:] + margin), axis=1).mean()
    span = (joints.max(0) - joints.min(0)) / np.array([w, h])
    spread = float(np.clip(span.max() / 0.6, 0.0, 1.0))
    return float(np.sqrt(coverage_score * inside * spread))


# --- finders -------------------------------------------------------------------------------


class ManualBoxFinder:
    """The user's own box (xyxy px), every frame; confidence 1 (the user is sure)."""

    def __init__(self, box):
        self.box = np.asarray(box, dtype=np.float64).reshape(4)
        if not (self.box[2] > self.box[0] and self.box[3] > self.box[1]):
            raise FrameError(f"Invalid box {self.box.tolist()}: need x0 < x1 and y0 < y1.")

    def find(self, image: np.ndarray, hints: Sequence[np.ndarray] = ()) -> list[Detection]:
        h, w = image.shape[:2]
        return [Detection(clip_box(self.box, w, h), 1.0, "manual")]


class OpenCVPersonFinder:
    """People proposals from detectors that ship inside OpenCV (no download).

    HOG + linear SVM (Dalal-Triggs) finds upright full bodies; the Haar upper-body and frontal-
    face cascades find close-ups, whose body box is extrapolated by human proportions (head
    top half a face above the face box, body ~3.5 face widths wide and ~7.5 face heights tall;
    an upper-body box is the top ~third of the body), clipped to the frame. Confidence: SVM
    margin for HOG, number of merged neighbour hits for the cascades.
    max_side: images are downscaled to this longer side first (speed). A frame smaller than
    the HOG window is padded to it first: smaller ones crash OpenCV (docs/native-guards.md).
    """

    def __init__(self, use_hog: bool = True, use_faces: bool = True,
                 use_upper_body: bool = True, max_side: int = 640,
                 min_confidence: float = 0.5, hog_min_weight: float = 1.0,
                 face_min_neighbors: int = 6):
        import cv2

        self.max_side = int(max_side)
        self.min_confidence = float(min_confidence)
        self.hog_min_weight = float(hog_min_weight)
        self.face_min_neighbors = int(face_min_neighbors)
        self._hog = None
        self._face = None
        self._upper = None
        if use_upper_body:
            self._upper = _cascade("haarcascade_upperbody.xml")
        if use_hog:
            self._hog = cv2.HOGDescriptor()
            self._hog.setSVMDetector(cv2.HOGDescriptor_getDefaultPeopleDetector())
        if use_faces:
            self._face = _cascade("haarcascade_frontalface_alt2.xml")

    def find(self, image: np.ndarray, hints: Sequence[np.ndarray] = ()) -> list[Detection]:
        import cv2

        image = to_rgb8(image, bgr=False)  # gray, RGBA, 16-bit: the detectors take 8-bit RGB
        h, w = image.shape[:2]
        s = min(1.0, self.max_side / max(h, w))
        small = image if s >= 1.0 else cv2.resize(image, (max(1, round(w * s)),
                                                          max(1, round(h * s))),
                                                   interpolation=cv2.INTER_AREA)
        boxes, scores, sources = [], [], []
        if self._hog is not None:
            rects, weights = self._hog.detectMultiScale(
                pad_to_hog_window(small[:, :, ::-1], self._hog.winSize), winStride=(8, 8),
                padding=(8, 8), scale=1.05)
            for (x, y, bw, bh), wt in zip(np.reshape(rects, (-1, 4)), np.ravel(weights),
                                          strict=True):
                if wt < self.hog_min_weight:
                    continue
                boxes.append(clip_box(np.array([x, y, x + bw, y + bh]) / s, w, h))
                scores.append(float(1.0 - np.exp(-(wt - 0.5))))
                sources.append("hog")
        gray = cv2.equalizeHist(cv2.cvtColor(small, cv2.COLOR_RGB2GRAY))
        if self._upper is not None:
            min_upper = max(24, int(0.1 * min(gray.shape)))
            rects, neighbours = self._upper.detectMultiScale2(
                gray, scaleFactor=1.1, minNeighbors=self.face_min_neighbors,
                minSize=(min_upper, min_upper))
            for (x, y, uw, uh), nb in zip(np.reshape(rects, (-1, 4)), np.ravel(neighbours),
                                          strict=True):
                body = np.array([x, y, x + uw, y + 3.0 * uh]) / s
                boxes.append(clip_box(body, w, h))
                scores.append(float(1.0 - np.exp(-nb / 10.0)))
                sources.append("upper-body")
        if self._face is not None:
            min_face = max(12, int(0.04 * min(gray.shape)))
            rects, neighbours = self._face.detectMultiScale2(
                gray, scaleFactor=1.1, minNeighbors=self.face_min_neighbors,
                minSize=(min_face, min_face))
            for (x, y, fw, fh), nb in zip(np.reshape(rects, (-1, 4)), np.ravel(neighbours),
                                          strict=True):
                fx, fy, fw, fh = x / s, y / s, fw / s, fh / s
                cx = fx + fw / 2
                body = np.array([cx - 1.75 * fw, fy - 0.5 * fh, cx + 1.75 * fw, fy + 7.5 * fh])
                boxes.append(clip_box(body, w, h))
                scores.append(float(1.0 - np.exp(-nb / 10.0)))
                sources.append("face")
        if not boxes:
            return []
        boxes_arr, scores_arr = np.stack(boxes), np.asarray(scores)
        out = []
        for i in nms(boxes_arr, scores_arr, 0.4):
            if scores_arr[i] >= self.min_confidence:
                out.append(Detection(boxes_arr[i], float(scores_arr[i]), sources[i]))
        return out


def pad_to_hog_window(image: np.ndarray, window: tuple[int, int] = (64, 128)) -> np.ndarray:
    """`image` grown at the right and bottom (edge pixels repeated) to at least the HOG
    detection window (width, height), so box coordinates are unchanged.

    OpenCV's HOGDescriptor.detectMultiScale reads outside its buffers when the image is smaller
    than the window: it segfaults or corrupts the heap for the default 64x128 people window
    with an image 96 px tall or less, or 32 px wide or less (opencv-python 4.11; measured in
    docs/native-guards.md). Every pyramid level after the first is at least the window, so
    padding the first level is enough.
    """
    import cv2

    h, w = image.shape[:2]
    win_w, win_h = int(window[0]), int(window[1])
    if h >= win_h and w >= win_w:
        return image
    return cv2.copyMakeBorder(np.ascontiguousarray(image), 0, max(0, win_h - h), 0,
                              max(0, win_w - w), cv2.BORDER_REPLICATE)


def _cascade(name: str):
    import cv2

    path = Path(cv2.data.haarcascades) / name
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise DPoseError(f"OpenCV's cascade {path} is missing or unreadable; reinstall "
                         "opencv-python-headless.")
    return cascade


def decode_yolo(output: np.ndarray, score_threshold: float = 0.4) -> tuple[np.ndarray,
                                                                             np.ndarray]:
    """Person boxes (xyxy, network input px) and scores from a YOLO head output.

    (1,84,N) / (1,N,84): YOLOv8 (cx,cy,w,h + 80 class scores); (1,N,85) / (1,85,N): YOLOv5
    (cx,cy,w,h, objectness, 80 class scores; score = objectness x class). Class 0 = person.
    """
    out = np.asarray(output, dtype=np.float32)
    if out.ndim == 3:
        out = out[0]
    if out.ndim != 2 or not ({84, 85} & set(out.shape)):
        raise DPoseError(f"Unsupported detector output shape {np.shape(output)}: expected a "
                         "YOLOv8 (1,84,N) or YOLOv5 (1,N,85) export with the 80 COCO classes.")
    if out.shape[0] in (84, 85) and out.shape[1] not in (84, 85):
        out = out.T
    if out.shape[1] == 85:
        scores = out[:, 4] * out[:, 5]
    else:
        scores = out[:, 4]
    keep = scores >= score_threshold
    cxcywh = out[keep, :4]
    boxes = np.concatenate([cxcywh[:, :2] - cxcywh[:, 2:] / 2,
                            cxcywh[:, :2] + cxcywh[:, 2:] / 2], axis=1)
    return boxes.astype(np.float64), scores[keep].astype(np.float64)


class OnnxPersonDetector:
    """A user-supplied YOLO ONNX model (letterboxed square input, RGB 0-1), person class only."""

    def __init__(self, model_path: str | Path, score_threshold: float = 0.4,
                 iou_threshold: float = 0.45, providers: Sequence[str] | None = None):
        import onnxruntime as ort

        path = Path(model_path)
        if not path.is_file():
            raise DPoseError(f"Detector model {path} not found; pass a YOLOv5/v8 .onnx export.")
        try:
            self._session = ort.InferenceSession(
                str(path), providers=list(providers or ["CPUExecutionProvider"]))
        except Exception as exc:  # onnxruntime raises its own exception types
            raise DPoseError(f"Cannot load detector {path}: {exc}") from exc
        inp = self._session.get_inputs()[0]
        self._input = inp.name
        size = inp.shape[2] if isinstance(inp.shape[2], int) else 640
        self.input_size = int(size)
        self.score_threshold = float(score_threshold)
        self.iou_threshold = float(iou_threshold)

    def find(self, image: np.ndarray, hints: Sequence[np.ndarray] = ()) -> list[Detection]:
        import cv2

        image = to_rgb8(image, bgr=False)
        h, w = image.shape[:2]
        s = self.input_size / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        canvas = np.full((self.input_size, self.input_size, 3), 114, np.uint8)
        top, left = (self.input_size - nh) // 2, (self.input_size - nw) // 2
        canvas[top:top + nh, left:left + nw] = cv2.resize(image, (nw, nh))
        blob = canvas.transpose(2, 0, 1)[None].astype(np.float32) / 255.0
        output = self._session.run(None, {self._input: blob})[0]
        boxes, scores = decode_yolo(output, self.score_threshold)
        boxes = (boxes - np.array([left, top, left, top])) / s
        return [Detection(clip_box(boxes[i], w, h), float(scores[i]), "onnx")
                for i in nms(boxes, scores, self.iou_threshold)]


class SegmentationFinder:
    """Localise people with the network's own part segmentation (no detector needed).

    Each start box (a hint, a proposal, or the padded full frame) is refined: crop the square
    of side `pad` x the box's longer side, read the person's extent from the part labels, grow
    it where the mask runs into the crop edge, and repeat until successive boxes overlap by
    `stable_iou` (at most `max_iterations` passes). The estimate of the last pass is kept.
    proposals: another finder run on the first frame and every `detect_every` frames (and
    whenever no hint is given) to pick up new people; None = one full-frame start.
    """

    def __init__(self, estimator, proposals: PersonFinder | None = None, detect_every: int = 10,
                 max_iterations: int = 4, stable_iou: float = 0.85, pad: float = 1.2,
                 min_confidence: float = 0.15, max_people: int | None = None,
                 focal_px=None):
        self.estimator = estimator
        self.proposals = proposals
        self.detect_every = max(1, int(detect_every))
        self.max_iterations = int(max_iterations)
        self.stable_iou = float(stable_iou)
        self.pad = float(pad)
        self.min_confidence = float(min_confidence)
        self.max_people = max_people
        self.focal_px = focal_px
        self.forward_passes = 0
        self._calls = 0

    def refine(self, image: np.ndarray, start_box: np.ndarray, source: str = "segmentation",
               max_iterations: int | None = None) -> Detection | None:
        """Iterate crop -> segmentation box from `start_box`; None when no person is seen."""
        h, w = image.shape[:2]
        box = np.asarray(start_box, dtype=np.float64)
        iterations = self.max_iterations if max_iterations is None else max_iterations
        for iteration in range(iterations):
            crop = square_box(box, self.pad)
            est = self.estimator.estimate(image, crop[None], focal_px=self.focal_px)
            self.forward_passes += 1
            found, _, touches = person_mask_box(est, 0)
            if found is None:
                return None
            side = found[2:] - found[:2]
            grow = 0.25 * side.max()
            inside_image = np.array([crop[0] > 0, crop[1] > 0, crop[2] < w, crop[3] < h])
            cut = touches & inside_image  # the person runs out of the crop, not of the frame
            found = found + grow * cut.astype(float) * np.array([-1.0, -1.0, 1.0, 1.0])
            found = clip_box(found, w, h)
            if found[2] - found[0] < 2 or found[3] - found[1] < 2:
                return None
            stable = not cut.any() and box_iou(found[None], box[None])[0, 0] >= self.stable_iou
            if stable or iteration == iterations - 1:
                conf = crop_evidence(est, 0, found)
                if not stable:
                    conf *= 0.5  # did not converge: less sure of the box
                return Detection(found, conf, source, est, 0)
            box = found
        return None

    def people_in_frame(self, image: np.ndarray) -> list[np.ndarray]:
        """Start boxes for everyone visible: one pass over the padded full frame, one box per
        segmented region at least a tenth the size of the largest (without a detector)."""
        h, w = image.shape[:2]
        est = self.estimator.estimate(image, square_box([0, 0, w, h], 1.0)[None],
                                      focal_px=self.focal_px)
        self.forward_passes += 1
        comps = _mask_components(est, 0)
        if not comps:
            return []
        biggest = comps[0][1]
        return [clip_box(c[0], w, h) for c in comps if c[1] >= 0.1 * biggest]

    def find(self, image: np.ndarray, hints: Sequence[np.ndarray] = ()) -> list[Detection]:
        h, w = image.shape[:2]
        starts: list[tuple[np.ndarray, str]] = [(np.asarray(b, float), "track") for b in hints]
        if not starts or self._calls % self.detect_every == 0:
            if self.proposals is not None:
                props = [d.box for d in self.proposals.find(image, [s for s, _ in starts])]
            else:
                props = [] if starts else [np.array([0.0, 0.0, w, h], dtype=np.float64)]
            for box in props:
                full = box[0] <= 0 and box[1] <= 0 and box[2] >= w and box[3] >= h
                if full and not starts:
                    starts.append((box, "full-frame"))
                elif not starts or box_iou(box[None],
                                           np.stack([s for s, _ in starts])).max() < 0.3:
                    starts.append((box, "segmentation"))
        self._calls += 1
        expanded: list[tuple[np.ndarray, str]] = []
        for box, source in starts:
            if source == "full-frame":  # one pass over the frame, one start per person region
                expanded.extend((b, "segmentation") for b in self.people_in_frame(image))
            else:
                expanded.append((box, source))
        found: list[Detection] = []
        for box, source in expanded:
            # A track's predicted box is close already; do not spend passes on a hidden person.
            det = self.refine(image, box, source,
                              min(2, self.max_iterations) if source == "track" else None)
            if det is not None and det.confidence >= self.min_confidence:
                found.append(det)
        if not found:
            return []
        keep = nms(np.stack([d.box for d in found]), np.array([d.confidence for d in found]),
                   0.5)
        result = [found[i] for i in keep]
        return result[: self.max_people] if self.max_people else result


def make_finder(estimator, kind: str = "auto", bbox=None, detector_path=None,
                focal_px=None) -> PersonFinder:
    """The finder for a CLI/panel choice: "auto" (segmentation refinement, OpenCV proposals),
    "segmentation" (full-frame start only), "opencv", "onnx" (detector_path) or a manual box."""
    if bbox is not None:
        return ManualBoxFinder(bbox)
    if kind == "opencv":
        return OpenCVPersonFinder()
    if kind == "onnx":
        if detector_path is None:
            raise DPoseError("The ONNX detector needs a model path (a YOLOv5/v8 export).")
        return OnnxPersonDetector(detector_path)
    if kind == "segmentation":
        return SegmentationFinder(estimator, focal_px=focal_px)
    if kind == "auto":
        return SegmentationFinder(estimator, proposals=_FullFrameAndOpenCV(), focal_px=focal_px)
    raise DPoseError(f"Unknown person finder {kind!r}: use auto, segmentation, opencv or onnx.")


class _FullFrameAndOpenCV:
    """OpenCV proposals, falling back to the whole frame when OpenCV finds nobody."""

    def __init__(self):
        self._opencv = OpenCVPersonFinder()

    def find(self, image: np.ndarray, hints: Sequence[np.ndarray] = ()) -> list[Detection]:
        found = self._opencv.find(image)
        if found or len(hints):
            return found
        h, w = image.shape[:2]
        return [Detection(np.array([0.0, 0.0, w, h]), 0.0, "full-frame")]


__all__ = [
    "Detection", "ManualBoxFinder", "OnnxPersonDetector", "OpenCVPersonFinder",
    "SegmentationFinder", "clip_box", "crop_evidence", "decode_yolo", "make_finder", "nms",
    "pad_to_hog_window", "person_mask_box", "square_box",
]
