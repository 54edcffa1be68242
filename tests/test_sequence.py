"""Video/folder to motion: the loop, tracks, failures, cancel, CLI output; one real-network run."""

import threading
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from dpose_core.errors import NoPersonError
from dpose_core.localise import ManualBoxFinder, SegmentationFinder
from dpose_core.motion import FLAG_INTERPOLATED, FLAG_LOW_CONFIDENCE
from dpose_core.motion_io import load_motion_npz
from dpose_core.preprocess import box_to_center_scale, crop_box
from dpose_core.rotations import rotation_about_axis
from dpose_core.sequence import estimate_sequence, track_output_paths
from dpose_core.tracking import box_iou
from tests.test_localise import draw_silhouette

W, H = 320, 240


def person_box(f: int, k: int = 0) -> np.ndarray:
    """Person k at frame f: person 0 walks right, person 1 stands on the right."""
    if k == 0:
        return np.array([40.0 + 4 * f, 40.0, 90.0 + 4 * f, 220.0])
    return np.array([240.0, 30.0, 290.0, 210.0])


def render(f: int, people=(0,)) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    for k in people:
        draw_silhouette(mask, person_box(f, k))
    return np.repeat((mask * 255)[:, :, None], 3, axis=2)


class PixelSegmentationNetwork:
    """Network stand-in with the Estimate fields the sequence engine reads.

    Part labels = bright pixels inside the crop (the drawn silhouettes); joints = bright pixels
    of the crop; rotation 0 turns with the crop's centre x, so motion can be checked.
    """

    def __init__(self):
        self.calls = 0

    def estimate(self, image, boxes, focal_px=None):
        self.calls += 1
        boxes = np.asarray(boxes, float).reshape(-1, 4)
        h, w = image.shape[:2]
        out = {k: [] for k in ("part_labels", "crop_box", "joints2d", "rotmats", "cam_t",
                               "betas", "focal_px", "principal_point", "image_size", "depth")}
        for b in boxes:
            cb = crop_box(*box_to_center_scale(b))
            u = np.floor(cb[0] + (np.arange(224) + 0.5) * (cb[2] - cb[0]) / 224).astype(int)
            v = np.floor(cb[1] + (np.arange(224) + 0.5) * (cb[3] - cb[1]) / 224).astype(int)
            ok = (u[None] >= 0) & (u[None] < w) & (v[:, None] >= 0) & (v[:, None] < h)
            lab = (image[np.clip(v, 0, h - 1)][:, np.clip(u, 0, w - 1), 0] > 128) & ok
            out["part_labels"].append(lab.astype(np.uint8) * 7)
            out["depth"].append(np.where(lab, 0.4, 0.0).astype(np.float32))
            out["crop_box"].append(cb)
            ys, xs = np.nonzero(lab)
            if len(xs) == 0:
                xs, ys = np.array([112]), np.array([112])
            pick = np.linspace(0, len(xs) - 1, 127).astype(int)
            pts = np.stack([u[np.clip(xs[pick], 0, 223)], v[np.clip(ys[pick], 0, 223)]], 1)
            out["joints2d"].append(pts.astype(float))
            rot = np.broadcast_to(np.eye(3), (22, 3, 3)).copy()
            rot[0] = rotation_about_axis("y", (cb[0] + cb[2]) / 2 / w)
            out["rotmats"].append(rot)
            out["cam_t"].append(np.array([(cb[0] + cb[2]) / 2 / w, 0.0, 5.0]))
            out["betas"].append(np.full(11, 0.5))
            out["focal_px"].append(np.full(2, np.hypot(w, h)))
            out["principal_point"].append(np.array([w / 2, h / 2]))
            out["image_size"].append(np.array([w, h], float))
        return SimpleNamespace(**{k: np.stack(v) for k, v in out.items()})


def write_video(path, n: int, people=(0,), fps: float = 25.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (W, H))
    for f in range(n):
        writer.write(render(f, people)[:, :, ::-1])
    writer.release()


