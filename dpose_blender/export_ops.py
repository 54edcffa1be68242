"""Export operators for the panel and File > Export: .npz, FBX (per-engine preset), BVH, glTF.

Each operator only picks the file and the objects (the active D-PoSE rig for .npz; for FBX,
BVH and glTF the active armature, any character's included, with the other selected armatures
and their meshes) and calls the one export code path, ``exports.py``, which writes atomically,
keeps every key and leaves the scene as it was. Here we also refuse a destination that is an
input a rig was made from (its provenance) or the open .blend.
"""

from __future__ import annotations

from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty
from bpy_extras.io_utils import ExportHelper

from ..dpose_core.errors import DPoseError

FBX_PRESET_ITEMS = [
    ("blender", "Blender", "Comes back unchanged in Blender (metres, all bones)"),
    ("unreal", "Unreal Engine", "Centimetre units as Unreal reads them, deform bones only"),
    ("unity", "Unity", "Scale and axis change baked in, deform bones only"),
]


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


def _active_armature(context):
    obj = context.active_object
    return obj if obj is not None and obj.type == "ARMATURE" else None


def _selected_armatures(context, only_rigs: bool) -> list:
    """The active armature first, then the other selected ones (D-PoSE rigs only if asked)."""
    from .rig import is_rig

    wanted = is_rig if only_rigs else (lambda o: o is not None and o.type == "ARMATURE")
    active = context.active_object
    found = [active] if wanted(active) else []
    return found + [o for o in context.selected_objects if wanted(o) and o not in found]


def _with_meshes(armatures: list) -> list:
    return armatures + [c for a in armatures for c in a.children if c.type == "MESH"]


class _ExportOperator(ExportHelper):
    """Shared: poll, check the destination, call ``_export`` (exports.py), report."""

    bl_options = {"REGISTER"}
    only_rigs = False  # True: D-PoSE rigs only (the SMPL-X .npz)

    @classmethod
    def poll(cls, context):
        return (_active_rig(context) if cls.only_rigs else _active_armature(context)) is not None

    def invoke(self, context, event):
        obj = context.active_object
        if obj is not None and not self.filepath:
            self.filepath = bpy.path.clean_name(obj.name) + self.filename_ext
        return ExportHelper.invoke(self, context, event)

    def execute(self, context):
        from .operators import set_report

        armatures = _selected_armatures(context, self.only_rigs)
        if not armatures:
            what = "a D-PoSE rig" if self.only_rigs else "an armature"
            self.report({"ERROR"}, f"Select {what} to export.")
            return {"CANCELLED"}
        try:
            destination = check_destination(self.filepath, armatures)
            written = self._export(context, destination, armatures)
        except (DPoseError, OSError, RuntimeError) as exc:
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            set_report(context.scene, f"Export failed: {text}", "ERROR")
            self.report({"ERROR"}, text)
            return {"CANCELLED"}
        set_report(context.scene, f"Exported {written.name}")
        self.report({"INFO"}, f"D-PoSE: wrote {written}")
        return {"FINISHED"}

    def _export(self, context, destination: Path, armatures: list) -> Path:
        raise NotImplementedError


class DPOSE_OT_export_npz(_ExportOperator, bpy.types.Operator):
    """Write the active D-PoSE rig's keyed motion as an SMPL-X / AMASS .npz"""

    bl_idname = "dpose.export_npz"
    bl_label = "Export Motion (.npz)"
    filename_ext = ".npz"
    filter_glob: StringProperty(default="*.npz", options={"HIDDEN"})
    only_rigs = True

    def _export(self, context, destination, armatures):
        from . import exports
        from .keyframes import read_motion_keys

        return exports.export_npz(destination, read_motion_keys(armatures[0],
                                                                scene=context.scene))


class DPOSE_OT_export_fbx(_ExportOperator, bpy.types.Operator):
    """Write the selected armatures (and their meshes) with every key of their animation as
    FBX, set up for Blender, Unreal Engine or Unity"""

    bl_idname = "dpose.export_fbx"
    bl_label = "Export Rigs (.fbx)"
    filename_ext = ".fbx"
    filter_glob: StringProperty(default="*.fbx", options={"HIDDEN"})
    preset: EnumProperty(name="For", items=FBX_PRESET_ITEMS, default="blender",
                         description="The application the file is for")

    def _export(self, context, destination, armatures):
        from . import exports

        return exports.export_fbx(destination, _with_meshes(armatures), self.preset,
                                  scene=context.scene)


class DPOSE_OT_export_bvh(_ExportOperator, bpy.types.Operator):
    """Write the active armature's animation as a Y-up BVH (imports the right way up)"""

    bl_idname = "dpose.export_bvh"
    bl_label = "Export Rig (.bvh)"
    filename_ext = ".bvh"
    filter_glob: StringProperty(default="*.bvh", options={"HIDDEN"})

    def _export(self, context, destination, armatures):
        from . import exports

        return exports.export_bvh(destination, armatures[0], scene=context.scene)


class DPOSE_OT_export_gltf(_ExportOperator, bpy.types.Operator):
    """Write the selected armatures (and their meshes) with their animation as binary glTF"""

    bl_idname = "dpose.export_gltf"
    bl_label = "Export Rigs (.glb)"
    filename_ext = ".glb"
    filter_glob: StringProperty(default="*.glb", options={"HIDDEN"})

    def _export(self, context, destination, armatures):
        from . import exports

        return exports.export_gltf(destination, _with_meshes(armatures), scene=context.scene)


def menu_export(self, context) -> None:
    for op in classes:
        self.layout.operator(op.bl_idname, text=f"D-PoSE {op.bl_label.split(' ', 1)[1]}")


classes = (DPOSE_OT_export_npz, DPOSE_OT_export_fbx, DPOSE_OT_export_bvh, DPOSE_OT_export_gltf)
