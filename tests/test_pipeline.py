"""The use-case layer: options checked before work, images, videos, the errors each case gets.

Network stand-ins keep this file fast; the real network runs in test_cli.py.
"""

import threading

import cv2
import numpy as np
import pytest

from dpose_core.errors import (
    BodyModelError,
    CheckpointError,
    DPoseError,
    FrameError,
    NonFiniteOutputError,
    NoPersonError,
)
from dpose_core.estimator import Estimate
from dpose_core.localise import Detection, SegmentationFinder
from dpose_core.motion import FLAG_INTERPOLATED
from dpose_core.motion_io import load_motion_npz
from dpose_core.pipeline import (
    NOBODY_WARNING_FRAMES,
    RunOptions,
    estimate_images,
    estimate_video,
    save_tracks,
    select_people,
)
from tests.test_sequence import PixelSegmentationNetwork, write_video

IMAGE_W, IMAGE_H = 40, 30


class BoxNetwork:
    """Estimator stand-in: one Estimate row per box, crop_box = the box as given, cam_t x = x0.

    `nan_on`: calls (0-based) whose output is NaN, as from damaged weights.
    """

    backend, device = "stand-in", "cpu"

    def __init__(self, nan_on=()):
        self.batches: list[int] = []
        self.nan_on = set(nan_on)

    def estimate_batch(self, images, boxes_per_image, focal_px=None):
        boxes = [np.asarray(b, float).reshape(-1, 4) for b in boxes_per_image]
        n = sum(len(b) for b in boxes)
        call = len(self.batches)
        self.batches.append(n)
        box = np.concatenate(boxes) if n else np.zeros((0, 4))
        size = np.concatenate([np.tile([im.shape[1], im.shape[0]], (len(b), 1))
                               for im, b in zip(images, boxes, strict=True)] or [np.zeros((0, 2))])
        cam_t = np.stack([box[:, 0], box[:, 1], np.full(n, 5.0)], axis=1)
        if call in self.nan_on:
            cam_t[:] = np.nan
        rot = np.broadcast_to(np.eye(3), (n, 22, 3, 3)).copy()
        return Estimate(
            rotmats=rot, pose_axis_angle=np.zeros((n, 22, 3)), betas=np.zeros((n, 11)),
            cam_crop=np.zeros((n, 3)), cam_t=cam_t, focal_px=np.full((n, 2), 50.0),
            principal_point=size / 2, joints3d=np.zeros((n, 127, 3)),
            joints2d=np.zeros((n, 127, 2)), depth=np.full((n, 4, 4), 0.5, np.float32),
            part_logits=np.zeros((n, 2, 4, 4), np.float32),
            part_labels=np.ones((n, 4, 4), np.uint8), crop_box=box,
            box_center=(box[:, :2] + box[:, 2:]) / 2, box_scale=np.ones(n), image_size=size,
            image_index=np.concatenate([np.full(len(b), i) for i, b in enumerate(boxes)]
                                       or [np.zeros(0, int)]))

    def estimate(self, image, boxes, focal_px=None):
        return self.estimate_batch([image], [boxes], None if focal_px is None else [focal_px])


def _image(path, value=120):
    cv2.imwrite(str(path), np.full((IMAGE_H, IMAGE_W, 3), value, np.uint8))
    return path


@pytest.fixture
def photos(tmp_path):
    return [_image(tmp_path / "a.png"), _image(tmp_path / "b.png", 60)]


@pytest.fixture
def folder(tmp_path):
    clip = tmp_path / "clip"
    clip.mkdir()
    for k in range(3):
        _image(clip / f"f{k}.png", 40 * k)
    return clip


