"""Z-buffered triangle fill of projected meshes into label images, in numpy.

Why our own: the part-agreement score must run wherever the core runs (Blender, a farm node)
without an OpenGL context or a renderer package, and it must cost little next to the network.
Rendering happens at the segmentation map's own resolution (224 px), where an SMPL-X triangle
covers a pixel or two, so the fill works on all triangles at once: every pixel centre in each
triangle's pixel bounding box becomes one array element, is tested against the triangle's three
edges, and the nearest surface wins per pixel.

Pixel convention: pixel (col i, row j) is the unit square [i, i+1) x [j, j+1); it is covered
when its centre (i + 0.5, j + 0.5) lies inside the triangle (edges included). A covered
pixel takes the label of the triangle vertex nearest to its centre (largest barycentric
weight), so label boundaries run halfway between vertices of different labels. Depth is
compared as inverse depth interpolated in screen space, which is exact for flat triangles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Box pixels tested per pass: bounds the temporaries however large the triangles are.
_MAX_CANDIDATES = 1 << 20


def rasterise_labels(
    xy_px: np.ndarray,
    inverse_depth: np.ndarray,
    faces: np.ndarray,
    vertex_labels: np.ndarray,
    size: int,
) -> np.ndarray:
    """Fill a mesh into a (size, size) uint8 label image; 0 where no triangle covers a pixel.

    xy_px (V,2) vertex positions in pixels of the target image (x right, y down); inverse_depth
    (V,) 1/z of each vertex, z > 0 in front of the camera; faces (F,3) vertex indices;
    vertex_labels (V,) labels 1..255 to paint. A batch works the same way with a leading
    axis: xy_px (N,V,2), inverse_depth (N,V) -> (N, size, size), faces and labels shared.
    Triangles with a vertex behind the camera or a non-finite coordinate are skipped.
    """
    xy = np.asarray(xy_px, dtype=np.float64)
    inv_z = np.asarray(inverse_depth, dtype=np.float64)
    single = xy.ndim == 2
    if single:
        xy, inv_z = xy[None], inv_z[None]
    if xy.ndim != 3 or xy.shape[2] != 2 or inv_z.shape != xy.shape[:2]:
        raise ValueError(
            f"xy_px must be (V,2) or (N,V,2) with inverse_depth (V,) or (N,V); got {xy.shape} "
            f"and {inv_z.shape}"
        )
    faces = np.asarray(faces, dtype=np.int64)
    labels = np.asarray(vertex_labels).astype(np.uint8, copy=False)
    n_frames, n_verts = xy.shape[:2]
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise ValueError(f"faces must be (F,3), got {faces.shape}")
    if faces.size and (faces.min() < 0 or faces.max() >= n_verts):
        raise ValueError("faces index vertices that do not exist")
    if labels.shape != (n_verts,):
        raise ValueError(f"vertex_labels must be ({n_verts},), got {labels.shape}")
    size = int(size)
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")

    # Corner coordinates of every triangle of every frame, one flat array per coordinate.
    n_faces = len(faces)
    xa, xb, xc = (xy[:, faces[:, k], 0].ravel() for k in range(3))
    ya, yb, yc = (xy[:, faces[:, k], 1].ravel() for k in range(3))
    za, zb, zc = (inv_z[:, faces[:, k]].ravel() for k in range(3))
    with np.errstate(invalid="ignore"):
        # Pixel boxes: first and last pixel index whose centre lies within the triangle's span.
        x_lo = np.ceil(np.minimum(np.minimum(xa, xb), xc) - 0.5)
        x_hi = np.floor(np.maximum(np.maximum(xa, xb), xc) - 0.5)
        y_lo = np.ceil(np.minimum(np.minimum(ya, yb), yc) - 0.5)
        y_hi = np.floor(np.maximum(np.maximum(ya, yb), yc) - 0.5)
        # NaN fails every comparison, so non-finite corners drop out here too.
        usable = (za > 0) & (zb > 0) & (zc > 0) & (za < np.inf) & (zb < np.inf) & (zc < np.inf)
        usable &= (x_hi >= 0) & (y_hi >= 0) & (x_lo <= size - 1) & (y_lo <= size - 1)
        usable &= (x_hi >= x_lo) & (y_hi >= y_lo)
    keep = np.flatnonzero(usable)
    x_lo = np.maximum(x_lo[keep], 0).astype(np.int64)
    y_lo = np.maximum(y_lo[keep], 0).astype(np.int64)
    width = np.minimum(x_hi[keep], size - 1).astype(np.int64) - x_lo + 1
    height = np.minimum(y_hi[keep], size - 1).astype(np.int64) - y_lo + 1
    xa, ya, xb, yb, xc, yc = (c[keep] for c in (xa, ya, xb, yb, xc, yc))
    za, zb, zc = za[keep], zb[keep], zc[keep]
    face_of = keep % n_faces if n_frames > 1 else keep
    la, lb, lc = (labels[faces[face_of, k]] for k in range(3))
    # Wind every triangle counter-clockwise in pixel space (positive doubled area) so that
    # "inside" is simply three non-negative edge functions.
    area = (xb - xa) * (yc - ya) - (xc - xa) * (yb - ya)
    flip = area < 0
    xb, xc = np.where(flip, xc, xb), np.where(flip, xb, xc)
    yb, yc = np.where(flip, yc, yb), np.where(flip, yb, yc)
    zb, zc = np.where(flip, zc, zb), np.where(flip, zb, zc)
    lb, lc = np.where(flip, lc, lb), np.where(flip, lb, lc)
    area = np.abs(area)
    tris = _Triangles(
        x_lo, y_lo, width, (keep // n_faces) * (size * size),
        np.stack([xa, ya, xb, yb, xc, yc]), np.stack([za, zb, zc]), np.stack([la, lb, lc]),
        np.divide(1.0, area, out=np.zeros_like(area), where=area > 0),
    )  # fmt: skip

    # Every pixel of every triangle's box is tested once; chunks bound the temporaries.
    box_pixels = width * height
    box_pixels[area <= 0] = 0  # degenerate triangles cover nothing
    ends = np.cumsum(box_pixels)
    out = np.zeros(n_frames * size * size, dtype=np.uint8)
    zbuf = np.zeros(n_frames * size * size)  # inverse depth; 0 = nothing drawn yet
    first = 0
    while first < len(ends):
        base = ends[first - 1] if first else 0
        last = max(first + 1, int(np.searchsorted(ends, base + _MAX_CANDIDATES, side="right")))
        pixel, depth, value = _cover(tris, slice(first, last), box_pixels[first:last], size)
        # Nearest wins: raise the z-buffer, then the fragments that reached it write their
        # label (over any farther one written by an earlier pass).
        np.maximum.at(zbuf, pixel, depth)
        wins = depth >= zbuf[pixel]
        out[pixel[wins]] = value[wins]
        first = last
    out = out.reshape(n_frames, size, size)
    return out[0] if single else out


@dataclass
class _Triangles:
    """Triangles whose pixel box is not empty, counter-clockwise, as flat per-triangle arrays."""

    x_lo: np.ndarray  # (T,) first pixel column of the box
    y_lo: np.ndarray
    width: np.ndarray  # (T,) box width in pixels, >= 1
    pixel_offset: np.ndarray  # (T,) first flat pixel index of the triangle's frame
    corners: np.ndarray  # (6, T) xa, ya, xb, yb, xc, yc
    inverse_depth: np.ndarray  # (3, T)
    corner_labels: np.ndarray  # (3, T)
    inverse_area: np.ndarray  # (T,) 1 / doubled area (0 for degenerate triangles)


def _cover(
    tris: _Triangles, t: slice, box_pixels: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fragments (flat pixel, inverse depth, label) of triangles `t`, testing their boxes."""
    total = int(box_pixels.sum())
    counts = box_pixels

    def per_pixel(values: np.ndarray) -> np.ndarray:  # one copy per box pixel
        return np.repeat(values[t], counts)

    start = np.cumsum(counts) - counts
    offset = np.arange(total) - np.repeat(start, counts)  # position inside the box
    width = per_pixel(tris.width)
    row = offset // width
    px = per_pixel(tris.x_lo) + (offset - row * width)
    py = per_pixel(tris.y_lo) + row
    cx, cy = px + 0.5, py + 0.5
    xa, ya, xb, yb, xc, yc = (per_pixel(c) for c in tris.corners)
    # Edge functions = twice the signed areas of the sub-triangles opposite each corner.
    wa = (xb - cx) * (yc - cy) - (xc - cx) * (yb - cy)
    wb = (xc - cx) * (ya - cy) - (xa - cx) * (yc - cy)
    wc = (xa - cx) * (yb - cy) - (xb - cx) * (ya - cy)
    inside = np.flatnonzero((wa >= 0) & (wb >= 0) & (wc >= 0) & (per_pixel(tris.inverse_area) > 0))
    owner = np.repeat(np.arange(t.start, t.stop), counts)[inside]
    inv_area = tris.inverse_area[owner]
    ba, bb, bc = wa[inside] * inv_area, wb[inside] * inv_area, wc[inside] * inv_area
    iz = tris.inverse_depth[:, owner]
    depth = ba * iz[0] + bb * iz[1] + bc * iz[2]
    pixel = tris.pixel_offset[owner] + py[inside] * size + px[inside]
    nearest = np.where(ba >= bb, np.where(ba >= bc, 0, 2), np.where(bb >= bc, 1, 2))
    label = tris.corner_labels[nearest, owner]
    return pixel, depth, label
