"""Undo a half-built result: if building rigs/camera/relief fails midway, remove what was made.

A job's result is applied on the main thread in several steps (collection, rigs, keys, camera,
footage, relief). An error between two steps (a rig renamed or deleted while the job ran, a
scene switched, a Blender API refusing a mode change) would otherwise leave an empty armature,
a lone collection or a camera without rigs, and a changed frame range. ``SceneSnapshot``
records which data-blocks exist and the scene settings the apply step may change, and
``restore()`` deletes the new data-blocks and timeline markers and puts those settings back.
"""

from __future__ import annotations

import bpy

# Data-block kinds the apply step creates (objects first: they use the others).
_KINDS = ("objects", "collections", "armatures", "meshes", "cameras", "actions", "materials",
          "images", "node_groups", "textures")
_SCENE_ATTRS = ("frame_start", "frame_end", "camera")
_RENDER_ATTRS = ("fps", "fps_base", "resolution_x", "resolution_y", "resolution_percentage",
                 "pixel_aspect_x", "pixel_aspect_y")


class SceneSnapshot:
    """The data-blocks and scene settings before a result is applied to ``scene``."""

    def __init__(self, scene) -> None:
        self.scene = scene
        self._ids = {kind: {id_.session_uid for id_ in getattr(bpy.data, kind)}
                     for kind in _KINDS}
        self._scene = {a: getattr(scene, a) for a in _SCENE_ATTRS}
        self._render = {a: getattr(scene.render, a) for a in _RENDER_ATTRS}
        self._markers = {m.as_pointer() for m in scene.timeline_markers}

    def new_ids(self) -> list:
        """Data-blocks created since the snapshot."""
        return [id_ for kind in _KINDS for id_ in getattr(bpy.data, kind)
                if id_.session_uid not in self._ids[kind]]

    def restore(self) -> None:
        """Remove new data-blocks and markers; put frame range, camera and render back."""
        new = self.new_ids()
        if new:
            bpy.data.batch_remove(new)
        for attr, value in self._scene.items():
            setattr(self.scene, attr, value)
        for attr, value in self._render.items():
            setattr(self.scene.render, attr, value)
        markers = self.scene.timeline_markers
        for marker in [m for m in markers if m.as_pointer() not in self._markers]:
            markers.remove(marker)


class KeysBackup:
    """An existing object's action and custom properties, put back if keying it fails.

    SceneSnapshot removes what is new; keys written onto an existing rig (Key Selected Rig)
    change what was there. Make the backup before the snapshot, so its copy of the action
    counts as existing, and ``discard()`` it after success.
    """

    def __init__(self, obj) -> None:
        self.obj = obj
        anim = obj.animation_data
        self.action = anim.action if anim is not None else None
        self.copy = self.action.copy() if self.action is not None else None
        self.props = {key: _plain(obj[key]) for key in obj.keys()}

    def restore(self) -> None:
        """The action and custom properties as they were at the backup."""
        if self.copy is not None:
            changed, name = self.obj.animation_data.action, self.action.name
            self.obj.animation_data.action = self.copy
            if changed is not None and changed != self.copy:
                bpy.data.actions.remove(changed)
            self.copy.name = name
            self.copy = None
        for key in [k for k in self.obj.keys() if k not in self.props]:
            del self.obj[key]
        for key, value in self.props.items():
            self.obj[key] = value

    def discard(self) -> None:
        if self.copy is not None:
            bpy.data.actions.remove(self.copy)
            self.copy = None


def _plain(value):
    """An ID property's value as plain Python (arrays and groups become lists and dicts)."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if hasattr(value, "to_list"):
        return value.to_list()
    return value