# --------------------------------------------------------------------------- options
@pytest.mark.parametrize("change, message", [
    ({"person": "tallest"}, "--person must be 'all', 'largest' or a number"),
    ({"person": -1}, "--person must be"),
    ({"bbox": (10, 10, 5, 20)}, "need x0 < x1"),
    ({"bbox": (0, 0, float("nan"), 5)}, "finite"),
    ({"bbox": (1, 2, 3)}, "x0,y0,x1,y1"),
    ({"fov_deg": 200.0}, "--fov must be between 1 and 179"),
    ({"fov_deg": 60.0, "focal_px": 500.0}, "not both"),
    ({"focal_px": -3.0}, "--focal must be a positive"),
    ({"smooth": -1.0}, "--smooth must be 0 (off) or more"),
    ({"batch": 0}, "--batch"),
    ({"stride": 0}, "--stride"),
    ({"start": -2}, "--start"),
    ({"start": 4, "end": 4}, "--end (4) must be a frame number after --start (4)"),
    ({"start": 4}, "--start applies to a video or an image folder, not to image files"),
    ({"device": "tpu"}, "--device must be one of"),
    ({"inputs": []}, "No input given"),
    ({"stride": 2, "smooth": 0.0}, "--stride, --smooth apply to a video or an image folder"),
])
def test_bad_options_are_refused_with_one_line(photos, change, message):
    options = RunOptions(**{"inputs": photos, **change})
    with pytest.raises(DPoseError) as info:
        options.validate(estimator=BoxNetwork())
    assert message in str(info.value) and "\n" not in str(info.value)


def test_video_options_are_checked_against_the_source(folder, photos):
    with pytest.raises(DPoseError, match="one --bbox"):
        RunOptions(inputs=[folder], bbox=[(0, 0, 5, 5), (1, 1, 6, 6)]).validate(estimator=1)
    with pytest.raises(FrameError, match=r"--start 5 is past the end of .*clip: it has 3 "
                                         r"frame\(s\), numbered 0 to 2"):
        RunOptions(inputs=[folder], start=5).validate(estimator=1)
    with pytest.raises(FrameError, match="one video or image folder at a time"):
        RunOptions(inputs=[folder, photos[0]]).validate(estimator=1)
    with pytest.raises(FrameError, match="does not exist"):
        RunOptions(inputs=[folder / "missing.png"]).validate(estimator=1)


def test_outputs_aimed_at_inputs_or_each_other_are_refused(folder, photos, tmp_path):
    with pytest.raises(DPoseError, match="is an input of this run"):
        RunOptions(inputs=photos, outputs=[photos[1]]).validate(estimator=1)
    with pytest.raises(DPoseError, match="is an input of this run"):  # a frame of the folder
        RunOptions(inputs=[folder], outputs=[folder / "f1.png"]).validate(estimator=1)
    with pytest.raises(DPoseError, match="given twice"):
        RunOptions(inputs=photos, outputs=[tmp_path / "o.npz", tmp_path / "x" / ".." / "o.npz"]
                   ).validate(estimator=1)
    with pytest.raises(DPoseError, match="it is a folder"):
        RunOptions(inputs=photos, outputs=[folder]).validate(estimator=1)
    options = RunOptions(inputs=photos, outputs=[tmp_path / "o.json"]).validate(estimator=1)
    assert options.outputs == [tmp_path / "o.json"] and options.person == "all"


def test_checkpoint_and_body_model_are_checked_up_front(photos, tmp_path, checkpoint_path):
    with pytest.raises(CheckpointError, match="No D-PoSE checkpoint"):
        RunOptions(inputs=photos, checkpoint=tmp_path / "none.ckpt").validate()
    not_a_model = tmp_path / "SMPLX_NEUTRAL.npz"
    not_a_model.write_text("not an npz")
    with pytest.raises(BodyModelError):
        RunOptions(inputs=photos, checkpoint=checkpoint_path, body_model=not_a_model).validate()


def test_changing_an_option_needs_validating_again(photos):
    options = RunOptions(inputs=photos).validate(estimator=1)
    assert options._valid
    options.person = "nobody"
    assert not options._valid
    with pytest.raises(DPoseError, match="--person"):
        estimate_images(options, estimator=BoxNetwork())


# --------------------------------------------------------------------------- images
class FoundPeople:
    """Finder stand-in: people found by a segmentation pass, whose estimates it keeps."""

    def __init__(self, net, boxes, with_estimate=True):
        self.net, self.boxes, self.with_estimate = net, boxes, with_estimate

    def find(self, image, hints=()):
        out = []
        for box in self.boxes:
            est = self.net.estimate(image, [box]) if self.with_estimate else None
            out.append(Detection(np.asarray(box, float), 0.8, "segmentation", est, 0))
        return out


