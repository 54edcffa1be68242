"""Benchmark (not a test): what scoring part agreement costs inside a real video run.

A folder of frames (the astronaut photo, shifted a little each frame) goes through
`pipeline.estimate_video` with a person box, as `dpose estimate` runs it, on a random-weight
checkpoint in the official layout whose body is the tests' tube body (a surface that renders
like SMPL-X's). Runs with `part_scores` on and off alternate, so machine noise hits both.
Inside the scored runs the network's calls and the scorer's calls are timed where they
happen (wrappers around the estimator and `pipeline.part_scorer`): the score's share of the
network time is measured in the run itself, and the whole run's time on vs off besides.

    python bench/bench_part_scores_run.py [--frames 12] [--rounds 3] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dpose_core import pipeline  # noqa: E402
from dpose_core.estimator import Estimator, physical_cores  # noqa: E402


class _Timed:
    """Sums the seconds spent in a callable (wall clock and CPU)."""

    def __init__(self, fn):
        self.fn, self.wall, self.cpu, self.calls = fn, 0.0, 0.0, 0

    def __call__(self, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return self.fn(*args, **kwargs)
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu
            self.calls += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import cv2
    import onnxruntime as ort
    import skimage.data

    from tests.synth_body import write_synthetic_smplx_npz
    from tests.synth_checkpoint import write_random_checkpoint
    from tests.synth_tube_body import write_tube_smplx_npz

    with tempfile.TemporaryDirectory(prefix="dpose-bench-") as tmp:
        work = Path(tmp)
        skeleton = write_synthetic_smplx_npz(work / "skeleton" / "SMPLX_NEUTRAL.npz", seed=0)
        body_npz = write_tube_smplx_npz(work / "body" / "SMPLX_NEUTRAL.npz", skeleton,
                                        blend_shapes=True)
        ckpt = work / "paper_arxiv.ckpt"
        write_random_checkpoint(ckpt, body_npz, seed=0)
        estimator = Estimator(ckpt, backend="onnx", device="cpu", cache_dir=work / "cache",
                              threads=args.threads)
        photo = skimage.data.astronaut()[:, :, ::-1]
        clip = work / "clip"
        clip.mkdir()
        for k in range(args.frames):
            cv2.imwrite(str(clip / f"f{k:04d}.png"), np.roll(photo, 3 * k, axis=1))

        net_timer = _Timed(estimator.estimate)
        estimator.estimate = net_timer  # what the run calls, per frame
        score_timers: list[_Timed] = []
        make_scorer = pipeline.part_scorer

        def timed_scorer(body_model):
            score_timers.append(_Timed(make_scorer(body_model)))
            return score_timers[-1]

        pipeline.part_scorer = timed_scorer

        def run(scores: bool) -> float:
            options = pipeline.RunOptions(inputs=[clip], bbox=(60, 40, 420, 512),
                                          part_scores=scores)
            started = time.perf_counter()
            pipeline.estimate_video(options, estimator=estimator, warn=lambda text: None)
            return (time.perf_counter() - started) / args.frames

        run(True)  # warm-up: model conversion, caches, ONNX Runtime arenas
        net_timer.wall = net_timer.cpu = 0.0
        net_timer.calls = 0
        score_timers.clear()
        on, off = [], []
        net_wall_on = net_cpu_on = 0.0
        for _ in range(args.rounds):
            before = (net_timer.wall, net_timer.cpu)
            on.append(run(True))
            net_wall_on += net_timer.wall - before[0]
            net_cpu_on += net_timer.cpu - before[1]
            off.append(run(False))
        score_wall = sum(t.wall for t in score_timers)
        score_cpu = sum(t.cpu for t in score_timers)
        scored = sum(t.calls for t in score_timers)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical / "
          f"{physical_cores()} physical cores; onnxruntime {ort.__version__} "
          f"(cpu, {args.threads or physical_cores()} threads); numpy {np.__version__}; "
          f"{args.rounds} rounds of {args.frames} frames (512x512, one person box)")
    frames = args.rounds * args.frames
    print("| measure (per frame, scored runs) | wall | CPU |")
    print("|---|---|---|")
    print(f"| network (`Estimator.estimate`) | {1e3 * net_wall_on / frames:.1f} ms | "
          f"{1e3 * net_cpu_on / frames:.1f} ms |")
    print(f"| part-agreement score ({scored} calls) | {1e3 * score_wall / frames:.1f} ms | "
          f"{1e3 * score_cpu / frames:.1f} ms |")
    print(f"| **score / network** | **{100 * score_wall / net_wall_on:.1f} %** | "
          f"**{100 * score_cpu / net_cpu_on:.1f} %** |")
    print(f"| whole run, scores on, median | {1e3 * np.median(on):.1f} ms | |")
    print(f"| whole run, scores off, median | {1e3 * np.median(off):.1f} ms | |")


if __name__ == "__main__":
    main()
