"""Add-on preferences: the user's licensed files, the device, the cache, and a live status line.

The checkpoint and SMPL-X files are licensed and supplied by the user, never bundled. Each path
field has an update callback that checks the file at once (is it the D-PoSE network? is the body
model readable?) and stores the verdict in ``status_*`` strings the UI draws, so a wrong file is
visible before a job starts. The device line says what will really run (CUDA falls back to the
CPU when ONNX Runtime has no CUDA provider).
"""

from pathlib import Path

import bpy
from bpy.props import EnumProperty, StringProperty

# The top package (the extension module, e.g. "bl_ext.user_default.dpose"): Blender looks
# preferences up by that name.
ADDON_PACKAGE = __package__.rpartition(".")[0]

DEVICE_ITEMS = [
    ("AUTO", "Auto", "CUDA when ONNX Runtime can use it, else the CPU"),
    ("CUDA", "CUDA", "NVIDIA GPU through ONNX Runtime's CUDA provider (falls back to CPU)"),
    ("CPU", "CPU", "Always the CPU"),
]


def describe_checkpoint(path: str) -> tuple[bool, str]:
    """(ok, one line) for a checkpoint path, without reading its tensors."""
    from ..dpose_core.checkpoint import checkpoint_info, default_checkpoint_path
    from ..dpose_core.errors import DPoseError

    where = ""
    if not path.strip():  # jobs then use $DPOSE_CHECKPOINT or the default location
        path = str(default_checkpoint_path())
        if not Path(path).is_file():
            return False, "Set the D-PoSE checkpoint (paper_arxiv.ckpt)"
        where = f" at {path}"
    try:
        info = checkpoint_info(bpy.path.abspath(path))
    except DPoseError as exc:
        return False, str(exc).splitlines()[0]
    except OSError as exc:
        return False, f"Cannot read the checkpoint: {exc}"
    if not info.valid:
        return False, f"Not a D-PoSE checkpoint: {info.problem}"
    return True, f"D-PoSE checkpoint OK{where} ({info.network_tensors} network tensors)"


def describe_body_model(path: str, checkpoint_ok: bool) -> tuple[bool, str]:
    """(ok, one line): an explicit SMPL-X file, else the body model stored in the checkpoint."""
    from ..dpose_core.body_model import BodyModel
    from ..dpose_core.errors import DPoseError

    if not path.strip():
        if checkpoint_ok:
            return True, "Body model: SMPL-X stored in the checkpoint"
        return False, "Body model: from the checkpoint (set a valid checkpoint)"
    try:
        model = BodyModel.load(bpy.path.abspath(path))
    except DPoseError as exc:
        return False, str(exc).splitlines()[0]
    except OSError as exc:
        return False, f"Cannot read the body model: {exc}"
    return True, f"Body model OK: {Path(path).name} ({model.num_vertices} vertices)"


def resolve_device(requested: str) -> tuple[str, str]:
    """('cuda'|'cpu', explanation) for what ONNX Runtime will really use."""
    requested = requested.lower()
    if requested == "cpu":
        return "cpu", "Device: CPU"
    try:
        import onnxruntime

        providers = onnxruntime.get_available_providers()
    except ImportError:
        return "cpu", "Device: ONNX Runtime is missing (reinstall the extension)"
    if "CUDAExecutionProvider" in providers:
        return "cuda", "Device: CUDA (ONNX Runtime CUDA provider)"
    if requested == "cuda":
        return "cpu", "Device: CPU (CUDA requested, but ONNX Runtime has no CUDA provider)"
    return "cpu", "Device: CPU (no CUDA provider available)"


def default_cache_dir() -> str:
    """Per-user extension storage; falls back to the core's cache outside an extension."""
    try:
        return bpy.utils.extension_path_user(ADDON_PACKAGE, create=True)
    except (ValueError, AttributeError, RuntimeError):
        from ..dpose_core.onnx_model import default_cache_dir as core_cache

        return str(core_cache())


def refresh_status(prefs) -> None:
    ok, text = describe_checkpoint(prefs.checkpoint_path)
    prefs.status_checkpoint = text
    prefs.checkpoint_ok = ok
    prefs.status_body_model = describe_body_model(prefs.body_model_path, ok)[1]
    prefs.status_device = resolve_device(prefs.device)[1]


def refresh_checkpoint_status(prefs=None) -> None:
    """Re-check the checkpoint line when the add-on starts: the saved verdict may be stale
    (file moved, or supplied by $DPOSE_CHECKPOINT / the default location)."""
    prefs = prefs if prefs is not None else get_preferences()
    if prefs is None:
        return
    ok, text = describe_checkpoint(prefs.checkpoint_path)
    if (ok, text) != (prefs.checkpoint_ok, prefs.status_checkpoint):  # keep prefs clean
        prefs.status_checkpoint, prefs.checkpoint_ok = text, ok


def _on_change(self, context) -> None:
    refresh_status(self)


class DPOSE_AddonPreferences(bpy.types.AddonPreferences):
    bl_idname = ADDON_PACKAGE

    checkpoint_path: StringProperty(
        name="Checkpoint",
        description="The D-PoSE checkpoint (paper_arxiv.ckpt), downloaded from the authors",
        subtype="FILE_PATH",
        update=_on_change,
    )
    body_model_path: StringProperty(
        name="SMPL-X Model",
        description="Optional SMPLX_NEUTRAL.npz/.pkl; empty = the body model inside the checkpoint",
        subtype="FILE_PATH",
        update=_on_change,
    )
    device: EnumProperty(name="Device", items=DEVICE_ITEMS, default="AUTO", update=_on_change)
    cache_dir: StringProperty(
        name="Cache Folder",
        description="Where the converted network is kept; empty = per-user extension storage",
        subtype="DIR_PATH",
    )
    status_checkpoint: StringProperty(default="Set the D-PoSE checkpoint (paper_arxiv.ckpt)")
    status_body_model: StringProperty(default="Body model: from the checkpoint")
    status_device: StringProperty(default="")
    checkpoint_ok: bpy.props.BoolProperty(default=False)

    def draw(self, context) -> None:
        layout = self.layout
        col = layout.column()
        col.prop(self, "checkpoint_path")
        col.prop(self, "body_model_path")
        col.prop(self, "device")
        col.prop(self, "cache_dir")
        if not self.cache_dir:
            col.label(text=f"Cache: {default_cache_dir()}")
        draw_status(col, self)
        layout.label(
            text="The checkpoint and SMPL-X are licensed by their authors: follow their terms.",
            icon="INFO",
        )


def draw_status(layout, prefs) -> None:
    box = layout.box()
    box.label(text=prefs.status_checkpoint, icon="CHECKMARK" if prefs.checkpoint_ok else "ERROR")
    box.label(text=prefs.status_body_model, icon="MESH_DATA")
    box.label(text=prefs.status_device or resolve_device(prefs.device)[1], icon="SETTINGS")


def get_preferences(context=None):
    """The add-on preferences, or None when the add-on is imported without being enabled."""
    context = context or bpy.context
    addon = context.preferences.addons.get(ADDON_PACKAGE)
    return addon.preferences if addon is not None else None


classes = (DPOSE_AddonPreferences,)
