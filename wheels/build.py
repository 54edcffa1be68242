"""Build the Blender extension zips: download runtime wheels, write the manifest, build, validate.

    python wheels/build.py                                  # all platforms, cp311 + cp313
    python wheels/build.py --platform linux-x64 --python 3.11 --output-dir dist

What runs inside Blender besides Blender's own Python and numpy: ONNX Runtime (the network)
and OpenCV headless (video decoding), plus their dependencies (flatbuffers, packaging,
protobuf, ...); the command line's progress bar (tqdm) stays out. numpy is never bundled
(Blender's own always wins and the wheel would only add megabytes) and torch never is (the
runtime does not need it). Wheels are downloaded once with
``pip download --only-binary=:all:`` per (platform, Python) into ``wheels/downloads/`` (git-ignored)
and reused. The source tree is staged into ``build/extension/`` with the wheels and a copy of
``blender_manifest.toml`` whose ``wheels`` and ``platforms`` lists are rewritten, then Blender's own
extension tool (``blender_ext.py`` from the bpy wheel, or ``--blender-ext``) builds one zip per
platform (``--split-platforms``) and validates each. The committed manifest is left untouched
unless ``--update-manifest`` is given.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOWNLOADS = ROOT / "wheels" / "downloads"
STAGE = ROOT / "build" / "extension"
MANIFEST = "blender_manifest.toml"

# Runtime requirements inside Blender. opencv 4.11 is abi3 and works with numpy 1.26 and 2.x
# (4.12+ needs numpy 2, which Blender 4.2-5.0 do not ship).
REQUIREMENTS = ["onnxruntime==1.31.1", "opencv-python-headless==4.11.0.86"]
# onnxruntime 1.24+ ships macOS wheels for macOS 14+ only; 1.23.2 is the newest for macOS 13.
PLATFORM_PINS = {"macos-arm64": {"onnxruntime": "onnxruntime==1.23.2"}}
NEVER_BUNDLE = {"numpy", "torch", "onnxruntime_gpu", "onnxruntime-gpu"}

PLATFORM_TAGS = {
    "linux-x64": ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                  "manylinux2014_x86_64"],
    "windows-x64": ["win_amd64"],
    "macos-arm64": ["macosx_14_0_arm64", "macosx_13_0_arm64", "macosx_12_0_arm64",
                    "macosx_11_0_arm64", "macosx_10_9_universal2", "macosx_11_0_universal2"],
}
PYTHONS = ["3.11", "3.13"]  # Blender 4.2-5.0 and 5.1+

# Copied into the package; everything else (tests, bench, CI, wheels tooling) stays out.
SOURCE_ITEMS = ["__init__.py", MANIFEST, "dpose_core", "dpose_blender", "LICENSE", "README.md"]


def find_blender_ext() -> Path:
    """Blender's extension tool shipped inside the bpy wheel (no Blender binary needed)."""
    spec = importlib.util.find_spec("bpy")
    if spec is None or spec.origin is None:
        raise SystemExit("error: bpy is not installed here; pass --blender-ext PATH/blender_ext.py")
    pattern = str(Path(spec.origin).parent / "*" / "scripts" / "addons_core" / "bl_pkg" / "cli"
                  / "blender_ext.py")
    found = sorted(glob.glob(pattern))
    if not found:
        raise SystemExit(f"error: blender_ext.py not found under {Path(spec.origin).parent}")
    return Path(found[-1])


def _dist_name(wheel: Path) -> str:
    return re.sub(r"[-_.]+", "_", wheel.name.split("-")[0]).lower()


def download_wheels(platform: str, python: str, *, offline: bool = False) -> list[Path]:
    """pip-download the runtime wheels for one (platform, Python); cached by requirement list."""
    pins = PLATFORM_PINS.get(platform, {})
    reqs = [pins.get(re.split(r"[=<>!~ ]", r, maxsplit=1)[0], r) for r in REQUIREMENTS]
    folder = DOWNLOADS / f"{platform}-cp{python.replace('.', '')}"
    stamp = folder / ".requirements"
    wanted = "\n".join(reqs + PLATFORM_TAGS[platform])
    if not (stamp.is_file() and stamp.read_text() == wanted):
        if offline:
            raise SystemExit(f"error: no cached wheels for {platform} cp{python} in {folder} "
                             "(run without --offline once, with access to PyPI)")
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
               "--only-binary=:all:", "--implementation", "cp", "--python-version", python,
               "--dest", str(folder)]
        for tag in PLATFORM_TAGS[platform]:
            cmd += ["--platform", tag]
        print(f"downloading wheels for {platform} cp{python} ...", flush=True)
        subprocess.run(cmd + reqs, check=True, stdout=subprocess.DEVNULL)
        stamp.write_text(wanted)
    wheels = sorted(folder.glob("*.whl"))
    return [w for w in wheels if _dist_name(w) not in {n.replace("-", "_") for n in NEVER_BUNDLE}]


