"""Render-farm entry: footage in, a .blend (and motion exports) out, no UI.

    blender -b [scene.blend] --python <extension>/dpose_blender/headless.py -- \\
        --input PATH --output out.blend [--npz motion.npz] [--fbx out.fbx] [--bvh out.bvh] \\
        [--checkpoint CKPT] [--device cpu|cuda|auto] [--start N] [--end N] [--stride N] \\
        [--person all|largest|N] [--smooth S] [--fov DEG] [--mesh] [--depth-plane]
    python dpose_blender/headless.py -- ...        (same, with the bpy wheel as a module)

It runs as a script, not as part of the package: ``bootstrap()`` finds the extension root (the
folder above this file, holding ``__init__.py`` and ``blender_manifest.toml``), imports it as a
package without touching ``sys.path`` (or reuses it when Blender already loaded the extension)
and calls ``main()`` of this same module inside the package. Exit codes: 0 success, 2 bad
input (missing checkpoint, empty input, unwritable output: one ``error:`` line), 1 a failure
while running, 130 cancelled. Progress is printed one line per batch of frames.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CANCELLED = 0, 1, 2, 130
PACKAGE_ALIAS = "dpose_extension"


class UsageError(Exception):
    """A bad command line or input: reported as one line, exit code 2."""


def script_args(argv: list[str]) -> list[str]:
    """The arguments after ``--`` (Blender passes its own before it); all of them otherwise."""
    if "--" in argv:
        return argv[argv.index("--") + 1 :]
    return argv[1:] if argv and not _is_blender_binary(argv[0]) else []


def _is_blender_binary(arg0: str) -> bool:
    return Path(arg0).name.lower().startswith("blender")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="headless.py",
        description="D-PoSE: images, an image folder or a video -> SMPL-X rigs in a .blend.",
    )
    p.add_argument("--input", required=True, help="an image, a folder of images or a video file")
    p.add_argument("--output", required=True, help="the .blend file to write")
    p.add_argument("--npz", help="also write the motion as an SMPL-X/AMASS .npz")
    p.add_argument("--fbx", help="also export the rigs to FBX")
    p.add_argument("--bvh", help="also export the first rig's animation to BVH")
    p.add_argument("--checkpoint", help="paper_arxiv.ckpt (default: $DPOSE_CHECKPOINT, then the "
                   "add-on preferences, then ~/.local/share/dpose/paper_arxiv.ckpt)")
    p.add_argument("--body-model", help="SMPL-X model file (default: the checkpoint's own)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--cache-dir", help="where the converted network is cached")
    p.add_argument("--start", type=int, default=0, help="first source frame (0-based)")
    p.add_argument("--end", type=int, default=None, help="stop before this source frame")
    p.add_argument("--stride", type=int, default=1, help="use every N-th frame")
    p.add_argument("--person", type=_parse_person, default="all",
                   help="'all', 'largest' or a track number")
    p.add_argument("--bbox", type=_parse_box, default=None, metavar="X0,Y0,X1,Y1",
                   help="the person's box in pixels on every frame (default: find people)")
    p.add_argument("--smooth", type=float, default=0.5, help="smoothing strength 0 (off) to 1")
    p.add_argument("--fov", type=float, default=None,
                   help="field of view in degrees across the longer image side (default: the "
                        "image diagonal as focal length, like the network)")
    p.add_argument("--frame-start", type=int, default=1, help="scene frame of the first frame")
    p.add_argument("--mesh", action="store_true", help="add the skinned SMPL-X mesh")
    p.add_argument("--depth-plane", action="store_true", help="add the depth relief")
    return p


def _parse_person(text: str) -> str:
    if text in ("all", "largest") or text.isdigit():
        return text
    raise argparse.ArgumentTypeError(f"expected 'all', 'largest' or a track number, got {text!r}")


def _parse_box(text: str) -> tuple[float, float, float, float]:
    try:
        x0, y0, x1, y1 = (float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected X0,Y0,X1,Y1 in pixels, got {text!r}") from exc
    if not (x1 > x0 and y1 > y0):
        raise argparse.ArgumentTypeError(f"need X0 < X1 and Y0 < Y1, got {text!r}")
    return x0, y0, x1, y1


def _check_writable(path: str, what: str) -> Path:
    target = Path(path).expanduser().resolve()
    parent = target.parent
    if target.is_dir():
        raise UsageError(f"{what} {target} is a folder; give a file name.")
    if not parent.is_dir():
        raise UsageError(f"cannot write {what} {target}: the folder {parent} does not exist.")
    if not os.access(parent, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"cannot write {what} {target}: permission denied.")
    try:  # os.access says yes to root and on read-only mounts: try a file there for real
        with tempfile.NamedTemporaryFile(dir=parent, prefix=".dpose-write-test-"):
            pass
    except OSError as exc:
        raise UsageError(f"cannot write {what} {target}: {exc.strerror or exc}.") from exc
    return target


def validate_args(args: argparse.Namespace) -> argparse.Namespace:
    """Fail fast, before any network work, on each input a farm job can get wrong."""
    from ..dpose_core import frames
    from ..dpose_core.checkpoint import checkpoint_info, resolve_checkpoint
    from ..dpose_core.errors import DPoseError

    args.output = str(_check_writable(args.output, "the output .blend"))
    if not args.output.lower().endswith(".blend"):
        raise UsageError(f"the output {args.output} must end in .blend.")
    for name in ("npz", "fbx", "bvh"):
        if getattr(args, name):
            setattr(args, name, str(_check_writable(getattr(args, name), f"the {name} file")))
    checkpoint = args.checkpoint or _checkpoint_from_preferences()
    try:
        args.checkpoint = str(resolve_checkpoint(checkpoint))
        info = checkpoint_info(args.checkpoint)  # reads no tensors: tens of milliseconds
    except DPoseError as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc
    if not info.valid:
        raise UsageError(f"{args.checkpoint} is not the D-PoSE checkpoint: {info.problem}")
    if args.body_model and not Path(args.body_model).expanduser().is_file():
        raise UsageError(f"no SMPL-X body model at {args.body_model}.")
    if args.stride < 1 or args.start < 0 or (args.end is not None and args.end <= args.start):
        raise UsageError(f"bad frame range --start {args.start} --end {args.end} "
                         f"--stride {args.stride}: need 0 <= start < end and stride >= 1.")
    if not 0.0 <= args.smooth <= 1.0:
        raise UsageError(f"--smooth must be between 0 and 1, got {args.smooth}.")
    if args.fov is not None and not 1.0 <= args.fov <= 179.0:
        raise UsageError(f"--fov must be between 1 and 179 degrees, got {args.fov}.")
    source = Path(args.input).expanduser()
    if not source.exists():
        raise UsageError(f"the input {source} does not exist.")
    try:
        opened = frames.open_frames(source, start=args.start, end=args.end, stride=args.stride)
    except DPoseError as exc:
        raise UsageError(str(exc).splitlines()[0]) from exc
    if opened.kind != "video" and len(opened) == 0:
        raise UsageError(f"the input {source} has no frames in the range "
                         f"{args.start}..{args.end} (stride {args.stride}).")
    args.input = str(source.resolve())
    return args


def _checkpoint_from_preferences() -> str | None:
    """The checkpoint set in the add-on preferences when Blender has the extension enabled."""
    if os.environ.get("DPOSE_CHECKPOINT"):
        return None  # resolve_checkpoint reads the environment itself
    try:
        from .preferences import get_preferences

        prefs = get_preferences()
    except Exception:  # noqa: BLE001 - preferences are optional here
        return None
    return prefs.checkpoint_path if prefs is not None and prefs.checkpoint_path else None


def run(args: argparse.Namespace, *, out=print) -> int:
    """Do the job with validated args; returns the exit code."""
    from ..dpose_core.errors import CancelledError, DPoseError
    from . import sequence_job

    try:
        settings = sequence_job.SequenceSettings.from_namespace(args)
        out(f"D-PoSE: loading {Path(args.checkpoint).name} ({args.device}) ...")
        estimator = sequence_job.load_estimator(
            args.checkpoint, device=args.device, body_model=args.body_model,
            cache_dir=args.cache_dir,
        )
        out(f"D-PoSE: {estimator.backend} on {estimator.device}; input {args.input}")
        result = sequence_job.run_sequence(
            estimator, settings, progress=lambda p: out(f"D-PoSE: {p.text()}"),
            warn=lambda text: out(f"warning: {text}"),
        )
        if not result.motions:
            out(f"error: no person was found in {args.input}.")
            return EXIT_FAILED
        created = sequence_job.apply_sequence_result(
            _scene(), result, settings, estimator=estimator
        )
        sequence_job.save_outputs(
            created, result, blend=args.output, npz=args.npz, fbx=args.fbx, bvh=args.bvh
        )
    except (CancelledError, KeyboardInterrupt) as exc:
        out(f"error: cancelled {exc}".rstrip())
        return EXIT_CANCELLED
    except DPoseError as exc:
        out(f"error: {str(exc).splitlines()[0]}")
        return EXIT_FAILED
    except Exception as exc:  # noqa: BLE001 - Blender exits 0 after a script's exception
        import traceback

        traceback.print_exc()
        out(f"error: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}")
        return EXIT_FAILED
    n_keys = sum(len(m) for m in result.motions.values())
    out(f"D-PoSE: wrote {args.output} ({len(result.motions)} rig(s), {n_keys} posed frames, "
        f"{len(result.failures)} frame(s) skipped)")
    return EXIT_OK


def _scene():
    import bpy

    return bpy.context.scene


def main(argv: list[str] | None = None, *, out=print) -> int:
    """Parse, validate and run; returns the exit code (never raises for bad input)."""
    argv = sys.argv if argv is None else argv
    parser = build_parser()
    try:
        args = parser.parse_args(script_args(argv))
    except SystemExit as exc:  # argparse already printed the usage line
        return EXIT_BAD_INPUT if exc.code else EXIT_OK
    try:
        validate_args(args)
    except UsageError as exc:
        out(f"error: {exc}")
        return EXIT_BAD_INPUT
    return run(args, out=out)


# ------------------------------------------------------------------------ script bootstrap
def extension_root() -> Path:
    """The folder holding the extension's ``__init__.py`` and manifest (one above this file)."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "__init__.py").is_file():
        raise SystemExit(f"error: {root} is not the D-PoSE extension folder (no __init__.py).")
    return root


def bootstrap():
    """Import the extension root as a package (reusing Blender's copy if it is loaded)."""
    root = extension_root()
    init = str(root / "__init__.py")
    for name, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) and os.path.abspath(module.__file__) == init:
            return importlib.import_module(f"{name}.dpose_blender.headless")
    spec = importlib.util.spec_from_file_location(
        PACKAGE_ALIAS, init, submodule_search_locations=[str(root)]
    )
    package = importlib.util.module_from_spec(spec)
    sys.modules[PACKAGE_ALIAS] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{PACKAGE_ALIAS}.dpose_blender.headless")


def _script_main() -> None:
    code = bootstrap().main(sys.argv)
    sys.stdout.flush()
    sys.exit(code)


if __name__ == "__main__":
    _script_main()
