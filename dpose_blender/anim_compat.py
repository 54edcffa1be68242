"""Version-portable access to actions and F-curves: the one place Blender 4.2 → 5.x differ.

Blender 4.2/4.3 keep F-curves on ``Action.fcurves`` (groups on ``Action.groups``). 4.4 adds
slotted (layered) actions: F-curves live in a channelbag of a keyframe strip, per slot, and
``Action.fcurves`` is only a legacy proxy; 5.0 removes the proxy. Every other module goes
through these functions, so the rest of the add-on never checks versions. Features are
detected (RNA properties), not version numbers, so point releases need no change here.
"""

from __future__ import annotations

from collections.abc import Iterator

import bpy


def has_slotted_actions() -> bool:
    """True from Blender 4.4 on (actions have slots, layers and channelbags)."""
    return "slots" in bpy.types.Action.bl_rna.properties


def ensure_action(owner: bpy.types.ID, name: str) -> bpy.types.Action:
    """The action animating `owner` (created and assigned if missing), with a slot for it.

    Keeps an existing action so that keying a pose or a second range adds to the same one.
    """
    anim = owner.animation_data or owner.animation_data_create()
    action = anim.action
    if action is None:
        action = bpy.data.actions.new(name)
        if has_slotted_actions():
            # Create the slot before assigning: Blender then picks it up by name.
            action.slots.new(id_type=owner.id_type, name=owner.name)
        anim.action = action
    if has_slotted_actions():
        _ensure_slot(owner, action)
    return action


def _ensure_slot(owner: bpy.types.ID, action: bpy.types.Action) -> bpy.types.ActionSlot:
    anim = owner.animation_data
    slot = anim.action_slot
    if slot is None:
        # Never borrow another object's slot of a shared action: reuse one by name only.
        usable = (owner.id_type, "UNSPECIFIED")
        slot = next(
            (s for s in action.slots
             if s.target_id_type in usable and s.name_display == owner.name),
            None,
        )
        if slot is None:
            slot = action.slots.new(id_type=owner.id_type, name=owner.name)
        # Re-assigning the slot that is already assigned crashes 4.5/5.0 on armatures:
        # only assign when none is.
        anim.action_slot = slot
    return slot


def _channelbag(owner: bpy.types.ID, create: bool):
    """The channelbag holding `owner`'s F-curves in its action (4.4+), or None."""
    anim = owner.animation_data
    if anim is None or anim.action is None:
        return None
    action = anim.action
    slot = anim.action_slot if create is False else _ensure_slot(owner, action)
    if slot is None:
        return None
    if len(action.layers) == 0:
        if not create:
            return None
        action.layers.new("Layer")
    layer = action.layers[0]
    if len(layer.strips) == 0:
        if not create:
            return None
        layer.strips.new(type="KEYFRAME")
    strip = layer.strips[0]
    if create:
        return strip.channelbag(slot, ensure=True)
    return strip.channelbag(slot)


def iter_fcurves(owner: bpy.types.ID) -> Iterator[bpy.types.FCurve]:
    """All F-curves animating `owner` through its assigned action (and slot)."""
    anim = owner.animation_data
    if anim is None or anim.action is None:
        return iter(())
    if not has_slotted_actions():
        return iter(anim.action.fcurves)
    bag = _channelbag(owner, create=False)
    return iter(bag.fcurves) if bag is not None else iter(())


def find_fcurve(owner: bpy.types.ID, data_path: str, index: int = 0) -> bpy.types.FCurve | None:
    """The F-curve for (data_path, index) in `owner`'s action, or None."""
    anim = owner.animation_data
    if anim is None or anim.action is None:
        return None
    if not has_slotted_actions():
        return anim.action.fcurves.find(data_path, index=index)
    bag = _channelbag(owner, create=False)
    return bag.fcurves.find(data_path, index=index) if bag is not None else None


def ensure_fcurve(
    owner: bpy.types.ID, data_path: str, index: int = 0, group_name: str = ""
) -> bpy.types.FCurve:
    """The F-curve for (data_path, index), created in group `group_name` if missing.

    The action must have been set up with ensure_action first.
    """
    action = owner.animation_data.action
    if not has_slotted_actions():
        fcurve = action.fcurves.find(data_path, index=index)
        if fcurve is None:
            fcurve = action.fcurves.new(data_path, index=index, action_group=group_name)
        return fcurve
    bag = _channelbag(owner, create=True)
    fcurve = bag.fcurves.find(data_path, index=index)
    if fcurve is None:
        # 4.4/4.5 channelbag.fcurves.new has no group_name argument; set the group after.
        fcurve = bag.fcurves.new(data_path, index=index)
        if group_name:
            group = bag.groups.get(group_name) or bag.groups.new(group_name)
            fcurve.group = group
    return fcurve
