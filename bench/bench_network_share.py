"""Benchmark (not a test): the share of ONNX Runtime's `session.run` in a video run, before
and after the preprocessing speed-ups, in one run.

A 640x480 clip (scikit-image's astronaut photo sliding across a gradient, MJPG .avi) goes
through `sequence.estimate_sequence` with the real Estimator (ONNX Runtime; random-weight
checkpoint in the official layout unless --checkpoint: the network's speed does not depend on
the weight values) and the default finder, as `dpose estimate clip.avi` runs it. The clip is
cut into blocks of --block frames that alternate BEFORE, AFTER, AFTER, BEFORE, ... so machine
noise, the finder's periodic OpenCV proposals and the tracker's state hit both alike:
- BEFORE: the exact float64 crop (`preprocess.crop_image_exact`, equal to skimage's resize to
  ~1e-13), numpy's argmax for the part labels, the body model re-deriving its joint
  regression and vertex subset on every call, the old normalisation, the copy of the
  network outputs, and an ONNX Runtime session whose idle threads spin (the default): the
  code as it was, re-created here by patching (both sessions are loaded up front).
- AFTER: the code as it is.
`session.run` is timed on its own (wall clock), apart from the numpy around it. Frame 0
(finding the person from scratch) is reported apart. While the clip runs, every crop is also
made the other way (time excluded) to give the input-tensor difference; after it, a sample of
the run's network calls is repeated with the exact crop to give the output differences.

    python bench/bench_network_share.py [--checkpoint CKPT] [--frames 100] [--block 5]
                                        [--samples 8] [--prefetch] [--detect-every N]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from dpose_core import body_model, preprocess  # noqa: E402
from dpose_core import estimator as estimator_module  # noqa: E402
from dpose_core.constants import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from dpose_core.frames import FrameSource  # noqa: E402
from dpose_core.localise import make_finder  # noqa: E402
from dpose_core.prefetch import prefetch  # noqa: E402
from dpose_core.sequence import estimate_sequence  # noqa: E402

MODES = ("before", "after")
_FAST_CROP = preprocess.crop_image
_FAST_NORMALIZE = preprocess.normalize_crops
_FAST_LABELS = estimator_module.part_labels
_FORWARD = body_model.BodyModel.forward


def write_clip(path: Path, frames: int, width: int = 640, height: int = 480) -> None:
    """The astronaut photo (a person, a real photo) sliding left to right over a gradient."""
    import cv2
    from skimage import data

    side = int(height * 0.75)
    person = cv2.resize(data.astronaut()[:, :, ::-1], (side, side), interpolation=cv2.INTER_AREA)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25, (width, height))
    top = (height - side) // 2
    for f in range(frames):
        frame = np.full((height, width, 3), 90, np.uint8)
        frame[:, :, 1] = np.linspace(60, 160, width)[None].astype(np.uint8)
        x = int(20 + (width - side - 40) * f / max(frames - 1, 1))
        frame[top:top + side, x:x + side] = person
        writer.write(frame)
    writer.release()


# --- BEFORE: the code as it was -------------------------------------------------------------


def _normalize_before(crops) -> np.ndarray:
    arr = np.asarray(crops, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[None]
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32)
    std = np.asarray(IMAGENET_STD, dtype=np.float32)
    out = (arr / np.float32(255.0) - mean) / std
    return np.ascontiguousarray(out.transpose(0, 3, 1, 2), dtype=np.float32)


def _labels_before(logits: np.ndarray) -> np.ndarray:
    return np.argmax(logits, axis=1).astype(np.uint8)


def _forward_before(self, *args, **kwargs):
    """The body model as it was: joint regression and vertex subset derived on every call."""
    self.__dict__.pop("_joint_regression", None)
    self.__dict__.pop("_skinned_subset", None)
    return _FORWARD(self, *args, **kwargs)


class Stopwatch:
    """Seconds of work excluded from the frame times (the cross-checks)."""

    excluded = 0.0

    @classmethod
    @contextlib.contextmanager
    def exclude(cls):
        start = time.perf_counter()
        try:
            yield
        finally:
            cls.excluded += time.perf_counter() - start


class Checks:
    """Largest input-tensor difference, fast vs exact crop, over every crop of the run."""

    input_max = 0.0
    crops = 0


def _checked_crop(primary):
    def crop(image, center, scale):
        out = primary(image, center, scale)
        with Stopwatch.exclude():
            other = (preprocess.crop_image_exact if primary is _FAST_CROP else _FAST_CROP)(
                image, center, scale)
            Checks.input_max = max(Checks.input_max, float(np.abs(out - other).max()))
            Checks.crops += 1
        return out
    return crop


def set_mode(mode: str, est) -> None:
    """Patch the module globals the pipeline looks up on every call."""
    before = mode == "before"
    preprocess.crop_image = _checked_crop(
        preprocess.crop_image_exact if before else _FAST_CROP)
    preprocess.normalize_crops = _normalize_before if before else _FAST_NORMALIZE
    estimator_module.part_labels = _labels_before if before else _FAST_LABELS
    body_model.BodyModel.forward = _forward_before if before else _FORWARD
    est.copy_outputs = before
    if est.sessions:
        est.session._session = est.sessions[mode]


def restore(est) -> None:
    set_mode("after", est)
    preprocess.crop_image = _FAST_CROP


# --- instrumentation ------------------------------------------------------------------------


class TimedSession:
    """Wraps the ONNX Runtime session: wall time and count of `run`, nothing else."""

    def __init__(self, session):
        self._session = session
        self.seconds = 0.0
        self.cpu_seconds = 0.0  # all threads of the process while `run` runs
        self.calls = 0

    def run(self, *args, **kwargs):
        start, cpu = time.perf_counter(), time.process_time()
        out = self._session.run(*args, **kwargs)
        self.seconds += time.perf_counter() - start
        self.cpu_seconds += time.process_time() - cpu
        self.calls += 1
        return out

    def __getattr__(self, name):
        return getattr(self._session, name)


class InstrumentedEstimator:
    """Forwards to the Estimator; times its calls, copies outputs in BEFORE mode, samples calls
    for the output comparison."""

    def __init__(self, inner, sample_every: int, session: TimedSession, sessions: dict):
        self.inner = inner
        self.session, self.sessions = session, sessions
        self.seconds = 0.0
        self.copy_outputs = False
        self.samples: list[tuple[np.ndarray, np.ndarray]] = []
        self._sample_every = sample_every
        self._calls = 0
        self._run_crops = inner.run_crops
        inner.run_crops = self._run_crops_maybe_copied

    def _run_crops_maybe_copied(self, crops, bbox_info):
        out = self._run_crops(crops, bbox_info)
        if self.copy_outputs:  # the old code concatenated even a single chunk
            out = {k: np.concatenate([v], axis=0) for k, v in out.items()}
        return out

    def estimate(self, image, boxes, focal_px=None):
        start, excluded = time.perf_counter(), Stopwatch.excluded
        out = self.inner.estimate(image, boxes, focal_px=focal_px)
        self.seconds += time.perf_counter() - start - (Stopwatch.excluded - excluded)
        if self._calls % self._sample_every == 0:
            with Stopwatch.exclude():
                self.samples.append((image.copy(), np.array(boxes, dtype=np.float64)))
        self._calls += 1
        return out


class TimedFinder:
    def __init__(self, inner, est: InstrumentedEstimator):
        self.inner, self.est, self.seconds = inner, est, 0.0

    def find(self, image, hints=()):
        start, inside, excluded = time.perf_counter(), self.est.seconds, Stopwatch.excluded
        out = self.inner.find(image, hints)
        self.seconds += (time.perf_counter() - start - (self.est.seconds - inside)
                         - (Stopwatch.excluded - excluded))
        return out


def spinning_session(inner):
    """The Estimator's session as it was built before: idle threads spin (ORT's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = estimator_module.physical_cores() or 0
    options.log_severity_level = 3
    return ort.InferenceSession(str(inner.model_path), options,
                                providers=["CPUExecutionProvider"])


