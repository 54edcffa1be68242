"""Estimator: geometry around the network (per-crop focal, translation, joints, projection),
batching, and honest device reporting."""

import numpy as np
import pytest

from dpose_core import preprocess
from dpose_core.errors import CheckpointError, DPoseError, FrameError
from dpose_core.estimator import Estimate, Estimator
from dpose_core.rotations import axis_angle_to_matrix

IMAGE_A = np.random.default_rng(11).integers(0, 256, (480, 640, 3), dtype=np.uint8)
IMAGE_B = np.random.default_rng(12).integers(0, 256, (300, 200, 3), dtype=np.uint8)
BOX_A = [120.0, 40.0, 330.0, 460.0]
BOX_B = [20.0, 30.0, 180.0, 290.0]


@pytest.fixture(scope="module")
def estimator(checkpoint_path, tmp_path_factory) -> Estimator:
    return Estimator(checkpoint_path, cache_dir=tmp_path_factory.mktemp("cache"), device="cpu")


@pytest.fixture(scope="module")
def batch(estimator) -> Estimate:
    """Two images of different sizes, one person each, in one network batch."""
    return estimator.estimate_batch([IMAGE_A, IMAGE_B], [[BOX_A], [BOX_B]])


def test_backend_and_device_say_what_runs(estimator):
    assert estimator.backend == "onnxruntime"
    assert estimator.device == "CPUExecutionProvider"
    assert estimator.device in estimator._runner.session.get_providers()


def test_estimate_shapes(batch):
    assert len(batch) == 2
    assert batch.rotmats.shape == (2, 22, 3, 3)
    assert batch.pose_axis_angle.shape == (2, 22, 3)
    assert batch.betas.shape == (2, 11)
    assert batch.joints3d.shape == (2, 127, 3) and batch.joints2d.shape == (2, 127, 2)
    assert batch.depth.shape == (2, 224, 224) and batch.part_logits.shape == (2, 23, 224, 224)
    assert batch.part_labels.dtype == np.uint8
    np.testing.assert_array_equal(batch.part_labels, batch.part_logits.argmax(axis=1))
    np.testing.assert_array_equal(batch.image_index, [0, 1])


def test_each_image_gets_its_own_focal_and_principal_point(batch):
    np.testing.assert_allclose(batch.image_size, [[640, 480], [200, 300]])
    np.testing.assert_allclose(batch.focal_px[0], [800.0, 800.0])  # sqrt(640^2 + 480^2)
    np.testing.assert_allclose(batch.focal_px[1], [np.hypot(200, 300)] * 2)
    np.testing.assert_allclose(batch.principal_point, [[320, 240], [100, 150]])
    # tz = 2 f / (s * 200 * scale) with the crop's own focal length (docs/camera.md).
    s = batch.cam_crop[:, 0].astype(np.float64)
    np.testing.assert_allclose(
        batch.cam_t[:, 2], 2 * batch.focal_px[:, 0] / (s * 200 * batch.box_scale), rtol=1e-9
    )


