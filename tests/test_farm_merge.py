"""Farm chunks through the pipeline: a shot solved in chunks and merged equals one run."""

import cv2
import numpy as np
import pytest

from dpose_core.chunks import ChunkError, read_chunk, write_chunk
from dpose_core.localise import Detection, SegmentationFinder
from dpose_core.motion import FLAG_INTERPOLATED
from dpose_core.pipeline import RunOptions, estimate_video, merge_video
from dpose_core.rotations import matrix_to_quaternion
from tests.test_pipeline import EstimateNetwork
from tests.test_sequence import write_video

FRAMES = 48


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    path = tmp_path_factory.mktemp("farm") / "two.avi"
    write_video(path, FRAMES, people=(0, 1))
    return path


class SilhouetteFinder:
    """A person finder without memory: one box per drawn silhouette. The default finder
    refines from the tracker's predicted boxes, so its boxes may differ by a fraction of a
    pixel after a chunk's cold start; this one makes the merge's own exactness visible."""

    def find(self, image, hints=()):
        count, _, stats, _ = cv2.connectedComponentsWithStats(
            (image[:, :, 0] > 128).astype(np.uint8))
        return [Detection(np.array([x, y, x + w, y + h], float), 1.0, "silhouette")
                for x, y, w, h, _ in stats[1:count]]


def _solve(clip, net, start=0, end=None, overlap=None, finder=None):
    options = RunOptions(inputs=[clip], start=start, end=end, chunk_overlap=overlap)
    return estimate_video(options, estimator=net, finder=finder or SilhouetteFinder())


def _chunks(clip, tmp_path, bounds, overlap):
    net = EstimateNetwork()
    paths = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        path = tmp_path / f"chunk_{a:06d}.npz"
        write_chunk(path, _solve(clip, net, a, b, min(overlap, a)).chunk)
        paths.append(path)
    return paths


def _angle(a, b):
    dot = np.abs(np.sum(matrix_to_quaternion(a) * matrix_to_quaternion(b), axis=-1))
    return 2 * np.arccos(np.clip(dot, 0, 1))


@pytest.mark.parametrize("bounds", [[0, 16, 32, FRAMES], [0, 30, FRAMES], [0, 1, 47, FRAMES]])
def test_chunked_then_merged_equals_one_run(clip, tmp_path, bounds):
    whole = _solve(clip, EstimateNetwork())
    merged = merge_video(_chunks(clip, tmp_path, bounds, overlap=8), RunOptions())
    assert sorted(merged.tracks) == sorted(whole.tracks) == [0, 1]
    for number, want in whole.tracks.items():
        got = merged.tracks[number]
        np.testing.assert_array_equal(got.frame_indices, want.frame_indices)
        np.testing.assert_array_equal(got.boxes, want.boxes)
        assert np.max(_angle(got.rotmats, want.rotmats)) <= 1e-6
        np.testing.assert_allclose(got.transl, want.transl, atol=1e-7)
        np.testing.assert_array_equal(got.betas, want.betas)
    assert merged.rows_fps == whole.rows_fps and not merged.problem_frames()


def test_the_default_finder_merges_to_the_same_people(clip, tmp_path):
    net = EstimateNetwork()
    whole = _solve(clip, net, finder=SegmentationFinder(net))
    paths = []
    for a, b in ((0, 24), (24, FRAMES)):
        paths.append(tmp_path / f"chunk_{a:06d}.npz")
        write_chunk(paths[-1], _solve(clip, net, a, b, min(8, a),
                                      finder=SegmentationFinder(net)).chunk)
    merged = merge_video(paths, RunOptions())
    assert sorted(merged.tracks) == sorted(whole.tracks) == [0, 1]
    for number, want in whole.tracks.items():
        got = merged.tracks[number]
        np.testing.assert_array_equal(got.frame_indices, want.frame_indices)
        assert np.max(np.abs(got.boxes - want.boxes)) < 2.0  # px: same person on every frame


def test_a_chunk_file_is_the_same_bytes_when_solved_again(clip, tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = _chunks(clip, tmp_path / "a", [16, 32], overlap=8)
    second = _chunks(clip, tmp_path / "b", [16, 32], overlap=8)
    assert first[0].read_bytes() == second[0].read_bytes()
    chunk = read_chunk(first[0])
    assert (chunk.own_start, chunk.own_end) == (16, 32)
    np.testing.assert_array_equal(chunk.frames, np.arange(8, 32))
    assert chunk.provenance["options"]["max_gap"] == 15
    assert chunk.provenance["input"]["name"] == "two.avi"


def test_a_missing_chunk_is_an_error_unless_gaps_are_allowed(clip, tmp_path):
    paths = _chunks(clip, tmp_path, [0, 16, 32, FRAMES], overlap=8)
    with pytest.raises(ChunkError, match="source frames 16-31"):
        merge_video([paths[0], paths[2]], RunOptions())
    merged = merge_video([paths[0], paths[2]], RunOptions(), allow_gaps=True)
    assert merged.gaps == [(16, 32)]
    assert merged.problem_frames() == list(range(16, 32))
    for motion in merged.tracks.values():  # both people are carried across the gap
        gap = (motion.frame_indices >= 16) & (motion.frame_indices < 32)
        assert gap.sum() == 16 and np.all(motion.flags[gap] & FLAG_INTERPOLATED)
        assert not np.any(motion.flags[~gap] & FLAG_INTERPOLATED)


def test_chunks_solved_with_other_options_are_refused(clip, tmp_path):
    net = EstimateNetwork()
    one = tmp_path / "chunk_000000.npz"
    two = tmp_path / "chunk_000024.npz"
    write_chunk(one, _solve(clip, net, 0, 24, 0).chunk)
    options = RunOptions(inputs=[clip], start=24, chunk_overlap=8, max_gap=3)
    write_chunk(two, estimate_video(options, estimator=net,
                                    finder=SegmentationFinder(net)).chunk)
    with pytest.raises(ChunkError, match="chunk_000024.npz and chunk_000000.npz come from "
                                         "different runs \\(options"):
        merge_video([one, two], RunOptions())
