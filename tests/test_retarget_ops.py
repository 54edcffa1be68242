"""Retargeting from the panel: the operator on a Mixamo-named rig built here (foot contacts read
from the D-PoSE rig), the editable bone map's round trip through JSON and the rig, and bad
input (one report, the scene as it was). The add-on is registered from the repository."""

import importlib

import numpy as np
import pytest

from dpose_core import bone_maps
from dpose_core.body_model import BodyModel
from tests.blender_support import extension_package, import_blender_module
from tests.retarget_rigs import rig_layout
from tests.test_retarget_blender import (
    BETAS,
    build_target,
    evaluated_world,
    source_rig,
)
from tests.test_retarget_core import large_motion, standing_motion

pytestmark = pytest.mark.blender
bpy = pytest.importorskip("bpy")  # collected, and skipped, where bpy is missing

retarget = import_blender_module("retarget")
retarget_ops = import_blender_module("retarget_ops")


@pytest.fixture(scope="module")
def model(body_model_npz) -> BodyModel:
    return BodyModel.load(body_model_npz)


@pytest.fixture
def addon():
    """The add-on's classes and properties registered (after the factory reset)."""
    extension_package()
    package = importlib.import_module("dpose_ext.dpose_blender")
    package.register()
    yield
    package.unregister()


def _select(active, *others):
    for obj in bpy.context.view_layer.objects:
        obj.select_set(False)
    for obj in (active, *others):
        obj.select_set(True)
    bpy.context.view_layer.objects.active = active


def _key_contacts(source, contacts):
    """The grounding stage's keyed contact curves on the rig (one key per frame)."""
    for k, name in enumerate(retarget.CONTACT_PROPS):
        source[name] = 0.0
        for i, value in enumerate(contacts[:, k]):
            source[name] = float(value)
            source.keyframe_insert(f'["{name}"]', frame=1 + i)


def _planted_slide(target, contacts, n):
    heel = np.array([evaluated_world(target, f)["mixamorig:LeftFoot"][:3, 3]
                     for f in range(1, n + 1)])[contacts[:, 0] > 0.5]
    return float(np.linalg.norm(heel - heel.mean(0), axis=1).max())


def test_retarget_to_selected_bakes_a_take_with_the_rigs_foot_contacts(addon, model):
    n = 24
    rotmats, transl, contacts = standing_motion(n)
    layout = rig_layout("mixamo", model.rest_joints(BETAS), leg_scale=1.15, roll_seed=2)
    # Without contacts on the rig the longer legs make the planted heel slide...
    plain = source_rig(model, rotmats, transl)
    loose = build_target(layout, "Loose")
    _select(plain, loose)
    assert bpy.ops.dpose.retarget_to_selected() == {"FINISHED"}
    assert _planted_slide(loose, contacts, n) > 0.01
    s = bpy.context.scene.dpose_retarget  # the map used is shown, ready to edit
    assert s.map_target == "Loose" and s.map_source == "mixamo"
    assert len(s.bone_map) == len(loose.data.bones)
    # ... with the grounding stage's contact curves on the rig, it stays within 1 cm.
    source = source_rig(model, rotmats, transl)
    _key_contacts(source, contacts)
    target = build_target(layout, "Mixamo")
    _select(source, target)
    assert bpy.ops.dpose.retarget_to_selected(root_motion="bone", take_name="stand") == {
        "FINISHED"}
    assert _planted_slide(target, contacts, n) <= 0.01
    anim = target.animation_data
    assert [t.name for t in anim.nla_tracks] == ["stand"] and anim.action is None
    assert s.map_target == "Loose"  # another rig's list is never replaced behind one's back
    assert bpy.context.scene.dpose.last_report.startswith("Retargeted stand -> Mixamo")
    np.testing.assert_array_equal(retarget.rig_contacts(source, np.arange(1, n + 1)), contacts)


def test_rig_contacts_from_arrays_constants_and_bad_lengths(addon, model):
    source = source_rig(model, *large_motion(4, seed=3))
    frames = np.arange(1, 5)
    assert retarget.rig_contacts(source, frames) is None
    source["dpose_contact_left_heel"] = [1.0, 1.0, 0.0, 0.0]
    source["dpose_contact_right_toe"] = 1.0
    np.testing.assert_array_equal(retarget.rig_contacts(source, frames),
                                  [[1, 0, 0, 1], [1, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 1]])
    source["dpose_contact_left_toe"] = [1.0, 0.0]
    with pytest.raises(Exception, match="holds 2 values for 4 frames"):
        retarget.rig_contacts(source, frames)


class _Layout:
    """Stands in for UILayout: checks each drawn property/operator/list exists."""

    def __init__(self, log):
        self.log, self.enabled, self.alert = log, True, False

    def _child(self, *args, **kwargs):
        return _Layout(self.log)

    row = column = box = split = _child

    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties, name
        self.log.append(("prop", name))

    def operator(self, idname, **kwargs):
        category, op = idname.split(".")
        assert hasattr(getattr(bpy.ops, category), op), idname
        self.log.append(("operator", idname, kwargs.get("text")))
        return type("Props", (), {})()

    def label(self, text="", **kwargs):
        self.log.append(("label", text))

    def template_list(self, list_type, list_id, data, prop, active_data, active_prop, **kw):
        assert hasattr(bpy.types, list_type) and prop in data.bl_rna.properties
        self.log.append(("list", prop, len(getattr(data, prop))))


def _draw_retarget_panel():
    log = []
    bpy.types.DPOSE_PT_retarget.draw(type("P", (), {"layout": _Layout(log)})(), bpy.context)
    return log


