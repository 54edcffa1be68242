"""The predicted depth map as a textured relief in the camera frustum, at the person's distance.

How the relative depth becomes distance (documented contract, tested):
D-PoSE's depth head ends in a sigmoid, so each crop pixel holds a value d in (0, 1) with no unit.
We anchor it to the solved body: the median d over the person's pixels (part segmentation label
> 0) is placed at the pelvis distance ``z_ref = joints3d[0, z] + cam_t[z]`` and every pixel sits at

    Z = z_ref + depth_scale * (d - d_ref)      (metres along the optical axis; default scale 0.5)

A negative ``depth_scale`` flips near and far. Each kept crop pixel (row i, column j) becomes one
vertex: its centre in image pixels is ``u = x0 + (j + 0.5) * (x1 - x0) / 224`` (same for v with the
crop box's y) and the vertex is that pixel's ray at depth Z, ``P = Z * ((u - cx) / fx,
(v - cy) / fy, 1)`` in the OpenCV camera frame, turned into Blender world by
``coords.OPENCV_TO_BLENDER``. So each vertex projects through the matching Blender camera exactly
onto its depth-map pixel. Quads are kept only where all four corners are person pixels (the
background is cut away) and carry UVs into the footage, so the relief is textured with the image.

Sequences: per-frame relief data is cached in one compressed ``.npz`` (float16 depth, bool mask,
per-frame camera numbers) and a ``frame_change_post`` handler rebuilds the mesh for the current
frame (holding the last processed frame); ``register()``/``unregister()`` add/remove the handler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_DEPTH_SCALE = 0.5  # metres per unit of sigmoid depth
DEFAULT_STEP = 2  # keep every 2nd crop pixel: 112 x 112 vertices at most
CACHE_PROP = "dpose_depth_cache"


@dataclass
class DepthReliefFrame:
    """What one frame's relief needs, all numpy; ``depth``/``mask`` are already subsampled."""

    depth: np.ndarray  # (n, n) sigmoid values at the sampled crop pixels
    mask: np.ndarray  # (n, n) bool, person pixels
    rows: np.ndarray  # (n,) crop row index of each sample
    cols: np.ndarray  # (n,) crop column index of each sample
    crop_box: np.ndarray  # (4,) xyxy px of the square crop in the image
    focal_px: np.ndarray  # (2,)
    principal_point: np.ndarray  # (2,)
    image_size: np.ndarray  # (2,) w, h
    z_ref: float  # pelvis distance, metres


def relief_frame_from_estimate(
    estimate, index: int = 0, step: int = DEFAULT_STEP
) -> DepthReliefFrame:
    """Pick crop ``index`` of an ``Estimate`` and subsample its depth map every ``step`` pixels."""
    size = int(estimate.depth.shape[-1])
    idx = np.arange(0, size, max(1, int(step)))
    depth = np.asarray(estimate.depth[index], dtype=np.float32)[np.ix_(idx, idx)]
    mask = np.asarray(estimate.part_labels[index])[np.ix_(idx, idx)] > 0
    z_ref = float(estimate.joints3d[index, 0, 2] + estimate.cam_t[index, 2])
    return DepthReliefFrame(
        depth=depth,
        mask=mask,
        rows=idx,
        cols=idx,
        crop_box=np.asarray(estimate.crop_box[index], dtype=np.float64),
        focal_px=np.asarray(estimate.focal_px[index], dtype=np.float64),
        principal_point=np.asarray(estimate.principal_point[index], dtype=np.float64),
        image_size=np.asarray(estimate.image_size[index], dtype=np.float64),
        z_ref=z_ref,
    )


def crop_pixel_centres(
    frame: DepthReliefFrame, crop_size: int = 224
) -> tuple[np.ndarray, np.ndarray]:
    """Image-pixel centres (u (n,), v (n,)) of the sampled crop columns / rows."""
    x0, y0, x1, y1 = frame.crop_box
    u = x0 + (frame.cols + 0.5) * (x1 - x0) / crop_size
    v = y0 + (frame.rows + 0.5) * (y1 - y0) / crop_size
    return u, v


