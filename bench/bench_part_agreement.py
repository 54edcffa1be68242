"""Benchmark (not a test): cost of the part-agreement score per frame, as a share of the network.

The network's time per crop (ONNX Runtime `session.run` through `Estimator.run_crops`, batch
1, random-weight checkpoint in the official layout) and the score's time per frame are
measured alternately in each round, so machine noise hits both alike. The score runs on the
tube body of the tests (the synthetic SMPL-X skeleton, 10 475 vertices, 18 720 triangles of
1-3 px, padded with empty ones to SMPL-X's 20 908), posed near a known pose and filling the
crop as a detected person does; its cost does not depend on the (random) network output.

    python bench/bench_part_agreement.py [--rounds 7] [--frames 16] [--threads N]

Reported per frame: one frame at a time (the image pipeline), a batch of --frames frames
(a video chunk), the parts (skinning, projection + fill, comparison), and, for contrast,
posing through `BodyModel.forward` with pose correctives. Wall-clock and CPU time are both
given: on a shared machine the wall clock of a multi-threaded ONNX Runtime suffers more than
single-threaded numpy, while CPU time with --threads 1 compares the work itself. --threads
sets ONNX Runtime's intra-op threads (default: one per physical core, as the add-on runs).
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

from dpose_core import camera, preprocess  # noqa: E402
from dpose_core.estimator import Estimator, physical_cores  # noqa: E402
from dpose_core.part_agreement import (  # noqa: E402
    compare_part_labels,
    part_agreement_arrays,
    project_to_crop,
    render_part_labels,
    skinned_vertices,
)
from dpose_core.part_labels import body_model_part_classes  # noqa: E402
from dpose_core.rasterise import rasterise_labels  # noqa: E402
from dpose_core.rotations import axis_angle_to_matrix  # noqa: E402

FOCAL = np.array([[820.0, 820.0]])
PRINCIPAL = np.array([[320.0, 240.0]])
CAM_T = np.array([0.1, 0.15, 5.0])


def _scene(body, frames: int, rng: np.random.Generator):
    """Poses near an upright, camera-facing body; its crop box; the true pose's part labels."""
    aa = np.zeros((frames, 22, 3))
    aa[:, 0] = (np.pi, 0.0, 0.0)
    aa[:, 1:] += rng.normal(0.0, 0.15, (frames, 21, 3))
    rot = axis_angle_to_matrix(aa)
    transl = CAM_T + rng.normal(0.0, 0.02, (frames, 3))
    verts = body.forward(rot[:1], np.zeros(11), CAM_T[None], pose_correctives=False).vertices
    uv = camera.project(verts - CAM_T, CAM_T[None], FOCAL, PRINCIPAL)[0]
    centre, scale = preprocess.box_to_center_scale([*uv.min(axis=0), *uv.max(axis=0)])
    crop_box = np.repeat(preprocess.crop_box(centre, scale)[None], frames, axis=0)
    classes = body_model_part_classes(body)
    truth = render_part_labels(verts, body.faces, classes, FOCAL, PRINCIPAL, crop_box[:1])
    return rot, transl, crop_box, np.repeat(truth, frames, axis=0)


