"""The Blender side of D-PoSE: preferences, operators, the sidebar panel and scene helpers.

``register()``/``unregister()`` are called by the thin extension ``__init__`` at the repository
root. Classes register in order (preferences, property groups, operators, panels) and unregister
in reverse; the depth-relief frame handler and any running job are stopped on unregister so
nothing stays behind (a timer left registered at exit hangs or crashes bpy 4.2/4.5).
"""

from __future__ import annotations

_registered: list = []


def _class_modules():
    from . import export_ops, operators, panel, preferences, retarget_ops

    return (preferences, operators, export_ops, panel, retarget_ops)


def register() -> None:
    import bpy

    from . import depth_plane, operators, preferences, retarget_ops

    for module in _class_modules():
        for cls in module.classes:
            bpy.utils.register_class(cls)
            _registered.append(cls)
    operators.register_properties()
    retarget_ops.register_properties()
    operators.register_handlers()
    operators.register_menus()
    depth_plane.register()
    preferences.refresh_checkpoint_status()


def unregister() -> None:
    import bpy

    from . import depth_plane, evidence, jobs, operators, retarget_ops

    jobs.cancel_all()
    operators.unregister_timers()
    operators.unregister_handlers()
    operators.unregister_menus()
    depth_plane.unregister()
    evidence.release_icons()
    operators.unregister_properties()
    retarget_ops.unregister_properties()
    while _registered:
        cls = _registered.pop()
        if getattr(cls, "is_registered", True):
            bpy.utils.unregister_class(cls)
