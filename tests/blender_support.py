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
