"""`dpose` command line: info, convert, estimate, doctor.

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

from .errors import DPoseError, FrameError, NoPersonError

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
        try:
            export_onnx(arrays, out)
        except OSError as exc:
            raise DPoseError(f"Cannot write {out}: {exc.strerror or exc}.") from exc
        print(f"wrote {out} (self-contained, weights embedded)")
        return EXIT_OK
    from .onnx_model import WEIGHTS_FILE, write_runtime_model

    weights = out.parent / WEIGHTS_FILE
    try:
        model = write_runtime_model(arrays, out.parent, model_name=out.name)
    except OSError as exc:
        raise DPoseError(f"Cannot write {out.parent}: {exc.strerror or exc}.") from exc
    print(f"wrote {model} (graph) and {weights} (weights; keep them in the same folder)")
    return EXIT_OK


# ---------------------------------------------------------------------------- estimate
def _is_sequence_input(path: Path) -> bool:
    from .frames import VIDEO_EXTENSIONS

    return path.is_dir() or path.suffix.lower() in VIDEO_EXTENSIONS


def _parse_bbox(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.replace(" ", "").split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected x0,y0,x1,y1 in pixels, got {text!r}")
    return values


def _make_finder(estimator, args: argparse.Namespace):
    """The sequence engineer's person finder (segmentation + OpenCV), or None without it."""
    if args.bbox:
        return None
    try:
        from .localise import make_finder
    except ImportError:
        return None
    return make_finder(estimator, "auto", focal_px=args.focal)


def _find_people(finder, image: np.ndarray, args: argparse.Namespace, path: Path):
    """-> (boxes still to estimate (K,4), single-crop Estimates the finder already computed).

    --bbox boxes are used as given; without them the finder looks for people (its last
    network pass per person is reused); when nobody is found, the whole image is the box.
    """
    if args.bbox:
        boxes = np.asarray(args.bbox, dtype=np.float64)
        h, w = image.shape[:2]
        for x0, y0, x1, y1 in boxes:
            if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
                raise FrameError(
                    f"--bbox {x0:g},{y0:g},{x1:g},{y1:g} lies outside the {w}x{h} image "
                    f"{path}; give x0,y0,x1,y1 in pixels of the image."
                )
        return boxes, []
    if finder is not None:
        detections = finder.find(image)
        done = [d.estimate.select(d.row) for d in detections if d.estimate is not None]
        todo = [d.box for d in detections if d.estimate is None]
        if detections:
            return np.asarray(todo, dtype=np.float64).reshape(-1, 4), done
    h, w = image.shape[:2]
    return np.array([[0.0, 0.0, float(w), float(h)]]), []


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


def cmd_estimate(args: argparse.Namespace) -> int:
    inputs = [Path(p) for p in args.inputs]
    suffix = None if args.output is None else Path(args.output).suffix.lower()
    if any(_is_sequence_input(p) for p in inputs):
        try:
            from . import sequence
        except ImportError as exc:
            raise DPoseError(
                "Video and folder inputs need dpose_core.sequence, which is not installed."
            ) from exc
        if suffix == ".npz":
            _prepare_output(args.output)
        return int(sequence.run_cli(args) or 0)
    if suffix is not None and suffix not in (".json", ".npz"):
        raise DPoseError(f"Output must end in .json or .npz, got {args.output}.")
    _prepare_output(args.output)
    from .estimator import Estimator
    from .frames import read_image

    estimator = Estimator(
        args.checkpoint, backend=args.backend, device=args.device, max_batch=args.batch
    )
    results = []
    progress = _progress(len(inputs), "estimate")
    finder = _make_finder(estimator, args)
    group_images, group_boxes, group_index = [], [], []

    def flush() -> None:
        if group_images:
            focal = None if args.focal is None else [args.focal] * len(group_images)
            est = estimator.estimate_batch(group_images, group_boxes, focal)
            est.image_index = np.asarray(group_index)[est.image_index]
            results.append(est)
            group_images.clear()
            group_boxes.clear()
            group_index.clear()

    skipped: list[FrameError] = []
    for i, path in enumerate(inputs):
        try:  # one bad image among many is reported and skipped, not fatal to the others
            image = read_image(path)
            boxes, done = _find_people(finder, image, args, path)
        except FrameError as exc:
            if len(inputs) == 1:
                raise
            progress.write(f"dpose: skipped: {exc}", file=sys.stderr)  # keeps the bar intact
            skipped.append(exc)
            progress.update(1)
            continue
        for est in done:
            est.image_index = np.full(len(est), i, dtype=np.int64)
            results.append(est)
        if len(boxes):
            if group_images and sum(len(b) for b in group_boxes) + len(boxes) > args.batch:
                flush()
            group_images.append(image)
            group_boxes.append(boxes)
            group_index.append(i)
        progress.update(1)
    flush()
    progress.close()
    if len(skipped) == len(inputs):
        raise FrameError(f"None of the {len(inputs)} images could be used (see above).")
    if not results:
        raise NoPersonError("Nobody was found; pass --bbox x0,y0,x1,y1 to say where people are.")
    merged = _merge(results)
    payload = merged.to_dict(dense=suffix == ".npz")
    meta = {
        "image_paths": np.array([str(p) for p in inputs]),
        "backend": np.array(estimator.backend),
        "device": np.array(estimator.device),
        "checkpoint": np.array(str(estimator.checkpoint_path)),
    }
    try:
        if suffix != ".npz":
            doc = {k: _json_ready(v) for k, v in {**meta, **payload}.items()}
            text = json.dumps(doc)
            if args.output is None:
                print(text)
            else:
                Path(args.output).write_text(text)
        else:
            with open(args.output, "wb") as fh:  # a path would get ".npz" added to ".NPZ"
                np.savez_compressed(fh, **meta, **payload)
    except OSError as exc:
        raise DPoseError(f"Cannot write {args.output}: {exc.strerror or exc}.") from exc
    if args.output is not None:
        print(f"wrote {args.output}: {len(merged)} person crop(s) in {len(inputs)} image(s) "
              f"[{estimator.backend} on {estimator.device}]", file=sys.stderr)  # fmt: skip
    if skipped:
        print(f"dpose: {len(skipped)} of {len(inputs)} images skipped (listed above)",
              file=sys.stderr)  # fmt: skip
        return EXIT_PROBLEM
    return EXIT_OK