def test_images_reuse_the_finders_network_pass(photos):
    net = BoxNetwork()
    finder = FoundPeople(net, [(2, 2, 30, 28), (5, 1, 12, 9)])
    result = estimate_images(RunOptions(inputs=photos), estimator=net, finder=finder)
    assert net.batches == [1, 1, 1, 1]  # the finder's passes only: nothing run again
    assert len(result) == 4 and result.sources == ["segmentation"] * 4
    np.testing.assert_array_equal(result.estimate.image_index, [0, 0, 1, 1])
    np.testing.assert_array_equal(result.estimate.crop_box[0], [2, 2, 30, 28])  # largest first
    np.testing.assert_array_equal(result.rows_of_image(1), [2, 3])
    # boxes the finder did not run the network on are estimated once, together
    net = BoxNetwork()
    estimate_images(RunOptions(inputs=photos), estimator=net,
                    finder=FoundPeople(net, [(2, 2, 30, 28)], with_estimate=False))
    assert net.batches == [2]


def test_nobody_found_uses_the_whole_image(photos):
    net = BoxNetwork()
    result = estimate_images(RunOptions(inputs=photos[:1]), estimator=net,
                             finder=FoundPeople(net, []))
    np.testing.assert_array_equal(result.boxes, [[0, 0, IMAGE_W, IMAGE_H]])
    assert result.sources == ["full-frame"] and result.confidence.tolist() == [0.0]


def test_person_largest_index_and_a_box_partly_outside(photos):
    boxes = [(-80, -40, 20, 25), (5, 5, 15, 15)]  # the first reaches left of and above the image
    largest = estimate_images(RunOptions(inputs=photos[:1], bbox=boxes, person="largest"),
                              estimator=BoxNetwork())
    np.testing.assert_array_equal(largest.estimate.crop_box, [boxes[0]])  # used as given
    second = estimate_images(RunOptions(inputs=photos[:1], bbox=boxes, person=1),
                             estimator=BoxNetwork())
    np.testing.assert_array_equal(second.boxes, [boxes[1]])
    with pytest.raises(NoPersonError, match="person 2 was asked for, but 2 person"):
        estimate_images(RunOptions(inputs=photos[:1], bbox=boxes, person=2),
                        estimator=BoxNetwork())
    with pytest.raises(FrameError, match="lies outside the 40x30 image"):
        estimate_images(RunOptions(inputs=photos[:1], bbox=(50, 0, 60, 10)),
                        estimator=BoxNetwork())
    np.testing.assert_array_equal(select_people(np.array(boxes), "all"), [0, 1])


def test_unreadable_images_are_skipped_and_reported_once(photos, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG cut short")
    notes = []
    result = estimate_images(RunOptions(inputs=[broken, *photos], bbox=(0, 0, 10, 10)),
                             estimator=BoxNetwork(), warn=notes.append)
    assert [s.path for s in result.skipped] == [broken]
    assert len(notes) == 1 and notes[0].startswith("skipped: ") and "broken.png" in notes[0]
    np.testing.assert_array_equal(result.estimate.image_index, [1, 2])
    with pytest.raises(FrameError, match="None of the 2 images could be used"):
        estimate_images(RunOptions(inputs=[broken, broken], bbox=(0, 0, 10, 10)),
                        estimator=BoxNetwork(), warn=notes.append)


def test_non_finite_network_output_is_an_error_for_images(photos):
    with pytest.raises(NonFiniteOutputError, match="non-finite numbers"):
        estimate_images(RunOptions(inputs=photos, bbox=(0, 0, 10, 10)),
                        estimator=BoxNetwork(nan_on=[0]))


def test_cancel_stops_an_image_run(photos):
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DPoseError, match="Cancelled"):
        estimate_images(RunOptions(inputs=photos), estimator=BoxNetwork(), cancel=cancel)


