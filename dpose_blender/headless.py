"""Render-farm entry: footage in, a .blend (and motion exports) out, no UI.

    blender -b [scene.blend] --python <extension>/dpose_blender/headless.py -- \\
        --input PATH --output out.blend [--npz motion.npz] [--fbx out.fbx] [--bvh out.bvh] \\
        [--gltf out.glb] [--fbx-preset blender|unreal|unity] \\
        [--retarget-to ARMATURE [--bone-map map.json] [--root-motion bone|object|in_place]] \\
        [--checkpoint CKPT] [--device cpu|cuda|auto] [--start N] [--end N] [--stride N] \\
        [--fps F] [--person all|largest|N] [--bbox X0,Y0,X1,Y1] [--smooth S] [--fov DEG] \\
        [--mesh] [--depth-plane] [--overlay] [--low-part-iou X] [--no-part-scores]
        [--frame-start N] [--ground auto|none|off] [--foot-lock F] [--subject-height M]
        [--camera NAME] [--floor] [--report R.json]
    python dpose_blender/headless.py -- ...        (same, with the bpy wheel as a module)

A thin adapter, like the panel's jobs: the arguments become the core's ``RunOptions``
(one meaning per option, checked before any work), ``dpose_core.pipeline`` estimates, the
one scene builder (``scene_builder``) makes the rigs, and the exports are written atomically.
It runs as a script, not as part of the package: ``bootstrap()`` finds the extension root (the
folder above this file, holding ``__init__.py`` and ``blender_manifest.toml``), imports it as a
package without touching ``sys.path`` (or reuses it when Blender already loaded the extension)
and calls ``main()`` of this same module inside the package. Exit codes: 0 success (skipped
frames are reported with ``warning:`` lines); 2 bad input (a missing or wrong checkpoint or
body model, an empty or unreadable input, nobody found, an output that is an input or given
twice, an unwritable output: one ``error:`` line); 1 a failure while running; 130 cancelled.
Progress is printed one line per batch of frames.
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
PROGRESS_LINES = 20  # about this many progress lines per run
# The optional files written beside the .blend, and the suffix each must have.
EXPORT_FLAGS = {"npz": ".npz", "fbx": ".fbx", "bvh": ".bvh", "gltf": ".glb"}


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
    from ..dpose_core.evidence_report import DEFAULT_LOW_PART_IOU

    p = argparse.ArgumentParser(
        prog="headless.py",
        description="D-PoSE: an image, an image folder or a video -> SMPL-X rigs in a .blend.",
    )
    p.add_argument("--input", help="an image, a folder of images or a video file")
    p.add_argument("--output", help="the .blend file to write")
    p.add_argument("--npz", help="also write the motion as an SMPL-X/AMASS .npz (one per person)")
    p.add_argument("--fbx", help="also export the rigs (and meshes) to FBX, every key kept")
    p.add_argument("--fbx-preset", choices=("blender", "unreal", "unity"), default=None,
                   help="what the FBX is for: axes, units and bones as that application reads "
                        "them (default: blender)")
    p.add_argument("--bvh", help="also export each rig's animation to a Y-up BVH (one per "
                   "person)")
    p.add_argument("--gltf", metavar="OUT.glb",
                   help="also export the rigs (and meshes) with their animation to binary glTF")
    retarget = p.add_argument_group(
        "retargeting onto a character in the opened .blend (see the README)",
        "With --retarget-to, --fbx, --bvh and --gltf export the retargeted character instead "
        "of the SMPL-X rigs (--npz stays SMPL-X). Run Blender on the .blend that holds the "
        "character: blender -b scene.blend --python headless.py -- ...")
    retarget.add_argument("--retarget-to", metavar="ARMATURE",
                          help="bake the take onto this armature (a humanoid: Rigify, Mixamo, "
                               "UE5, VRM names, or any with --bone-map) as a new action on an "
                               "NLA strip; with several people, the first track")
    retarget.add_argument("--bone-map", metavar="MAP.json",
                          help="bone map file {bone: SMPL-X joint} (default: the map saved "
                               "with the armature, else detected from its bone names)")
    retarget.add_argument("--root-motion", choices=("bone", "object", "in_place"),
                          default=None,
                          help="root motion on the root bone, on the armature object, or "
                               "none (in place); default: bone")
    p.add_argument("--checkpoint", help="paper_arxiv.ckpt (default: $DPOSE_CHECKPOINT, then the "
                   "add-on preferences, then ~/.local/share/dpose/paper_arxiv.ckpt)")
    p.add_argument("--body-model", help="SMPL-X model file (default: the checkpoint's own)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--cache-dir", help="where the converted network is cached")
    p.add_argument("--start", type=int, default=0, help="first source frame (0-based)")
    p.add_argument("--end", type=int, default=None, help="stop before this source frame")
    p.add_argument("--stride", type=int, default=1, help="use every N-th frame")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate of the footage (default: the video's own; image folders 30)")
    p.add_argument("--person", type=_parse_person, default="all",
                   help="'all', 'largest' or a number (a track; for an image, largest first)")
    p.add_argument("--bbox", type=_parse_box, default=None, metavar="X0,Y0,X1,Y1",
                   help="the person's box in pixels on every frame, may reach outside it "
                        "(default: find people)")
    p.add_argument("--smooth", type=float, default=None,
                   help="smoothing: 0 off, 1 default, 2 twice as smooth")
    p.add_argument("--fov", type=float, default=None,
                   help="field of view in degrees across the longer image side (default: the "
                        "image diagonal as focal length, like the network)")
    p.add_argument("--frame-start", type=int, default=1,
                   help="scene frame of the first source frame used (--start)")
    p.add_argument("--mesh", action="store_true", help="add the skinned SMPL-X mesh")
    p.add_argument("--depth-plane", action="store_true", help="add the depth relief")
    p.add_argument("--overlay", action="store_true",
                   help="show the body parts the network saw over the footage (a second "
                   "camera background; PNGs in --cache-dir, else beside --output)")
    p.add_argument("--low-part-iou", type=float, default=DEFAULT_LOW_PART_IOU, metavar="X",
                   help="frames whose mean part IoU is below X get a 'low part agreement' "
                   f"marker (default {DEFAULT_LOW_PART_IOU:g})")
    p.add_argument("--no-part-scores", action="store_true",
                   help="do not score the solve against the network's part map")
    ground = p.add_argument_group("grounding (the refine stage; see README)")
    ground.add_argument("--ground", choices=("auto", "none", "off"), default="auto",
                        help="auto: rigs on the floor found at Z = 0 (default); none: Z up at "
                        "the camera's level, no floor; off: the camera-frame solve")
    ground.add_argument("--foot-lock", type=float, default=1.0, metavar="0..1",
                        help="hold contacting heels and toes still: 0 off, 1 fixed (default)")
    ground.add_argument("--subject-height", type=float, default=None, metavar="METRES",
                        help="the person's standing height: rescales the body and the scene")
    ground.add_argument("--camera", metavar="NAME",
                        help="a camera in the opened .blend that moves with the footage (a "
                        "Motion Tracking solve, any keyed camera): the body follows its path")
    ground.add_argument("--floor", action="store_true",
                        help="add a floor plane at Z = 0 under grounded rigs")
    ground.add_argument("--report", metavar="R.json",
                        help="write the quality report as JSON: per frame the confidence, "
                        "contacts, foot skate, float, penetration, 2D residual and how well the "
                        "body agrees with the network's part map")
    farm = p.add_argument_group("farm chunks (see farm/README.md)")
    farm.add_argument("--chunk-output", metavar="CHUNK.npz",
                      help="solve frames --start..--end of --input into this chunk file of raw "
                      "solves (no .blend)")
    farm.add_argument("--chunk-overlap", type=int, default=0, metavar="K",
                      help="with --chunk-output: also solve K frames before --start, to match "
                      "people across the seam")
    farm.add_argument("--merge", nargs="+", metavar="CHUNK.npz",
                      help="build the .blend from these chunk files instead of --input")
    farm.add_argument("--frames", metavar="FIRST-LAST",
                      help="with --merge: the source frames the chunks must cover")
    farm.add_argument("--allow-gaps", action="store_true",
                      help="with --merge: fill and flag frames no chunk solved")
    farm.add_argument("--strict", action="store_true",
                      help="fail (exit 1, nothing written) when any frame was skipped or "
                      "interpolated")
    farm.add_argument("--progress", choices=("lines", "openjd", "flamenco"), default="lines",
                      help="progress as plain lines, or as a farm manager reads it")
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


def run_options(args: argparse.Namespace):
    """The core's RunOptions for these arguments (the same meaning as the CLI and panel)."""
    from ..dpose_core.pipeline import DEFAULT_SMOOTH, RunOptions

    return RunOptions(
        inputs=[args.input] if args.input else [], checkpoint=args.checkpoint,
        body_model=args.body_model, device=args.device, cache_dir=args.cache_dir,
        person=args.person, bbox=args.bbox or (), fov_deg=args.fov,
        smooth=DEFAULT_SMOOTH if args.smooth is None else args.smooth, start=args.start,
        end=args.end, stride=args.stride, fps=args.fps, strict=args.strict,
        part_scores=not args.no_part_scores, ground=args.ground, foot_lock=args.foot_lock,
        subject_height=args.subject_height,
    )