def relief_distance(
    frame: DepthReliefFrame, depth_scale: float = DEFAULT_DEPTH_SCALE
) -> np.ndarray:
    """(n, n) distance along the optical axis in metres (see the module docstring)."""
    depth = frame.depth.astype(np.float64)
    person = depth[frame.mask] if frame.mask.any() else depth.ravel()
    d_ref = float(np.median(person))
    z = frame.z_ref + float(depth_scale) * (depth - d_ref)
    return np.maximum(z, 1e-3)  # never behind the camera


def relief_geometry(frame: DepthReliefFrame, depth_scale: float = DEFAULT_DEPTH_SCALE,
                    crop_size: int = 224):
    """-> verts_world (M,3), quads (F,4) int, uvs (M,2), pixels (M,2) of the kept relief.

    ``pixels`` are the image-pixel centres each vertex must project onto; ``uvs`` address the
    footage (Blender UV: v up).
    """
    from ..dpose_core import coords

    u, v = crop_pixel_centres(frame, crop_size)
    uu, vv = np.meshgrid(u, v)  # (n, n): row = crop row
    z = relief_distance(frame, depth_scale)
    fx, fy = frame.focal_px
    cx, cy = frame.principal_point
    pts_cv = np.stack([(uu - cx) / fx * z, (vv - cy) / fy * z, z], axis=-1)

    n_r, n_c = frame.mask.shape
    m = frame.mask
    keep_quad = m[:-1, :-1] & m[:-1, 1:] & m[1:, 1:] & m[1:, :-1]
    qi, qj = np.nonzero(keep_quad)
    grid = np.arange(n_r * n_c).reshape(n_r, n_c)
    # Counter-clockwise seen from the camera (Blender: y up on screen, rows go down).
    quads = np.stack(
        [grid[qi, qj], grid[qi + 1, qj], grid[qi + 1, qj + 1], grid[qi, qj + 1]], axis=1
    )
    used = np.unique(quads)
    remap = np.full(n_r * n_c, -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    quads = remap[quads]

    flat_cv = pts_cv.reshape(-1, 3)[used]
    verts_world = coords.camera_points_to_blender(flat_cv)
    pixels = np.stack([uu.ravel()[used], vv.ravel()[used]], axis=1)
    w, h = frame.image_size
    uvs = np.stack([pixels[:, 0] / w, 1.0 - pixels[:, 1] / h], axis=1)
    return verts_world, quads, uvs, pixels


# --------------------------------------------------------------------------- Blender side
def write_relief_mesh(mesh, verts_world: np.ndarray, quads: np.ndarray, uvs: np.ndarray) -> None:
    """Replace ``mesh`` geometry with the relief (main thread)."""
    mesh.clear_geometry()
    mesh.from_pydata(verts_world.tolist(), [], quads.tolist())
    uv_layer = mesh.uv_layers.new(name="Footage") if not mesh.uv_layers else mesh.uv_layers[0]
    if len(quads):
        loop_uv = uvs[quads.reshape(-1)]  # from_pydata keeps face-corner order
        uv_layer.data.foreach_set("uv", loop_uv.astype(np.float32).ravel())
    mesh.update()


def footage_material(image, name: str = "D-PoSE Footage", *, frame_start: int = 1,
                     frame_duration: int = 0):
    """An emissive material showing ``image`` (unlit, so the relief looks like the footage)."""
    import bpy

    mat = bpy.data.materials.new(name)
    if bpy.app.version < (5, 0, 0):  # 5.0+: materials always have a node tree
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    nodes.clear()
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    from .scene_camera import set_footage_timing

    set_footage_timing(tex.image_user, image, frame_start=frame_start,
                       frame_duration=frame_duration)
    emit = nodes.new("ShaderNodeEmission")
    out = nodes.new("ShaderNodeOutputMaterial")
    links.new(tex.outputs["Color"], emit.inputs["Color"])
    links.new(emit.outputs["Emission"], out.inputs["Surface"])
    return mat


def create_depth_plane(collection, frame: DepthReliefFrame, *, image=None,
                       depth_scale: float = DEFAULT_DEPTH_SCALE, name: str = "D-PoSE Depth",
                       frame_start: int = 1, frame_duration: int = 0):
    """A new mesh object holding one frame's relief, linked to ``collection``."""
    import bpy

    mesh = bpy.data.meshes.new(name)
    verts, quads, uvs, _ = relief_geometry(frame, depth_scale)
    write_relief_mesh(mesh, verts, quads, uvs)
    obj = bpy.data.objects.new(name, mesh)
    obj["dpose_depth_scale"] = float(depth_scale)
    if image is not None:
        mesh.materials.append(footage_material(image, frame_start=frame_start,
                                               frame_duration=frame_duration))
    collection.objects.link(obj)
    return obj


# --------------------------------------------------------------------------- sequences
def save_relief_cache(path: str | Path, frames: list[DepthReliefFrame], scene_frames) -> Path:
    """Write per-frame relief data (float16 depth) to one npz keyed by scene frame."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        scene_frames=np.asarray(scene_frames, dtype=np.int64),
        depth=np.stack([f.depth for f in frames]).astype(np.float16),
        mask=np.stack([f.mask for f in frames]),
        rows=frames[0].rows,
        cols=frames[0].cols,
        crop_box=np.stack([f.crop_box for f in frames]),
        focal_px=np.stack([f.focal_px for f in frames]),
        principal_point=np.stack([f.principal_point for f in frames]),
        image_size=np.stack([f.image_size for f in frames]),
        z_ref=np.array([f.z_ref for f in frames]),
    )
    return path


_CACHE: dict[tuple[str, float], dict[str, np.ndarray]] = {}


def _load_cache(path: str) -> dict[str, np.ndarray] | None:
    try:
        key = (path, Path(path).stat().st_mtime)
    except OSError:
        return None
    if key not in _CACHE:
        _CACHE.clear()  # one sequence at a time is the common case; keep memory bounded
        with np.load(path, allow_pickle=False) as data:
            _CACHE[key] = {k: data[k] for k in data.files}
    return _CACHE[key]


def relief_frame_from_cache(
    data: dict[str, np.ndarray], scene_frame: int
) -> DepthReliefFrame | None:
    """The cached frame shown at ``scene_frame``: the last processed one at or before it."""
    frames = data["scene_frames"]
    if len(frames) == 0:
        return None
    k = int(np.searchsorted(frames, scene_frame, side="right")) - 1
    k = min(max(k, 0), len(frames) - 1)
    return DepthReliefFrame(
        depth=data["depth"][k].astype(np.float32),
        mask=data["mask"][k],
        rows=data["rows"],
        cols=data["cols"],
        crop_box=data["crop_box"][k],
        focal_px=data["focal_px"][k],
        principal_point=data["principal_point"][k],
        image_size=data["image_size"][k],
        z_ref=float(data["z_ref"][k]),
    )


def update_relief_objects(scene) -> int:
    """Rebuild every cached relief object in ``scene`` for its current frame; returns the count."""
    count = 0
    for obj in scene.objects:
        path = obj.get(CACHE_PROP) if obj.type == "MESH" else None
        if not path:
            continue
        data = _load_cache(bpy_abspath(path))
        if data is None:
            continue
        frame = relief_frame_from_cache(data, scene.frame_current)
        if frame is None:
            continue
        scale = float(obj.get("dpose_depth_scale", DEFAULT_DEPTH_SCALE))
        verts, quads, uvs, _ = relief_geometry(frame, scale)
        write_relief_mesh(obj.data, verts, quads, uvs)
        count += 1
    return count


def bpy_abspath(path: str) -> str:
    import bpy

    return bpy.path.abspath(path)


def _on_frame_change(scene, depsgraph=None) -> None:
    update_relief_objects(scene)


def _is_our_handler(func) -> bool:
    """Also matches a copy left by an earlier import of this module (add-on reload)."""
    return getattr(func, "__qualname__", "") == "_on_frame_change" and getattr(
        func, "__module__", ""
    ).endswith("dpose_blender.depth_plane")


def register() -> None:
    import bpy

    # Persistent: Blender drops other handlers when a file is opened, and the relief of a
    # saved .blend (a farm run's output) must still follow the frame after File > Open.
    bpy.app.handlers.persistent(_on_frame_change)
    handlers = bpy.app.handlers.frame_change_post
    if _on_frame_change not in handlers:
        handlers.append(_on_frame_change)


def unregister() -> None:
    import bpy

    handlers = bpy.app.handlers.frame_change_post
    for func in [f for f in handlers if _is_our_handler(f)]:
        handlers.remove(func)
    _CACHE.clear()