def _per_frame(fn, frames: int) -> tuple[float, float]:
    """(wall-clock, CPU) seconds per frame; CPU time sums the process's threads."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return (time.perf_counter() - wall) / frames, (time.process_time() - cpu) / frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import onnxruntime as ort
    import skimage.data

    from tests.synth_body import write_synthetic_smplx_npz
    from tests.synth_checkpoint import write_random_checkpoint
    from tests.synth_tube_body import tube_body_from_npz

    with tempfile.TemporaryDirectory(prefix="dpose-bench-") as tmp:
        work = Path(tmp)
        body_npz = write_synthetic_smplx_npz(work / "SMPLX_NEUTRAL.npz", seed=0)
        ckpt = work / "paper_arxiv.ckpt"
        write_random_checkpoint(ckpt, body_npz, seed=0)
        estimator = Estimator(ckpt, backend="onnx", device="cpu", cache_dir=work / "cache",
                              threads=args.threads)  # fmt: skip
        image = skimage.data.astronaut()
        crops, centre, scale = preprocess.prepare_crops(image, [[60, 40, 420, 512]])
        size = np.array([[image.shape[1], image.shape[0]]], dtype=np.float64)
        focal = camera.default_focal_px(size)
        info = camera.bbox_info(centre, scale, size, focal)
        net_input = preprocess.normalize_crops(crops)

        body = tube_body_from_npz(body_npz)
        classes = body_model_part_classes(body)
        rng = np.random.default_rng(0)
        n = args.frames
        rot, transl, crop_box, truth = _scene(body, n, rng)
        betas = np.zeros(11)
        focal_n, principal_n = np.repeat(FOCAL, n, 0), np.repeat(PRINCIPAL, n, 0)
        verts = skinned_vertices(body, rot, betas, transl)
        xy, inv_z = project_to_crop(verts, focal_n, principal_n, crop_box)
        rendered = rasterise_labels(xy, inv_z, body.faces, classes, 224)

        def one_at_a_time(correctives: bool = False) -> None:
            for i in range(n):
                part_agreement_arrays(
                    body, rot[i : i + 1], betas, transl[i : i + 1], focal_n[i : i + 1],
                    principal_n[i : i + 1], crop_box[i : i + 1], truth[i : i + 1],
                    pose_correctives=correctives,
                )  # fmt: skip

        measures = {
            "network (session.run), batch 1, per crop": lambda: _per_frame(
                lambda: estimator.run_crops(net_input, info), 1),
            "score, one frame at a time": lambda: _per_frame(one_at_a_time, n),
            f"score, {n} frames in one call": lambda: _per_frame(
                lambda: part_agreement_arrays(body, rot, betas, transl, focal_n, principal_n,
                                              crop_box, truth), n),
            "  skinning (plain LBS)": lambda: _per_frame(
                lambda: [skinned_vertices(body, rot[i:i + 1], betas, transl[i:i + 1])
                         for i in range(n)], n),
            "  projection + fill": lambda: _per_frame(
                lambda: [rasterise_labels(*project_to_crop(
                    verts[i:i + 1], focal_n[i:i + 1], principal_n[i:i + 1], crop_box[i:i + 1]),
                    body.faces, classes, 224) for i in range(n)], n),
            "  comparison (23-class confusion)": lambda: _per_frame(
                lambda: [compare_part_labels(rendered[i:i + 1], truth[i:i + 1])
                         for i in range(n)], n),
            "score with pose correctives (BodyModel.forward), one frame at a time":
                lambda: _per_frame(lambda: one_at_a_time(True), n),
        }  # fmt: skip
        for fn in measures.values():  # warm-up: caches, ONNX Runtime arenas
            fn()
        times: dict[str, list[tuple[float, float]]] = {name: [] for name in measures}
        for _ in range(args.rounds):
            for name, fn in measures.items():
                times[name].append(fn())

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical / "
          f"{physical_cores()} physical cores; onnxruntime {ort.__version__} "
          f"({estimator.device}, {args.threads or physical_cores()} threads); numpy "
          f"{np.__version__}; {args.rounds} rounds, "
          f"{n} frames")  # fmt: skip
    net = np.array(times["network (session.run), batch 1, per crop"])
    net_wall, net_best, net_cpu = np.median(net[:, 0]), net[:, 0].min(), np.median(net[:, 1])
    print("| measure | wall median (best) | share of the network: median (best) | CPU median "
          "| CPU share |")
    print("|---|---|---|---|---|")
    for name, values in times.items():
        v = np.array(values)
        wall, best, cpu = np.median(v[:, 0]), v[:, 0].min(), np.median(v[:, 1])
        print(f"| {name} | {1e3 * wall:.1f} ms ({1e3 * best:.1f} ms) | "
              f"{100 * wall / net_wall:.1f} % ({100 * best / net_best:.1f} %) | "
              f"{1e3 * cpu:.1f} ms | {100 * cpu / net_cpu:.1f} % |")


if __name__ == "__main__":
    main()
