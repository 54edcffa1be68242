"""Exports that come back the way they left: FBX (per-engine presets), Y-up BVH, glTF, .npz.

Each function takes its objects as parameters (never the selection), writes to a unique temp
file in the destination folder and renames it over the destination only when the exporter
succeeded, refuses a destination that is one of the scene's inputs (the .blend, footage,
images), and leaves the scene as it found it: selection, active object, mode and frame.

BVH: Blender's BVH exporter writes bone matrices in armature space and ignores the armature
object's transform, while its importer reads a Y-up file (forward -Z) into Z-up Blender. Our
rigs carry a rotation on the object (the OpenCV camera frame, y down), so a plain export comes
back upside down and metres away. export_bvh therefore exports a temporary copy whose armature
space *is* the Y-up world: rest bones transformed by Y_UP_FROM_BLENDER @ matrix_world, object
at identity, same action. Pose bases are relative to the rest, so the motion is unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import bpy
import numpy as np
from mathutils import Matrix

from ..dpose_core import motion_io
from ..dpose_core.atomic_io import atomic_path
from ..dpose_core.errors import DPoseError
from ..dpose_core.motion import Motion

# Y-up file (x right, y up, z towards the viewer) from Blender's Z-up world: (x, y, z) ->
# (x, z, -y). The inverse of what import_anim.bvh / import_scene.gltf apply by default.
Y_UP_FROM_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])

# Export options per target application. All keep every key (no simplification), bake the
# animation, and skip FBX's extra leaf bones, which no game engine needs.
_FBX_COMMON = {
    "use_selection": True,
    "bake_anim": True,
    "bake_anim_simplify_factor": 0.0,
    "bake_anim_use_all_actions": False,
    "bake_anim_use_nla_strips": False,
    "bake_anim_force_startend_keying": True,
    "add_leaf_bones": False,
    "axis_forward": "-Z",
    "axis_up": "Y",
    "primary_bone_axis": "Y",
    "secondary_bone_axis": "X",
}
FBX_PRESETS: dict[str, dict] = {
    # Re-imports into Blender unchanged (Blender's importer undoes the axis conversion).
    "blender": {"apply_scale_options": "FBX_SCALE_NONE", "use_armature_deform_only": False},
    # Unreal reads metres as FBX units x100 (centimetres); deform bones only (no controls).
    "unreal": {"apply_scale_options": "FBX_SCALE_NONE", "use_armature_deform_only": True,
               "mesh_smooth_type": "FACE"},
    # Unity: unit scale baked into the file and the axis change baked into the transforms, so
    # objects arrive with scale 1 and no -90 degree X rotation.
    "unity": {"apply_scale_options": "FBX_SCALE_ALL", "bake_space_transform": True,
              "use_armature_deform_only": True, "mesh_smooth_type": "FACE"},
}


def export_fbx(
    path: str | os.PathLike,
    objects: Iterable[bpy.types.Object],
    preset: str = "blender",
    *,
    frame_range: tuple[int, int] | None = None,
    scene: bpy.types.Scene | None = None,
) -> Path:
    """Write `objects` (armatures, meshes) and their baked animation to an FBX file.

    preset: "blender", "unreal" or "unity" (see FBX_PRESETS). frame_range: inclusive scene
    frames to bake (default: the scene's range). Returns the written path.
    """
    if preset not in FBX_PRESETS:
        raise DPoseError(f"Unknown FBX preset {preset!r}; use one of {', '.join(FBX_PRESETS)}.")
    scene = scene or bpy.context.scene
    objects = _check_objects(objects, "FBX")
    destination = _destination(path, ".fbx")
    _enable_addon("io_scene_fbx")
    options = {**_FBX_COMMON, **FBX_PRESETS[preset]}
    with _kept_scene_state(scene), _frame_range(scene, frame_range):
        _select_only(objects)
        with atomic_path(destination) as tmp:
            _run(bpy.ops.export_scene.fbx, filepath=str(tmp), **options)
    return destination


def export_gltf(
    path: str | os.PathLike,
    objects: Iterable[bpy.types.Object],
    *,
    frame_range: tuple[int, int] | None = None,
    scene: bpy.types.Scene | None = None,
) -> Path:
    """Write `objects` with their animation, sampled on every frame, to a binary glTF (.glb).

    The scene's animation is sampled as it plays (NLA takes included) into one glTF animation.

    Only .glb is written: a .gltf with a separate .bin could not be replaced atomically.
    """
    scene = scene or bpy.context.scene
    objects = _check_objects(objects, "glTF")
    destination = _destination(path, ".glb")
    _enable_addon("io_scene_gltf2")
    with _kept_scene_state(scene), _frame_range(scene, frame_range):
        _select_only(objects)
        with atomic_path(destination) as tmp:
            _run(bpy.ops.export_scene.gltf, filepath=str(tmp), export_format="GLB",
                 use_selection=True, export_animations=True, **_gltf_scene_mode(),
                 export_force_sampling=True,
                 export_frame_step=1, export_optimize_animation_size=False,
                 export_anim_slide_to_zero=False, export_current_frame=False)
    return destination


def export_bvh(
    path: str | os.PathLike,
    rig: bpy.types.Object,
    *,
    frame_range: tuple[int, int] | None = None,
    scene: bpy.types.Scene | None = None,
) -> Path:
    """Write one armature's animation to a Y-up BVH that imports the right way up.

    The file is in a Y-up world (x right, y up, z towards the front view): Blender's and other
    Y-up tools' importers place every joint where it is in this scene.
    """
    scene = scene or bpy.context.scene
    if rig is None or rig.type != "ARMATURE":
        raise DPoseError(f"BVH export needs an armature; {getattr(rig, 'name', rig)!r} is not.")
    world = np.array(rig.matrix_world)
    linear = world[:3, :3]
    if not np.allclose(linear.T @ linear, np.eye(3), atol=1e-5):
        raise DPoseError(
            f"{rig.name!r} is scaled; apply its scale (Ctrl+A) before exporting BVH."
        )
    _refuse_object_motion(rig)
    destination = _destination(path, ".bvh")
    _enable_addon("io_anim_bvh")
    first, last = frame_range or (scene.frame_start, scene.frame_end)
    to_y_up = np.eye(4)
    to_y_up[:3, :3] = Y_UP_FROM_BLENDER
    proxy = None
    try:
        with _kept_scene_state(scene):
            proxy = _y_up_proxy(rig, scene, Matrix((to_y_up @ world).tolist()))
            _select_only([proxy])
            with atomic_path(destination) as tmp:
                _run(bpy.ops.export_anim.bvh, filepath=str(tmp), frame_start=int(first),
                     frame_end=int(last), root_transform_only=False)
    finally:  # removed only once the selection no longer refers to it (4.2 crashes otherwise)
        if proxy is not None:
            data = proxy.data
            bpy.data.objects.remove(proxy)
            bpy.data.armatures.remove(data)
    return destination


def export_npz(path: str | os.PathLike, motion: Motion) -> Path:
    """Write a Motion as an SMPL-X .npz (AMASS layout, dpose_core.motion_io)."""
    destination = _destination(path, ".npz")
    return motion_io.save_motion_npz(destination, motion)


# ---------------------------------------------------------------------- internals
def _y_up_proxy(rig: bpy.types.Object, scene: bpy.types.Scene, rest_change: Matrix):
    """A temporary copy of `rig` whose armature space is the Y-up world, same action."""
    data = rig.data.copy()
    data.transform(rest_change)  # rest bones only; pose bases stay relative to them
    proxy = rig.copy()
    proxy.data = data
    proxy.parent = None
    proxy.constraints.clear()
    proxy.matrix_world = Matrix.Identity(4)
    scene.collection.objects.link(proxy)
    return proxy


def _refuse_object_motion(rig: bpy.types.Object) -> None:
    """Object-level keys cannot go into a BVH (the exported copy sits at the identity)."""
    from . import anim_compat

    moving = [fc.data_path for fc in anim_compat.iter_fcurves(rig)
              if fc.data_path in ("location", "rotation_euler", "rotation_quaternion",
                                  "rotation_axis_angle", "scale", "delta_location")]
    if moving:
        raise DPoseError(
            f"The armature object itself is animated ({moving[0]}); BVH stores bone motion "
            "only. Bake the object motion into the root bone first."
        )


def _gltf_scene_mode() -> dict:
    """Sample the scene as it plays (feature-detected: the option is in every supported
    Blender's glTF exporter we know of, but an older one simply falls back to its default)."""
    prop = bpy.ops.export_scene.gltf.get_rna_type().properties.get("export_animation_mode")
    if prop is not None and "SCENE" in {item.identifier for item in prop.enum_items}:
        return {"export_animation_mode": "SCENE"}
    return {}


def _check_objects(objects: Iterable[bpy.types.Object], what: str) -> list:
    objects = [o for o in objects if o is not None]
    if not objects:
        raise DPoseError(f"Nothing to export to {what}: pass at least one object.")
    return objects


def _scene_inputs() -> set[Path]:
    """Files this scene reads: the .blend, images, footage, sounds, linked libraries."""
    paths = [bpy.data.filepath]
    for collection in (bpy.data.images, bpy.data.movieclips, bpy.data.sounds, bpy.data.libraries):
        paths += [item.filepath for item in collection]
    out = set()
    for p in paths:
        if p:
            with contextlib.suppress(OSError, ValueError):
                out.add(Path(bpy.path.abspath(p)).resolve())
    return out


def _destination(path: str | os.PathLike, suffix: str) -> Path:
    """The absolute destination; refused if misnamed, its folder is missing or it is an input."""
    destination = Path(bpy.path.abspath(str(path)))
    if destination.suffix.lower() != suffix:
        raise DPoseError(f"{destination.name}: this export writes {suffix}; name it *{suffix}.")
    if not destination.parent.is_dir():
        raise DPoseError(f"Folder {destination.parent} does not exist; create it first.")
    if destination.resolve() in _scene_inputs():
        raise DPoseError(f"{destination} is an input of this scene; choose another file name.")
    return destination


def _run(operator, **options) -> None:
    """Run an exporter operator; anything but FINISHED is a DPoseError."""
    try:
        result = operator(**options)
    except RuntimeError as exc:  # Blender reports operator errors as RuntimeError
        raise DPoseError(f"Export failed: {str(exc).strip().splitlines()[-1]}") from None
    if "FINISHED" not in result:
        raise DPoseError(f"Export was cancelled ({sorted(result)}).")


@contextlib.contextmanager
def _kept_scene_state(scene: bpy.types.Scene) -> Iterator[None]:
    """Restore selection, active object, mode and frame afterwards, whatever happens."""
    view_layer = bpy.context.view_layer
    active = view_layer.objects.active
    mode = bpy.context.mode
    selected = [o for o in view_layer.objects if o.select_get()]
    frame, subframe = scene.frame_current, scene.frame_subframe
    if active is not None and mode != "OBJECT":
        bpy.ops.object.mode_set(mode="OBJECT")
    try:
        yield
    finally:
        for obj in view_layer.objects:
            obj.select_set(obj in selected)
        view_layer.objects.active = active
        if active is not None and mode != "OBJECT":
            bpy.ops.object.mode_set(mode=_OBJECT_MODE_FOR_CONTEXT.get(mode, mode))
        scene.frame_set(frame, subframe=subframe)


# context.mode names -> object.mode_set names where they differ.
_OBJECT_MODE_FOR_CONTEXT = {"EDIT_ARMATURE": "EDIT", "EDIT_MESH": "EDIT", "PAINT_WEIGHT":
                            "WEIGHT_PAINT", "PAINT_VERTEX": "VERTEX_PAINT", "PAINT_TEXTURE":
                            "TEXTURE_PAINT", "EDIT_CURVE": "EDIT", "EDIT_LATTICE": "EDIT"}


@contextlib.contextmanager
def _frame_range(scene: bpy.types.Scene, frame_range: tuple[int, int] | None) -> Iterator[None]:
    """Temporarily set the scene range the FBX/glTF bakers read."""
    if frame_range is None:
        yield
        return
    old = scene.frame_start, scene.frame_end
    first, last = (int(v) for v in frame_range)
    if last < first:
        raise DPoseError(f"Frame range {first}-{last} is empty.")
    scene.frame_start, scene.frame_end = first, last
    try:
        yield
    finally:
        scene.frame_start, scene.frame_end = old


def _select_only(objects: list) -> None:
    view_layer = bpy.context.view_layer
    for obj in view_layer.objects:
        obj.select_set(False)
    for obj in objects:
        obj.select_set(True)
    view_layer.objects.active = objects[0]


def _enable_addon(module: str) -> None:
    import addon_utils

    addon_utils.enable(module, default_set=False)
