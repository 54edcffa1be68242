"""Retargeting from the panel: "Retarget to Selected Armature", and the editable bone map.

The operators only pick the rigs and the files; the work is ``retarget.py`` (bake, NLA strip,
rollback on failure) and ``dpose_core.bone_maps`` (presets, checks, JSON). The panel's bone map
is a list of every bone of the target with the SMPL-X joint that drives it; it belongs to the
armature it was loaded for (``map_target``), is used by the retarget operator for that
armature and is then saved with it (``retarget.store_bone_map``), so the next retarget, in the
panel or on the farm, reuses the edits.
"""

from __future__ import annotations

import textwrap

import bpy
from bpy.props import (
    BoolProperty,
    CollectionProperty,
    EnumProperty,
    IntProperty,
    PointerProperty,
    StringProperty,
)
from bpy_extras.io_utils import ExportHelper, ImportHelper

from ..dpose_core import bone_maps
from ..dpose_core.errors import DPoseError
from ..dpose_core.skeleton import JOINT_NAMES
from .panel import SidebarPanel

NOT_DRIVEN = "NONE"
JOINT_ITEMS = [(NOT_DRIVEN, "(follows parent)", "Not driven: the bone keeps its rest pose "
                "relative to its parent")] + [(j, j, f"Driven by the SMPL-X joint {j}")
                                              for j in JOINT_NAMES]
ROOT_MOTION_ITEMS = [
    ("bone", "Root Bone", "The travel is keyed on the root (hips) bone"),
    ("object", "Object", "The travel is keyed on the armature object"),
    ("in_place", "In Place", "No travel: the character stays over its origin"),
]
PRESET_ITEMS = [("AUTO", "Stored or Detected", "The map saved with the armature, else the "
                 "preset that fits its bone names")] + [
    (p, p.capitalize() if p != "ue5" else "UE5", f"The {p} naming") for p in bone_maps.PRESETS]
REPORT_WIDTH = 44  # characters per panel line of the unmapped-bones report


def _is_armature(_self, obj) -> bool:
    return obj.type == "ARMATURE"


class DPOSE_PG_bone_map_item(bpy.types.PropertyGroup):
    """One bone of the target and the SMPL-X joint that drives it."""

    bone: StringProperty(name="Bone")
    joint: EnumProperty(name="Joint", items=JOINT_ITEMS, default=NOT_DRIVEN)


class DPOSE_PG_retarget(bpy.types.PropertyGroup):
    """The panel's retarget settings and the bone map being edited (per scene)."""

    target: PointerProperty(name="Target", type=bpy.types.Object, poll=_is_armature,
                            description="The character's armature (used when no other "
                                        "armature is selected)")
    root_motion: EnumProperty(name="Root Motion", items=ROOT_MOTION_ITEMS, default="bone")
    keep_ik: BoolProperty(name="Keep IK", default=False,
                          description="Rigify: limbs switched to IK play in IK (otherwise they "
                                      "are keyed to FK for the take; their IK controls follow)")
    map_target: StringProperty(name="Map Of", description="The armature the list belongs to")
    map_source: StringProperty(name="Map From", description="Stored, a preset name or empty")
    bone_map: CollectionProperty(type=DPOSE_PG_bone_map_item)
    bone_map_index: IntProperty(default=0)


# ----------------------------------------------------------------------------- helpers
def settings(context) -> DPOSE_PG_retarget:
    return context.scene.dpose_retarget


def panel_bone_map(s: DPOSE_PG_retarget) -> dict[str, str]:
    """The edited map {bone: joint}, bones that follow their parent left out."""
    return {item.bone: item.joint for item in s.bone_map if item.joint != NOT_DRIVEN}


def fill_bone_map(s: DPOSE_PG_retarget, target, bone_map: dict, source: str) -> None:
    """List every bone of `target` (armature order) with its joint from `bone_map`."""
    s.bone_map.clear()
    for bone in target.data.bones:
        item = s.bone_map.add()
        item.bone = bone.name
        item.joint = bone_map.get(bone.name, NOT_DRIVEN)
    s.map_target, s.map_source, s.bone_map_index = target.name, source, 0


def map_target(context):
    """The armature the panel's list belongs to (DPoseError if it is gone)."""
    s = settings(context)
    target = bpy.data.objects.get(s.map_target) if s.map_target else None
    if target is None or target.type != "ARMATURE":
        raise DPoseError("Load a bone map from a target armature first.")
    return target


