"""Keying speed: bulk foreach_set writing against a keyframe_insert loop, in one run.

    python bench/bench_keyframes.py [--frames 10000] [--sample-frames 20] [--check-frames 1000]

Keys `--frames` frames x 55 bones (quaternions, root location, confidence, flags) with
keyframes.write_motion_keys; the whole call is timed (rotation conversion, continuity, keys,
handles), best of 3.

The keyframe_insert loop (per frame and bone: set the pose-bone value, keyframe_insert) is far
too slow to run at 10 000 frames, so it is timed on `--sample-frames` frames and scaled. Its
cost per call grows with the length of the F-curves it inserts into (each insert reallocates
the curve and recalculates its handles), so the loop is sampled at several curve lengths
(curves pre-filled in bulk to 0, 1/4, 1/2, 3/4 and all of the frames, prefill not timed) and
the full loop estimated as frames x the mean per-frame cost over those lengths. To show the
estimate is sound, the complete loop is also run at `--check-frames` frames and compared with
the same estimate made at that length. The naive estimate, the first sample-frames on empty
curves scaled linearly, is printed as a lower bound.
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import bpy  # noqa: E402

from dpose_core.body_model import BodyModel  # noqa: E402
from dpose_core.motion import Motion  # noqa: E402
from dpose_core.rotations import axis_angle_to_matrix  # noqa: E402
from dpose_core.skeleton import JOINT_NAMES  # noqa: E402
from tests.blender_support import import_blender_module  # noqa: E402
from tests.synth_body import write_synthetic_smplx_npz  # noqa: E402

rig = import_blender_module("rig")
keyframes = import_blender_module("keyframes")


def smooth_motion(frames: int, betas: np.ndarray, seed: int = 0) -> Motion:
    """A random walk of joint rotations (continuous, like real footage), 5% low confidence."""
    rng = np.random.default_rng(seed)
    axis_angle = np.cumsum(rng.normal(0, 0.03, (frames, 55, 3)), axis=0)
    transl = np.cumsum(rng.normal(0, 0.01, (frames, 3)), axis=0) + [0.0, 0.0, 4.0]
    confidence = np.where(rng.uniform(size=frames) < 0.05, 0.2, 0.9)
    return Motion(rotmats=axis_angle_to_matrix(axis_angle), transl=transl, betas=betas,
                  fps=30.0, confidence=confidence)


def time_bulk(model: BodyModel, motion: Motion) -> float:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    armature = rig.build_armature(model, motion.betas)
    start = time.perf_counter()
    keyframes.write_motion_keys(armature, motion)
    return time.perf_counter() - start


def time_insert_loop(model: BodyModel, motion: Motion, prefill: int, frames: int) -> float:
    """Seconds for keyframe_insert of `frames` frames after `prefill` frames keyed in bulk."""
    bpy.ops.wm.read_factory_settings(use_empty=True)
    armature = rig.build_armature(model, motion.betas)
    if prefill:
        keyframes.write_motion_keys(armature, motion.slice(0, prefill))
    frame = rig.rig_frame(armature)
    window = slice(prefill, prefill + frames)
    quats, location = frame.pose_from_smplx(motion.rotmats[window], motion.transl[window])
    bones = [armature.pose.bones[name] for name in JOINT_NAMES]
    start = time.perf_counter()
    for f in range(frames):
        for j, bone in enumerate(bones):
            bone.rotation_quaternion = quats[f, j]
            bone.keyframe_insert("rotation_quaternion", frame=prefill + f + 1, group=bone.name)
        bones[0].location = location[f]
        bones[0].keyframe_insert("location", frame=prefill + f + 1, group=bones[0].name)
    return time.perf_counter() - start


def estimate_insert_loop(model: BodyModel, motion: Motion, n: int, k: int):
    """(curve lengths, seconds per frame at each, estimated seconds for n frames)."""
    lengths = sorted({0, n // 4, n // 2, 3 * n // 4, n - k})
    per_frame = np.array([time_insert_loop(model, motion, length, k) / k for length in lengths])
    mean_per_frame = np.trapz(per_frame, lengths) / (lengths[-1] - lengths[0])
    return lengths, per_frame, mean_per_frame * n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--sample-frames", type=int, default=20)
    parser.add_argument("--check-frames", type=int, default=1_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model = BodyModel.load(write_synthetic_smplx_npz(Path(tmp) / "SMPLX_NEUTRAL.npz"))
    n, k, m = args.frames, min(args.sample_frames, args.frames), args.check_frames
    motion = smooth_motion(max(n, m) + k, np.zeros(11))
    bulk = min(time_bulk(model, motion.slice(0, n)) for _ in range(3))
    lengths, per_frame, loop_estimate = estimate_insert_loop(model, motion, n, k)
    loop_naive = per_frame[0] * n

    bulk_check = min(time_bulk(model, motion.slice(0, m)) for _ in range(3))
    loop_check = time_insert_loop(model, motion, 0, m)
    _, _, check_estimate = estimate_insert_loop(model, motion, m, k)

    keys = n * (55 * 4 + 3 + 2)
    calls = 55 + 1
    print(f"Blender {'.'.join(map(str, bpy.app.version))}: {n} frames x 55 bones ({keys:,} keys)")
    print(f"  bulk write_motion_keys      {bulk:9.3f} s  (best of 3; target < 1 s)")
    for length, cost in zip(lengths, per_frame, strict=True):
        print(f"  keyframe_insert at {length:>6} keys/curve: {cost / calls * 1e6:8.0f} us per call "
              f"({k} frames x {calls} calls timed)")
    print(f"  keyframe_insert loop, estimate over curve lengths {loop_estimate:9.1f} s "
          f"-> bulk is {loop_estimate / bulk:,.0f}x faster (target >= 40x)")
    print(f"  keyframe_insert loop, naive linear lower bound    {loop_naive:9.1f} s "
          f"-> bulk is {loop_naive / bulk:,.1f}x faster")
    print(f"  check at {m} frames: full keyframe_insert loop {loop_check:.2f} s measured, "
          f"{check_estimate:.2f} s estimated; bulk {bulk_check:.3f} s -> "
          f"{loop_check / bulk_check:,.0f}x measured side by side")


if __name__ == "__main__":
    main()
