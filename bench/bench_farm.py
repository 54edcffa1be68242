"""Farm chunking on one machine: two chunk processes with one thread each against one process
with two threads, on the same clip, alternating in one run; and what the merge costs.

    python bench/bench_farm.py [--frames 60] [--rounds 2] [--checkpoint CKPT]

Without --checkpoint a random-weight checkpoint in the official layout is written (speed does
not depend on the weights). The person box is given, so every variant solves the same crops.
The merge cost is measured on its own for 1 000 frames of two people and reported against the
solve time of 1 000 frames measured here. Prints figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BOX = (20.0, 40.0, 260.0, 200.0)
SOLVE = f"""
import sys
from dpose_core.chunks import write_chunk
from dpose_core.estimator import Estimator
from dpose_core.pipeline import RunOptions, estimate_video
clip, ckpt, cache, start, end, overlap, threads, out = sys.argv[1:]
options = RunOptions(inputs=[clip], start=int(start), end=int(end), chunk_overlap=int(overlap),
                     bbox={BOX!r}, checkpoint=ckpt, cache_dir=cache)
estimator = Estimator(ckpt, cache_dir=cache, threads=int(threads))
write_chunk(out, estimate_video(options, estimator=estimator).chunk)
"""


def _clip(path: Path, frames: int) -> None:
    import cv2
    from skimage import data

    person = cv2.resize(data.astronaut()[:, :, ::-1], (160, 160))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 25.0, (320, 240))
    for f in range(frames):
        frame = np.full((240, 320, 3), 90, np.uint8)
        x = 20 + (3 * f) % 140
        frame[40:200, x:x + 160] = person
        writer.write(frame)
    writer.release()


def _solve(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SOLVE, *args], cwd=ROOT)


def _wait(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        if proc.wait() != 0:
            raise SystemExit(f"a solve failed (exit {proc.returncode})")


def _merge_cost(frames: int = 1000, chunk: int = 200) -> float:
    """Seconds to merge `frames` frames of two people from chunks of `chunk` (no network)."""
    from dpose_core.chunks import write_chunk
    from dpose_core.pipeline import RunOptions, merge_video
    from tests.test_chunks import _crossing_shot

    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for k, c in enumerate(_crossing_shot(range(0, frames, chunk), end=frames)):
            paths.append(Path(tmp) / f"chunk_{k:03d}.npz")
            write_chunk(paths[-1], c)
        start = time.perf_counter()
        merge_video(paths, RunOptions())
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--overlap", type=int, default=16)
    parser.add_argument("--checkpoint")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = args.checkpoint
        if ckpt is None:
            from tests.synth_body import write_synthetic_smplx_npz
            from tests.synth_checkpoint import write_random_checkpoint
            from tests.synth_tube_body import write_tube_smplx_npz

            write_synthetic_smplx_npz(tmp / "blob.npz", seed=0)
            write_tube_smplx_npz(tmp / "body.npz", tmp / "blob.npz")  # renders like a body
            ckpt = str(write_random_checkpoint(tmp / "ckpt.ckpt", tmp / "body.npz", seed=0))
        clip, cache = tmp / "clip.avi", tmp / "cache"
        _clip(clip, args.frames)
        n, half = args.frames, args.frames // 2
        _wait([_solve([str(clip), ckpt, str(cache), "0", "2", "0", "1", str(tmp / "w.npz")])])
        one, two = [], []
        for _ in range(args.rounds):
            start = time.perf_counter()
            _wait([_solve([str(clip), ckpt, str(cache), "0", str(n), "0", "2",
                           str(tmp / "whole.npz")])])
            one.append(time.perf_counter() - start)
            start = time.perf_counter()
            _wait([_solve([str(clip), ckpt, str(cache), "0", str(half), "0", "1",
                           str(tmp / "a.npz")]),
                   _solve([str(clip), ckpt, str(cache), str(half), str(n), str(args.overlap),
                           "1", str(tmp / "b.npz")])])
            two.append(time.perf_counter() - start)
        merge_s = _merge_cost()
    best_one, best_two = min(one), min(two)
    solve_1000 = best_one / n * 1000
    print(f"{n} frames, overlap {args.overlap}, {args.rounds} rounds (best; all: "
          f"{[round(t, 1) for t in one]} / {[round(t, 1) for t in two]})")
    print(f"one process, 2 threads:    {best_one:7.1f} s  ({n / best_one:.2f} frames/s)")
    print(f"two chunks, 1 thread each: {best_two:7.1f} s  ({n / best_two:.2f} frames/s)")
    print(f"scaling: {best_one / best_two:.2f}x (chunks solve {n + args.overlap} frames for {n})")
    print(f"merge of 1000 frames, two people: {merge_s * 1000:.0f} ms = "
          f"{100 * merge_s / solve_1000:.2f} % of solving them ({solve_1000:.0f} s)")


if __name__ == "__main__":
    main()
