"""Blender extension entry point: D-PoSE single-image SMPL-X motion capture.

Kept thin on purpose: the repository root is the extension root, so this file is what
Blender imports as ``bl_ext.<repository>.dpose``; everything lives in ``dpose_blender``
(Blender side) and ``dpose_core`` (plain Python, also used by the CLI and farm scripts).
"""


def register() -> None:
    from .dpose_blender import register as register_addon

    register_addon()


def unregister() -> None:
    from .dpose_blender import unregister as unregister_addon

    unregister_addon()
