"""Chunk files and their merge: deterministic bytes, ids continuous across seams, refusals."""

import numpy as np
import pytest

from dpose_core.chunks import ChunkError, ChunkSolve, merge_chunks, read_chunk, write_chunk
from dpose_core.rotations import axis_angle_to_matrix
from dpose_core.sequence import RawTrack

PROVENANCE = {"checkpoint_sha256": "ab" * 32, "options": {"bbox": None, "focal_px": None},
              "input": {"name": "clip.mp4", "size": 1234, "sha256_first_mib": "cd" * 32}}


def _person(frames: np.ndarray, x_of_frame, pose_seed: int, noise: float = 0.0,
            seed: int = 0) -> RawTrack:
    """A synthetic person: a 100x200 px box centred at x_of_frame(f), one fixed pose."""
    rng = np.random.default_rng(seed)
    n = len(frames)
    pose = axis_angle_to_matrix(np.random.default_rng(pose_seed).normal(0, 0.6, (22, 3)))
    x = np.array([x_of_frame(f) for f in frames], float) + rng.normal(0, noise * 5, n)
    return RawTrack(
        frames=np.asarray(frames, np.int64),
        rotmats=np.repeat(pose[None], n, 0).astype(np.float32),
        cam_t=np.stack([x / 500, np.zeros(n), np.full(n, 4.0)], 1).astype(np.float32),
        betas=np.zeros((n, 11), np.float32),
        boxes=np.stack([x - 50, np.full(n, 100.0), x + 50, np.full(n, 300.0)], 1).astype(
            np.float32),
        focal=np.full((n, 2), 800, np.float32), principal=np.full((n, 2), 320, np.float32),
        confidence=np.full(n, 0.9, np.float32))


def _crossing_shot(chunk_starts, end=300, overlap=16, provenance=PROVENANCE):
    """Two people crossing at frame 150: A walks right, B walks left. Each chunk lists its
    tracks in its own order (B first in odd chunks) and re-solves its warm-up with noise."""
    def walk_a(f):
        return 100 + 2 * f

    def walk_b(f):
        return 700 - 2 * f

    bounds = list(chunk_starts) + [end]
    chunks = []
    for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        frames = np.arange(max(0, a - overlap), b)
        noisy = frames < a
        tracks = []
        for walk, seed in ((walk_a, 1), (walk_b, 2)):
            clean = _person(frames, walk, pose_seed=seed)
            shaky = _person(frames, walk, pose_seed=seed, noise=1.0, seed=k)
            clean.boxes[noisy] = shaky.boxes[noisy]
            tracks.append(clean)
        if k % 2:
            tracks.reverse()
        chunks.append(ChunkSolve(own_start=a, own_end=b, frames=frames, fps=25.0,
                                 image_size=np.array([800.0, 400.0]),
                                 provenance=dict(provenance), tracks=tracks))
    return chunks


def test_chunk_file_round_trips_and_is_byte_identical(tmp_path):
    chunk = _crossing_shot([0, 150])[1]
    chunk.failures = [(140, "Frame 140: unreadable")]
    one, two = tmp_path / "a.npz", tmp_path / "b.npz"
    write_chunk(one, chunk)
    write_chunk(two, chunk)
    assert one.read_bytes() == two.read_bytes()
    back = read_chunk(one)
    assert (back.own_start, back.own_end, back.fps) == (150, 300, 25.0)
    assert back.provenance == PROVENANCE and back.failures == [(140, "Frame 140: unreadable")]
    np.testing.assert_array_equal(back.frames, chunk.frames)
    for got, want in zip(back.tracks, chunk.tracks, strict=True):
        np.testing.assert_array_equal(got.boxes, want.boxes)
        np.testing.assert_array_equal(got.rotmats, want.rotmats)
        np.testing.assert_array_equal(got.frames, want.frames)


