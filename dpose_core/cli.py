"""`dpose` command line: info, convert, estimate, merge, refine, doctor.

Errors raised on purpose (`dpose_core.errors`) print one line and exit with status 2; a
traceback means a bug. Heavy imports (onnxruntime, torch, cv2) happen inside the commands so
`dpose --help` and `dpose doctor` work on a half-installed system.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np

from .errors import DPoseError
from .evidence_report import DEFAULT_LOW_PART_IOU
from .farm_progress import STYLES as FARM_STYLES
from .farm_progress import FarmProgress
from .frames import DEFAULT_FOLDER_FPS
from .pipeline import (
    BACKENDS,
    DEFAULT_BATCH,
    DEFAULT_FOOT_LOCK,
    DEFAULT_GROUND,
    DEFAULT_SMOOTH,
    DEVICES,
    GROUND_CHOICES,
)

EXIT_OK, EXIT_PROBLEM, EXIT_ERROR = 0, 1, 2


# ---------------------------------------------------------------------------- info / convert
def cmd_info(args: argparse.Namespace) -> int:
    from .checkpoint import checkpoint_info, format_info

    info = checkpoint_info(args.checkpoint)
    print(format_info(info))
    return EXIT_OK if info.valid else EXIT_PROBLEM


def cmd_convert(args: argparse.Namespace) -> int:
    from .checkpoint import load_checkpoint_arrays, resolve_checkpoint

    ckpt = resolve_checkpoint(args.checkpoint)
    out = Path(args.output)
    if out.suffix.lower() != ".onnx":
        out = out / "model.onnx"
    _prepare_output(str(out))
    arrays = load_checkpoint_arrays(ckpt)
    if args.self_contained:
        try:
            from .onnx_export import export_onnx
        except ImportError as exc:
            raise DPoseError(
                f"--self-contained exports through PyTorch, which is not usable here ({exc}); "
                "drop the flag to convert without torch."
            ) from exc
        _write_staged(out, lambda stage: export_onnx(arrays, stage / out.name), [out.name])
        print(f"wrote {out} (self-contained, weights embedded)")
        return EXIT_OK
    from .onnx_model import WEIGHTS_FILE, write_runtime_model

    weights = out.parent / WEIGHTS_FILE
    _write_staged(out, lambda stage: write_runtime_model(arrays, stage, model_name=out.name),
                  [WEIGHTS_FILE, out.name])
    print(f"wrote {out} (graph) and {weights} (weights; keep them in the same folder)")
    return EXIT_OK


def _write_staged(out: Path, write, names: list[str]) -> None:
    """write(stage) into a fresh folder beside `out`; its files then replace the targets one by
    one (fsync, rename), so a failure (a full disk) leaves the old files as they were."""
    import shutil

    try:
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=".dpose-convert-"))
    except OSError as exc:
        raise DPoseError(f"Cannot write in {out.parent}: {exc.strerror or exc}.") from exc
    try:
        write(stage)
        for name in names:
            with open(stage / name, "rb+") as fh:
                os.fsync(fh.fileno())
        for name in names:
            os.replace(stage / name, out.parent / name)
    except OSError as exc:
        raise DPoseError(f"Cannot write {out}: {exc.strerror or exc}; the old files, if any, "
                         "are unchanged.") from exc
    finally:
        shutil.rmtree(stage, ignore_errors=True)


# ---------------------------------------------------------------------------- estimate
def _parse_bbox(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected x0,y0,x1,y1 in pixels, got {text!r}")
    return values


def _json_ready(value):
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def _prepare_output(output: str | None) -> None:
    """Make -o's folder before any work, so a bad path fails now, not after the whole run."""
    if output is None:
        return
    path = Path(output)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DPoseError(f"Cannot create the output folder {path.parent} ({exc.strerror or exc}); "
                         "choose another -o.") from exc  # fmt: skip
    if path.is_dir():
        raise DPoseError(f"Cannot write {path}: it is a folder; choose another -o.")
    try:  # a real probe file: os.access says yes to root and on read-only mounts
        fd, probe = tempfile.mkstemp(dir=path.parent, prefix=".dpose-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise DPoseError(f"Cannot write in {path.parent} ({exc.strerror or exc}); "
                         "choose another -o.") from exc  # fmt: skip


