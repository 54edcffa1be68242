"""The numpy crop/resize must equal the reference's skimage-based preprocessing."""

import numpy as np
import pytest

from dpose_core import preprocess
from dpose_core.constants import IMAGENET_MEAN, IMAGENET_STD
from dpose_core.errors import FrameError

skimage_transform = pytest.importorskip("skimage.transform")
skimage_data = pytest.importorskip("skimage.data")


def _reference_crop(img: np.ndarray, center, scale: float, res: int = 224) -> np.ndarray:
    """The reference demo's crop, written from docs/preprocessing.md with skimage's resize."""
    h = 200 * scale
    t = np.array(
        [
            [res / h, 0, res * (-center[0] / h + 0.5)],
            [0, res / h, res * (-center[1] / h + 0.5)],
            [0, 0, 1.0],
        ]
    )
    inv = np.linalg.inv(t)
    ul = (inv @ np.array([0.0, 0.0, 1.0]))[:2].astype(int)
    br = (inv @ np.array([float(res), float(res), 1.0]))[:2].astype(int)
    new = np.zeros((br[1] - ul[1], br[0] - ul[0], 3))
    nx = max(0, -ul[0]), min(br[0], img.shape[1]) - ul[0]
    ny = max(0, -ul[1]), min(br[1], img.shape[0]) - ul[1]
    ox = max(0, ul[0]), min(img.shape[1], br[0])
    oy = max(0, ul[1]), min(img.shape[0], br[1])
    new[ny[0] : ny[1], nx[0] : nx[1]] = img[oy[0] : oy[1], ox[0] : ox[1]]
    return skimage_transform.resize(new, (res, res))


def test_box_to_center_scale_uses_longer_side_without_padding():
    centre, scale = preprocess.box_to_center_scale([10, 20, 110, 420])
    np.testing.assert_allclose(centre, [60, 220])
    assert scale == pytest.approx(400 / 200)
    centre, scale = preprocess.box_to_center_scale([0, 0, 300, 100])
    assert scale == pytest.approx(1.5)
    with pytest.raises(FrameError):
        preprocess.box_to_center_scale([10, 10, 5, 20])


@pytest.mark.parametrize("size", [(500, 300), (1000, 997), (224, 224), (50, 51), (7, 3), (2, 300)])
def test_resize_equals_skimage(size):
    region = np.random.default_rng(1).uniform(0, 255, (*size, 3))
    ours = preprocess._resize(region, 224)
    np.testing.assert_allclose(ours, skimage_transform.resize(region, (224, 224)), atol=1e-6)


_BOXES = [
    (100.3, 50.7, 300.2, 420.9),  # downsample, inside the image
    (-80.0, 30.0, 200.0, 600.0),  # hangs off the left and bottom
    (400.5, 400.5, 600.0, 520.0),  # hangs off the right/bottom corner
    (200.0, 200.0, 260.0, 240.0),  # small: upsampling
    (10.0, 20.0, 110.0, 220.0),  # integer corners: c - h/2 exactly integral
    (250.0, 250.0, 253.0, 252.0),  # tiny box
]


@pytest.mark.parametrize("box", _BOXES)
def test_crop_equals_reference_on_real_image(box):
    image = skimage_data.astronaut()
    centre, scale = preprocess.box_to_center_scale(box)
    ours = preprocess.crop_image(image, centre, scale)
    assert ours.dtype == np.float32 and ours.shape == (224, 224, 3)
    np.testing.assert_allclose(ours, _reference_crop(image, centre, scale), atol=1e-3)


def test_crop_equals_reference_on_random_images():
    rng = np.random.default_rng(2)
    for _ in range(5):
        h, w = rng.integers(40, 700, size=2)
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)  # centre inside, box may hang off
        bw, bh = rng.uniform(3, w), rng.uniform(3, h)
        box = (cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2)
        centre, scale = preprocess.box_to_center_scale(box)
        ours = preprocess.crop_image(image, centre, scale)
        np.testing.assert_allclose(ours, _reference_crop(image, centre, scale), atol=1e-3)


def test_crop_box_is_the_truncated_square():
    centre, scale = np.array([100.6, 80.2]), 0.5
    box = preprocess.crop_box(centre, scale)
    np.testing.assert_array_equal(box, [50, 30, 150, 130])  # trunc(c -/+ 50)
    box = preprocess.crop_box(np.array([-20.5, 10.2]), 1.0)
    np.testing.assert_array_equal(box, [-120, -89, 79, 110])  # truncation is toward zero