def test_foot_cues_travel_in_chunks_and_older_chunks_read_them_as_unknown(tmp_path):
    import zipfile

    chunk = _crossing_shot([0, 150])[1]
    rng = np.random.default_rng(4)
    for track in chunk.tracks:
        track.feet_seen = rng.uniform(0, 1, (len(track), 4)).astype(np.float32)
        track.foot_map_depth = rng.normal(0, 0.2, (len(track), 4)).astype(np.float32)
        track.foot_map_depth[::7, 1] = np.nan
    path = write_chunk(tmp_path / "new.npz", chunk)
    for got, want in zip(read_chunk(path).tracks, chunk.tracks, strict=True):
        np.testing.assert_array_equal(got.feet_seen, want.feet_seen)
        np.testing.assert_array_equal(got.foot_map_depth, want.foot_map_depth)  # NaN kept
    old = tmp_path / "old.npz"  # a chunk written before the cues existed
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            if "feet_seen" not in item.filename and "foot_map_depth" not in item.filename:
                dst.writestr(item, src.read(item))
    for got in read_chunk(old).tracks:
        assert got.feet_seen.shape == (len(got), 4) and np.isnan(got.feet_seen).all()
        assert np.isnan(got.foot_map_depth).all()


def test_reading_something_else_is_one_clear_error(tmp_path):
    other = tmp_path / "motion.npz"
    np.savez(other, poses=np.zeros((2, 165)))
    with pytest.raises(ChunkError, match="not a D-PoSE chunk file"):
        read_chunk(other)
    text = tmp_path / "chunk_000000.npz"
    text.write_text("hello")
    with pytest.raises(ChunkError, match="damaged or not a D-PoSE chunk"):
        read_chunk(text)
    with pytest.raises(ChunkError, match="does not exist"):
        read_chunk(tmp_path / "missing.npz")


def test_two_people_crossing_at_a_seam_keep_their_ids():
    merged = merge_chunks(_crossing_shot([0, 150]))
    assert len(merged.tracks) == 2
    np.testing.assert_array_equal(merged.frames, np.arange(300))
    by_start = sorted(merged.tracks, key=lambda t: t.boxes[0, 0])
    a, b = by_start
    for track, walk in ((a, lambda f: 100 + 2 * f), (b, lambda f: 700 - 2 * f)):
        np.testing.assert_array_equal(track.frames, np.arange(300))
        centre = (track.boxes[:, 0] + track.boxes[:, 2]) / 2
        np.testing.assert_allclose(centre, [walk(f) for f in range(300)], atol=1e-3)


def test_merge_does_not_depend_on_the_chunking():
    whole = merge_chunks(_crossing_shot([0], overlap=0))
    for starts in ([0, 100, 200], [0, 150], [0, 37, 150, 151, 299]):
        merged = merge_chunks(_crossing_shot(starts))
        assert len(merged.tracks) == len(whole.tracks)
        for got, want in zip(sorted(merged.tracks, key=lambda t: t.boxes[0, 0]),
                             sorted(whole.tracks, key=lambda t: t.boxes[0, 0]), strict=True):
            np.testing.assert_array_equal(got.frames, want.frames)
            np.testing.assert_array_equal(got.boxes, want.boxes)


def test_missing_chunk_is_reported_with_its_frames():
    chunks = _crossing_shot([0, 100, 200])
    with pytest.raises(ChunkError, match=r"source frames 100-199:"):
        merge_chunks([chunks[0], chunks[2]])
    with pytest.raises(ChunkError, match=r"source frames 200-299:"):
        merge_chunks(chunks[:2], frames=(0, 299))


def test_allow_gaps_keeps_the_gap_frames_unsolved():
    chunks = _crossing_shot([0, 100, 200])
    merged = merge_chunks([chunks[0], chunks[2]], allow_gaps=True)
    assert merged.gaps == [(100, 200)]
    np.testing.assert_array_equal(merged.frames, np.arange(300))
    assert all(not np.any((t.frames >= 100) & (t.frames < 200)) for t in merged.tracks)
    assert sorted(len(t) for t in merged.tracks) == [200, 200]


def test_chunks_of_different_runs_are_refused():
    other = dict(PROVENANCE, checkpoint_sha256="ef" * 32)
    chunks = _crossing_shot([0, 150])
    chunks[1].provenance = other
    with pytest.raises(ChunkError, match="different runs \\(checkpoint_sha256"):
        merge_chunks(chunks, names=["chunk_000000.npz", "chunk_000150.npz"])


def test_overlapping_chunkings_are_refused():
    mixed = [_crossing_shot([0, 100])[0], _crossing_shot([0, 50, 150])[1]]
    with pytest.raises(ChunkError, match="overlap"):
        merge_chunks(mixed)
