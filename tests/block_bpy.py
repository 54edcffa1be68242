"""pytest plugin (`-p tests.block_bpy`): make `import bpy` fail, as on a machine without Blender.

Used by tests/test_collection.py to prove that the bpy-free part of the suite collects and runs
without the bpy module."""

import sys

for _name in ("bpy", "bpy_extras", "mathutils", "bmesh", "addon_utils"):
    sys.modules[_name] = None  # the import system raises ImportError for a None entry