def run_options(args: argparse.Namespace):
    """The pipeline's RunOptions for `dpose estimate`'s arguments (one meaning per option)."""
    from .pipeline import RunOptions

    evidence = [args.report] if args.report else []
    if args.overlay:  # every file --overlay writes: never an input, never twice
        evidence += overlay_paths(args.overlay, len(args.inputs))
    return RunOptions(
        inputs=args.inputs, outputs=([args.output] if args.output else []) + evidence,
        checkpoint=args.checkpoint, body_model=args.body_model, backend=args.backend,
        device=args.device, batch=args.batch, person=args.person, bbox=args.bbox or (),
        focal_px=args.focal, fov_deg=args.fov, smooth=args.smooth, start=args.start,
        end=args.end, stride=args.stride, fps=args.fps, chunk_overlap=args.chunk_overlap,
        strict=args.strict, part_scores=not args.no_part_scores, ground=args.ground,
        foot_lock=args.foot_lock, subject_height=args.subject_height,
    )


def cmd_estimate(args: argparse.Namespace) -> int:
    from .pipeline import is_video_input

    suffix = None if args.output is None else Path(args.output).suffix.lower()
    video = any(is_video_input(p) for p in args.inputs)
    if video and suffix != ".npz":
        raise DPoseError("Video and folder inputs write a motion file: pass -o motion.npz.")
    if suffix is not None and suffix not in (".json", ".npz"):
        raise DPoseError(f"Output must end in .json or .npz, got {args.output}.")
    _check_evidence_options(args, video)
    options = run_options(args)
    options.validate()
    for path in (args.output, args.report, args.overlay):
        _prepare_output(path)
    return _estimate_video(options, args) if video else _estimate_images(options, args)


def _check_report_option(args: argparse.Namespace) -> None:
    from .evidence_report import check_threshold

    check_threshold(args.low_part_iou)
    _check_report_name(args.report)


def _check_evidence_options(args: argparse.Namespace, video: bool) -> None:
    """--report / --overlay / --low-part-iou refused in one line before any work."""
    _check_report_option(args)
    if args.report is not None and args.chunk_overlap is not None:
        raise DPoseError("A chunk holds raw solves, not motion: pass --report to dpose merge.")
    if args.overlay is None:
        return
    if video:
        raise DPoseError("--overlay draws over photos; for a video or folder, open the motion "
                         "in Blender and tick Part Overlay (or headless.py --overlay).")
    if Path(args.overlay).suffix.lower() != ".png":
        raise DPoseError(f"--overlay writes a PNG: give a .png path, got {args.overlay}.")


def overlay_paths(overlay: str | os.PathLike, count: int) -> list[Path]:
    """out.png for one image; out_0.png, out_1.png ... (input order) for several."""
    overlay = Path(overlay)
    if count == 1:
        return [overlay]
    return [overlay.with_name(f"{overlay.stem}_{k}{overlay.suffix}") for k in range(count)]


def _write_overlays(result, overlay: str) -> None:
    """The part map and skeleton over each input image that gave a person (overlay.py)."""
    from .frames import read_image
    from .overlay import overlay_estimate, write_png

    paths = overlay_paths(overlay, len(result.paths))
    for k, source in enumerate(result.paths):
        if len(result.rows_of_image(k)) == 0:
            continue  # skipped image: already reported
        write_png(paths[k], overlay_estimate(read_image(source), result.estimate, k))
        print(f"wrote {paths[k]}: part map and skeleton over {source}", file=sys.stderr)


def _write_evidence_report(args: argparse.Namespace, section: dict) -> None:
    """--report for image files: the part-agreement section, written atomically."""
    from .report import write_report

    write_report(args.report, {"part_agreement": section})
    print(f"dpose: quality report -> {args.report}", file=sys.stderr)