def test_box_fully_outside_gives_black_crop():
    image = np.full((100, 100, 3), 200, dtype=np.uint8)
    crop = preprocess.crop_image(image, np.array([500.0, 500.0]), 0.5)
    assert crop.max() == 0.0


def test_normalize_crops_layout_and_values():
    crops = np.random.default_rng(3).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)
    out = preprocess.normalize_crops(crops)
    assert out.shape == (2, 3, 224, 224) and out.dtype == np.float32
    expected = (crops[1, 5, 7, 2] / 255 - IMAGENET_MEAN[2]) / IMAGENET_STD[2]
    assert out[1, 2, 5, 7] == pytest.approx(expected, rel=1e-5)
    assert preprocess.normalize_crops(crops[0]).shape == (1, 3, 224, 224)


def test_prepare_crops_ignores_score_column_and_accepts_no_boxes():
    image = skimage_data.astronaut()
    crops, centres, scales = preprocess.prepare_crops(image, [[100, 50, 300, 420, 0.93]])
    centre, scale = preprocess.box_to_center_scale([100, 50, 300, 420])
    np.testing.assert_allclose(centres[0], centre)
    np.testing.assert_array_equal(crops[0], preprocess.crop_image(image, centre, scale))
    crops, centres, scales = preprocess.prepare_crops(image, [])
    assert crops.shape == (0, 224, 224, 3) and centres.shape == (0, 2) and scales.shape == (0,)
    with pytest.raises(FrameError):
        preprocess.prepare_crops(image, [[1, 2, 3]])


def test_huge_box_costs_no_more_than_the_image():
    """A box far larger than the image (a typo in --bbox) must not allocate its whole area
    (100000² px × 3 × float64 = 224 GiB) and still gives the reference's crop."""
    import tracemalloc

    image = np.full((240, 320, 3), 200, dtype=np.uint8)
    centre, scale = preprocess.box_to_center_scale((0.0, 0.0, 100000.0, 100000.0))
    tracemalloc.start()
    crop = preprocess.crop_image(image, centre, scale)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 500e6
    # The image lands in the top-left 224/100000 of the crop: a faint dot, the rest black.
    assert crop[0, 0].max() > 0 and crop[4:].max() == 0 and crop[:, 4:].max() == 0
    small = preprocess.box_to_center_scale((-300.0, -200.0, 900.0, 700.0))
    np.testing.assert_allclose(
        preprocess.crop_image(image, *small), _reference_crop(image, *small), atol=1e-3
    )


def _grace_hopper() -> np.ndarray:
    from matplotlib import cbook
    from matplotlib.image import imread

    with cbook.get_sample_data("grace_hopper.jpg") as fh:
        return np.ascontiguousarray(imread(fh, format="jpg")[:, :, :3])


# (x0, y0, x1, y1) as fractions of the image side: inside, partly outside on every side,
# a corner, tiny (upsampled ~100x), and boxes several times the image (mostly zero fill).
_FAST_BOXES = [
    (0.2, 0.1, 0.6, 0.9), (0.0, 0.0, 1.0, 1.0), (-0.3, 0.2, 0.4, 0.8), (0.7, -0.2, 1.3, 0.5),
    (0.5, 0.6, 0.9, 1.4), (-0.2, -0.2, 0.3, 0.3), (0.8, 0.8, 1.6, 1.7), (0.45, 0.5, 0.455, 0.504),
    (0.3, 0.3, 0.31, 0.33), (-1.5, -1.0, 2.5, 2.0), (-40.0, -40.0, 60.0, 60.0),
]


@pytest.mark.parametrize("photo", ["astronaut", "grace_hopper"])
@pytest.mark.parametrize("box", _FAST_BOXES)
def test_fast_crop_matches_exact_path_on_real_photos(photo, box):
    """The network input of the fast path stays within 1e-3 (0-255) of the exact resize."""
    image = skimage_data.astronaut() if photo == "astronaut" else _grace_hopper()
    h, w = image.shape[:2]
    px = np.array(box) * [w, h, w, h] + [0.37, 0.61, 0.37, 0.61]  # off the integer grid
    centre, scale = preprocess.box_to_center_scale(px)
    fast = preprocess.crop_image(image, centre, scale)
    exact = preprocess.crop_image_exact(image, centre, scale)
    assert fast.dtype == np.float32 and fast.shape == (224, 224, 3)
    np.testing.assert_allclose(fast, exact, atol=1e-3, rtol=0)
    assert exact.max() > 0  # every box reaches some of the photo


