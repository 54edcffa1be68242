"""Part-agreement scores inside runs: images, videos, farm chunks and their merge, the report.

The network stand-in returns a known pose and, as its part map, the body's own part masks
rendered for a pose it "saw" (the same pose, or a bent one): its scores are known.
"""

import json
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from dpose_core import preprocess
from dpose_core.body_model import BodyModel
from dpose_core.chunks import read_chunk, write_chunk
from dpose_core.estimator import Estimate
from dpose_core.evidence_report import images_section, tracks_section
from dpose_core.motion import FLAG_INTERPOLATED
from dpose_core.motion_io import load_motion_npz
from dpose_core.part_agreement import render_part_labels, skinned_vertices
from dpose_core.part_labels import body_model_part_classes
from dpose_core.pipeline import (
    RunOptions,
    estimate_images,
    estimate_video,
    merge_video,
    save_tracks,
)
from dpose_core.report import write_report
from dpose_core.rotations import axis_angle_to_matrix
from dpose_core.skeleton import JOINT_NAMES

W, H = 640, 480
FOCAL, CAM_T = 820.0, np.array([0.1, 0.15, 5.0])
J = {name: i for i, name in enumerate(JOINT_NAMES)}


def _pose(elbow_deg: float = 0.0) -> np.ndarray:
    aa = np.zeros((22, 3))
    aa[0] = (np.pi, 0.0, 0.0)  # model y-up -> camera y-down, facing the camera
    aa[J["left_knee"]] = (0.3, 0.0, 0.0)
    aa[J["left_shoulder"]] = (0.0, 0.0, np.radians(elbow_deg))
    aa[J["right_hip"]] = (np.radians(elbow_deg), 0.0, 0.0)
    return axis_angle_to_matrix(aa)


class RenderedBodyNetwork:
    """Estimator stand-in with a body model: pose `solved`, part map of pose `seen`."""

    backend, device = "stand-in", "cpu"

    def __init__(self, body: BodyModel, seen_bend_deg: float = 0.0):
        self.body_model = body
        self.solved, self.seen = _pose(), _pose(seen_bend_deg)
        self.classes = body_model_part_classes(body)

    def person_box(self) -> np.ndarray:
        verts = skinned_vertices(self.body_model, self.solved[None], np.zeros(11), CAM_T[None])[0]
        uv = verts[:, :2] / verts[:, 2:] * FOCAL + [W / 2, H / 2]
        return np.concatenate([uv.min(0) - 10, uv.max(0) + 10])

    def estimate_batch(self, images, boxes_per_image, focal_px=None):
        boxes = [np.asarray(b, float).reshape(-1, 4) for b in boxes_per_image]
        box = np.concatenate(boxes)
        n = len(box)
        crop = np.array([preprocess.crop_box(*preprocess.box_to_center_scale(b)) for b in box])
        focal = np.full((n, 2), FOCAL)
        principal = np.tile([W / 2, H / 2], (n, 1))
        seen = skinned_vertices(self.body_model, np.repeat(self.seen[None], n, 0),
                                np.zeros(11), np.tile(CAM_T, (n, 1)))
        labels = render_part_labels(seen, self.body_model.faces, self.classes, focal, principal,
                                    crop)
        return Estimate(
            rotmats=np.repeat(self.solved[None], n, 0), pose_axis_angle=np.zeros((n, 22, 3)),
            betas=np.zeros((n, 11)), cam_crop=np.zeros((n, 3)), cam_t=np.tile(CAM_T, (n, 1)),
            focal_px=focal, principal_point=principal, joints3d=np.zeros((n, 127, 3)),
            joints2d=np.zeros((n, 127, 2)), depth=np.full((n, 4, 4), 0.5, np.float32),
            part_logits=np.zeros((n, 23, 1, 1), np.float32), part_labels=labels,
            crop_box=crop, box_center=(box[:, :2] + box[:, 2:]) / 2, box_scale=np.ones(n),
            image_size=np.tile([W, H], (n, 1)).astype(float),
            image_index=np.concatenate([np.full(len(b), i) for i, b in enumerate(boxes)]))

    def estimate(self, image, boxes, focal_px=None):
        return self.estimate_batch([image], [boxes])


@pytest.fixture(scope="module")
def body(body_model_npz) -> BodyModel:
    return BodyModel.load(body_model_npz)


@pytest.fixture
def folder(tmp_path):
    """Six frames; frame 3 is unreadable (skipped, then filled and flagged)."""
    clip = tmp_path / "clip"
    clip.mkdir()
    for k in range(6):
        path = clip / f"f{k}.png"
        if k == 3:
            path.write_bytes(b"not a png")
        else:
            cv2.imwrite(str(path), np.full((H, W, 3), 30 * k, np.uint8))
    return clip