def _estimate_images(options, args: argparse.Namespace) -> int:
    from .atomic_io import write_npz, write_text
    from .pipeline import estimate_images, open_estimator

    estimator = open_estimator(options)
    bar = _Progress(len(options.inputs), "estimate", "image", args.progress)
    result = estimate_images(options, estimator=estimator, warn=_warn_through(bar),
                             progress=bar.progress)
    bar.close()
    npz = args.output is not None and Path(args.output).suffix.lower() == ".npz"
    payload = result.estimate.to_dict(dense=npz)
    meta = {
        "image_paths": np.array([str(p) for p in result.paths]),
        "backend": np.array(estimator.backend),
        "device": np.array(estimator.device),
        "checkpoint": np.array(str(estimator.checkpoint_path)),
    }
    if not npz:
        doc = {k: _json_ready(v) for k, v in {**meta, **payload}.items()}
        text = json.dumps(doc, allow_nan=False)  # the pipeline refused non-finite numbers
        if args.output is None:
            print(text)
        else:
            write_text(args.output, text)
    else:
        write_npz(args.output, {**meta, **payload}, compressed=True)
    if args.report is not None:
        from .evidence_report import images_section

        _write_evidence_report(args, images_section(result, args.low_part_iou))
    if args.overlay is not None:
        _write_overlays(result, args.overlay)
    if args.output is not None:
        print(f"wrote {args.output}: {len(result)} person crop(s) in {len(result.paths)} "
              f"image(s) [{estimator.backend} on {estimator.device}]", file=sys.stderr)
    if result.skipped:
        print(f"dpose: {len(result.skipped)} of {len(result.paths)} images skipped (listed "
              "above)", file=sys.stderr)  # fmt: skip
        return EXIT_PROBLEM
    return EXIT_OK


def _estimate_video(options, args: argparse.Namespace) -> int:
    """`dpose estimate VIDEO|FOLDER -o motion.npz`: one motion file per person track; with
    --chunk-overlap, one farm chunk file of raw solves."""
    from .frames import open_frames
    from .pipeline import estimate_video, open_estimator

    estimator = open_estimator(options)
    first = options.start - (options.chunk_overlap or 0)
    total = len(open_frames(options.inputs[0], start=max(0, first), end=options.end,
                            stride=options.stride))
    bar = _Progress(total or None, "dpose", "frame", args.progress)
    if options.chunk_overlap is not None:
        bar.status(f"solving source frames {options.start}-"
                   f"{'end' if options.end is None else options.end - 1} "
                   f"(+{options.chunk_overlap} before, to match people across the seam)")
    try:
        result = estimate_video(options, estimator=estimator, warn=_warn_through(bar),
                                progress=bar.progress)
    finally:
        bar.close()
    if result.chunk is None:
        _refine(result, estimator.body_model, options, bar)
    return _finish_video(result, args, bar)


def _refine(result, body_model, options, bar) -> None:
    """The pipeline's refine stage (ground, foot locks), once over the whole shot."""
    from .pipeline import refine_tracks

    if options.ground == "off" or not result.tracks:
        return
    bar.status(f"grounding {len(result.tracks)} track(s) (--ground {options.ground})")
    refine_tracks(result, body_model, options, warn=_warn_through(bar))
    for track, report in sorted(result.refine_reports.items()):
        summary = report.summary()
        bar.write(f"dpose: track {track}: grounded; foot skate "
                  f"{_mm(summary['skate_mm_per_frame_before'])} -> "
                  f"{_mm(summary['skate_mm_per_frame'])} mm/frame while in contact, "
                  f"penetration max {_mm(summary['penetration_mm_max'])} mm", file=sys.stderr)


