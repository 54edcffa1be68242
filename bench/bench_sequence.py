"""Benchmark of the video pipeline (not a test): where the time goes, and memory vs clip length.

1. End to end on the CPU for a generated 200-frame clip (a walking silhouette over a textured
   background, MJPG .avi) with the real Estimator (random-weight checkpoint in the official
   layout unless --checkpoint is given) and the default finder (segmentation refinement with
   OpenCV proposals). Time is split into decode, localisation (finder work outside the
   network), network (every Estimator.estimate call, whoever makes it) and post-processing
   (tracking, bookkeeping, gap filling, smoothing, Motion). Target: all but the network
   <= 15 % of the total.
2. Peak memory (ru_maxrss of a fresh process) for 10 000 vs 500 frames. To keep this sane it
   uses a STAND-IN network returning arrays of the real output shapes (part logits 23x224x224
   etc., labels from the bright pixels of the crop), not the real one. Target: ratio <= 1.3.

    python bench/bench_sequence.py [--checkpoint CKPT] [--frames 200] [--skip-memory]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dpose_core.frames import FrameSource  # noqa: E402
from dpose_core.localise import make_finder  # noqa: E402
from dpose_core.preprocess import box_to_center_scale, crop_box  # noqa: E402
from dpose_core.sequence import estimate_sequence  # noqa: E402


def write_clip(path: Path, n: int, width: int, height: int) -> None:
    import cv2

    rng = np.random.default_rng(0)
    background = cv2.GaussianBlur(rng.integers(0, 120, (height, width, 3), np.uint8), (0, 0), 3)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 30.0, (width, height))
    for f in range(n):
        frame = background.copy()
        phase = (f % 400) / 200  # walks right for 200 frames, then back
        x = int(width * (0.2 + 0.6 * (phase if phase <= 1 else 2 - phase)))
        top, bottom = int(height * 0.15), int(height * 0.95)
        body_h = bottom - top
        cv2.circle(frame, (x, top + body_h // 14), body_h // 14, (230, 230, 230), -1)
        cv2.rectangle(frame, (x - body_h // 10, top + body_h // 7),
                      (x + body_h // 10, top + body_h // 2), (220, 220, 220), -1)
        swing = int(body_h * 0.1 * np.sin(f / 5))
        for dx in (-1, 1):
            cv2.line(frame, (x + dx * body_h // 20, top + body_h // 2),
                     (x + dx * body_h // 10 + swing * dx, bottom), (210, 210, 210),
                     max(2, body_h // 25))
        writer.write(frame)
    writer.release()


class TimedEstimator:
    """Forwards to the estimator, adding up the time spent in it (the network share)."""

    def __init__(self, inner):
        self.inner = inner
        self.seconds = 0.0
        self.calls = 0

    def estimate(self, image, boxes, focal_px=None):
        t = time.perf_counter()
        out = self.inner.estimate(image, boxes, focal_px=focal_px)
        self.seconds += time.perf_counter() - t
        self.calls += 1
        return out


class TimedFinder:
    def __init__(self, inner, estimator: TimedEstimator):
        self.inner = inner
        self.estimator = estimator
        self.seconds = 0.0  # finder time excluding network calls made inside it

    def find(self, image, hints=()):
        t, net = time.perf_counter(), self.estimator.seconds
        out = self.inner.find(image, hints)
        self.seconds += time.perf_counter() - t - (self.estimator.seconds - net)
        return out


class TimedFrames(FrameSource):
    decode_seconds = 0.0

    def __iter__(self):
        it = super().__iter__()
        while True:
            t = time.perf_counter()
            try:
                record = next(it)
            except StopIteration:
                return
            self.decode_seconds += time.perf_counter() - t
            yield record


class StandInNetwork:
    """Same output shapes as the Estimator (including the 23x224x224 logits), no network."""

    def estimate(self, image, boxes, focal_px=None):
        boxes = np.asarray(boxes, float).reshape(-1, 4)
        h, w = image.shape[:2]
        b = len(boxes)
        labels = np.zeros((b, 224, 224), np.uint8)
        crops = np.zeros((b, 4))
        joints = np.zeros((b, 127, 2))
        for k, box in enumerate(boxes):
            cb = crop_box(*box_to_center_scale(box))
            u = np.floor(cb[0] + (np.arange(224) + 0.5) * (cb[2] - cb[0]) / 224).astype(int)
            v = np.floor(cb[1] + (np.arange(224) + 0.5) * (cb[3] - cb[1]) / 224).astype(int)
            ok = (u[None] >= 0) & (u[None] < w) & (v[:, None] >= 0) & (v[:, None] < h)
            lab = (image[np.clip(v, 0, h - 1)][:, np.clip(u, 0, w - 1), 0] > 180) & ok
            labels[k] = lab * 5
            crops[k] = cb
            ys, xs = np.nonzero(lab)
            if len(xs):
                pick = np.linspace(0, len(xs) - 1, 127).astype(int)
                joints[k] = np.stack([u[xs[pick]], v[ys[pick]]], 1)
        logits = np.zeros((b, 23, 224, 224), np.float32)
        eye = np.broadcast_to(np.eye(3), (b, 22, 3, 3)).copy()
        return SimpleNamespace(
            rotmats=eye, pose_axis_angle=np.zeros((b, 22, 3)), betas=np.zeros((b, 11)),
            cam_crop=np.zeros((b, 3)), cam_t=np.tile([0.0, 0.0, 5.0], (b, 1)),
            focal_px=np.full((b, 2), np.hypot(w, h)), principal_point=np.tile([w / 2, h / 2],
                                                                               (b, 1)),
            joints3d=np.zeros((b, 127, 3)), joints2d=joints,
            depth=np.zeros((b, 224, 224), np.float32), part_logits=logits, part_labels=labels,
            crop_box=crops, box_center=np.zeros((b, 2)), box_scale=np.ones(b),
            image_size=np.tile([w, h], (b, 1)).astype(float))


def run_timed(estimator, clip: Path) -> dict:
    timed_est = TimedEstimator(estimator)
    finder = TimedFinder(make_finder(timed_est, "auto"), timed_est)
    frames = TimedFrames(clip)
    start = time.perf_counter()
    result = estimate_sequence(frames, timed_est, finder=finder)
    total = time.perf_counter() - start
    post = total - frames.decode_seconds - finder.seconds - timed_est.seconds
    n = result.frames_processed
    return {
        "frames": n, "tracks": len(result), "network_calls": timed_est.calls,
        "total_s": total, "fps": n / total, "decode_s": frames.decode_seconds,
        "localisation_s": finder.seconds, "network_s": timed_est.seconds, "post_s": post,
        "non_network_share": 1 - timed_est.seconds / total,
    }


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's
    pages from before exec)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def memory_child(frames: int, folder: Path, checkpoint: str | None) -> None:
    """One sequence run in a fresh process. With a checkpoint the process first loads the real
    network and runs it once (session, weights and arenas resident, as in a real job), then
    streams the frames through the stand-in so 10 000 frames take minutes, not hours."""
    clip = folder / f"mem_{frames}.avi"
    write_clip(clip, frames, 160, 120)
    if checkpoint:
        from dpose_core.estimator import Estimator

        real = Estimator(checkpoint, device="cpu", cache_dir=folder / "cache")
        real.estimate(np.zeros((120, 160, 3), np.uint8), [[40, 10, 120, 110]])
    net = StandInNetwork()
    result = estimate_sequence(clip, net, finder=make_finder(net, "segmentation"))
    peak_mb = peak_rss_mb()
    motion_mb = sum(m.rotmats.nbytes + m.transl.nbytes for m in result.values()) / 2**20
    print(json.dumps({"frames": result.frames_processed, "tracks": len(result),
                      "peak_mb": peak_mb, "motion_mb": motion_mb}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-network", action="store_true")
    parser.add_argument("--memory-child", type=int)
    parser.add_argument("--folder")
    parser.add_argument("--memory-checkpoint")
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.memory_child, Path(args.folder), args.memory_checkpoint)
        return
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        if not args.skip_network:
            from dpose_core.estimator import Estimator

            ckpt = args.checkpoint
            if ckpt is None:
                from tests.synth_body import write_synthetic_smplx_npz
                from tests.synth_checkpoint import write_random_checkpoint

                body = write_synthetic_smplx_npz(folder / "SMPLX_NEUTRAL.npz", seed=0)
                ckpt = folder / "paper_arxiv.ckpt"
                write_random_checkpoint(ckpt, body, seed=0)
            estimator = Estimator(ckpt, device="cpu", cache_dir=folder / "cache")
            clip = folder / "clip.avi"
            write_clip(clip, args.frames, 640, 360)
            stats = run_timed(estimator, clip)
            print(f"End to end, {stats['frames']} frames 640x360, backend "
                  f"{estimator.backend} on {estimator.device}"
                  f"{'' if args.checkpoint else ' (random-weight checkpoint)'}:")
            print(f"  {stats['fps']:.2f} frames/s, {stats['network_calls']} network calls "
                  f"({stats['network_calls'] / max(stats['frames'], 1):.2f} per frame), "
                  f"{stats['tracks']} track(s)")
            for key in ("decode", "localisation", "network", "post"):
                s = stats[f"{key}_s"]
                print(f"  {key:13s} {s:8.2f} s  {100 * s / stats['total_s']:5.1f} %")
            print(f"  everything but the network: {100 * stats['non_network_share']:.1f} % "
                  "(target <= 15 %)")
            real_peak = peak_rss_mb()
            print(f"  peak memory of this process (real network, {stats['frames']} frames): "
                  f"{real_peak:.0f} MB")
        if not args.skip_memory:
            runs = [("STAND-IN network with the real output shapes", None)]
            if not args.skip_network:
                runs.append(("real network loaded and run once, frames through the stand-in",
                             str(ckpt)))
            for label, memory_ckpt in runs:
                peaks = {}
                for n in (500, 10000):
                    cmd = [sys.executable, __file__, "--memory-child", str(n), "--folder", tmp]
                    if memory_ckpt:
                        cmd += ["--memory-checkpoint", memory_ckpt]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
                    peaks[n] = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"Peak memory (fresh process, {label}):")
                for n, p in peaks.items():
                    print(f"  {n:6d} frames: {p['peak_mb']:.1f} MB ({p['tracks']} track(s))")
                ratio = peaks[10000]["peak_mb"] / peaks[500]["peak_mb"]
                growth = peaks[10000]["peak_mb"] - peaks[500]["peak_mb"]
                print(f"  ratio 10000/500: {ratio:.3f} (target <= 1.3); growth {growth:.1f} MB, "
                      f"of which the returned Motion's rotmats+transl (55 joints, float64) "
                      f"hold {peaks[10000]['motion_mb']:.1f} MB")

if __name__ == "__main__":
    main()