def _video(net, folder, frame_maps=None, **options):
    opts = RunOptions(inputs=[folder], bbox=net.person_box(), smooth=0.0, **options)
    return estimate_video(opts, estimator=net, warn=lambda text: None, frame_maps=frame_maps)


def test_a_video_run_scores_every_solved_frame_and_not_the_filled_ones(body, folder, tmp_path):
    motion = _video(RenderedBodyNetwork(body), folder).tracks[0]
    assert motion.part_iou.shape == (6, 23) and motion.silhouette_iou.shape == (6,)
    filled = (motion.flags & FLAG_INTERPOLATED) != 0
    np.testing.assert_array_equal(np.flatnonzero(filled), [3])
    assert np.all(np.isnan(motion.part_iou[3])) and np.isnan(motion.silhouette_iou[3])
    np.testing.assert_allclose(motion.silhouette_iou[~filled], 1.0)
    limbs = motion.part_iou[~filled][:, [3, 13, 20, 5]]  # arms and legs, both sides
    np.testing.assert_allclose(limbs, 1.0)
    path = save_tracks(_video(RenderedBodyNetwork(body), folder), tmp_path / "m.npz")[0]
    with np.load(path) as npz:
        np.testing.assert_array_equal(npz["dpose_part_iou"], motion.part_iou)
        np.testing.assert_array_equal(npz["dpose_silhouette_iou"], motion.silhouette_iou)
    back = load_motion_npz(path)
    np.testing.assert_array_equal(back.silhouette_iou, motion.silhouette_iou)


def test_a_solve_that_disagrees_with_the_part_map_scores_lower(body, folder):
    good = _video(RenderedBodyNetwork(body), folder).tracks[0]
    bent = _video(RenderedBodyNetwork(body, seen_bend_deg=40.0), folder).tracks[0]
    report = tracks_section({0: good, 1: bent}, threshold=0.97)
    means = [report["tracks"][k]["mean_part_iou"] for k in ("0", "1")]
    assert means[0] == pytest.approx(1.0) and means[1] < 0.97
    assert report["tracks"]["0"]["low_frames"] == []
    assert report["tracks"]["1"]["low_frames"] == [0, 1, 2, 4, 5]  # frame 3 was not scored
    frame3 = report["tracks"]["1"]["per_frame"][3]
    assert frame3 == {"frame": 3, "mean_part_iou": None, "silhouette_iou": None,
                      "part_iou": [None] * 23}
    assert bent.silhouette_iou[0] < 1.0 and bent.silhouette_iou[0] > 0.5


def test_part_scores_off_leaves_the_motion_unscored_and_otherwise_equal(body, folder, tmp_path):
    on = _video(RenderedBodyNetwork(body), folder).tracks[0]
    off = _video(RenderedBodyNetwork(body), folder, part_scores=False).tracks[0]
    assert off.part_iou is None and off.silhouette_iou is None
    np.testing.assert_array_equal(off.rotmats, on.rotmats)
    path = save_tracks(_video(RenderedBodyNetwork(body), folder, part_scores=False),
                       tmp_path / "off.npz")[0]
    with np.load(path) as npz:
        assert "dpose_part_iou" not in npz.files
    assert tracks_section({0: off})["tracks"]["0"] == {"scored": False}
    with pytest.raises(Exception, match="part_scores must be True or False"):
        RunOptions(inputs=[folder], part_scores="yes").validate(estimator=object())


def test_farm_chunks_carry_the_raw_scores_into_the_merged_shot(body, folder, tmp_path):
    net = RenderedBodyNetwork(body, seen_bend_deg=25.0)
    whole = _video(net, folder).tracks[0]
    paths = []
    for start, end in ((0, 3), (3, 6)):
        chunk = _video(net, folder, start=start, end=end, chunk_overlap=2).chunk
        path = tmp_path / f"chunk{start}.npz"
        write_chunk(path, chunk)
        again = tmp_path / f"again{start}.npz"
        write_chunk(again, chunk)
        assert path.read_bytes() == again.read_bytes()  # deterministic, NaN included
        back = read_chunk(path)
        np.testing.assert_array_equal(back.tracks[0].part_iou, chunk.tracks[0].part_iou)
        np.testing.assert_array_equal(back.tracks[0].silhouette_iou,
                                      chunk.tracks[0].silhouette_iou)
        paths.append(path)
    merged = merge_video(paths, RunOptions(smooth=0.0), warn=lambda text: None).tracks[0]
    np.testing.assert_array_equal(merged.frame_indices, whole.frame_indices)
    np.testing.assert_allclose(merged.part_iou, whole.part_iou, atol=1e-6)  # float32 in files
    np.testing.assert_allclose(merged.silhouette_iou, whole.silhouette_iou, atol=1e-6)
    assert np.isnan(merged.silhouette_iou[3]) and np.all(np.isfinite(merged.silhouette_iou[:3]))