def _mm(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _check_report_name(report: str | None) -> None:
    if report is not None and Path(report).suffix.lower() != ".json":
        raise DPoseError(f"The report is JSON: --report must end in .json, got {report}.")


def _finish_video(result, args: argparse.Namespace, bar) -> int:
    """Refuse a --strict run with problem frames, else write the chunk or the motion files."""
    from .farm_progress import frame_ranges
    from .pipeline import save_tracks

    problems = result.problem_frames()
    if args.strict and problems:
        reason = (f"--strict: {len(problems)} frame(s) skipped or interpolated: "
                  f"{frame_ranges(problems)}; nothing was written")
        bar.fail(reason)
        print(f"dpose: error: {reason}", file=sys.stderr)
        return EXIT_PROBLEM
    if result.chunk is not None:
        from .chunks import write_chunk

        write_chunk(args.output, result.chunk)
        print(f"dpose: chunk {result.chunk.own_start}-{result.chunk.own_end - 1}: "
              f"{len(result.chunk.tracks)} raw track(s) -> {args.output}")
    else:
        for track, path in save_tracks(result, args.output).items():
            print(f"dpose: track {track}: {len(result.tracks[track])} frames "
                  f"({result.rows_fps:g} per second) -> {path}")
        if args.report is not None:
            from .evidence_report import tracks_section
            from .report import build_report, write_report

            write_report(args.report, build_report(result, extra_sections={
                "part_agreement": tracks_section(result.tracks, args.low_part_iou)}))
            print(f"dpose: quality report -> {args.report}")
    code = EXIT_OK
    if result.not_refined:
        print(f"dpose: {len(result.not_refined)} track(s) not grounded, written in the camera "
              "frame (said above)", file=sys.stderr)  # fmt: skip
        code = EXIT_PROBLEM
    skipped = result.problem_frames(interpolated=False)
    if skipped:
        print(f"dpose: {len(skipped)} of {result.frames_processed} frames skipped or unsolved "
              "(listed above)", file=sys.stderr)  # fmt: skip
        code = EXIT_PROBLEM
    return code


def _parse_frames(text: str) -> tuple[int, int]:
    """`0-299` (inclusive, as farm managers write frame ranges) -> (0, 299)."""
    first, sep, last = text.partition("-")
    try:
        span = (int(first), int(last if sep else first))
    except ValueError:
        span = (-1, -1)
    if span[0] < 0 or span[1] < span[0]:
        raise argparse.ArgumentTypeError(f"expected FIRST-LAST source frames, got {text!r}")
    return span


def cmd_merge(args: argparse.Namespace) -> int:
    """`dpose merge chunk_*.npz -o motion.npz`: farm chunks -> one shot's motion files."""
    from .pipeline import RunOptions, check_refine_options, merge_video, open_body_model

    if Path(args.output).suffix.lower() != ".npz":
        raise DPoseError(f"The merge writes motion files: pass -o motion.npz, got {args.output}.")
    _check_report_option(args)
    options = RunOptions(person=args.person, smooth=args.smooth, strict=args.strict,
                         checkpoint=args.checkpoint, body_model=args.body_model,
                         ground=args.ground, foot_lock=args.foot_lock,
                         subject_height=args.subject_height)
    check_refine_options(options)
    _prepare_output(args.output)
    _prepare_output(args.report)
    outputs = [p for p in (args.output, args.report) if p]
    body_model = None
    if options.ground != "off":  # checked before the merge: a wrong model fails at once
        from .refine import check_body_model

        try:
            body_model = open_body_model(options)
        except DPoseError as exc:
            raise type(exc)(f"Grounding the merged shot needs the SMPL-X body (--checkpoint or "
                            f"--body-model; --ground off skips it): {exc}") from exc
        check_body_model(body_model)
    bar = _Progress(0, "merge", "frame", args.progress)  # no per-frame work: no bar
    result = merge_video(args.chunks, options, frames=args.frames, allow_gaps=args.allow_gaps,
                         outputs=outputs, warn=_warn_through(bar))
    _refine(result, body_model, options, bar)
    return _finish_video(result, args, bar)


# ---------------------------------------------------------------------------- refine
def cmd_refine(args: argparse.Namespace) -> int:
    """`dpose refine MOTION.npz -o OUT.npz`: ground, lock and steady a motion file."""
    from .motion_io import load_motion_npz
    from .pipeline import RunOptions, _check_outputs, check_refine_options
    from .refine import refine_file
    from .report import build_report, write_report

    _check_report_name(args.report)
    check_refine_options(RunOptions(ground=args.ground, foot_lock=args.foot_lock,
                                    subject_height=args.subject_height))
    if args.ground == "off":
        raise DPoseError("dpose refine grounds a motion: use --ground auto or none.")
    inputs = [Path(p) for p in (args.motion, args.checkpoint, args.body_model) if p]
    outputs = [Path(p) for p in (args.output, args.report) if p]
    _check_outputs(inputs, outputs, video=False)
    if not Path(args.motion).is_file():
        raise DPoseError(f"The motion file {args.motion} does not exist.")
    _prepare_output(args.output)
    _prepare_output(args.report)
    report = refine_file(args.motion, args.output, checkpoint=args.checkpoint,
                         body_model=args.body_model, ground=args.ground,
                         foot_lock=args.foot_lock, subject_height=args.subject_height)
    summary = report.summary()
    print(f"dpose: {report.frames} frame(s) grounded (--ground {args.ground}); foot skate "
          f"{_mm(summary['skate_mm_per_frame_before'])} -> {_mm(summary['skate_mm_per_frame'])} "
          f"mm/frame while in contact, penetration max {_mm(summary['penetration_mm_max'])} mm "
          f"-> {args.output}")
    for note in report.notes:
        print(f"dpose: note: {note}", file=sys.stderr)
    if args.report:
        name = Path(args.motion).stem
        write_report(args.report, build_report({name: load_motion_npz(args.output)},
                                               {name: report}))
        print(f"dpose: quality report -> {args.report}")
    return EXIT_OK


def _warn_through(bar):
    """warn(text) for the pipeline: one `dpose:` line on stderr that keeps the bar intact."""
    return lambda text: bar.write(f"dpose: {text}", file=sys.stderr)


class _Progress:
    """Where a run's progress goes: a tqdm bar on stderr, farm lines on stdout, or nowhere.

    progress(done, total) for the pipeline; write() for warnings (keeps the bar intact);
    status() and fail() reach a farm manager (--progress openjd|flamenco), nobody else.
    """

    def __init__(self, total: int | None, desc: str, unit: str, style: str = "bar"):
        self.farm = FarmProgress(style) if style in FARM_STYLES else None
        self.bar = None
        if style == "bar" and total not in (0, 1):
            try:
                from tqdm import tqdm
            except ImportError:  # tqdm is a CLI nicety, not a requirement
                tqdm = None
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)

    def progress(self, done: int, total: int) -> None:
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
        elif self.farm is not None:
            self.farm(done, total)

    def write(self, text: str, file=None) -> None:
        if self.bar is not None:
            self.bar.write(text, file=file)
        else:
            print(text, file=file)

    def status(self, text: str) -> None:
        if self.farm is not None:
            self.farm.status(text)

    def fail(self, reason: str) -> None:
        if self.farm is not None:
            self.farm.fail(reason)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