def test_video_to_one_motion_with_boxes_and_confidence(tmp_path):
    path = tmp_path / "walk.avi"
    write_video(path, 12)
    net = PixelSegmentationNetwork()
    seen = []
    result = estimate_sequence(path, net, finder=SegmentationFinder(net), on_frame=seen.append)
    assert list(result) == [0] and not result.failures and result.frames_processed == 12
    motion = result[0]
    assert len(motion) == 12 and motion.fps == pytest.approx(25.0)
    np.testing.assert_array_equal(motion.frame_indices, np.arange(12))
    for f in range(12):
        assert box_iou(motion.boxes[f][None], person_box(f)[None])[0, 0] > 0.8
    assert np.all(motion.confidence > 0.5) and not np.any(motion.flags)
    assert motion.rotmats.shape == (12, 55, 3, 3) and motion.betas.shape == (11,)
    assert np.all(np.diff(motion.transl[:, 0]) > 0)  # walks right, smoothed but monotone
    assert [len(r.people) for r in seen] == [1] * 12
    assert net.calls < 12 * 2  # after the first frame, about one pass per frame


def test_two_people_get_two_tracks_and_person_selection(tmp_path):
    path = tmp_path / "two.avi"
    write_video(path, 8, people=(0, 1))
    net = PixelSegmentationNetwork()
    finder = SegmentationFinder(net, proposals=ManualBoxes([person_box(0, 0), person_box(0, 1)]))
    result = estimate_sequence(path, net, finder=finder)
    assert sorted(result) == [0, 1]
    assert result[0].boxes[0, 0] < 150 and result[1].boxes[0, 0] > 200  # ids by first seen
    only = estimate_sequence(path, net, person=1,
                             finder=SegmentationFinder(net, proposals=ManualBoxes(
                                 [person_box(0, 0), person_box(0, 1)])))
    assert list(only) == [1] and only.track_lengths == {0: 8, 1: 8}
    assert sorted(only.tracker_ids) == [0, 1]
    with pytest.raises(NoPersonError, match="Track 5"):
        estimate_sequence(path, net, person=5, finder=ManualBoxFinder(person_box(0, 1)))
    empty = tmp_path / "empty.avi"
    write_video(empty, 3, people=())
    with pytest.raises(NoPersonError, match="Track 0 does not exist: nobody was found in 3"):
        estimate_sequence(empty, net, person=0, finder=SegmentationFinder(net))


class ManualBoxes:
    """Proposal stand-in: fixed boxes (what a detector would return)."""

    def __init__(self, boxes):
        self.boxes = boxes

    def find(self, image, hints=()):
        from dpose_core.localise import Detection

        return [Detection(np.asarray(b, float), 0.9, "test") for b in self.boxes]


def test_corrupt_frame_is_reported_filled_and_flagged(tmp_path):
    for f in range(7):
        cv2.imwrite(str(tmp_path / f"img{f}.png"), render(f)[:, :, ::-1])
    (tmp_path / "img3.png").write_bytes(b"broken")
    net = PixelSegmentationNetwork()
    result = estimate_sequence(tmp_path, net, finder=SegmentationFinder(net), fps=10.0)
    assert [f.index for f in result.failures] == [3] and "img3.png" in result.failures[0].message
    motion = result[0]
    assert len(motion) == 7 and motion.fps == 10.0
    assert motion.flags[3] & FLAG_INTERPOLATED and not np.any(np.delete(motion.flags, 3))
    assert motion.confidence[3] == 0.0
    assert motion.transl[2, 0] < motion.transl[3, 0] < motion.transl[4, 0]


def test_low_confidence_frame_is_replaced_and_flagged(tmp_path):
    for f in range(6):
        image = render(f) if f != 2 else np.zeros((H, W, 3), np.uint8)  # person missing
        cv2.imwrite(str(tmp_path / f"img{f}.png"), image)
    net = PixelSegmentationNetwork()
    result = estimate_sequence(tmp_path, net, finder=ManualBoxFinder([20, 20, 200, 230]))
    motion = result[0]
    assert motion.confidence[2] < 0.3 < motion.confidence[[0, 1, 3, 4, 5]].min()
    assert motion.flags[2] == FLAG_LOW_CONFIDENCE | FLAG_INTERPOLATED
    assert not np.any(np.delete(motion.flags, 2))