# --------------------------------------------------------------------------- video
def test_stride_gives_the_rate_of_the_rows_written(tmp_path):
    clip = tmp_path / "walk.avi"
    write_video(clip, 8, fps=25.0)
    net = PixelSegmentationNetwork()
    options = RunOptions(inputs=[clip], stride=2, bbox=(20, 20, 200, 230), smooth=0.0)
    result = estimate_video(options, estimator=net)
    motion = result.tracks[0]
    np.testing.assert_array_equal(motion.frame_indices, [0, 2, 4, 6])
    assert result.fps == 25.0 and result.rows_fps == 12.5
    path = save_tracks(result, tmp_path / "motion.npz")[0]
    with np.load(path) as npz:
        assert float(npz["mocap_frame_rate"]) == 12.5
    back = load_motion_npz(path)
    assert back.fps == 25.0 and back.frame_times().tolist() == [0.0, 0.08, 0.16, 0.24]


def test_a_box_keeps_even_a_two_frame_track(folder):
    net = PixelSegmentationNetwork()
    result = estimate_video(RunOptions(inputs=[folder], end=2, bbox=(-5, -5, 30, 20)),
                            estimator=net)
    assert list(result.tracks) == [0] and len(result.tracks[0]) == 2
    np.testing.assert_array_equal(result.tracks[0].boxes[0], [-5, -5, 30, 20])  # as given
    assert result.fps == 30.0  # image folders: DEFAULT_FOLDER_FPS


def test_a_box_outside_the_frames_fails_before_any_frame(folder):
    frames = []
    with pytest.raises(FrameError, match="lies outside the 40x30 frames"):
        estimate_video(RunOptions(inputs=[folder], bbox=(100, 100, 200, 200)),
                       estimator=PixelSegmentationNetwork(), on_frame=frames.append)
    assert frames == []


def test_tracks_ids_and_maps_only_when_asked(tmp_path):
    clip = tmp_path / "walk.avi"
    write_video(clip, 5, people=(0, 1))
    net = EstimateNetwork()
    seen = []

    def run(keep_maps):
        return estimate_video(RunOptions(inputs=[clip]), estimator=net, keep_maps=keep_maps,
                              finder=SegmentationFinder(net), on_frame=seen.append)

    plain = run(False)
    assert sorted(plain.tracks) == [0, 1] and plain.maps == {}
    assert sorted(plain.tracker_ids) == [0, 1]
    assert all(p.estimate is None for frame in seen for p in frame.people)
    kept = run(True)
    for track, entries in kept.maps.items():
        assert [f for f, _ in entries] == kept.tracks[track].frame_indices.tolist()
        est = entries[0][1]
        assert est.depth.shape == (1, 224, 224) and est.part_logits.size == 0
        x0, _, x1, _ = kept.tracks[track].boxes[0]  # this track's person, not the other one
        assert x0 < (est.crop_box[0, 0] + est.crop_box[0, 2]) / 2 < x1
    assert sorted(kept.maps) == [0, 1]
    reduced = run(lambda estimate, row: int(estimate.part_labels[row].sum()))
    assert all(isinstance(v, int) and v > 0 for _, v in reduced.maps[0])


class EstimateNetwork(PixelSegmentationNetwork):
    """The pixel stand-in, answering with real Estimates (as the Estimator does)."""

    def estimate(self, image, boxes, focal_px=None):
        out = super().estimate(image, boxes, focal_px)
        n = len(out.crop_box)
        fields = {"pose_axis_angle": np.zeros((n, 22, 3)), "cam_crop": np.zeros((n, 3)),
                  "joints3d": np.zeros((n, 127, 3)),
                  "part_logits": np.zeros((n, 23, 224, 224), np.float32),
                  "box_center": np.zeros((n, 2)), "box_scale": np.ones(n),
                  "image_index": np.zeros(n, int)}
        return Estimate(**vars(out), **fields)


class NobodyFinder:
    def find(self, image, hints=()):
        return []