def test_a_chunk_written_before_scores_existed_reads_as_unscored(body, folder, tmp_path):
    import zipfile

    net = RenderedBodyNetwork(body)
    path = tmp_path / "chunk.npz"
    write_chunk(path, _video(net, folder, start=0, end=6, chunk_overlap=0).chunk)
    old = tmp_path / "old.npz"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            if "_iou" not in item.filename:
                dst.writestr(item, src.read(item))
    track = read_chunk(old).tracks[0]
    assert track.part_iou.shape == (len(track), 23) and np.all(np.isnan(track.part_iou))
    merged = merge_video([old], RunOptions(smooth=0.0), warn=lambda text: None).tracks[0]
    assert merged.part_iou is None


def test_images_are_scored_per_person_crop(body, tmp_path):
    net = RenderedBodyNetwork(body, seen_bend_deg=30.0)
    photos = []
    for k in range(2):
        photos.append(tmp_path / f"p{k}.png")
        cv2.imwrite(str(photos[-1]), np.full((H, W, 3), 90, np.uint8))
    result = estimate_images(RunOptions(inputs=photos, bbox=net.person_box()), estimator=net)
    assert len(result.scores) == 2 and np.all(result.scores.mean_iou < 0.97)
    assert np.all(result.scores.silhouette_iou > 0.5)
    section = images_section(result, threshold=0.97)
    assert section["low_rows"] == [0, 1] and section["per_crop"][1]["image"] == str(photos[1])
    report = write_report(tmp_path / "r.json", {"part_agreement": section})
    assert json.loads(report.read_text())["part_agreement"]["frames_scored"] == 2
    off = estimate_images(RunOptions(inputs=photos, bbox=net.person_box(), part_scores=False),
                          estimator=net)
    assert off.scores is None and images_section(off)["scored"] is False


# --------------------------------------------------------------------------- the CLI
def test_cli_report_and_overlay_with_the_real_network(checkpoint_path, tmp_path, monkeypatch,
                                                      onnx_cache_dir, capsys):
    """The report holds the scores of the crops written to -o (recomputed from the file)."""
    import dataclasses

    from dpose_core.cli import main
    from dpose_core.part_agreement import part_agreement
    from dpose_core.pipeline import open_body_model

    monkeypatch.setenv("DPOSE_CACHE", str(onnx_cache_dir))
    photo = tmp_path / "photo.png"
    rgb = np.random.default_rng(3).integers(0, 256, (300, 220, 3), dtype=np.uint8)
    cv2.imwrite(str(photo), rgb[:, :, ::-1])
    report, overlay = tmp_path / "r.json", tmp_path / "o.png"
    rc = main(["estimate", str(photo), "--checkpoint", str(checkpoint_path), "--bbox",
               "20,10,200,290", "-o", str(tmp_path / "out.npz"), "--report", str(report),
               "--overlay", str(overlay)])
    assert rc == 0, capsys.readouterr().err
    section = json.loads(report.read_text())["part_agreement"]
    assert section["scored"] is True and len(section["per_crop"]) == 1
    crop = section["per_crop"][0]
    with np.load(tmp_path / "out.npz") as npz:
        written = Estimate(**{f.name: npz[f.name] for f in dataclasses.fields(Estimate)})
    body = open_body_model(RunOptions(checkpoint=checkpoint_path))  # the checkpoint's own
    expected = part_agreement(written, body).frame_summary(0)
    assert crop == {"row": 0, "image": str(photo), **expected}
    drawn = cv2.imread(str(overlay))
    assert drawn.shape == rgb.shape and not np.array_equal(drawn[:, :, ::-1], rgb)