def validate_args(args: argparse.Namespace):
    """Fail fast, before any network work, on each input a farm job can get wrong.

    Returns the validated RunOptions; raises UsageError (one line).
    """
    from ..dpose_core.errors import DPoseError

    if (args.input is None) == (args.merge is None):
        raise UsageError("give --input (footage to solve) or --merge (chunk files), not both.")
    if args.overlay and (args.merge or args.chunk_output):
        raise UsageError("--overlay is drawn while the network runs: a chunk keeps no part "
                         "maps; solve the shot in one task to see it.")
    if not 0.0 <= args.low_part_iou <= 1.0:
        raise UsageError(f"--low-part-iou must be between 0 and 1, got {args.low_part_iou}.")
    if args.chunk_output:
        if args.merge or args.output:
            raise UsageError("--chunk-output writes only the chunk: drop --merge and --output.")
        extras = [f"--{n}" for n in (*EXPORT_FLAGS, "retarget_to", "report", "camera")
                  if getattr(args, n, None)]
        if extras:
            raise UsageError(f"--chunk-output writes only the chunk: {extras[0].replace('_', '-')}"
                             " belongs to the merge that writes the .blend and grounds the shot.")
        args.chunk_output = str(_check_writable(args.chunk_output, "the chunk file"))
        outputs = [args.chunk_output]
    else:
        if not args.output:
            raise UsageError("--output (the .blend to write) is required.")
        args.output = str(_check_writable(args.output, "the output .blend"))
        if not args.output.lower().endswith(".blend"):
            raise UsageError(f"the output {args.output} must end in .blend.")
        for name in EXPORT_FLAGS:
            if getattr(args, name):
                setattr(args, name, str(_check_writable(getattr(args, name), f"the {name} file")))
        if args.report:
            args.report = str(_check_writable(args.report, "the report"))
            if not args.report.lower().endswith(".json"):
                raise UsageError(f"the report {args.report} must end in .json.")
        outputs = [args.output] + [getattr(args, n) for n in (*EXPORT_FLAGS, "report")
                                   if getattr(args, n)]
        _check_camera(args.camera, args.ground)
    args.checkpoint = args.checkpoint or _checkpoint_from_preferences()
    options = run_options(args)
    options.outputs = outputs  # checked: never an input, never given twice
    try:
        if args.merge:  # merge_video checks the outputs against the chunks
            from ..dpose_core.cli import _parse_frames

            args.frames = _parse_frames(args.frames) if args.frames else None
            from ..dpose_core.pipeline import check_refine_options

            check_refine_options(options)
            return options
        if args.chunk_output:
            options.chunk_overlap = args.chunk_overlap
        return options.validate()
    except (DPoseError, argparse.ArgumentTypeError) as exc:
        raise UsageError(_first_line(exc)) from exc