def test_nobody_in_the_first_frames_is_said_at_once(tmp_path):
    clip = tmp_path / "empty"
    clip.mkdir()
    image = np.zeros((8, 8, 3), np.uint8)
    for k in range(NOBODY_WARNING_FRAMES + 2):
        cv2.imwrite(str(clip / f"f{k:04d}.png"), image)
    seen, notes = [], []
    with pytest.raises(NoPersonError, match=r"Nobody was found in .*empty \(102 frames\); pass "
                                            r"--bbox x0,y0,x1,y1"):
        estimate_video(RunOptions(inputs=[clip]), estimator=BoxNetwork(), finder=NobodyFinder(),
                       on_frame=seen.append,
                       warn=lambda text: notes.append((len(seen), text)))
    assert len(notes) == 1
    at, text = notes[0]
    assert at == NOBODY_WARNING_FRAMES - 1  # said while frame 100 was being reported
    assert text.startswith("Nobody found in the first 100 frames") and "--bbox" in text


def test_a_folder_of_unreadable_images_says_so(tmp_path):
    clip = tmp_path / "broken"
    clip.mkdir()
    for k in range(3):
        (clip / f"f{k}.png").write_bytes(b"not a png")
    notes = []
    with pytest.raises(FrameError, match="None of the 3 frames of .*broken could be read"):
        estimate_video(RunOptions(inputs=[clip], bbox=(0, 0, 5, 5)), estimator=BoxNetwork(),
                       warn=notes.append)
    assert len(notes) == 3 and all(n.startswith("skipped: ") for n in notes)
    with pytest.raises(FrameError, match="None of the 3 frames"):  # not "no track 1"
        estimate_video(RunOptions(inputs=[clip], bbox=(0, 0, 5, 5), person=1),
                       estimator=BoxNetwork())


def test_a_track_number_that_does_not_exist(folder):
    with pytest.raises(NoPersonError, match=r"Track 4 does not exist: 1 person track\(s\) were "
                                            r"found \(numbered 0 to 0\)"):
        estimate_video(RunOptions(inputs=[folder], bbox=(0, 0, 20, 20), person=4),
                       estimator=BoxNetwork())
    only = estimate_video(RunOptions(inputs=[folder], bbox=(0, 0, 20, 20), person=0),
                          estimator=BoxNetwork())
    assert list(only.tracks) == [0]


def test_non_finite_frames_are_flagged_and_all_non_finite_is_an_error(folder):
    net = BoxNetwork(nan_on=[1])
    notes = []
    result = estimate_video(RunOptions(inputs=[folder], bbox=(0, 0, 20, 20)), estimator=net,
                            warn=notes.append)
    motion = result.tracks[0]
    assert [f.index for f in result.failures] == [1] and "non-finite" in notes[0]
    assert motion.flags[1] & FLAG_INTERPOLATED and np.all(np.isfinite(motion.transl))
    with pytest.raises(NonFiniteOutputError, match="on 3 of 3 frames"):
        estimate_video(RunOptions(inputs=[folder], bbox=(0, 0, 20, 20)),
                       estimator=BoxNetwork(nan_on=[0, 1, 2]))


def test_person_largest_keeps_the_biggest_track(tmp_path):
    clip = tmp_path / "two.avi"
    write_video(clip, 5, people=(0, 1))
    net = PixelSegmentationNetwork()
    result = estimate_video(RunOptions(inputs=[clip], person="largest"), estimator=net,
                            finder=SegmentationFinder(net))
    assert len(result.tracks) == 1
    (track,) = result.tracks
    areas = {t: np.median(np.prod(m.boxes[:, 2:] - m.boxes[:, :2], axis=1))
             for t, m in estimate_video(RunOptions(inputs=[clip]), estimator=net,
                                        finder=SegmentationFinder(net)).tracks.items()}
    assert track == max(areas, key=areas.get)


def test_cancel_returns_the_frames_done_and_progress_counts_them(folder):
    cancel = threading.Event()
    ticks = []

    def progress(done, total):
        ticks.append((done, total))
        if done == 2:
            cancel.set()

    result = estimate_video(RunOptions(inputs=[folder], bbox=(0, 0, 20, 20), smooth=0.0),
                            estimator=BoxNetwork(), progress=progress, cancel=cancel)
    assert result.cancelled and result.frames_processed == 2 and ticks == [(1, 3), (2, 3)]
    np.testing.assert_array_equal(result.tracks[0].frame_indices, [0, 1])