def test_batched_crop_equals_crop_run_alone(estimator, batch):
    alone = estimator.estimate(IMAGE_B, [BOX_B])
    np.testing.assert_allclose(alone.rotmats[0], batch.rotmats[1], atol=1e-4)
    np.testing.assert_allclose(alone.cam_t[0], batch.cam_t[1], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(alone.joints2d[0], batch.joints2d[1], rtol=1e-4, atol=1e-3)
    np.testing.assert_array_equal(alone.image_index, [0])


def test_joints2d_are_the_projection_of_translated_joints3d(batch):
    cam_points = batch.joints3d + batch.cam_t[:, None, :]
    u = batch.focal_px[:, None, 0] * cam_points[..., 0] / cam_points[..., 2]
    v = batch.focal_px[:, None, 1] * cam_points[..., 1] / cam_points[..., 2]
    expected = np.stack([u, v], axis=-1) + batch.principal_point[:, None, :]
    np.testing.assert_allclose(batch.joints2d, expected, rtol=1e-9, atol=1e-6)


def test_joints3d_come_from_the_body_model_untranslated(estimator, batch):
    out = estimator.body_model.forward(
        batch.rotmats.astype(np.float64), batch.betas.astype(np.float64)
    )
    np.testing.assert_allclose(batch.joints3d, out.joints, atol=1e-9)


def test_axis_angle_and_boxes_are_consistent(batch):
    np.testing.assert_allclose(
        axis_angle_to_matrix(batch.pose_axis_angle), batch.rotmats, atol=1e-5
    )
    centre, scale = preprocess.box_to_center_scale(BOX_A)
    np.testing.assert_allclose(batch.box_center[0], centre)
    assert batch.box_scale[0] == pytest.approx(scale)
    np.testing.assert_array_equal(batch.crop_box[0], preprocess.crop_box(centre, scale))


def test_network_is_fed_cliff_bbox_info_with_each_images_own_focal(estimator, monkeypatch):
    """What the network sees, hand-computed (docs/camera.md): all terms divide by the crop's fx."""
    seen = {}

    class Stop(Exception):
        pass

    def capture(crops, info):
        seen["crops"], seen["info"] = crops, info
        raise Stop

    monkeypatch.setattr(estimator, "run_crops", capture)
    with pytest.raises(Stop):
        estimator.estimate_batch([IMAGE_A, IMAGE_B], [[BOX_A], [BOX_B]],
                                 focal_px=[None, (500.0, 400.0)])  # fmt: skip
    # A: 640x480, centre (225, 250), side 420, f = diagonal 800. B: 200x300, centre (100, 160),
    # side 260, fx = 500 (fy is not used).
    expected = [[-95 / 800, 10 / 800, 420 / 800], [0 / 500, 10 / 500, 260 / 500]]
    np.testing.assert_allclose(seen["info"], expected, rtol=1e-12)
    assert seen["crops"].shape == (2, 3, 224, 224)


def test_select_and_dict(batch):
    one = batch.select(1)
    assert len(one) == 1 and one.image_index[0] == 1
    assert "depth" not in batch.to_dict(dense=False)
    assert set(batch.to_dict()) >= {"rotmats", "cam_t", "joints2d", "part_labels"}


def test_no_boxes_gives_empty_estimate_without_running(estimator):
    empty = estimator.estimate(IMAGE_A, np.zeros((0, 4)))
    assert len(empty) == 0 and empty.joints2d.shape == (0, 127, 2)


def test_bad_inputs_raise_typed_errors(estimator):
    with pytest.raises(FrameError):
        estimator.estimate(IMAGE_A.astype(np.float32), [BOX_A])
    with pytest.raises(FrameError):
        estimator.estimate(IMAGE_A, [[10, 10, 5, 5]])
    with pytest.raises(DPoseError):
        estimator.estimate_batch([IMAGE_A], [[BOX_A]], focal_px=[-1.0])
    with pytest.raises(DPoseError):
        Estimator(estimator.checkpoint_path, backend="tensorflow")


def test_missing_checkpoint_says_where_to_put_it(tmp_path):
    with pytest.raises(CheckpointError, match="DPOSE_CHECKPOINT"):
        Estimator(tmp_path / "nope.ckpt")


def test_cuda_request_falls_back_to_cpu_and_says_so(estimator, caplog, monkeypatch):
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    cache = estimator.model_path.parents[1]
    est = Estimator(estimator.checkpoint_path, device="cuda", cache_dir=cache)
    assert est.device == "CPUExecutionProvider"
    assert len(est.notes) == 1 and "CUDA" in est.notes[0] and "CPU" in est.notes[0]
    assert [r.getMessage() for r in caplog.records if "CUDA" in r.getMessage()] == est.notes


def test_torch_backend_cuda_request_falls_back_to_cpu(estimator, monkeypatch):
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    est = Estimator(estimator.checkpoint_path, backend="torch", device="cuda")
    assert est.backend == "torch"
    assert est.device == "cpu"
    assert len(est.notes) == 1 and "torch.cuda.is_available()" in est.notes[0]


def test_runtime_modules_import_without_torch():
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import dpose_core.estimator, dpose_core.cli, dpose_core.onnx_model\n"
        "print(sorted(m for m in sys.modules if m.startswith('dpose_core')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "dpose_core.network" not in result.stdout and "dpose_core.estimator" in result.stdout


def test_a_damaged_model_cache_is_rebuilt_when_the_estimator_opens_it(checkpoint_path, tmp_path):
    """Weights overwritten with NaN used to give NaN results with exit 0 (docs/model-cache.md)."""
    from dpose_core import onnx_model

    first = Estimator(checkpoint_path, cache_dir=tmp_path, device="cpu")
    weights = first.model_path.parent / onnx_model.WEIGHTS_FILE
    good = weights.read_bytes()
    weights.write_bytes(np.full(len(good) // 4, np.nan, dtype=np.float32).tobytes())
    second = Estimator(checkpoint_path, cache_dir=tmp_path, device="cpu")
    assert second.model_path == first.model_path
    assert weights.read_bytes() == good
    estimate = second.estimate(IMAGE_A, [BOX_A])
    assert np.isfinite(estimate.rotmats).all() and np.isfinite(estimate.cam_t).all()


def test_part_labels_equal_numpy_argmax_with_ties_and_nan():
    from dpose_core.estimator import part_labels

    rng = np.random.default_rng(21)
    logits = rng.standard_normal((3, 23, 40, 30)).astype(np.float32)
    logits[1] = np.round(logits[1] * 2) / 2  # many ties: the lower class wins, as in argmax
    logits[1, 7] = logits[1].max(axis=0)  # class 7 ties with the maximum everywhere
    logits[2, 5, 3, 4] = np.nan  # NaN counts as the largest in np.argmax
    logits[2, 0, 9, 9] = np.nan
    labels = part_labels(logits)
    assert labels.dtype == np.uint8 and labels.shape == (3, 40, 30)
    np.testing.assert_array_equal(labels, np.argmax(logits, axis=1))
    assert labels[2, 3, 4] == 5 and labels[2, 9, 9] == 0
    assert part_labels(np.zeros((0, 23, 4, 4), np.float32)).shape == (0, 4, 4)


def test_single_chunk_outputs_are_the_runtime_arrays(estimator):
    """One chunk is handed through without a copy; several are joined in order."""
    x = preprocess.normalize_crops(preprocess.prepare_crops(IMAGE_A, [BOX_A, BOX_A])[0])
    info = np.zeros((2, 3), np.float32)
    one = estimator.run_crops(x, info)
    old = estimator.max_batch
    estimator.max_batch = 1
    try:
        two = estimator.run_crops(x, info)
    finally:
        estimator.max_batch = old
    for name in ("rotmat", "betas", "cam_crop", "depth", "part_logits"):
        assert one[name].shape == two[name].shape and one[name].dtype == np.float32
        np.testing.assert_allclose(one[name], two[name], atol=1e-4)


def test_fast_preprocessing_keeps_outputs_within_parity_of_the_exact_path(estimator,
                                                                         monkeypatch):
    """A real photo, boxes inside, partly outside and tiny: the fast crop changes the outputs
    by less than the entry-point parity (rotations 1e-5, 2D joints 0.5 px)."""
    skimage_data = pytest.importorskip("skimage.data")
    image = skimage_data.astronaut()
    boxes = [[60.3, 10.7, 420.2, 505.9], [-90.0, 100.0, 250.0, 600.0], [200.0, 80.0, 230.0, 120.0]]
    fast = estimator.estimate(image, boxes)
    monkeypatch.setattr(preprocess, "crop_image", preprocess.crop_image_exact)
    exact = estimator.estimate(image, boxes)
    np.testing.assert_allclose(fast.rotmats, exact.rotmats, atol=1e-5, rtol=0)
    np.testing.assert_allclose(fast.joints2d, exact.joints2d, atol=0.5, rtol=0)
    np.testing.assert_allclose(fast.cam_t, exact.cam_t, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(fast.betas, exact.betas, atol=1e-4, rtol=0)
    np.testing.assert_allclose(fast.depth, exact.depth, atol=1e-4, rtol=0)
    np.testing.assert_allclose(fast.part_logits, exact.part_logits, atol=1e-4, rtol=0)