# ---------------------------------------------------------------------------- doctor
def cmd_doctor(args: argparse.Namespace) -> int:
    problems = 0

    def line(status: str, what: str, detail: str = "") -> None:
        print(f"[{status:>7}] {what}" + (f": {detail}" if detail else ""))

    line("ok", "python", f"{platform.python_version()} ({sys.executable})")
    line("ok", "numpy", np.__version__)
    try:
        import onnxruntime as ort

        line("ok", "onnxruntime", f"{ort.__version__}; providers: "
             + ", ".join(ort.get_available_providers()))  # fmt: skip
        from .providers import installed_runtimes, provider_for

        provider, why = provider_for(args.device)
        line("ok", f"device {args.device}", f"{provider} ({why})")
        runtimes = installed_runtimes()
        if len(runtimes) > 1 and "CUDAExecutionProvider" not in ort.get_available_providers():
            problems += 1  # both share one folder and the CPU build's files won
            line("FAIL", "onnxruntime packages", f"{' and '.join(runtimes)} share files and the "
                 "CPU build's won: pip install --force-reinstall --no-deps "
                 f"onnxruntime-gpu=={runtimes[-1].split()[-1]}")
    except ImportError as exc:
        problems += 1
        line("MISSING", "onnxruntime", f"{exc}; pip install onnxruntime")
    try:
        import cv2

        line("ok", "opencv", cv2.__version__)
    except ImportError as exc:
        problems += 1
        line("MISSING", "opencv", f"{exc}; pip install opencv-python-headless")
    try:
        import torch

        gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
        line("ok", "torch (optional)", f"{torch.__version__}; CUDA "
             + (f"available ({gpu})" if gpu else "not available"))  # fmt: skip
    except ImportError:
        line("-", "torch (optional)", "not installed; the ONNX Runtime backend needs no torch")
    from .onnx_model import TEMPLATE_PATH, template_layout

    try:
        layout = template_layout(TEMPLATE_PATH)
        line("ok", "ONNX graph template", f"{TEMPLATE_PATH.name}, {len(layout)} weights")
    except (OSError, DPoseError) as exc:
        problems += 1
        line("FAIL", "ONNX graph template", str(exc))

    from .checkpoint import CHECKPOINT_ENV, checkpoint_info, default_checkpoint_path

    ckpt_ok = False
    try:
        info = checkpoint_info(args.checkpoint)
        if info.valid:
            ckpt_ok = True
            line("ok", "checkpoint", f"{info.path} ({info.size_bytes / 1e6:.0f} MB, "
                 f"{info.network_tensors} network tensors)")  # fmt: skip
        else:
            problems += 1
            line("FAIL", "checkpoint", f"{info.path}: {info.problem}")
    except DPoseError as exc:
        problems += 1
        where = Path(args.checkpoint).expanduser() if args.checkpoint else default_checkpoint_path()
        if where.exists():  # there, but unreadable: the error says what is wrong with it
            line("FAIL", "checkpoint", str(exc))
        else:
            line("MISSING", "checkpoint", f"{where}: {exc}")
            print(f"          Pass --checkpoint PATH, set {CHECKPOINT_ENV}=PATH, or put the file "
                  "at ~/.local/share/dpose/paper_arxiv.ckpt.")  # fmt: skip

    if args.body_model:
        from .body_model import BodyModel

        try:
            model = BodyModel.load(args.body_model)
            line("ok", "body model", f"{args.body_model} ({model.num_vertices} vertices)")
        except DPoseError as exc:
            problems += 1
            line("FAIL", "body model", str(exc))
    elif ckpt_ok:
        line("ok", "body model", "SMPL-X buffers shipped in the checkpoint")
    else:
        line("-", "body model", "comes from the checkpoint (not found above) or --body-model")

    from .onnx_model import CACHE_ENV, inspect_cache

    cache = inspect_cache()
    where = f"{cache.folder} (" + ("from " + CACHE_ENV if cache.from_env
                                  else f"default; set {CACHE_ENV} to move it") + ")"  # fmt: skip
    probe_dir = next((p for p in (cache.folder, *cache.folder.parents) if p.is_dir()), None)
    try:
        with tempfile.TemporaryFile(dir=probe_dir):  # a real probe: os.access says yes to root
            writable = None
    except OSError as exc:
        writable = f"{probe_dir} cannot be written ({exc.strerror or exc})"
    if writable:
        problems += 1
        line("FAIL", "model cache", f"{where}: {writable}; set {CACHE_ENV} to a writable folder")
    elif cache.state == "empty":
        line("-", "model cache", f"{where}: empty; the first run converts the checkpoint into it "
             "(about 330 MB)")  # fmt: skip
    else:
        count = len(cache.entries)
        line("ok" if cache.state == "ok" else "DAMAGED", "model cache",
             f"{where}: {cache.state}, {count} converted checkpoint{'s' * (count != 1)}, "
             f"{cache.size_bytes / 1e6:.0f} MB")  # fmt: skip
    for entry in cache.entries:
        state = "ok" if entry.ok else f"damaged ({entry.problem}); rebuilt on its next use"
        print(f"          {entry.path.name}: {entry.checkpoint_name or 'unknown checkpoint'}, "
              f"{state}")  # fmt: skip
    if cache.leftovers:
        print(f"          {len(cache.leftovers)} unfinished build folder(s): removed by the next "
              "run once their process has ended")  # fmt: skip
    print("all required parts found" if problems == 0 else f"{problems} problem(s) found")
    return EXIT_OK if problems == 0 else EXIT_PROBLEM


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dpose", description="D-PoSE: SMPL-X pose and shape from images (ONNX Runtime)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="describe a checkpoint and check it loads strictly")
    p.add_argument("checkpoint", nargs="?", help="paper_arxiv.ckpt (default: $DPOSE_CHECKPOINT)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "convert",
        help="checkpoint -> ONNX model without torch (writes model.onnx + weights.bin beside it)",
    )
    p.add_argument("checkpoint", nargs="?", help="paper_arxiv.ckpt (default: $DPOSE_CHECKPOINT)")
    p.add_argument("-o", "--output", required=True,
                   help="model .onnx path (its weights.bin is written in the same folder) "
                   "or a folder")  # fmt: skip
    p.add_argument("--self-contained", action="store_true",
                   help="one .onnx file with embedded weights (needs torch)")  # fmt: skip
    p.set_defaults(func=cmd_convert)

    p = sub.add_parser("estimate", help="estimate SMPL-X from images, a video or a folder")
    p.add_argument("inputs", nargs="+", help="image files, or a video file / image folder")
    p.add_argument("--checkpoint", help="paper_arxiv.ckpt (default: $DPOSE_CHECKPOINT)")
    p.add_argument("--body-model", help="SMPL-X model file (default: the checkpoint's own)")
    p.add_argument("--bbox", type=_parse_bbox, action="append",
                   help="person box x0,y0,x1,y1 in pixels, may reach outside the image "
                   "(repeatable for images; one for a video); default: find people")  # fmt: skip
    p.add_argument("--backend", choices=BACKENDS, default="auto")
    p.add_argument("--device", choices=DEVICES, default="auto")
    p.add_argument("--batch", type=int, default=DEFAULT_BATCH,
                   help=f"crops per network batch (default {DEFAULT_BATCH})")  # fmt: skip
    p.add_argument("--focal", type=float, help="focal length in pixels (default: diagonal)")
    p.add_argument("--fov", type=float,
                   help="field of view in degrees across the longer image side (instead of "
                   "--focal)")  # fmt: skip
    p.add_argument("-o", "--output",
                   help="images: out.json (no per-pixel maps) or out.npz (everything); "
                   "video/folder: motion.npz (one file per person track)")  # fmt: skip
    p.add_argument("--person", default="all",
                   help="'all', 'largest' or a number (images: largest first; video: track)")
    p.add_argument("--smooth", type=float, default=DEFAULT_SMOOTH,
                   help="video/folder: 0 off, 1 default, 2 twice as smooth")  # fmt: skip
    p.add_argument("--fps", type=float,
                   help=f"video/folder: frame rate override (folders: {DEFAULT_FOLDER_FPS:g})")
    p.add_argument("--start", type=int, default=0, help="video/folder: first source frame")
    p.add_argument("--end", type=int, help="video/folder: stop before this source frame")
    p.add_argument("--stride", type=int, default=1, help="video/folder: use every Nth frame")
    p.add_argument("--chunk-overlap", type=int, metavar="K",
                   help="farm: write -o as a chunk of raw solves of frames --start..--end, "
                   "also solving K frames before --start (merge chunks with dpose merge)")
    _ground_arguments(p, off=True)
    _report_arguments(p)
    p.add_argument("--no-part-scores", action="store_true",
                   help="do not score the solve against the network's part map (saves ~3%% of "
                   "the network time; motion files then carry no dpose_part_iou)")
    p.add_argument("--overlay", metavar="OUT.png",
                   help="images: write the part map over the photo with the solved skeleton on "
                   "top (several images: OUT_0.png, OUT_1.png ...)")
    _farm_arguments(p)
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("merge", help="farm chunks (dpose estimate --chunk-overlap) -> motion")
    p.add_argument("chunks", nargs="+", help="the chunk files of one shot, in any order")
    p.add_argument("-o", "--output", required=True, help="motion.npz (one file per person)")
    p.add_argument("--frames", type=_parse_frames, metavar="FIRST-LAST",
                   help="source frames the chunks must cover (a missing chunk at either end "
                   "is found too)")
    p.add_argument("--allow-gaps", action="store_true",
                   help="fill and flag frames no chunk solved, instead of failing")
    p.add_argument("--person", default="all", help="'all', 'largest' or a track number")
    p.add_argument("--smooth", type=float, default=DEFAULT_SMOOTH,
                   help="smoothing strength: 0 off, 1 default, 2 twice as smooth")
    p.add_argument("--checkpoint", help="paper_arxiv.ckpt: its SMPL-X body grounds the shot "
                   "(default: $DPOSE_CHECKPOINT)")
    p.add_argument("--body-model", help="SMPL-X model file instead of the checkpoint's own")
    _ground_arguments(p, off=True)
    _report_arguments(p)
    _farm_arguments(p)
    p.set_defaults(func=cmd_merge)

    p = sub.add_parser("refine", help="ground a motion .npz: world Z up, floor at Z = 0, foot "
                       "contacts and locks, a steady root")
    p.add_argument("motion", help="SMPL-X motion .npz in the camera frame (dpose estimate's, "
                   "or a refined one, refined again from its camera)")
    p.add_argument("-o", "--output", required=True, help="the grounded motion .npz")
    p.add_argument("--checkpoint", help="paper_arxiv.ckpt, for its SMPL-X body model")
    p.add_argument("--body-model", help="SMPL-X model file (instead of --checkpoint)")
    _ground_arguments(p, off=False)
    p.add_argument("--report", metavar="R.json",
                   help="write the quality report (per frame: confidence, contacts, foot "
                   "skate, float, penetration, 2D residual) as JSON")
    p.set_defaults(func=cmd_refine)

    p = sub.add_parser("doctor", help="check the installation, checkpoint and body model")
    p.add_argument("--device", choices=DEVICES, default="auto",
                   help="say which ONNX Runtime provider this setting runs on here")
    p.add_argument("--checkpoint", help="paper_arxiv.ckpt (default: $DPOSE_CHECKPOINT)")
    p.add_argument("--body-model", help="SMPL-X model file (default: the checkpoint's own)")
    p.set_defaults(func=cmd_doctor)
    return parser