def _manifest_with(text: str, wheels: list[str], platforms: list[str]) -> str:
    """Rewrite (or add) the top-level ``platforms`` and ``wheels`` arrays of a manifest."""
    def array(name: str, values: list[str]) -> str:
        body = "".join(f'  "{v}",\n' for v in values)
        return f"{name} = [\n{body}]\n\n"

    for name, values in (("platforms", platforms), ("wheels", wheels)):
        pattern = re.compile(rf"^{name}\s*=\s*\[[^\]]*\]\s*\n", re.MULTILINE)
        if pattern.search(text):
            text = pattern.sub(lambda _m, n=name, v=values: array(n, v), text, count=1)
        else:  # insert before the first table so it stays a top-level key
            first_table = re.search(r"^\[", text, re.MULTILINE)
            at = first_table.start() if first_table else len(text)
            text = text[:at] + array(name, values) + "\n" + text[at:]
    return text


def stage_source(wheels: list[Path], platforms: list[str], stage: Path = STAGE) -> Path:
    """Copy the extension sources + wheels into ``stage`` with the rewritten manifest."""
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for item in SOURCE_ITEMS:
        src = ROOT / item
        if src.is_dir():
            shutil.copytree(src, stage / item, ignore=ignore)
        elif src.is_file():
            shutil.copy2(src, stage / item)
    (stage / "wheels").mkdir()
    names = []
    for wheel in wheels:
        shutil.copy2(wheel, stage / "wheels" / wheel.name)
        names.append(f"./wheels/{wheel.name}")
    manifest = (ROOT / MANIFEST).read_text(encoding="utf-8")
    (stage / MANIFEST).write_text(_manifest_with(manifest, names, platforms), encoding="utf-8")
    return stage


def run_blender_ext(blender_ext: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(blender_ext), *args], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        raise SystemExit(f"error: blender_ext {args[0]} failed:\n{proc.stdout}{proc.stderr}")
    return proc.stdout


def build(platforms: list[str], pythons: list[str], output_dir: Path, *,
          blender_ext: Path | None = None, offline: bool = False,
          update_manifest: bool = False, stage_dir: Path = STAGE) -> list[Path]:
    """Download, stage, build one zip per platform, validate; returns the zip paths."""
    blender_ext = blender_ext or find_blender_ext()
    wheels: dict[str, Path] = {}
    for platform in platforms:
        for python in pythons:
            for wheel in download_wheels(platform, python, offline=offline):
                wheels.setdefault(wheel.name, wheel)
    ordered = sorted(wheels.values(), key=lambda w: w.name.lower())
    stage = stage_source(ordered, platforms, stage_dir)
    if update_manifest:
        shutil.copy2(stage / MANIFEST, ROOT / MANIFEST)
    output_dir.mkdir(parents=True, exist_ok=True)
    meta = tomllib.loads((ROOT / MANIFEST).read_text(encoding="utf-8"))
    expected = [output_dir / f"{meta['id']}-{meta['version']}-{pl.replace('-', '_')}.zip"
                for pl in platforms]
    for old in expected:
        old.unlink(missing_ok=True)
    run_blender_ext(blender_ext, "build", "--source-dir", str(stage), "--output-dir",
                    str(output_dir), "--split-platforms")
    zips = [z for z in expected if z.is_file()]
    if len(zips) != len(expected):
        raise SystemExit(f"error: blender_ext did not write {[str(z) for z in expected]}")
    for z in zips:
        run_blender_ext(blender_ext, "validate", str(z))
        print(f"built {z} ({z.stat().st_size / 1e6:.1f} MB, sha256 {_sha256(z)[:16]})", flush=True)
    return zips


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--platform", action="append", choices=sorted(PLATFORM_TAGS),
                        help="repeatable; default: all three")
    parser.add_argument("--python", action="append", choices=PYTHONS,
                        help="repeatable; default: 3.11 and 3.13")
    parser.add_argument("--output-dir", type=Path, default=ROOT / "dist")
    parser.add_argument("--blender-ext", type=Path, default=None,
                        help="path to blender_ext.py (default: the one inside the bpy wheel)")
    parser.add_argument("--stage-dir", type=Path, default=STAGE,
                        help="scratch folder for the package contents (default: build/extension)")
    parser.add_argument("--offline", action="store_true", help="use cached downloads only")
    parser.add_argument("--update-manifest", action="store_true",
                        help="also write the wheels list into the repository's manifest")
    parser.add_argument("--json", action="store_true", help="print the zip paths as JSON")
    args = parser.parse_args(argv)
    zips = build(args.platform or list(PLATFORM_TAGS), args.python or PYTHONS,
                 args.output_dir.resolve(), blender_ext=args.blender_ext, offline=args.offline,
                 update_manifest=args.update_manifest, stage_dir=args.stage_dir.resolve())
    if args.json:
        print(json.dumps([str(z) for z in zips]))
    return 0 if zips else 1


if __name__ == "__main__":
    os.environ.setdefault("PIP_DISABLE_PIP_VERSION_CHECK", "1")
    sys.exit(main())