def test_panel_bone_map_round_trips_through_json_and_the_rig(addon, model, tmp_path):
    source = source_rig(model, *large_motion(3, seed=4))
    target = build_target(rig_layout("mixamo", model.rest_joints(BETAS)), "Hero")
    s = bpy.context.scene.dpose_retarget
    s.target = target
    log = _draw_retarget_panel()
    assert ("label", "Detected: mixamo") in log
    assert bpy.ops.dpose.bone_map_load() == {"FINISHED"}
    assert len(s.bone_map) == len(target.data.bones) and s.map_source == "mixamo"
    # Edit: the thumbs follow their parents.
    for item in s.bone_map:
        if "Thumb" in item.bone:
            item.joint = retarget_ops.NOT_DRIVEN
    edited = retarget_ops.panel_bone_map(s)
    assert len(edited) == len(target.data.bones) - 6
    log = _draw_retarget_panel()
    assert ("list", "bone_map", len(target.data.bones)) in log
    report = " ".join(e[1] for e in log if e[0] == "label")
    assert "left_thumb1" in report and f"{len(edited)} bones mapped" in report
    assert ("operator", "dpose.retarget_to_selected", "Retarget onto Hero") in log
    path = tmp_path / "hero_map.json"
    assert bpy.ops.dpose.bone_map_export(filepath=str(path)) == {"FINISHED"}
    assert bone_maps.load_bone_map(path) == edited
    # Reload from the preset (the edits are gone), then import the file: back, and saved.
    assert bpy.ops.dpose.bone_map_load(preset="mixamo") == {"FINISHED"}
    assert retarget_ops.panel_bone_map(s) != edited
    assert bpy.ops.dpose.bone_map_import(filepath=str(path)) == {"FINISHED"}
    assert retarget_ops.panel_bone_map(s) == edited and retarget.stored_bone_map(target) == edited
    # The retarget uses it (and says so in its report).
    _select(source, target)
    assert bpy.ops.dpose.retarget_to_selected() == {"FINISHED"}
    anim = target.animation_data
    assert len(anim.nla_tracks) == 1
    keyed = {fc.data_path.split('"')[1] for fc in anim_fcurves(anim.nla_tracks[0].strips[0])}
    assert "mixamorig:LeftHandThumb1" not in keyed and "mixamorig:LeftHandIndex1" in keyed
    # A map naming bones the rig lacks is refused, and nothing changes.
    bad = tmp_path / "bad.json"
    bone_maps.save_bone_map(bad, {**edited, "Tail": "jaw"})
    with pytest.raises(RuntimeError, match="lacks: Tail"):
        bpy.ops.dpose.bone_map_import(filepath=str(bad))
    assert retarget.stored_bone_map(target) == edited
    assert retarget_ops.panel_bone_map(s) == edited


def anim_fcurves(strip):
    """F-curves of an NLA strip's action (Blender 4.2 fcurves, 4.4+ the slot's channelbag)."""
    action = strip.action
    if hasattr(action, "layers") and len(action.layers):
        bag = action.layers[0].strips[0].channelbag(strip.action_slot)
        return list(bag.fcurves)
    return list(action.fcurves)


def _state(target):
    anim = target.animation_data
    return (sorted(bpy.data.objects.keys()), sorted(bpy.data.actions.keys()),
            [t.name for t in anim.nla_tracks] if anim else None,
            target.get(retarget.PROP_BONE_MAP), bpy.context.scene.frame_current)


def test_bad_input_is_one_report_and_the_scene_is_unchanged(addon, model, tmp_path):
    source = source_rig(model, *large_motion(3, seed=6))
    target = build_target(rig_layout("mixamo", model.rest_joints(BETAS)), "Hero")
    odd = build_target(rig_layout("vrm", model.rest_joints(BETAS)), "Odd")
    for bone in odd.data.bones:
        bone.name = f"bone_{bone.name}"
    before = _state(target), _state(odd)
    cases = [
        ((source, odd), {}, "No bone map preset fits"),
        ((source,), {}, "Select the character's armature"),
        ((source, target, odd), {}, "2 armatures are selected"),
        ((source,), {"target": "Nobody"}, "no armature named 'Nobody'"),
        ((source,), {"target": source.name}, "is the D-PoSE rig itself"),
    ]
    for selection, kwargs, words in cases:
        _select(*selection)
        with pytest.raises(RuntimeError, match=words):
            bpy.ops.dpose.retarget_to_selected(**kwargs)
        assert (_state(target), _state(odd)) == before
        report = bpy.context.scene.dpose
        assert report.last_report_level == "ERROR" and "\n" not in report.last_report
    # An edited map that leaves a limb out: refused, nothing stored or baked.
    s = bpy.context.scene.dpose_retarget
    s.target = target
    assert bpy.ops.dpose.bone_map_load() == {"FINISHED"}
    next(i for i in s.bone_map if i.bone == "mixamorig:LeftForeArm").joint = "NONE"
    _select(source, target)
    with pytest.raises(RuntimeError, match="not humanoid.*left_elbow"):
        bpy.ops.dpose.retarget_to_selected()
    with pytest.raises(RuntimeError, match="not humanoid"):
        bpy.ops.dpose.bone_map_store()
    assert (_state(target), _state(odd)) == before
    # No preset fits: the list still opens with every bone, ready to map by hand.
    s.target = odd
    assert bpy.ops.dpose.bone_map_load() == {"FINISHED"}
    assert len(s.bone_map) == len(odd.data.bones) and not retarget_ops.panel_bone_map(s)
