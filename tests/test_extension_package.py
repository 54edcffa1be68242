"""Packaging: the manifest and the built zip pass Blender's validator; the zip installs into
bpy, enables, runs, and uninstalls leaving nothing registered.

The zip build downloads the runtime wheels once (PyPI; cached in wheels/downloads/, ~100 MB
for linux cp311) through the session fixture ``linux_extension_zip``.
"""

import glob
import importlib.util
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.blender

REPO = Path(__file__).resolve().parents[1]
EXT_MODULE = "bl_ext.user_default.dpose"


def _addon_utils():
    """Blender's addon_utils (importable only once bpy is imported)."""
    import importlib

    import bpy  # noqa: F401

    return importlib.import_module("addon_utils")


def _blender_ext() -> Path:
    spec = importlib.util.find_spec("bpy")
    found = glob.glob(str(Path(spec.origin).parent / "*" / "scripts" / "addons_core" / "bl_pkg"
                          / "cli" / "blender_ext.py"))
    assert found, "blender_ext.py not found in the bpy wheel"
    return Path(found[0])


def _validate(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(_blender_ext()), "validate", str(path)],
                          capture_output=True, text=True)


def test_manifest_is_valid_and_declares_the_platform_rules():
    proc = _validate(REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    manifest = tomllib.loads((REPO / "blender_manifest.toml").read_text())
    assert manifest["schema_version"] == "1.0.0"
    assert manifest["blender_version_min"] == "4.2.0"
    assert manifest["license"] == ["SPDX:GPL-3.0-or-later"]
    assert set(manifest["platforms"]) == {"linux-x64", "windows-x64", "macos-arm64"}
    for reason in manifest["permissions"].values():
        assert len(reason) <= 64 and not reason.endswith(".")
    assert "bl_info" not in (REPO / "__init__.py").read_text()


def test_manifest_rewrite_keeps_top_level_keys():
    spec = importlib.util.spec_from_file_location("dpose_wheels_build",
                                                  REPO / "wheels" / "build.py")
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    text = (REPO / "blender_manifest.toml").read_text()
    wheel = "./wheels/a-1-py3-none-any.whl"
    out = tomllib.loads(build._manifest_with(text, [wheel], ["linux-x64"]))
    assert out["wheels"] == [wheel]
    assert out["platforms"] == ["linux-x64"]
    assert out["permissions"]["files"]  # tables after the arrays are untouched


def test_linux_zip_is_valid_and_bundles_no_numpy_or_torch(linux_extension_zip):
    proc = _validate(linux_extension_zip)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    names = zipfile.ZipFile(linux_extension_zip).namelist()
    wheels = [n for n in names if n.startswith("wheels/")]
    assert any(Path(w).name.startswith("onnxruntime-") for w in wheels)
    assert any(Path(w).name.startswith("opencv_python_headless-") for w in wheels)
    bundled = {Path(w).name.split("-")[0].lower() for w in wheels}
    assert not bundled & {"numpy", "torch", "tqdm", "colorama"}
    assert "dpose_core/data/dpose_template.onnx" in names  # package data travels along
    assert not any(n.startswith(("tests/", "bench/", ".ci/")) for n in names)
    manifest = tomllib.loads(zipfile.ZipFile(linux_extension_zip).read("blender_manifest.toml")
                             .decode())
    assert sorted(manifest["wheels"]) == sorted(f"./{w}" for w in wheels)


def test_install_enable_run_uninstall(linux_extension_zip, checkpoint_path, tmp_path):
    import bpy

    addon_utils = _addon_utils()

    result = bpy.ops.extensions.package_install_files(
        filepath=str(linux_extension_zip), repo="user_default", enable_on_install=True
    )
    assert result == {"FINISHED"}
    try:
        assert EXT_MODULE in bpy.context.preferences.addons
        assert hasattr(bpy.ops.dpose, "estimate_image") and hasattr(bpy.types.Scene, "dpose")
        assert "DPOSE_PT_main" in dir(bpy.types)
        # Runs: the preferences check a checkpoint at once, through the bundled package.
        prefs = bpy.context.preferences.addons[EXT_MODULE].preferences
        prefs.checkpoint_path = str(tmp_path / "missing.ckpt")
        assert not prefs.checkpoint_ok and "No D-PoSE checkpoint" in prefs.status_checkpoint
        prefs.checkpoint_path = str(checkpoint_path)
        assert prefs.checkpoint_ok, prefs.status_checkpoint
        assert prefs.status_device.startswith("Device:")
        assert sys.modules[EXT_MODULE + ".dpose_blender"].__file__.startswith(
            str(Path(bpy.utils.user_resource("EXTENSIONS")))
        )
    finally:
        addon_utils.disable(EXT_MODULE, default_set=True)
        repo_index = [r.module for r in bpy.context.preferences.extensions.repos].index(
            "user_default")
        assert bpy.ops.extensions.package_uninstall(repo_index=repo_index, pkg_id="dpose") == {
            "FINISHED"}
    assert EXT_MODULE not in bpy.context.preferences.addons
    assert not hasattr(bpy.types.Scene, "dpose")
    assert not hasattr(bpy.types, "DPOSE_OT_estimate_image")
    assert "DPOSE_PT_main" not in dir(bpy.types)
    assert not [h for h in bpy.app.handlers.frame_change_post
                if "dpose" in getattr(h, "__module__", "")]