@pytest.mark.parametrize("extra, message", [
    (["--overlay", "o.png"], "--overlay draws over photos"),
    (["--report", "r.txt"], "The report is JSON: --report must end in .json"),
    (["--low-part-iou", "2"], "--low-part-iou must be between 0 and 1"),
    (["--report", "r.json", "--chunk-overlap", "2"], "pass --report to dpose merge"),
])
def test_cli_refuses_bad_evidence_options_in_one_line(extra, message, folder, tmp_path,
                                                      monkeypatch, capsys):
    from dpose_core.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(["estimate", str(folder), "-o", "m.npz", *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o.png").exists() and not (tmp_path / "m.npz").exists()


# --------------------------------------------------------------------------- overlay frames
def test_overlay_frames_have_no_holes_and_hold_over_the_stride(body, folder, tmp_path):
    from dpose_core.overlay_frames import PartOverlayWriter, overlay_file

    net = RenderedBodyNetwork(body)
    writer = PartOverlayWriter(tmp_path / "ov")
    _video(net, folder, stride=2, frame_maps=writer)  # frames 0, 2, 4 solved
    sequence = writer.finish()
    assert (sequence.first_frame, sequence.last_frame) == (0, 4)
    files = sorted(p.name for p in (tmp_path / "ov").iterdir())
    assert files == [overlay_file(tmp_path, f).name for f in range(5)]
    rgba = [cv2.imread(str(overlay_file(tmp_path / "ov", f)), cv2.IMREAD_UNCHANGED)
            for f in range(5)]
    assert all(im.shape == (H, W, 4) for im in rgba)
    assert rgba[0][:, :, 3].any() and np.array_equal(rgba[1], rgba[0])  # 1 holds frame 0
    painted = rgba[0][:, :, 3] > 0
    box = net.person_box()
    ys, xs = np.nonzero(painted)
    assert box[0] <= xs.min() and xs.max() < box[2] and box[1] <= ys.min() and ys.max() < box[3]


def test_overlay_frames_with_nobody_are_clear(tmp_path):
    from dpose_core.overlay_frames import PartOverlayWriter, overlay_file
    from dpose_core.sequence import FrameResult, PersonResult

    estimate = SimpleNamespace(image_size=np.array([[40.0, 30.0]]),
                               part_labels=np.full((1, 224, 224), 4, np.uint8),
                               crop_box=np.array([[0.0, 0.0, 20.0, 20.0]]))
    writer = PartOverlayWriter(tmp_path)
    writer(FrameResult(5, 0.0, error="unreadable"))  # before any size is known
    writer(FrameResult(6, 0.0, people=[PersonResult(0, np.zeros(4), 1.0, "manual",
                                                    estimate, 0)]))
    writer(FrameResult(7, 0.0))
    assert (writer.finish().first_frame, writer.finish().last_frame) == (5, 7)
    alpha = [cv2.imread(str(overlay_file(tmp_path, f)), cv2.IMREAD_UNCHANGED)[:, :, 3]
             for f in (5, 6, 7)]
    assert alpha[0].shape == (30, 40) and not alpha[0].any() and not alpha[2].any()
    assert alpha[1][:20, :20].all() and not alpha[1][:, 20:].any()


def test_cli_merge_report_has_the_merged_scores(body, folder, tmp_path, capsys):
    from dpose_core.cli import main

    net = RenderedBodyNetwork(body, seen_bend_deg=25.0)
    chunks = []
    for start, end in ((0, 3), (3, 6)):
        chunks.append(write_chunk(tmp_path / f"c{start}.npz",
                                  _video(net, folder, start=start, end=end,
                                         chunk_overlap=2).chunk))
    report = tmp_path / "r.json"
    rc = main(["merge", *map(str, chunks), "-o", str(tmp_path / "m.npz"), "--report",
               str(report), "--smooth", "0", "--low-part-iou", "0.99", "--ground", "off"])
    assert rc == 1, capsys.readouterr().err  # frame 3 was skipped: the run says so
    track = json.loads(report.read_text())["part_agreement"]["tracks"]["0"]
    merged = load_motion_npz(tmp_path / "m.npz")
    assert [f["frame"] for f in track["per_frame"]] == merged.frame_indices.tolist()
    assert [f["silhouette_iou"] for f in track["per_frame"]] == [
        None if np.isnan(v) else round(float(v), 4) for v in merged.silhouette_iou]
    assert track["low_frames"] == [0, 1, 2, 4, 5]


def test_cli_overlay_names_are_checked_against_the_inputs(tmp_path, capsys):
    from dpose_core.cli import main

    photos = []
    for k in range(2):
        photos.append(tmp_path / f"o_{k}.png")
        cv2.imwrite(str(photos[-1]), np.full((30, 40, 3), 90, np.uint8))
    before = photos[1].read_bytes()
    rc = main(["estimate", *map(str, photos), "--overlay", str(tmp_path / "o.png")])
    err = capsys.readouterr().err
    assert rc == 2 and "is an input of this run" in err and str(photos[0]) in err
    assert photos[1].read_bytes() == before