def _report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--report", metavar="R.json",
                   help="write the quality report as JSON: per frame (per crop for images) how "
                   "well the body agrees with the part map the network saw (mean part IoU, "
                   "silhouette IoU, per-part IoU, the low frames); for videos also contacts, "
                   "foot skate, float, penetration and the 2D residual")
    p.add_argument("--low-part-iou", type=float, default=DEFAULT_LOW_PART_IOU, metavar="X",
                   help="frames whose mean part IoU is below X are listed as low in the report "
                   f"(default {DEFAULT_LOW_PART_IOU:g})")


def _parse_unit(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def _ground_arguments(p: argparse.ArgumentParser, *, off: bool) -> None:
    choices = GROUND_CHOICES if off else tuple(c for c in GROUND_CHOICES if c != "off")
    p.add_argument("--ground", choices=choices, default=DEFAULT_GROUND,
                   help="auto: a Z-up world with the floor found at Z = 0 (default); none: "
                   "Z-up at the camera's level, no floor"
                   + ("; off: camera-frame motion, as the network gives it" if off else ""))
    p.add_argument("--foot-lock", type=_parse_unit, default=DEFAULT_FOOT_LOCK, metavar="0..1",
                   help="hold contacting heels and toes still: 0 off, 1 fixed (default)")
    p.add_argument("--subject-height", type=_parse_unit, metavar="METRES",
                   help="the person's standing height: rescales the body and the scene")


def _farm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 1, nothing written) when any frame was skipped or "
                   "interpolated, naming the frames")
    p.add_argument("--progress", choices=("bar", "openjd", "flamenco", "none"), default="bar",
                   help="progress as a bar on stderr, or as the lines a farm manager reads "
                   "on stdout (Open Job Description, Flamenco)")