def _merge(results):
    """Concatenate Estimates (image_index already global), ordered by input image."""
    from dataclasses import fields

    from .estimator import Estimate

    merged = Estimate(
        **{f.name: np.concatenate([getattr(r, f.name) for r in results]) for f in fields(Estimate)}
    )
    return merged.select(np.argsort(merged.image_index, kind="stable"))


def _progress(total: int, desc: str):
    """tqdm bar on stderr for many inputs; a silent stand-in otherwise."""
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    if tqdm is None or total < 2:

        class _Silent:
            def update(self, n: int) -> None:
                pass

            def close(self) -> None:
                pass

            def write(self, text: str, file=None) -> None:
                print(text, file=file)

        return _Silent()
    return tqdm(total=total, desc=desc, unit="image", file=sys.stderr)


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
    p.add_argument("--bbox", type=_parse_bbox, action="append",
                   help="person box x0,y0,x1,y1 in pixels (repeatable); default: find people "
                   "or use the whole image")  # fmt: skip
    p.add_argument("--backend", choices=("auto", "onnx", "torch"), default="auto")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    p.add_argument("--batch", type=int, default=8, help="crops per network batch (default 8)")
    p.add_argument("--focal", type=float, help="focal length in pixels (default: diagonal)")
    p.add_argument("-o", "--output", help="out.json (no per-pixel maps) or out.npz (everything)")
    p.add_argument("--person", default="all", help="video/folder: 'all' or a track number")
    p.add_argument("--smooth", type=float, default=1.0, help="video/folder: smoothing strength")
    p.add_argument("--fps", type=float, help="video/folder: frame rate override")
    p.add_argument("--start", type=int, default=0, help="video/folder: first frame")
    p.add_argument("--end", type=int, help="video/folder: stop before this frame")
    p.add_argument("--stride", type=int, default=1, help="video/folder: use every Nth frame")
    p.set_defaults(func=cmd_estimate)

    p = sub.add_parser("doctor", help="check the installation, checkpoint and body model")
    p.add_argument("--checkpoint", help="paper_arxiv.ckpt (default: $DPOSE_CHECKPOINT)")
    p.add_argument("--body-model", help="SMPL-X model file (default: the checkpoint's own)")
    p.set_defaults(func=cmd_doctor)
    return parser


def _bad_number_option(args: argparse.Namespace) -> str | None:
    """What is wrong with estimate's numeric options (checked before any work), or None."""
    if args.command != "estimate":
        return None
    if args.batch < 1:
        return "--batch must be at least 1"
    if args.start < 0 or args.stride < 1:
        return "--start must be 0 or more and --stride at least 1"
    if args.end is not None and args.end <= args.start:
        return f"--end ({args.end}) must be after --start ({args.start})"
    for name in ("fps", "focal"):
        value = getattr(args, name)
        if value is not None and not (np.isfinite(value) and value > 0):
            return f"--{name} must be a positive number of {'frames/s' if name == 'fps' else 'px'}"
    if not (np.isfinite(args.smooth) and args.smooth >= 0):
        return "--smooth must be 0 (off) or more"
    if args.person != "all" and not args.person.isdigit():
        return f"--person must be 'all' or a track number 0, 1, ..., got {args.person!r}"
    return None


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
    args = build_parser().parse_args(argv)
    _route_notes()
    problem = _bad_number_option(args)
    if problem:
        print(f"dpose: error: {problem}", file=sys.stderr)
        return EXIT_ERROR
    try:
        return int(args.func(args) or 0)
    except DPoseError as exc:
        print(f"dpose: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("dpose: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
