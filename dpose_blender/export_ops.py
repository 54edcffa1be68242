"""Export operators for the panel and File > Export: a D-PoSE rig's motion as .npz, FBX or BVH.

Each operator only picks the objects (the active rig; for FBX every selected rig and its mesh)
and the file, then calls one export function. The functions here keep Blender's exporters
behind one signature each (``export_npz(path, motion)``, ``export_fbx(path, objects)``,
``export_bvh(path, rig)``), write through a temporary file in the destination folder that is
renamed only when the exporter succeeded, and refuse a destination that is one of the rig's
inputs or the open .blend.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import bpy
from bpy.props import StringProperty
from bpy_extras.io_utils import ExportHelper

from ..dpose_core.errors import DPoseError


# ----------------------------------------------------------------------------- functions
def export_npz(path: str | os.PathLike, motion) -> Path:
    """A Motion as an SMPL-X/AMASS .npz (dpose_core.motion_io)."""
    from ..dpose_core.motion_io import save_motion_npz

    return save_motion_npz(path, motion)  # atomic itself


def export_fbx(path: str | os.PathLike, objects: Iterable) -> Path:
    """Armatures (and their meshes) with the baked animation of the scene's frame range."""
    objects = list(objects)
    _enable_addon("io_scene_fbx")

    def write(tmp: Path) -> None:
        _select_only(objects)
        bpy.ops.export_scene.fbx(filepath=str(tmp), use_selection=True, bake_anim=True,
                                 bake_anim_simplify_factor=0.0, add_leaf_bones=False)

    return _atomic(Path(path), write)


def export_bvh(path: str | os.PathLike, rig) -> Path:
    """One armature's animation over the scene's frame range."""
    _enable_addon("io_anim_bvh")
    scene = bpy.context.scene

    def write(tmp: Path) -> None:
        _select_only([rig])
        bpy.ops.export_anim.bvh(filepath=str(tmp), frame_start=scene.frame_start,
                                frame_end=scene.frame_end, root_transform_only=False)

    return _atomic(Path(path), write)


def _atomic(destination: Path, write: Callable[[Path], object]) -> Path:
    """write(tmp) into a unique file next to destination, then rename it over destination."""
    destination = destination.expanduser().resolve()
    fd, name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.stem}-",
                                suffix=destination.suffix)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise DPoseError(f"Blender's exporter wrote nothing for {destination.name}.")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, destination)
    finally:
        tmp.unlink(missing_ok=True)
    return destination


def _enable_addon(module: str) -> None:
    import addon_utils

    addon_utils.enable(module, default_set=False)


def _select_only(objects: list) -> None:
    for obj in bpy.context.view_layer.objects:
        obj.select_set(False)
    for obj in objects:
        obj.select_set(True)
    if objects:
        bpy.context.view_layer.objects.active = objects[0]


# ----------------------------------------------------------------------------- operators
def check_destination(path: str, rigs: list) -> Path:
    """The file to write: never the open .blend or an input a rig was made from."""
    from . import provenance

    destination = Path(bpy.path.abspath(path)).expanduser().resolve()
    if destination.is_dir() or not destination.name:
        raise DPoseError("Give a file name to export to.")
    if not destination.parent.is_dir():
        raise DPoseError(f"The folder {destination.parent} does not exist.")
    inputs = {str(Path(bpy.data.filepath).resolve())} if bpy.data.filepath else set()
    for rig in rigs:
        record = provenance.read(rig) or {}
        inputs.update(str(Path(p).resolve()) for p in record.get("inputs", []))
    if str(destination) in inputs:
        raise DPoseError(f"{destination.name} is an input of this scene; exporting over it "
                         f"would destroy it: choose another name.")
    return destination


def _active_rig(context):
    from .rig import is_rig

    obj = context.active_object
    return obj if is_rig(obj) else None


def _selected_rigs(context) -> list:
    from .rig import is_rig

    rigs = [o for o in context.selected_objects if is_rig(o)]
    active = _active_rig(context)
    if active is not None and active not in rigs:
        rigs.insert(0, active)
    return rigs


class _ExportOperator(ExportHelper):
    """Shared: poll for a D-PoSE rig, check the destination, call ``_export``, report."""

    bl_options = {"REGISTER"}

    @classmethod
    def poll(cls, context):
        return _active_rig(context) is not None

    def invoke(self, context, event):
        rig = _active_rig(context)
        if rig is not None and not self.filepath:
            self.filepath = bpy.path.clean_name(rig.name) + self.filename_ext
        return ExportHelper.invoke(self, context, event)

    def execute(self, context):
        from .operators import set_report

        rigs = _selected_rigs(context)
        if not rigs:
            self.report({"ERROR"}, "Select a D-PoSE rig to export.")
            return {"CANCELLED"}
        try:
            destination = check_destination(self.filepath, rigs)
            written = self._export(context, destination, rigs)
        except (DPoseError, OSError, RuntimeError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            set_report(context.scene, f"Export failed: {text}", "ERROR")
            self.report({"ERROR"}, text)
            return {"CANCELLED"}
        set_report(context.scene, f"Exported {written.name}")
        self.report({"INFO"}, f"D-PoSE: wrote {written}")
        return {"FINISHED"}

    def _export(self, context, destination: Path, rigs: list) -> Path:
        raise NotImplementedError


class DPOSE_OT_export_npz(_ExportOperator, bpy.types.Operator):
    """Write the active D-PoSE rig's keyed motion as an SMPL-X / AMASS .npz"""

    bl_idname = "dpose.export_npz"
    bl_label = "Export Motion (.npz)"
    filename_ext = ".npz"
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})

    def _export(self, context, destination, rigs):
        from .keyframes import read_motion_keys

        return export_npz(destination, read_motion_keys(rigs[0], scene=context.scene))


class DPOSE_OT_export_fbx(_ExportOperator, bpy.types.Operator):
    """Write the selected D-PoSE rigs (and their meshes) with their animation as FBX"""

    bl_idname = "dpose.export_fbx"
    bl_label = "Export Rigs (.fbx)"
    filename_ext = ".fbx"
    filter_glob: StringProperty(default="*.fbx", options={"HIDDEN"})

    def _export(self, context, destination, rigs):
        meshes = [c for rig in rigs for c in rig.children if c.type == "MESH"]
        return export_fbx(destination, rigs + meshes)


class DPOSE_OT_export_bvh(_ExportOperator, bpy.types.Operator):
    """Write the active D-PoSE rig's animation as BVH"""

    bl_idname = "dpose.export_bvh"
    bl_label = "Export Rig (.bvh)"
    filename_ext = ".bvh"
    filter_glob: StringProperty(default="*.bvh", options={"HIDDEN"})

    def _export(self, context, destination, rigs):
        return export_bvh(destination, rigs[0])


def menu_export(self, context) -> None:
    for op in classes:
        self.layout.operator(op.bl_idname, text=f"D-PoSE {op.bl_label.split(' ', 1)[1]}")


classes = (DPOSE_OT_export_npz, DPOSE_OT_export_fbx, DPOSE_OT_export_bvh)
