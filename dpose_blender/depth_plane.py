"""The depth relief in Blender: one mesh per person, textured with the footage.

The geometry (how the network's relative depth becomes metres and vertices that project onto
their depth-map pixels) is bpy-free in ``dpose_core.relief``. Here it becomes a mesh; for
sequences the per-frame data is cached in an ``.npz`` named by the object's ``CACHE_PROP`` and a
``frame_change_post`` handler rebuilds the mesh for the current frame (holding the last
processed frame); ``register()``/``unregister()`` add/remove the handler.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..dpose_core.relief import (
    DEFAULT_DEPTH_SCALE,
    DepthReliefFrame,
    ReliefGeometry,
    load_relief_cache,
    relief_frame_from_cache,
    relief_geometry,
)

CACHE_PROP = "dpose_depth_cache"
SCALE_PROP = "dpose_depth_scale"


def write_relief_mesh(mesh, geometry: ReliefGeometry) -> None:
    """Replace ``mesh`` geometry with the relief (main thread)."""
    mesh.clear_geometry()
    mesh.from_pydata(geometry.verts_world.tolist(), [], geometry.quads.tolist())
    uv_layer = mesh.uv_layers.new(name="Footage") if not mesh.uv_layers else mesh.uv_layers[0]
    if len(geometry.quads):
        loop_uv = geometry.uvs[geometry.quads.reshape(-1)]  # from_pydata keeps corner order
        uv_layer.data.foreach_set("uv", loop_uv.astype(np.float32).ravel())
    mesh.update()


def footage_material(image, name: str = "D-PoSE Footage", *, frame_start: int = 1,
                     first_source_frame: int = 0, frame_duration: int = 0):
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
                       first_source_frame=first_source_frame, frame_duration=frame_duration)
    emit = nodes.new("ShaderNodeEmission")
    out = nodes.new("ShaderNodeOutputMaterial")
    links.new(tex.outputs["Color"], emit.inputs["Color"])
    links.new(emit.outputs["Emission"], out.inputs["Surface"])
    return mat


def create_depth_plane(collection, frame: DepthReliefFrame, *, image=None,
                       depth_scale: float = DEFAULT_DEPTH_SCALE, name: str = "D-PoSE Depth",
                       frame_start: int = 1, first_source_frame: int = 0,
                       frame_duration: int = 0):
    """A new mesh object holding one frame's relief, linked to ``collection``."""
    import bpy

    mesh = bpy.data.meshes.new(name)
    write_relief_mesh(mesh, relief_geometry(frame, depth_scale))
    obj = bpy.data.objects.new(name, mesh)
    obj[SCALE_PROP] = float(depth_scale)
    if image is not None:
        mesh.materials.append(footage_material(image, frame_start=frame_start,
                                               first_source_frame=first_source_frame,
                                               frame_duration=frame_duration))
    collection.objects.link(obj)
    return obj


# --------------------------------------------------------------------------- sequences
_CACHE: dict[tuple[str, float], dict[str, np.ndarray]] = {}


def _load_cache(path: str) -> dict[str, np.ndarray] | None:
    try:
        key = (path, Path(path).stat().st_mtime)
    except OSError:
        return None
    if key not in _CACHE:
        _CACHE.clear()  # one sequence at a time is the common case; keep memory bounded
        try:
            _CACHE[key] = load_relief_cache(path)
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            # Runs on every frame change: a damaged cache holds the mesh, never raises there.
            print(f"D-PoSE: cannot read the depth relief cache {path}: {exc}")
            return None
    return _CACHE[key]


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
        scale = float(obj.get(SCALE_PROP, DEFAULT_DEPTH_SCALE))
        write_relief_mesh(obj.data, relief_geometry(frame, scale))
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