def check_export_args(args: argparse.Namespace) -> None:
    """Refuse, before any work, what would make the exports or the retargeting fail: a file
    named for another format, an output over the opened .blend, no such armature in the opened
    .blend, one that is not humanoid (or scaled) under its bone map, a bad map file, or BVH with
    root motion on the object. (After validate_args: outputs aimed at inputs are its errors.)"""
    import bpy

    from ..dpose_core import bone_maps
    from ..dpose_core.errors import DPoseError
    from .retarget import resolve_bone_map

    if args.chunk_output:
        return  # validate_args refuses exports and retargeting with --chunk-output
    outputs = [args.output] + [getattr(args, n) for n in EXPORT_FLAGS if getattr(args, n)]
    for name, suffix in EXPORT_FLAGS.items():
        path = getattr(args, name, None)
        if path and Path(path).suffix.lower() != suffix:
            raise UsageError(f"--{name} writes {suffix}: name the file *{suffix}, not "
                             f"{Path(path).name}.")
    if args.fbx_preset and not args.fbx:
        raise UsageError("--fbx-preset sets up the --fbx file: give --fbx too.")
    opened = Path(bpy.data.filepath).resolve() if bpy.data.filepath else None
    if opened is not None and any(Path(o).resolve() == opened for o in outputs):
        raise UsageError(f"{opened} is the opened .blend (an input): write the output elsewhere.")
    if not args.retarget_to:
        if args.bone_map or args.root_motion:
            raise UsageError("--bone-map and --root-motion need --retarget-to ARMATURE.")
        return
    args.root_motion = args.root_motion or "bone"
    if args.root_motion == "object" and args.bvh:
        raise UsageError("BVH stores bone motion only: use --root-motion bone or in_place "
                         "with --bvh.")
    target = bpy.data.objects.get(args.retarget_to)
    if target is None or target.type != "ARMATURE":
        found = sorted(o.name for o in bpy.data.objects if o.type == "ARMATURE")
        where = f"{opened.name}" if opened else "the scene (no .blend was opened)"
        raise UsageError(f"--retarget-to: no armature named {args.retarget_to!r} in {where}; "
                         f"armatures there: {', '.join(found[:6]) or 'none'}.")
    try:
        bone_map = bone_maps.load_bone_map(args.bone_map) if args.bone_map else None
        resolve_bone_map(target, bone_map)
    except DPoseError as exc:
        raise UsageError(f"--retarget-to {args.retarget_to}: {_first_line(exc)}") from exc
    args.bone_map_data = bone_map