def retarget_target(context, source, named: str = ""):
    """The armature to retarget onto: `named`, else the one selected armature that is not the
    source, else the panel's Target."""
    if named:
        target = bpy.data.objects.get(named)
        if target is None or target.type != "ARMATURE":
            raise DPoseError(f"There is no armature named {named!r}.")
        if target == source:
            raise DPoseError(f"{named!r} is the D-PoSE rig itself: pick the character's "
                             "armature as the target.")
        return target
    chosen = [o for o in context.selected_objects if o.type == "ARMATURE" and o != source]
    if len(chosen) > 1:
        raise DPoseError(f"{len(chosen)} armatures are selected besides the D-PoSE rig; "
                         "select only the character to retarget onto.")
    if chosen:
        return chosen[0]
    if settings(context).target is not None and settings(context).target != source:
        return settings(context).target
    raise DPoseError("Select the character's armature (the D-PoSE rig active) or pick a "
                     "Target in the Retarget panel.")


def unmapped_lines(s: DPOSE_PG_retarget, width: int = REPORT_WIDTH) -> list[str]:
    """The unmapped-bones report of the edited map, wrapped for the panel."""
    text = bone_maps.unmapped_report(panel_bone_map(s), [i.bone for i in s.bone_map])
    return textwrap.wrap(text, width)


def _fail(operator, context, text: str) -> set:
    from .operators import set_report

    set_report(context.scene, f"Retarget: {text}", "ERROR")
    operator.report({"ERROR"}, text)
    return {"CANCELLED"}


def _message(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# ----------------------------------------------------------------------------- operators
class DPOSE_OT_retarget_to_selected(bpy.types.Operator):
    """Bake the active D-PoSE rig's take onto the selected armature: a new action on its own
    NLA track, feet planted where the take has foot contacts"""

    bl_idname = "dpose.retarget_to_selected"
    bl_label = "Retarget to Selected Armature"
    bl_options = {"REGISTER", "UNDO"}

    target: StringProperty(name="Target", default="",
                           description="Armature to retarget onto (empty: the selected one, "
                                       "else the panel's Target)")
    root_motion: EnumProperty(name="Root Motion", items=ROOT_MOTION_ITEMS, default="bone")
    keep_ik: BoolProperty(name="Keep IK", default=False,
                          description="Rigify: limbs switched to IK play in IK")
    take_name: StringProperty(name="Take", default="",
                              description="Name of the action and NLA track (empty: the rig's)")

    @classmethod
    def poll(cls, context):
        from .rig import is_rig

        return is_rig(context.active_object)

    def execute(self, context):
        from . import retarget
        from .operators import set_report

        source = context.active_object
        s = settings(context)
        try:
            target = retarget_target(context, source, self.target)
            edited = panel_bone_map(s) if s.map_target == target.name and len(s.bone_map) else None
            report = retarget.retarget_rig(
                source, target, bone_map=edited, root_motion=self.root_motion,
                keep_ik=self.keep_ik, take_name=self.take_name or None, scene=context.scene)
            if edited is not None:
                retarget.store_bone_map(target, edited)  # checked by the retarget already
        except DPoseError as exc:
            return _fail(self, context, _message(exc))
        if not s.map_target:  # show the map that was used, ready to edit (never over edits)
            fill_bone_map(s, target, report.bone_map, report.preset or "stored")
        set_report(context.scene, f"Retargeted {report.message}")
        self.report({"INFO"}, f"D-PoSE: retargeted {report.message}")
        self.report({"INFO"}, f"D-PoSE: {report.unmapped}")
        return {"FINISHED"}


class DPOSE_OT_bone_map_load(bpy.types.Operator):
    """List the target's bones with the joints that drive them: the map saved with the
    armature, else the preset its bone names fit (or a preset you pick)"""

    bl_idname = "dpose.bone_map_load"
    bl_label = "Load Bone Map"
    bl_options = {"REGISTER", "UNDO"}

    preset: EnumProperty(name="Preset", items=PRESET_ITEMS, default="AUTO")

    @classmethod
    def poll(cls, context):
        return settings(context).target is not None

    def execute(self, context):
        from . import retarget

        s = settings(context)
        target = s.target
        if self.preset != "AUTO":
            bone_map = bone_maps.preset_map(self.preset, (b.name for b in target.data.bones))
            fill_bone_map(s, target, bone_map, self.preset)
            self.report({"INFO"}, f"{self.preset}: {len(bone_map)} bones mapped")
            return {"FINISHED"}
        try:
            stored = retarget.stored_bone_map(target)
            if stored is not None:
                fill_bone_map(s, target, stored, "stored")
            else:
                preset, detected = retarget.detect_bone_map(target)
                fill_bone_map(s, target, detected, preset)
        except DPoseError as exc:  # no preset fits: every bone listed, map them by hand
            fill_bone_map(s, target, {}, "")
            self.report({"WARNING"}, _message(exc))
            return {"FINISHED"}
        self.report({"INFO"}, f"{s.map_source}: {len(panel_bone_map(s))} bones mapped")
        return {"FINISHED"}


class DPOSE_OT_bone_map_store(bpy.types.Operator):
    """Save the edited bone map with the armature (used by every later retarget onto it)"""

    bl_idname = "dpose.bone_map_store"
    bl_label = "Save Map with Rig"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        return bool(settings(context).map_target)

    def execute(self, context):
        from . import retarget

        s = settings(context)
        try:
            target = map_target(context)
            retarget.store_bone_map(target, panel_bone_map(s))
        except DPoseError as exc:
            return _fail(self, context, _message(exc))
        s.map_source = "stored"
        self.report({"INFO"}, f"Bone map saved with {target.name}")
        return {"FINISHED"}


class DPOSE_OT_bone_map_export(bpy.types.Operator, ExportHelper):
    """Write the edited bone map as a JSON file"""

    bl_idname = "dpose.bone_map_export"
    bl_label = "Export Bone Map (.json)"
    bl_options = {"REGISTER"}

    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        return bool(settings(context).map_target)

    def execute(self, context):
        from .export_ops import check_destination

        try:
            path = check_destination(self.filepath, [])  # never the open .blend
            bone_maps.save_bone_map(path, panel_bone_map(settings(context)))
        except (DPoseError, OSError) as exc:
            return _fail(self, context, _message(exc))
        self.report({"INFO"}, f"D-PoSE: wrote {path}")
        return {"FINISHED"}


class DPOSE_OT_bone_map_import(bpy.types.Operator, ImportHelper):
    """Read a bone map JSON file for the target armature, check it and save it with the rig"""

    bl_idname = "dpose.bone_map_import"
    bl_label = "Import Bone Map (.json)"
    bl_options = {"REGISTER", "UNDO"}

    filename_ext = ".json"
    filter_glob: StringProperty(default="*.json", options={"HIDDEN"})

    @classmethod
    def poll(cls, context):
        return settings(context).target is not None

    def execute(self, context):
        from . import retarget

        s = settings(context)
        target = s.target
        try:
            bone_map = bone_maps.load_bone_map(bpy.path.abspath(self.filepath))
            retarget.store_bone_map(target, bone_map)  # checks it against the armature
        except DPoseError as exc:
            return _fail(self, context, _message(exc))
        fill_bone_map(s, target, bone_map, "stored")
        self.report({"INFO"}, f"{len(bone_map)} bones mapped, saved with {target.name}")
        return {"FINISHED"}


# ----------------------------------------------------------------------------- panel
class DPOSE_UL_bone_map(bpy.types.UIList):
    """Bone name and its SMPL-X joint (the list's filter finds a bone by name)."""

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname,
                  index=0):
        row = layout.row(align=True)
        row.label(text=item.bone, icon="BONE_DATA")
        row.prop(item, "joint", text="")


