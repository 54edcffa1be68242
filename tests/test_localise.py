"""Finding people: segmentation refinement, OpenCV's built-in detectors, YOLO ONNX, manual box."""

from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from dpose_core.errors import DPoseError, FrameError
from dpose_core.localise import (
    ManualBoxFinder,
    OnnxPersonDetector,
    OpenCVPersonFinder,
    SegmentationFinder,
    crop_evidence,
    decode_yolo,
    nms,
    pad_to_hog_window,
)
from dpose_core.preprocess import box_to_center_scale, crop_box
from dpose_core.tracking import box_iou

W, H = 640, 480


def draw_silhouette(mask: np.ndarray, box) -> None:
    """A stick-figure person (head, torso, arms, legs) filling the box (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    cx = (x0 + x1) / 2
    pt = lambda fx, fy: (int(round(x0 + fx * w)), int(round(y0 + fy * h)))  # noqa: E731
    cv2.circle(mask, pt(0.5, 0.07), int(0.07 * h), 1, -1)
    cv2.rectangle(mask, pt(0.3, 0.14), pt(0.7, 0.55), 1, -1)
    thick = max(2, int(0.08 * w))
    cv2.line(mask, pt(0.32, 0.18), pt(0.02, 0.5), 1, thick)  # arms reach the box sides
    cv2.line(mask, pt(0.68, 0.18), pt(0.98, 0.5), 1, thick)
    cv2.line(mask, pt(0.4, 0.55), pt(0.3, 0.99), 1, thick)
    cv2.line(mask, pt(0.6, 0.55), pt(0.7, 0.99), 1, thick)
    del cx


class SilhouetteNetwork:
    """Stand-in for the network: part labels = the drawn silhouette inside the requested crop,
    body joints spread over the silhouette. Crops exactly like the estimator (same helpers)."""

    def __init__(self, boxes):
        self.mask = np.zeros((H, W), np.uint8)
        for b in boxes:
            draw_silhouette(self.mask, b)
        ys, xs = np.nonzero(self.mask)
        if not len(xs):  # nobody drawn
            ys, xs = np.zeros(1, int), np.zeros(1, int)
        pick = np.random.default_rng(0).choice(len(xs), 127)
        self.calls = 0
        self.points = np.stack([xs[pick], ys[pick]], 1).astype(float)
        self.boxes = [np.asarray(b, float) for b in boxes]

    def estimate(self, image, boxes, focal_px=None):
        self.calls += 1
        boxes = np.asarray(boxes, float).reshape(-1, 4)
        labels, crops, joints = [], [], []
        for b in boxes:
            cb = crop_box(*box_to_center_scale(b))
            u = cb[0] + (np.arange(224) + 0.5) * (cb[2] - cb[0]) / 224
            v = cb[1] + (np.arange(224) + 0.5) * (cb[3] - cb[1]) / 224
            ui, vi = np.floor(u).astype(int), np.floor(v).astype(int)
            ok = (ui[None, :] >= 0) & (ui[None, :] < W) & (vi[:, None] >= 0) & (vi[:, None] < H)
            lab = self.mask[np.clip(vi, 0, H - 1)][:, np.clip(ui, 0, W - 1)] * ok
            labels.append((lab * 5).astype(np.uint8))  # some part class
            crops.append(cb)
            # joints of the person whose box centre is nearest this crop's centre
            centre = (cb[:2] + cb[2:]) / 2
            near = min(self.boxes or [cb],
                       key=lambda p: np.linalg.norm((p[:2] + p[2:]) / 2 - centre))
            inside = np.all((self.points >= near[:2]) & (self.points <= near[2:]), axis=1)
            pts = self.points[inside] if inside.any() else self.points
            joints.append(pts[np.arange(127) % len(pts)])
        return SimpleNamespace(part_labels=np.stack(labels), crop_box=np.stack(crops),
                               joints2d=np.stack(joints))


TRUE_BOX = np.array([300.0, 60.0, 400.0, 420.0])


def test_segmentation_converges_from_full_frame():
    net = SilhouetteNetwork([TRUE_BOX])
    finder = SegmentationFinder(net)
    found = finder.find(np.zeros((H, W, 3), np.uint8))
    assert len(found) == 1
    assert box_iou(found[0].box[None], TRUE_BOX[None])[0, 0] > 0.9
    assert found[0].confidence > 0.6 and found[0].estimate is not None
    assert 2 <= net.calls <= finder.max_iterations


def test_segmentation_from_previous_box_is_one_pass_and_grows_cut_boxes():
    net = SilhouetteNetwork([TRUE_BOX])
    finder = SegmentationFinder(net, detect_every=1000)
    image = np.zeros((H, W, 3), np.uint8)
    finder.find(image)  # first call: full-frame start
    net.calls = 0
    found = finder.find(image, hints=[TRUE_BOX + [2, -3, 2, 1]])
    assert len(found) == 1 and net.calls == 1  # a good hint costs one forward pass
    assert box_iou(found[0].box[None], TRUE_BOX[None])[0, 0] > 0.9
    upper_half = np.array([330.0, 60.0, 370.0, 200.0])  # crop cuts the legs off
    det = finder.refine(image, upper_half)
    assert box_iou(det.box[None], TRUE_BOX[None])[0, 0] > 0.85


def test_segmentation_finds_several_people_without_a_detector():
    second = np.array([60.0, 120.0, 130.0, 400.0])
    net = SilhouetteNetwork([TRUE_BOX, second])
    found = SegmentationFinder(net).find(np.zeros((H, W, 3), np.uint8))
    assert len(found) == 2
    for truth in (TRUE_BOX, second):
        assert max(box_iou(d.box[None], truth[None])[0, 0] for d in found) > 0.85


def test_segmentation_empty_frame_finds_nobody():
    net = SilhouetteNetwork([])
    assert SegmentationFinder(net).find(np.zeros((H, W, 3), np.uint8)) == []


def test_evidence_confidence_depends_on_box():
    net = SilhouetteNetwork([TRUE_BOX])
    est = net.estimate(None, TRUE_BOX[None])
    good = crop_evidence(est, 0, TRUE_BOX)
    empty = crop_evidence(est, 0, np.array([10.0, 10.0, 90.0, 300.0]))
    assert good > 0.6 and empty < 0.1


def test_evidence_ignores_joints_beyond_the_frame():
    """A close-up: the legs project below the image; the visible joints still agree."""
    net = SilhouetteNetwork([TRUE_BOX])
    est = net.estimate(None, TRUE_BOX[None])
    est.image_size = np.array([[W, H]], float)
    full = crop_evidence(est, 0, TRUE_BOX)
    est.joints2d[0, ::2, 1] += 2 * H  # half the joints far below the frame
    assert crop_evidence(est, 0, TRUE_BOX) > 0.6 and full > 0.6
    est.joints2d[0, :, 1] += 2 * H  # none visible: no agreement evidence at all
    assert crop_evidence(est, 0, TRUE_BOX) == 0.0


def _rgb_sample(name):
    if name == "astronaut":
        import skimage.data

        return skimage.data.astronaut()
    if name == "coffee":
        import skimage.data

        return skimage.data.coffee()
    from matplotlib import cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        return np.asarray(Image.open(f).convert("RGB"))


@pytest.mark.parametrize("name,person_box", [
    ("astronaut", (20, 15, 365, 512)),  # skimage.data.astronaut(): upper body portrait
    ("grace_hopper", (10, 20, 512, 600)),  # matplotlib sample grace_hopper.jpg
])
def test_opencv_finds_person_in_real_photos(name, person_box):
    image = _rgb_sample(name)
    found = OpenCVPersonFinder().find(image)
    assert found, f"nobody found in {name}"
    best = max(found, key=lambda d: d.confidence)
    assert box_iou(best.box[None], np.array([person_box], float))[0, 0] > 0.5
    assert 0.5 <= best.confidence <= 1.0


def test_opencv_finder_takes_gray_rgba_and_16bit_images():
    rgb = _rgb_sample("astronaut")
    expected = [d.box for d in OpenCVPersonFinder().find(rgb)]
    assert len(expected) == 1
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    variants = [np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]),
                rgb.astype(np.uint16) * 257, gray]
    for image in variants[:2]:  # same pixels once converted: the same box
        np.testing.assert_allclose([d.box for d in OpenCVPersonFinder().find(image)], expected)
    found = OpenCVPersonFinder().find(gray)  # gray loses colour, not the face
    assert len(found) == 1 and box_iou(found[0].box[None], expected[0][None])[0, 0] > 0.8


def test_pad_to_hog_window_keeps_coordinates():
    image = np.arange(96 * 40 * 3, dtype=np.uint32).reshape(96, 40, 3).astype(np.uint8)
    padded = pad_to_hog_window(image)
    assert padded.shape == (128, 64, 3)
    np.testing.assert_array_equal(padded[:96, :40], image)  # the picture stays at the origin
    np.testing.assert_array_equal(padded[96:, :40], np.repeat(image[95:96], 32, axis=0))
    np.testing.assert_array_equal(padded[:96, 40:], np.repeat(image[:, 39:40], 24, axis=1))
    big = np.zeros((128, 64, 3), np.uint8)
    assert pad_to_hog_window(big) is big
    assert pad_to_hog_window(np.zeros((1, 1, 3), np.uint8)).shape == (128, 64, 3)
    assert pad_to_hog_window(np.zeros((300, 20, 3), np.uint8)).shape == (300, 64, 3)


def test_opencv_finds_nobody_in_coffee():
    assert OpenCVPersonFinder().find(_rgb_sample("coffee")) == []


def test_manual_box_is_clipped_and_checked():
    found = ManualBoxFinder([-10, 5, 50, 900]).find(np.zeros((100, 80, 3), np.uint8))
    np.testing.assert_allclose(found[0].box, [0, 5, 50, 100])
    with pytest.raises(FrameError):
        ManualBoxFinder([10, 10, 5, 20])


def test_nms_keeps_best_of_overlaps():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], float)
    np.testing.assert_array_equal(nms(boxes, np.array([0.5, 0.9, 0.3])), [1, 2])


def _yolo_rows(v8: bool):
    """Two persons (one duplicate) and a high-scoring non-person, in 640 input pixels."""
    rows = []
    for cx, cy, w, h, cls, score in [(320, 320, 100, 300, 0, 0.9), (324, 318, 102, 298, 0, 0.8),
                                     (100, 100, 50, 50, 2, 0.95), (500, 300, 80, 200, 0, 0.2)]:
        scores = np.zeros(80)
        scores[cls] = score
        if v8:
            rows.append(np.r_[cx, cy, w, h, scores])
        else:
            rows.append(np.r_[cx, cy, w, h, 1.0, scores])
    return np.array(rows, np.float32)


def test_decode_yolo_v5_and_v8_layouts():
    v8 = _yolo_rows(True).T[None]  # (1, 84, N)
    v5 = _yolo_rows(False)[None]  # (1, N, 85)
    for out in (v8, v5):
        boxes, scores = decode_yolo(out, 0.4)
        assert len(boxes) == 2 and np.allclose(sorted(scores), [0.8, 0.9], atol=1e-6)
        np.testing.assert_allclose(boxes[np.argmax(scores)], [270, 170, 370, 470])
    with pytest.raises(DPoseError, match="YOLO"):
        decode_yolo(np.zeros((1, 10, 7)))


def test_onnx_detector_runs_a_yolo_export(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    const = _yolo_rows(True).T[None]
    # output = constant + 0 * mean(image): a graph with the YOLOv8 input/output layout
    nodes = [
        helper.make_node("ReduceMean", ["images"], ["m"], keepdims=0),
        helper.make_node("Mul", ["m", "zero"], ["z"]),
        helper.make_node("Add", ["const", "z"], ["output0"]),
    ]
    graph = helper.make_graph(
        nodes, "yolo_stub",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 640, 640])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, list(const.shape))],
        [numpy_helper.from_array(const, "const"),
         numpy_helper.from_array(np.zeros((), np.float32), "zero")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "yolo.onnx"
    onnx.save(model, str(path))
    detector = OnnxPersonDetector(path)
    found = detector.find(np.zeros((320, 640, 3), np.uint8))  # letterbox: scale 1, top pad 160
    assert len(found) == 1 and found[0].confidence == pytest.approx(0.9)
    np.testing.assert_allclose(found[0].box, [270, 10, 370, 310])
    with pytest.raises(DPoseError, match="not found"):
        OnnxPersonDetector(tmp_path / "missing.onnx")