def _check_camera(name: str | None, ground: str) -> None:
    """--camera names a camera object of the opened .blend (and needs grounding on)."""
    if name is None:
        return
    if ground == "off":
        raise UsageError("--camera moves the grounded body with the camera: it needs --ground "
                         "auto or none, not off.")
    import bpy

    obj = bpy.data.objects.get(name)
    if obj is None or obj.type != "CAMERA":
        cameras = sorted(o.name for o in bpy.data.objects if o.type == "CAMERA")
        raise UsageError(f"--camera {name!r} is not a camera in the opened .blend (cameras: "
                         f"{', '.join(cameras) or 'none'}).")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


class _Reporter:
    """Progress, status and failure lines: plain `D-PoSE:` lines (about PROGRESS_LINES a
    run), or what a farm manager reads (--progress openjd|flamenco, dpose_core.farm_progress)."""

    def __init__(self, style: str, out):
        from ..dpose_core.farm_progress import FarmProgress

        self.out = out
        self.farm = None if style == "lines" else FarmProgress(style, _OutStream(out))

    def progress(self, done: int, total: int) -> None:
        if self.farm is not None:
            self.farm(done, total)
            return
        every = max(1, total // PROGRESS_LINES) if total else 10
        if done == total or done % every == 0:
            self.out(f"D-PoSE: {done}/{total or '?'} frames")

    def status(self, text: str) -> None:
        self.out(f"D-PoSE: {text}")
        if self.farm is not None and self.farm.style == "openjd":
            self.farm.status(text)

    def fail(self, reason: str) -> None:
        self.out(f"error: {reason}")
        if self.farm is not None and self.farm.style == "openjd":
            self.farm.fail(reason)


class _OutStream:
    """A text stream over `out` (print, or a test's collector)."""

    def __init__(self, out):
        self.out = out

    def write(self, text: str) -> None:
        self.out(text.rstrip("\n"))

    def flush(self) -> None:
        sys.stdout.flush()


def estimate(options, estimator, *, reporter, keep_reliefs: bool = False, frame_maps=None,
             camera=None, frame_start: int = 1):
    """The pipeline run for these options, grounded (the refine stage) -> (takes, footage,
    result) for the scene builder. frame_maps: a video run's frame hook (the part overlay
    writer); camera: a Blender camera whose path the body follows."""
    from ..dpose_core import pipeline
    from ..dpose_core.frames import DEFAULT_FOLDER_FPS
    from . import scene_builder, world_setup

    def warn(text: str) -> None:
        reporter.out(f"warning: {text}")

    if options.is_video:
        result = pipeline.estimate_video(
            options, estimator=estimator, progress=reporter.progress, warn=warn,
            keep_maps=scene_builder.relief_keeper if keep_reliefs else False,
            frame_maps=frame_maps)
        if result.chunk is not None:
            return [], None, result
        ground(result, estimator.body_model, options, camera, frame_start - options.start,
               reporter)
        return (scene_builder.takes_from_video(result),
                scene_builder.footage_from_video(result, options.start), result)
    result = pipeline.estimate_images(options, estimator=estimator,
                                      progress=reporter.progress, warn=warn)
    takes = scene_builder.takes_from_images(result, 0, options.fps or DEFAULT_FOLDER_FPS,
                                            with_relief=keep_reliefs)
    track = None if camera is None else world_setup.camera_track(
        camera, _scene(), frame_start, [0])
    takes = world_setup.refine_takes(takes, estimator.body_model, options,
                                     camera_to_world=track, warn=warn, images=result)
    return takes, scene_builder.footage_from_images(result, 0), result


def ground(result, body_model, options, camera, frame_offset: int, reporter) -> None:
    """The refine stage on a video run or a merged shot (the whole shot once)."""
    from ..dpose_core import pipeline
    from . import world_setup

    if options.ground == "off" or not result.tracks:
        return
    track = None
    if camera is not None:
        frames = {int(f) for m in result.tracks.values() for f in m.frame_indices}
        track = world_setup.camera_track(camera, _scene(), frame_offset, frames)
    reporter.status(f"grounding {len(result.tracks)} track(s) (--ground {options.ground})")
    pipeline.refine_tracks(result, body_model, options, camera_to_world=track,
                           warn=lambda text: reporter.out(f"warning: {text}"))
    for number, report in sorted(result.refine_reports.items()):
        summary = report.summary()
        reporter.out(f"D-PoSE: track {number} grounded: foot skate "
                     f"{summary['skate_mm_per_frame_before']} -> {summary['skate_mm_per_frame']}"
                     f" mm/frame in contact, penetration max {summary['penetration_mm_max']} mm")


def merge(args: argparse.Namespace, options, *, reporter, camera=None):
    """The farm merge, grounded once over the whole shot: chunk files -> (takes, footage,
    result, body model, checkpoint hash)."""
    from ..dpose_core import pipeline
    from ..dpose_core.checkpoint import checkpoint_hash
    from ..dpose_core.errors import DPoseError
    from . import scene_builder

    result = pipeline.merge_video(args.merge, options, frames=args.frames,
                                  allow_gaps=args.allow_gaps, outputs=options.outputs,
                                  warn=lambda text: reporter.out(f"warning: {text}"))
    solved_with = result.provenance.get("checkpoint_sha256")
    sha = checkpoint_hash(options.checkpoint) if options.body_model is None else solved_with
    if solved_with is not None and sha != solved_with:
        raise DPoseError(f"The chunks were solved with another checkpoint (sha256 "
                         f"{solved_with[:12]}...) than {options.checkpoint} ({sha[:12]}...): "
                         "merge with the checkpoint that solved them.")
    if not Path(result.source).exists():
        reporter.out(f"warning: the footage {result.source} is not on this machine: the "
                     "camera gets no background image.")
        result.source_kind = "video"
    body_model = pipeline.open_body_model(options)
    ground(result, body_model, options, camera, args.frame_start - result.first_frame, reporter)
    takes = scene_builder.takes_from_video(result)
    footage = scene_builder.footage_from_video(result, result.first_frame)
    return takes, footage, result, body_model, solved_with


def run(args: argparse.Namespace, options, *, out=print) -> int:
    """Do the job with validated args and options; returns the exit code."""
    from ..dpose_core import pipeline
    from ..dpose_core.checkpoint import checkpoint_hash
    from ..dpose_core.errors import CancelledError, DPoseError
    from ..dpose_core.farm_progress import frame_ranges
    from . import provenance, scene_builder

    reporter = _Reporter(args.progress, out)
    overlay = None
    try:
        if args.merge:
            reporter.status(f"merging {len(args.merge)} chunk file(s)")
            takes, footage, result, body_model, sha = merge(args, options, reporter=reporter,
                                                            camera=_camera(args))
            backend, device = result.backend, "farm"
            checkpoint_path = options.checkpoint
        else:
            out(f"D-PoSE: loading {Path(options.checkpoint).name} ({args.device}) ...")
            estimator = pipeline.open_estimator(options)
            out(f"D-PoSE: {estimator.backend} on {estimator.device}; input {args.input}")
            writer = (scene_builder.overlay_writer(_scene_options(args), args.input)
                      if args.overlay and options.is_video else None)
            takes, footage, result = estimate(options, estimator, reporter=reporter,
                                              keep_reliefs=args.depth_plane, frame_maps=writer,
                                              camera=_camera(args), frame_start=args.frame_start)
            if writer is not None:
                overlay = writer.finish()
            elif args.overlay:
                overlay = scene_builder.still_overlay(result, 0, _scene_options(args))
            body_model, backend, device = None, estimator.backend, estimator.device
            checkpoint_path = estimator.checkpoint_path
            sha = None
        problems = result.problem_frames() if hasattr(result, "problem_frames") else []
        if args.strict and problems:
            reporter.fail(f"--strict: {len(problems)} frame(s) skipped or interpolated: "
                          f"{frame_ranges(problems)}; nothing was written")
            return EXIT_FAILED
        if args.chunk_output:
            from ..dpose_core.chunks import write_chunk

            write_chunk(args.chunk_output, result.chunk)
            out(f"D-PoSE: wrote {args.chunk_output} (frames {result.chunk.own_start}-"
                f"{result.chunk.own_end - 1}, {len(result.chunk.tracks)} raw track(s))")
            return EXIT_OK
        body_model = body_model or estimator.body_model
        scene_options = _scene_options(args, collection_name=f"D-PoSE {Path(footage.path).stem}")
        record = provenance.build_record(
            checkpoint_path=checkpoint_path,
            checkpoint_sha256=sha or checkpoint_hash(checkpoint_path),
            settings=_settings(args, options, result), inputs=[footage.path],
            backend=backend, device=device,
            kind="sequence" if args.merge or options.is_video else "image")
        created = scene_builder.build_scene(_scene(), takes, body_model,
                                            scene_options, footage=footage, record=record,
                                            part_overlay=overlay)
        target = retarget_take(created, takes, args, out)
        save_outputs(created, takes, args, target=target)
        if args.report:
            write_run_report(args.report, result, takes, args.low_part_iou)
            out(f"D-PoSE: quality report -> {args.report}")
    except (CancelledError, KeyboardInterrupt) as exc:
        out(f"error: cancelled {exc}".rstrip())
        return EXIT_CANCELLED
    except DPoseError as exc:  # the input's fault: what to change is in the message
        reporter.fail(_first_line(exc))
        return EXIT_BAD_INPUT
    except Exception as exc:  # noqa: BLE001 - Blender exits 0 after a script's exception
        import traceback

        traceback.print_exc()
        reporter.fail(f"{type(exc).__name__}: {_first_line(exc)}")
        return EXIT_FAILED
    skipped = (len(result.problem_frames(interpolated=False)) if hasattr(result, "problem_frames")
               else len(result.skipped))
    n_keys = sum(len(t.motion) for t in takes)
    out(f"D-PoSE: wrote {args.output} ({len(takes)} rig(s), {n_keys} posed frames, "
        f"{skipped} frame(s) skipped)")
    return EXIT_OK


def _scene_options(args: argparse.Namespace, collection_name: str | None = None):
    """The scene builder's options for these arguments."""
    from . import scene_builder

    return scene_builder.SceneOptions(
        start_frame=args.frame_start, add_mesh=args.mesh,
        add_depth_plane=args.depth_plane and not args.merge, add_floor=args.floor,
        collection_name=collection_name,
        relief_cache_dir=args.cache_dir or str(Path(args.output).parent),
        part_overlay=args.overlay, low_part_iou=args.low_part_iou)


def write_run_report(path: str, result, takes: list, low_part_iou: float) -> None:
    """The quality report of the run (dpose_core.report): per track for videos and merges,
    per person for an image, with the part-agreement section (evidence_report)."""
    from ..dpose_core.evidence_report import images_section, tracks_section
    from ..dpose_core.report import build_report, write_report

    if hasattr(result, "tracks"):
        write_report(path, build_report(result, extra_sections={
            "part_agreement": tracks_section(result.tracks, low_part_iou)}))
        return
    write_report(path, build_report(
        {t.label: t.motion for t in takes},
        {t.label: t.report for t in takes if t.report is not None},
        extra_sections={"part_agreement": images_section(result, low_part_iou)}))


def _camera(args: argparse.Namespace):
    import bpy

    return bpy.data.objects[args.camera] if args.camera else None


def _settings(args: argparse.Namespace, options, result) -> dict:
    settings = {k: v for k, v in vars(options).items()
                if not k.startswith("_") and k not in ("inputs", "outputs", "checkpoint",
                                                       "cache_dir")}
    settings.update(mesh=args.mesh, depth_plane=args.depth_plane, frame_start=args.frame_start,
                    camera=args.camera, floor=args.floor)
    if hasattr(result, "failures"):
        settings.update(frames_done=result.frames_processed, skipped=len(result.failures))
    return {k: str(v) if isinstance(v, Path) else v for k, v in settings.items()}


def retarget_take(created: list, takes: list, args: argparse.Namespace, out=print):
    """--retarget-to: bake the first rig's take onto the named armature; returns it (or None)."""
    if not getattr(args, "retarget_to", None):
        return None
    import bpy

    from . import retarget

    rigs = [o for o in created if o.type == "ARMATURE"]
    if len(rigs) > 1:
        out(f"warning: {len(rigs)} people: only the first ({rigs[0].name}) is retargeted; "
            "pick one with --person.")
    target = bpy.data.objects[args.retarget_to]
    report = retarget.retarget_rig(rigs[0], target, bone_map=getattr(args, "bone_map_data", None),
                                   root_motion=args.root_motion or "bone")
    out(f"D-PoSE: retargeted {report.message}")
    out(f"D-PoSE: {report.unmapped}")
    return target


def save_outputs(created: list, takes: list, args: argparse.Namespace, *, target=None) -> None:
    """The requested exports (exports.py, each written atomically), then the .blend.

    With several people the motion and BVH files are one per person, named as the CLI names
    them (motion_track0.npz, motion_track1.npz, ...); the .blend, FBX and glTF hold every rig.
    With a retarget `target`, FBX, BVH and glTF hold that armature (and its meshes) instead.
    """
    import bpy

    from ..dpose_core.sequence import track_output_paths
    from . import exports

    rigs = [o for o in created if o.type == "ARMATURE"]
    numbers = list(range(len(takes)))
    if target is None:
        shown = rigs + [o for o in created if o.type == "MESH"]
    else:
        shown = [target] + [c for c in target.children if c.type == "MESH"]
    if args.npz:
        for k, path in track_output_paths(args.npz, numbers).items():
            exports.export_npz(path, takes[k].motion)
    if args.fbx:
        exports.export_fbx(args.fbx, shown, getattr(args, "fbx_preset", None) or "blender")
    if args.bvh and target is not None:
        exports.export_bvh(args.bvh, target)
    elif args.bvh:
        for k, path in track_output_paths(args.bvh, numbers).items():
            exports.export_bvh(path, rigs[k])
    if getattr(args, "gltf", None):
        exports.export_gltf(args.gltf, shown)
        global _EXIT_WITHOUT_TEARDOWN
        # bpy 4.2 as a Python module crashes while it shuts down once the glTF exporter has
        # run (a freed Python class, after the interpreter is gone): every file is written and
        # synced by then, so the script ends the process itself (see _script_main).
        _EXIT_WITHOUT_TEARDOWN = not bpy.app.binary_path
    bpy.ops.wm.save_as_mainfile(filepath=args.output)


def _scene():
    import bpy

    return bpy.context.scene


def main(argv: list[str] | None = None, *, out=print) -> int:
    """Parse, validate and run; returns the exit code (never raises for bad input)."""
    from ..dpose_core.cli import attach_values

    argv = sys.argv if argv is None else argv
    parser = build_parser()
    try:
        args = parser.parse_args(attach_values(script_args(argv), ("--bbox",)))
    except SystemExit as exc:  # argparse already printed the usage line
        return EXIT_BAD_INPUT if exc.code else EXIT_OK
    try:
        options = validate_args(args)
        check_export_args(args)
    except UsageError as exc:
        out(f"error: {exc}")
        return EXIT_BAD_INPUT
    return run(args, options, out=out)


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


_EXIT_WITHOUT_TEARDOWN = False  # set by save_outputs; read by _script_main


def _script_main() -> None:
    module = bootstrap()
    code = module.main(sys.argv)
    sys.stdout.flush()
    if module._EXIT_WITHOUT_TEARDOWN:
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    _script_main()