def block_mode(frame: int, block: int) -> str:
    """BEFORE, AFTER, AFTER, BEFORE, ...: blocks of `block` frames in an ABBA pattern."""
    return MODES[(frame // block) % 4 in (1, 2)]


class Frames(FrameSource):
    """The clip's frames; switches the mode before each block and records per-frame figures."""

    def __init__(self, path, est, session: TimedSession, finder: TimedFinder, block: int,
                 read_ahead: bool):
        super().__init__(path)
        self.est, self.session, self.finder, self.block = est, session, finder, block
        self.read_ahead = read_ahead
        self.rows: list[dict] = []

    def _snapshot(self) -> dict:
        return {"wall": time.perf_counter(), "cpu": time.process_time(),
                "run": self.session.seconds, "calls": self.session.calls,
                "run_cpu": self.session.cpu_seconds,
                "estimate": self.est.seconds, "finder": self.finder.seconds,
                "excluded": Stopwatch.excluded}

    def __iter__(self):
        it = prefetch(super().__iter__()) if self.read_ahead else super().__iter__()
        frame = 0
        while True:
            mode = block_mode(frame, self.block)
            set_mode(mode, self.est)
            start = self._snapshot()
            try:
                record = next(it)
            except StopIteration:
                return
            decoded = time.perf_counter()
            yield record  # the pipeline processes the frame before asking for the next one
            end = self._snapshot()
            row = {k: end[k] - start[k] for k in start}
            row["wall"] -= row["excluded"]
            row["decode"] = decoded - start["wall"]
            row["mode"], row["frame"] = mode, frame
            self.rows.append(row)
            frame += 1


def summarise(rows: list[dict]) -> dict:
    total = {k: sum(r[k] for r in rows) for k in ("wall", "cpu", "run", "run_cpu", "calls",
                                                  "estimate", "finder", "decode")}
    n = len(rows)
    total["frames"] = n
    total["share"] = total["run"] / total["wall"]
    total["cpu_share"] = total["run_cpu"] / total["cpu"]
    total["non_network_ms"] = 1e3 * (total["wall"] - total["run"]) / n
    total["around_network_ms"] = 1e3 * (total["estimate"] - total["run"]) / n
    total["localisation_ms"] = 1e3 * total["finder"] / n
    total["decode_ms"] = 1e3 * total["decode"] / n
    total["rest_ms"] = (total["non_network_ms"] - total["around_network_ms"]
                        - total["localisation_ms"] - total["decode_ms"])
    total["run_ms_per_call"] = 1e3 * total["run"] / max(total["calls"], 1)
    return total


def output_differences(est, samples) -> dict[str, float]:
    """Max |fast - exact| of every output over the sampled network calls."""
    worst: dict[str, float] = {}
    est.sessions = {}
    for image, boxes in samples:
        set_mode("after", est)
        preprocess.crop_image = _FAST_CROP
        fast = est.inner.estimate(image, boxes)
        preprocess.crop_image = preprocess.crop_image_exact
        exact = est.inner.estimate(image, boxes)
        for name in ("rotmats", "betas", "cam_t", "joints2d", "depth", "part_logits"):
            d = float(np.abs(getattr(fast, name) - getattr(exact, name)).max())
            worst[name] = max(worst.get(name, 0.0), d)
        agree = float((fast.part_labels == exact.part_labels).mean())
        worst["part_labels_disagree"] = max(worst.get("part_labels_disagree", 0.0), 1 - agree)
    restore(est)
    return worst


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint")
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--block", type=int, default=5)
    parser.add_argument("--samples", type=int, default=8, help="network calls re-run exactly")
    parser.add_argument("--detect-every", type=int,
                        help="frames between the finder's OpenCV proposals (default: its own)")
    parser.add_argument("--prefetch", action="store_true",
                        help="decode the next frame in a worker thread (both modes)")
    args = parser.parse_args()
    from dpose_core.estimator import Estimator

    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f} on {os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ckpt = args.checkpoint
        if ckpt is None:
            from tests.synth_body import write_synthetic_smplx_npz
            from tests.synth_checkpoint import write_random_checkpoint

            body = write_synthetic_smplx_npz(folder / "SMPLX_NEUTRAL.npz", seed=0)
            ckpt = folder / "paper_arxiv.ckpt"
            write_random_checkpoint(ckpt, body, seed=0)
        clip = folder / "clip.avi"
        write_clip(clip, args.frames)
        inner = Estimator(ckpt, device="cpu", cache_dir=folder / "cache")
        session = TimedSession(inner._runner.session)
        sessions = {"after": inner._runner.session, "before": spinning_session(inner)}
        inner._runner.session = session
        for mode in MODES:  # warm-up of both sessions
            session._session = sessions[mode]
            inner.estimate(np.zeros((480, 640, 3), np.uint8), [[100, 40, 400, 460]])
        session.seconds, session.cpu_seconds, session.calls = 0.0, 0.0, 0
        calls_per_sample = max(1, int(1.4 * args.frames / max(args.samples, 1)))
        est = InstrumentedEstimator(inner, calls_per_sample, session, sessions)
        finder = TimedFinder(make_finder(est, "auto"), est)
        if args.detect_every:
            finder.inner.detect_every = args.detect_every
        frames = Frames(clip, est, session, finder, args.block, args.prefetch)
        start = time.perf_counter()
        result = estimate_sequence(frames, est, finder=finder)
        total = time.perf_counter() - start - Stopwatch.excluded
        restore(est)
        per_frame = sum(r["wall"] for r in frames.rows)
        print(f"{result.frames_processed} frames 640x480, {len(result)} track(s), backend "
              f"{inner.backend} on {inner.device}, {session.calls} session.run calls; "
              f"run {total:.1f} s ({total - per_frame:.2f} s after the last frame: tracks, "
              "smoothing, Motion)")
        first = frames.rows[0]
        print(f"frame 0 (finding the person from scratch, {first['mode']}): "
              f"{first['wall'] * 1e3:.0f} ms, {first['calls']} session.run calls")
        stats = {m: summarise([r for r in frames.rows[1:] if r["mode"] == m]) for m in MODES}
        header = f"{'':34s}" + "".join(f"{m.upper():>12s}" for m in MODES)
        print(header)
        lines = [
            ("frames", "frames", "{:12d}"),
            ("session.run share of wall time", "share", "{:11.1%} "),
            ("session.run share of CPU time", "cpu_share", "{:11.1%} "),
            ("session.run ms per call", "run_ms_per_call", "{:12.1f}"),
            ("session.run calls per frame", None, "{:12.2f}"),
            ("all but session.run, ms/frame", "non_network_ms", "{:12.1f}"),
            ("  numpy around the network", "around_network_ms", "{:12.1f}"),
            ("  localisation outside it", "localisation_ms", "{:12.1f}"),
            ("  decode", "decode_ms", "{:12.1f}"),
            ("  tracking, bookkeeping", "rest_ms", "{:12.1f}"),
            ("wall ms/frame", None, "{:12.1f}"),
            ("CPU s (all threads) per frame", None, "{:12.3f}"),
        ]
        for label, key, fmt in lines:
            cells = []
            for m in MODES:
                s = stats[m]
                if key is not None:
                    value = s[key]
                elif label.startswith("session.run calls"):
                    value = s["calls"] / s["frames"]
                elif label.startswith("wall"):
                    value = 1e3 * s["wall"] / s["frames"]
                else:
                    value = s["cpu"] / s["frames"]
                cells.append(fmt.format(value))
            print(f"{label:34s}" + "".join(cells))
        b, a = stats["before"], stats["after"]
        ratio = (a["wall"] / a["frames"]) / (b["wall"] / b["frames"])
        print(f"AFTER/BEFORE wall per frame: {ratio:.3f}"
              f"; all but session.run: {a['non_network_ms'] / b['non_network_ms']:.3f}"
              " (target: session.run share >= 90 %)")
        print(f"input tensor (0-255), fast vs exact crop, max |diff| over {Checks.crops} crops: "
              f"{Checks.input_max:.2e} (bound 1e-3)")
        diffs = output_differences(est, est.samples)
        print(f"outputs, fast vs exact crop, max |diff| over {len(est.samples)} sampled calls: "
              + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    print(f"load average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f} "
          f"{os.getloadavg()[2]:.2f}")


if __name__ == "__main__":
    main()
