"""The depth relief's geometry without Blender: vertices sit on their depth pixels' rays at the
documented distance, and the per-frame cache round-trips and is written atomically."""

import numpy as np
import pytest

from dpose_core import coords
from dpose_core.atomic_io import OutputError
from dpose_core.relief import (
    DepthReliefFrame,
    load_relief_cache,
    relief_distance,
    relief_frame_from_cache,
    relief_geometry,
    save_relief_cache,
)


def relief_frame(seed=0, radius=0.35, z_ref=4.0, size=(640, 480), step=4) -> DepthReliefFrame:
    rng = np.random.default_rng(seed)
    idx = np.arange(0, 224, step)
    yy, xx = np.meshgrid(idx, idx, indexing="ij")
    mask = (yy - 112) ** 2 + (xx - 112) ** 2 < (radius * 224) ** 2
    w, h = size
    f = float(np.hypot(w, h))
    return DepthReliefFrame(
        depth=rng.uniform(0.2, 0.8, mask.shape).astype(np.float32), mask=mask, rows=idx,
        cols=idx, crop_box=np.array([200.0, 100.0, 440.0, 340.0]), focal_px=np.array([f, f]),
        principal_point=np.array([w / 2 + 7.0, h / 2 - 3.0]),
        image_size=np.array([w, h], dtype=float), z_ref=z_ref,
    )


def test_vertices_project_onto_their_depth_pixel_centres():
    frame = relief_frame()
    geo = relief_geometry(frame, 0.5)
    assert len(geo.verts_world) == len(geo.pixels) == len(geo.uvs) > 100
    projected = coords.project_blender_points(geo.verts_world, frame.focal_px[0], (640, 480),
                                              tuple(frame.principal_point))
    np.testing.assert_allclose(projected, geo.pixels, atol=1e-9)
    step_px = (440.0 - 200.0) / 224
    col = (geo.pixels[:, 0] - 200.0) / step_px - 0.5
    np.testing.assert_allclose(col, np.round(col), atol=1e-9)
    np.testing.assert_allclose(geo.uvs[:, 0], geo.pixels[:, 0] / 640)
    np.testing.assert_allclose(geo.uvs[:, 1], 1 - geo.pixels[:, 1] / 480)
    assert geo.quads.max() == len(geo.verts_world) - 1 and len(geo.verts_world) <= frame.mask.sum()


def test_person_median_depth_sits_at_the_pelvis_distance():
    frame = relief_frame()
    z = relief_distance(frame, 0.5)
    assert np.median(z[frame.mask]) == pytest.approx(4.0)
    np.testing.assert_allclose(z - 4.0, 0.5 * (frame.depth - np.median(frame.depth[frame.mask])),
                               atol=1e-6)
    flipped = relief_distance(frame, -0.5)
    np.testing.assert_allclose(flipped - 4.0, -(z - 4.0), atol=1e-6)
    cam_z = coords.blender_points_to_camera(relief_geometry(frame, 0.5).verts_world)[:, 2]
    assert cam_z.min() > 3.5 and cam_z.max() < 4.5


def test_cache_round_trips_and_holds_the_last_processed_frame(tmp_path):
    frames = [relief_frame(seed=0, radius=0.2), relief_frame(seed=1, radius=0.4, z_ref=6.0)]
    path = save_relief_cache(tmp_path / "relief.npz", frames, scene_frames=[1, 5])
    data = load_relief_cache(path)
    assert relief_frame_from_cache(data, 3).z_ref == 4.0  # between frames: the one before
    second = relief_frame_from_cache(data, 9)
    assert second.z_ref == 6.0 and np.array_equal(second.mask, frames[1].mask)
    np.testing.assert_allclose(second.depth, frames[1].depth, atol=1e-3)  # float16 on disk
    assert [p.name for p in tmp_path.iterdir()] == ["relief.npz"]


def test_a_failed_cache_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = save_relief_cache(tmp_path / "relief.npz", [relief_frame()], scene_frames=[1])
    before = path.read_bytes()

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "savez_compressed", full_disk)
    with pytest.raises(OutputError, match="No space left on device"):
        save_relief_cache(path, [relief_frame(seed=3)], scene_frames=[1])
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["relief.npz"]
