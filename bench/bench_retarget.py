"""Retargeting speed onto the Rigify rig generated from Blender's human metarig, in one run.

    python bench/bench_retarget.py [--frames 10000] [--bake-frames 1000]

1. The engine (dpose_core.retarget.retarget: FK of SMPL-X, rest alignment, root motion, pose
   bases and quaternions) for `--frames` frames onto the generated rig's skeleton, best of 3;
   with the two feet planted from contact curves, best of 3.
2. The whole Blender bake (dpose_blender.retarget.retarget_motion: engine + Blender's
   evaluation of the bones whose parents constraints move + bulk keys + NLA strip) for
   `--bake-frames` frames, once, split into its parts. Its evaluation passes cost one scene
   evaluation per frame and depth of such bones, so it is run on fewer frames and reported
   per frame beside the engine.
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

from dpose_core import retarget as core  # noqa: E402
from dpose_core.body_model import BodyModel  # noqa: E402
from dpose_core.coords import OPENCV_TO_BLENDER, SMPLX_TO_BLENDER  # noqa: E402
from dpose_core.motion import Motion  # noqa: E402
from dpose_core.rotations import axis_angle_to_matrix  # noqa: E402
from tests.blender_support import import_blender_module  # noqa: E402
from tests.synth_body import write_synthetic_smplx_npz  # noqa: E402

retarget = import_blender_module("retarget")


def walking_motion(frames: int, betas: np.ndarray, seed: int = 0) -> Motion:
    """Continuous random joint motion on an upright body that travels forward."""
    rng = np.random.default_rng(seed)
    axis_angle = np.cumsum(rng.normal(0, 0.02, (frames, 55, 3)), axis=0)
    axis_angle = 0.6 * np.tanh(axis_angle)
    rotmats = axis_angle_to_matrix(axis_angle)
    rotmats[:, 0] = OPENCV_TO_BLENDER.T @ SMPLX_TO_BLENDER @ rotmats[:, 0]
    transl = np.stack([np.linspace(0, 20, frames), np.zeros(frames), np.full(frames, 6.0)], 1)
    return Motion(rotmats=rotmats, transl=transl, betas=betas, fps=30.0)


def generated_rigify():
    import addon_utils  # importable once bpy is

    bpy.ops.wm.read_factory_settings(use_empty=True)
    addon_utils.enable("rigify", default_set=True)
    bpy.ops.object.armature_human_metarig_add()
    metarig = bpy.context.object
    bpy.ops.pose.rigify_generate()
    return next(o for o in bpy.data.objects if o.type == "ARMATURE" and o != metarig)


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=10_000)
    parser.add_argument("--bake-frames", type=int, default=1000)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "SMPLX_NEUTRAL.npz"
        write_synthetic_smplx_npz(path, seed=0)
        model = BodyModel.load(path)
    betas = np.zeros(11)
    rest_joints = model.rest_joints(betas)
    target = generated_rigify()
    skeleton = retarget.read_skeleton(target)
    _, bone_map = retarget.detect_bone_map(target)
    motion = walking_motion(args.frames, betas)
    contacts = np.zeros((args.frames, 4))
    contacts[(np.arange(args.frames) // 15) % 2 == 0, 0:2] = 1.0
    contacts[(np.arange(args.frames) // 15) % 2 == 1, 2:4] = 1.0

    def engine(with_contacts: bool):
        return core.retarget(motion.rotmats, motion.transl, rest_joints, skeleton, bone_map,
                             contacts=contacts if with_contacts else None)

    plain = best_of(lambda: engine(False))
    planted = best_of(lambda: engine(True))
    print(f"Blender {bpy.app.version_string}; Rigify rig: {len(skeleton.names)} bones, "
          f"{len(bone_map)} driven")
    print(f"engine, {args.frames} frames: {plain:.3f} s ({plain / args.frames * 1e6:.0f} us/frame)")
    print(f"engine with planted feet, {args.frames} frames: {planted:.3f} s")

    short = motion.slice(0, args.bake_frames)
    timings = {}
    original = retarget._evaluate

    def timed_evaluate(*a, **k):
        start = time.perf_counter()
        out = original(*a, **k)
        timings["evaluation"] = timings.get("evaluation", 0.0) + time.perf_counter() - start
        timings["passes"] = timings.get("passes", 0) + 1
        return out

    retarget._evaluate = timed_evaluate
    start = time.perf_counter()
    retarget.retarget_motion(short, rest_joints, target, take_name="bench")
    bake = time.perf_counter() - start
    retarget._evaluate = original
    evaluation = timings.get("evaluation", 0.0)
    print(f"Blender bake, {args.bake_frames} frames: {bake:.3f} s "
          f"({bake / args.bake_frames * 1e3:.2f} ms/frame); evaluation passes: "
          f"{timings.get('passes', 0)} taking {evaluation:.3f} s; the rest (engine, keys, NLA) "
          f"{bake - evaluation:.3f} s")


if __name__ == "__main__":
    main()