class DPOSE_PT_retarget(SidebarPanel, bpy.types.Panel):
    """Retarget the active D-PoSE rig onto a character: target, bone map, options."""

    bl_label = "Retarget"
    bl_parent_id = "DPOSE_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        s = settings(context)
        layout.prop(s, "target")
        target = s.target
        if target is not None and s.map_target != target.name:
            layout.label(text=f"Detected: {_detected(target)}", icon="INFO")
        row = layout.row(align=True)
        row.operator("dpose.bone_map_load", icon="FILE_REFRESH")
        row.operator("dpose.bone_map_store", icon="FILE_TICK")
        if s.map_target:
            box = layout.box()
            box.label(text=f"Bone map of {s.map_target} ({s.map_source or 'by hand'})",
                      icon="GROUP_BONE")
            box.template_list("DPOSE_UL_bone_map", "", s, "bone_map", s, "bone_map_index",
                              rows=6)
            for line in unmapped_lines(s):
                box.label(text=line)
        row = layout.row(align=True)
        row.operator("dpose.bone_map_import", text="Import Map", icon="IMPORT")
        row.operator("dpose.bone_map_export", text="Export Map", icon="EXPORT")
        layout.prop(s, "root_motion")
        layout.prop(s, "keep_ik")
        label = {"text": f"Retarget onto {target.name}"} if target is not None else {}
        op = layout.operator("dpose.retarget_to_selected", icon="ARMATURE_DATA", **label)
        op.target = target.name if target is not None else ""
        op.root_motion, op.keep_ik = s.root_motion, s.keep_ik


def _detected(target) -> str:
    from . import retarget

    if retarget.PROP_BONE_MAP in target:
        return "a map saved with the rig"
    try:
        return retarget.detect_bone_map(target)[0]
    except DPoseError:
        return "no preset fits (load and map by hand)"


classes = (DPOSE_PG_bone_map_item, DPOSE_PG_retarget, DPOSE_OT_retarget_to_selected,
           DPOSE_OT_bone_map_load, DPOSE_OT_bone_map_store, DPOSE_OT_bone_map_export,
           DPOSE_OT_bone_map_import, DPOSE_UL_bone_map, DPOSE_PT_retarget)


def register_properties() -> None:
    bpy.types.Scene.dpose_retarget = PointerProperty(type=DPOSE_PG_retarget)


def unregister_properties() -> None:
    if hasattr(bpy.types.Scene, "dpose_retarget"):
        del bpy.types.Scene.dpose_retarget