def test_fast_crop_matches_exact_path_at_many_scales():
    """Boxes from 2 px to 8x the photo, centres inside and outside: one draw of 300."""
    image = skimage_data.astronaut()
    rng = np.random.default_rng(5)
    worst = 0.0
    for _ in range(300):
        cx, cy = rng.uniform(-100, 612, size=2)
        side = float(np.exp(rng.uniform(np.log(2.0), np.log(4000.0))))
        aspect = rng.uniform(0.3, 3.0)
        box = (cx - side / 2, cy - side * aspect / 2, cx + side / 2, cy + side * aspect / 2)
        centre, scale = preprocess.box_to_center_scale(box)
        diff = np.abs(preprocess.crop_image(image, centre, scale)
                      - preprocess.crop_image_exact(image, centre, scale)).max()
        worst = max(worst, float(diff))
    assert worst <= 1e-3


def test_fast_crop_equals_skimage_on_the_network_input_scale():
    """Normalised as the network sees it, fast and skimage crops differ by < 1e-3 / 255 / std."""
    image = _grace_hopper()
    centre, scale = preprocess.box_to_center_scale((120.3, 40.2, 420.8, 560.1))
    ours = preprocess.normalize_crops(preprocess.crop_image(image, centre, scale))
    reference = preprocess.normalize_crops(_reference_crop(image, centre, scale))
    assert np.abs(ours - reference).max() <= 1e-3 / 255 / min(IMAGENET_STD)


def test_normalize_crops_equals_the_plain_formula():
    crops = np.random.default_rng(4).uniform(0, 255, (3, 224, 224, 3)).astype(np.float32)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    expected = ((crops / np.float32(255.0) - mean) / std).transpose(0, 3, 1, 2)
    out = preprocess.normalize_crops(crops)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, expected)


def test_fast_crop_takes_views_and_other_dtypes():
    """A channel-flipped view (BGR -> RGB without a copy) and a float image crop as the exact
    path does; the input is left untouched."""
    bgr = np.ascontiguousarray(skimage_data.astronaut()[:, :, ::-1])
    view = bgr[:, :, ::-1]
    before = bgr.copy()
    centre, scale = preprocess.box_to_center_scale((-30.5, 60.2, 300.1, 500.9))
    np.testing.assert_allclose(preprocess.crop_image(view, centre, scale),
                               preprocess.crop_image_exact(view, centre, scale), atol=1e-3)
    np.testing.assert_array_equal(bgr, before)
    as_float = view.astype(np.float64)
    np.testing.assert_allclose(preprocess.crop_image(as_float, centre, scale),
                               preprocess.crop_image_exact(view, centre, scale), atol=1e-3)


def test_fast_crop_survives_extreme_shapes_in_a_subprocess():
    """OpenCV's filter on 1-pixel images, strips and panoramas, boxes far larger than the image
    along one axis: no native crash, and the exact path's numbers."""
    import subprocess
    import sys
    from pathlib import Path

    code = """
import numpy as np
from dpose_core import preprocess
rng = np.random.default_rng(0)
cases = [((1, 1), (0, 0, 1, 1)), ((1, 1), (-50, -50, 50, 50)), ((2, 2000), (0, 0, 2000, 2)),
         ((2000, 2), (0, 0, 2, 2000)), ((300, 3000), (0, 0, 3000, 300)),
         ((300, 3000), (-10, 100, 3010, 101)), ((64, 128), (60, 30, 61, 31)),
         ((96, 96), (-400, 40, 500, 41))]
worst = 0.0
for (h, w), box in cases:
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    centre, scale = preprocess.box_to_center_scale(box)
    fast = preprocess.crop_image(image, centre, scale)
    exact = preprocess.crop_image_exact(image, centre, scale)
    worst = max(worst, float(np.abs(fast - exact).max()))
print(worst)
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            cwd=Path(__file__).resolve().parents[1], timeout=300)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip()) <= 1e-3
