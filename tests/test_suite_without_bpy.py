"""Without Blender's bpy module, `pytest -m "not blender"` still collects every file and runs:
no test module imports bpy at collection time (tests/block_bpy.py hides it)."""

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def _pytest(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.block_bpy", "-p", "no:cacheprovider", *args],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip


def test_the_plugin_really_hides_bpy():
    result = subprocess.run(
        [sys.executable, "-c", "import tests.block_bpy\nimport bpy"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        "ModuleNotFoundError: import of bpy halted; None in sys.modules"
    )


def test_collection_without_bpy_has_no_errors():
    result = _pytest("--collect-only", "-q", "-m", "not blender")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+/\d+ tests collected \(\d+ deselected\) in .*", summary), summary


def test_a_file_mixing_blender_and_plain_tests_runs_without_bpy():
    result = _pytest("-q", "-m", "not blender", "tests/test_coords.py")
    assert result.returncode == 0, result.stdout[-3000:]
    summary = result.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"\d+ passed, [1-9]\d* deselected in .*", summary), summary
