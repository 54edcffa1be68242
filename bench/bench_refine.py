"""Benchmark of the refine stage (not a test): grounding + foot locking cost per frame, as a share
of the network's time per crop, both measured in this run.

    python bench/bench_refine.py [--checkpoint CKPT] [--seconds 10] [--rounds 3]

The clip is the tests' synthetic walk (30 fps) with network-like errors and the network's foot
cues (so the depth-map evidence is fitted and weighed), seen by a still camera and by a moving,
tracked camera of unknown scale. The network is ONNX Runtime at batch 1
on the random-weight checkpoint (generated unless --checkpoint is given; speed does not depend
on the weights). Rounds alternate network and refine runs so machine noise hits both alike.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dpose_core import onnx_model  # noqa: E402
from dpose_core.body_model import BodyModel  # noqa: E402
from dpose_core.estimator import physical_cores  # noqa: E402
from dpose_core.refine import refine_motion  # noqa: E402


def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def _clips(body_model: BodyModel, seconds: float):
    from tests import synth_walk as sw

    betas = np.random.default_rng(1).normal(0, 1, 11)
    truth = sw.walk(body_model, betas, seconds=seconds)
    still = sw.network_solve(
        body_model, sw.to_camera(body_model, truth, sw.look_at((1.6, -4.2, 1.9), (1, 0, 0.8))), 0
    )
    n = len(truth.transl)
    t = np.arange(n) / truth.fps
    pelvis = truth.transl + body_model.rest_joints(betas)[0]
    cams = np.stack([sw.look_at((0.2 + 0.8 * ti, -4.0, 1.8), (p[0] + 0.3, 0.0, 0.8))
                     for ti, p in zip(t, pelvis, strict=True)])  # fmt: skip
    moving = sw.network_solve(body_model, sw.to_camera(body_model, truth, cams), 1)
    track = cams.copy()
    track[:, :3, 3] *= 0.37
    # The network's foot cues as a video run carries them: feet seen, and a depth map that
    # follows the solve's own foot depth (so the map evidence is fitted and used).
    still, moving = (m.replace(feet_seen=np.ones((m.num_frames, 4)),
                               foot_map_depth=sw.depth_map_of(body_model, m, 0.45))
                     for m in (still, moving))
    return still, moving, track


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    import onnxruntime as ort

    work = Path(tempfile.mkdtemp(prefix="dpose-bench-refine-"))
    try:
        from tests.synth_body import write_synthetic_smplx_npz

        body_path = write_synthetic_smplx_npz(work / "SMPLX_NEUTRAL.npz", seed=0)
        if args.checkpoint is None:
            from tests.synth_checkpoint import write_random_checkpoint

            args.checkpoint = work / "paper_arxiv.ckpt"
            write_random_checkpoint(args.checkpoint, body_path, seed=0)
        body_model = BodyModel.load(body_path)
        still, moving, track = _clips(body_model, args.seconds)
        frames = still.num_frames

        options = ort.SessionOptions()
        options.intra_op_num_threads = physical_cores() or 0
        session = ort.InferenceSession(
            str(onnx_model.build_runtime_model(args.checkpoint, work / "cache")), options,
            providers=["CPUExecutionProvider"],
        )
        rng = np.random.default_rng(0)
        feed = {"images": rng.standard_normal((1, 3, 224, 224)).astype(np.float32),
                "bbox_info": (0.3 * rng.standard_normal((1, 3))).astype(np.float32)}
        session.run(None, feed)  # warm-up
        refine_motion(still.slice(0, 30), body_model)

        from dpose_core.foot_evidence import feet_seen, foot_map_depth

        labels = rng.integers(0, 23, (224, 224)).astype(np.int64)  # what the network outputs
        depth_map = rng.uniform(0, 1, (224, 224)).astype(np.float32)

        def cues() -> None:  # one person-frame's foot cues, as the sequence loop takes them
            feet_seen(labels)
            foot_map_depth(depth_map, labels)

        times: dict[str, list[float]] = {"network": [], "still": [], "moving": [], "nolock": [],
                                         "cues": []}
        for _ in range(args.rounds):
            times["cues"].append(min(_timed(cues)[0] for _ in range(20)))
            times["network"].append(min(_timed(session.run, None, feed)[0] for _ in range(5)))
            times["still"].append(_timed(refine_motion, still, body_model)[0] / frames)
            times["nolock"].append(
                _timed(refine_motion, still, body_model, foot_lock=0.0)[0] / frames)
            times["moving"].append(
                _timed(refine_motion, moving, body_model, camera_to_world=track)[0] / frames)

        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical "
              f"/ {physical_cores()} physical cores; onnxruntime {ort.__version__}; clip "
              f"{frames} frames; {args.rounds} rounds")  # fmt: skip
        net = statistics.median(times["network"])
        print("| measure | median per frame | best | share of the network (median) |")
        print("|---|---|---|---|")
        for key, label in (("network", "network, ONNX Runtime batch 1, per crop"),
                           ("still", "refine, still camera (ground + lock)"),
                           ("nolock", "refine, still camera, foot lock 0 (ground only)"),
                           ("moving", "refine, tracked camera (scale + ground + lock)"),
                           ("cues", "foot cues per person-frame (sequence loop)")):
            med, best = statistics.median(times[key]), min(times[key])
            share = "" if key == "network" else f"{100 * med / net:.2f} %"
            print(f"| {label} | {med * 1000:.2f} ms | {best * 1000:.2f} ms | {share} |")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
