"""Import the repository as the Blender extension package it is, for tests.

Inside Blender the repository root is a package (``bl_ext.<repo>.dpose``) and dpose_blender
reaches dpose_core with relative imports (``from ..dpose_core import ...``), which need that
parent package. Here the root is loaded as a package named ``dpose_ext``; its ``dpose_core``
sub-modules are the very modules of the top-level ``dpose_core`` package pytest already
imports, so classes and errors are identical objects (``pytest.raises(MotionFileError)``
and ``isinstance(m, Motion)`` work across both names).
"""

import importlib
import importlib.abc
import importlib.util
import sys
import types
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "dpose_ext"
_CORE = "dpose_core"


class _CoreAlias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Resolve ``dpose_ext.dpose_core[.x]`` to the already importable ``dpose_core[.x]``."""

    prefix = f"{PACKAGE}.{_CORE}"

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.prefix and not fullname.startswith(self.prefix + "."):
            return None
        real = importlib.import_module(_CORE + fullname[len(self.prefix):])
        return importlib.util.spec_from_loader(
            fullname, self, is_package=hasattr(real, "__path__")
        )

    def create_module(self, spec):
        return importlib.import_module(_CORE + spec.name[len(self.prefix):])

    def exec_module(self, module):
        """The real module is already executed."""


def extension_package() -> types.ModuleType:
    """The repository root imported as package ``dpose_ext`` (idempotent)."""
    if PACKAGE in sys.modules:
        return sys.modules[PACKAGE]
    if not any(isinstance(f, _CoreAlias) for f in sys.meta_path):
        sys.meta_path.insert(0, _CoreAlias())
    init = REPO_ROOT / "__init__.py"
    if init.is_file():
        spec = importlib.util.spec_from_file_location(
            PACKAGE, init, submodule_search_locations=[str(REPO_ROOT)]
        )
        module = importlib.util.module_from_spec(spec)
        sys.modules[PACKAGE] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            del sys.modules[PACKAGE]
            raise
    else:  # before the extension's __init__.py exists: an empty package over the root
        module = types.ModuleType(PACKAGE)
        module.__path__ = [str(REPO_ROOT)]
        sys.modules[PACKAGE] = module
    return module


def import_blender_module(name: str) -> types.ModuleType:
    """``import_blender_module("rig")`` -> the module ``dpose_ext.dpose_blender.rig``."""
    extension_package()
    return importlib.import_module(f"{PACKAGE}.dpose_blender.{name}")


def smplx_reference(body_model_npz, rotmats, betas, transl, pose_correctives: bool = True):
    """smplx's own SMPL-X (float64 SMPLXLayer) posed by rotation matrices: (vertices, joints55).

    rotmats (N,55,3,3), betas (11,), transl (N,3); without pose_correctives the posedirs are
    zeroed, which is what plain linear blend skinning in Blender computes.
    """
    import numpy as np
    import smplx
    import torch

    layer = smplx.SMPLXLayer(str(body_model_npz), num_betas=11, dtype=torch.float64)
    if not pose_correctives:
        layer.posedirs.zero_()
    n = rotmats.shape[0]

    def t(x):
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))

    with torch.no_grad():
        out = layer(
            betas=t(np.broadcast_to(betas, (n, 11))), global_orient=t(rotmats[:, 0:1]),
            body_pose=t(rotmats[:, 1:22]), jaw_pose=t(rotmats[:, 22:23]),
            leye_pose=t(rotmats[:, 23:24]), reye_pose=t(rotmats[:, 24:25]),
            left_hand_pose=t(rotmats[:, 25:40]), right_hand_pose=t(rotmats[:, 40:55]),
            expression=torch.zeros(n, 10, dtype=torch.float64), transl=t(transl),
        )
    return out.vertices.numpy(), out.joints.numpy()[:, :55]