def attach_values(argv: list[str], options: tuple[str, ...]) -> list[str]:
    """`--bbox -80,-40,260,420` -> `--bbox=-80,-40,260,420`: argparse would read a value that
    starts with '-' (a box partly left of or above the image) as an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] in options and i + 1 < len(argv):
            out.append(f"{argv[i]}={argv[i + 1]}")
            i += 2
        else:
            out.append(argv[i])
            i += 1
    return out


class _NoteHandler(logging.Handler):
    """dpose_core's warnings (e.g. a CUDA fallback) as one `dpose: note:` line on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        print(f"dpose: note: {record.getMessage()}", file=sys.stderr)


def _route_notes() -> None:
    logger = logging.getLogger("dpose_core")
    if not any(isinstance(h, _NoteHandler) for h in logger.handlers):
        logger.addHandler(_NoteHandler(logging.WARNING))


def main(argv: list[str] | None = None) -> int:
    """Console entry point (`dpose`); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(attach_values(argv, ("--bbox",)))
    _route_notes()
    try:
        return int(args.func(args) or 0)
    except DPoseError as exc:
        message = str(exc).strip().splitlines()[0]
        print(f"dpose: error: {message}", file=sys.stderr)
        if getattr(args, "progress", None) in FARM_STYLES:  # the task's failure reason
            FarmProgress(args.progress).fail(message)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("dpose: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