def test_cancel_keeps_processed_frames(tmp_path):
    path = tmp_path / "walk.avi"
    write_video(path, 12)
    net = PixelSegmentationNetwork()
    cancel = threading.Event()

    def on_frame(frame):
        if frame.index == 4:
            cancel.set()

    result = estimate_sequence(path, net, finder=SegmentationFinder(net), cancel=cancel,
                               on_frame=on_frame, smooth=0.0)
    assert result.cancelled and result.frames_processed == 5
    assert len(result[0]) == 5


def test_worker_thread_progress_and_failures_not_raised(tmp_path):
    path = tmp_path / "walk.avi"
    write_video(path, 6)

    class FailingOnFrame2(PixelSegmentationNetwork):
        def estimate(self, image, boxes, focal_px=None):
            if self.calls == 2:
                self.calls += 1
                raise RuntimeError("simulated network failure")
            return super().estimate(image, boxes, focal_px)

    net = FailingOnFrame2()
    ticks, out = [], {}
    worker = threading.Thread(target=lambda: out.update(r=estimate_sequence(
        path, net, finder=ManualBoxFinder([20, 20, 200, 230]),
        progress=lambda done, total: ticks.append((done, total)))))
    worker.start()
    worker.join(60)
    result = out["r"]
    assert ticks == [(i, 6) for i in range(1, 7)]
    assert [f.index for f in result.failures] == [2]
    assert "simulated network failure" in result.failures[0].message
    assert len(result[0]) == 6 and result[0].flags[2] & FLAG_INTERPOLATED


def test_pipeline_writes_one_file_per_track(tmp_path):
    """The CLI's path (pipeline.estimate_video + save_tracks) with the network stand-in (the
    real network runs in the next test)."""
    from dpose_core.pipeline import RunOptions, estimate_video, save_tracks

    folder = tmp_path / "frames"
    folder.mkdir()
    for f in range(6):
        cv2.imwrite(str(folder / f"f{f}.png"), render(f, people=(0, 1))[:, :, ::-1])
    net = PixelSegmentationNetwork()
    options = RunOptions(inputs=[folder], outputs=[tmp_path / "motion.npz"], fps=12.0)
    result = estimate_video(options.validate(estimator=net), estimator=net)
    paths = save_tracks(result, tmp_path / "motion.npz")
    assert paths == {0: tmp_path / "motion_track0.npz", 1: tmp_path / "motion_track1.npz"}
    m0 = load_motion_npz(tmp_path / "motion_track0.npz")
    m1 = load_motion_npz(tmp_path / "motion_track1.npz")
    assert len(m0) == len(m1) == 6 and m0.fps == 12.0
    assert m0.boxes[0, 0] < 150 < 200 < m1.boxes[0, 0]  # same frame: left first
    assert not (tmp_path / "motion.npz").exists()


def test_track_output_paths(tmp_path):
    assert track_output_paths(tmp_path / "m.npz", [3]) == {3: tmp_path / "m.npz"}
    assert track_output_paths(tmp_path / "m.npz", [0, 1]) == {
        0: tmp_path / "m_track0.npz", 1: tmp_path / "m_track1.npz"}


def test_cli_on_video_with_the_real_network(tmp_path, checkpoint_path, monkeypatch, capsys):
    """End to end through `dpose estimate VIDEO`: generated 4-frame video -> real Estimator
    (random weights) -> motion.npz with per-frame boxes and confidence."""
    from dpose_core.cli import main

    monkeypatch.setenv("DPOSE_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "clip.avi"
    write_video(path, 4)
    out = tmp_path / "motion.npz"
    status = main(["estimate", str(path), "--checkpoint", str(checkpoint_path), "--device",
                   "cpu", "--bbox", "30,20,130,230", "--smooth", "1.0", "-o", str(out)])
    assert status == 0
    motion = load_motion_npz(out)
    assert len(motion) == 4 and motion.fps == pytest.approx(25.0)
    np.testing.assert_array_equal(motion.frame_indices, np.arange(4))
    assert motion.boxes.shape == (4, 4) and motion.confidence.shape == (4,)
    assert np.all((motion.confidence >= 0) & (motion.confidence <= 1))
    assert np.all(np.isfinite(motion.rotmats)) and np.all(np.isfinite(motion.transl))
    assert "track 0: 4 frames" in capsys.readouterr().out
