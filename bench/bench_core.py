"""Benchmark of the inference runtime (not a test): torch eager vs ONNX Runtime on the CPU.

Measures per-crop latency and throughput at batch 1 and 8, checkpoint -> ONNX time with and
without torch, and ONNX Runtime session start. Runs alternate between backends inside each
round so that machine noise hits both alike; ratios are computed from medians of one run.

    python bench/bench_core.py [--checkpoint CKPT] [--rounds 3] [--variants]

Without --checkpoint a random-weight checkpoint in the official layout is generated (needs the
dev extras: torch and the tests' synthetic writers). --variants also times ONNX Runtime session
options (optimisation level, threads, a saved optimised model).
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
from dpose_core.checkpoint import load_checkpoint_arrays  # noqa: E402
from dpose_core.estimator import physical_cores  # noqa: E402


def _timed(fn, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, result


def _make_checkpoint(folder: Path) -> Path:
    from tests.synth_body import write_synthetic_smplx_npz
    from tests.synth_checkpoint import write_random_checkpoint

    body = folder / "SMPLX_NEUTRAL.npz"
    ckpt = folder / "paper_arxiv.ckpt"
    write_synthetic_smplx_npz(body, seed=0)
    write_random_checkpoint(ckpt, body, seed=0)
    return ckpt


def _session(model: Path, level: str = "all", threads: int | None = None, save_to=None):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[level]
    options.intra_op_num_threads = threads or physical_cores() or 0
    if save_to is not None:
        options.optimized_model_filepath = str(save_to)
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", "optimized.bin"
        )
        options.add_session_config_entry(
            "session.optimized_model_external_initializers_min_size_in_bytes", "1024"
        )
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


def _inputs(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    return {
        "images": rng.standard_normal((batch, 3, 224, 224)).astype(np.float32),
        "bbox_info": (0.3 * rng.standard_normal((batch, 3))).astype(np.float32),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--variants", action="store_true")
    args = parser.parse_args()

    import onnxruntime as ort
    import torch

    work = Path(tempfile.mkdtemp(prefix="dpose-bench-"))
    try:
        ckpt = args.checkpoint or _make_checkpoint(work)
        rows: list[tuple[str, str]] = []
        print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical "
              f"/ {physical_cores()} physical cores; torch {torch.__version__} "
              f"({torch.get_num_threads()} threads), onnxruntime {ort.__version__}")  # fmt: skip

        # -- checkpoint -> ONNX, torch-free (what users without torch run) vs torch export
        t_free, model = _timed(onnx_model.build_runtime_model, ckpt, work / "cache")
        from dpose_core.network import build_network
        from dpose_core.onnx_export import export_onnx

        t_load, arrays = _timed(load_checkpoint_arrays, ckpt)
        t_build, net = _timed(build_network, arrays)
        t_export, full = _timed(export_onnx, net, work / "full.onnx")
        t_torch = t_load + t_build + t_export
        rows += [
            ("checkpoint -> ONNX, torch-free (read + write weights.bin)", f"{t_free:.2f} s"),
            ("checkpoint -> ONNX via torch export (read + build + export)",
             f"{t_torch:.2f} s ({t_torch / t_free:.1f}x the torch-free time)"),
        ]  # fmt: skip

        # -- session start
        t_sess, session = _timed(_session, model)
        rows.append(("ONNX Runtime session start (level all)", f"{t_sess:.2f} s"))

        # -- latency / throughput, interleaved
        batches = (1, 8)
        feeds = {b: _inputs(b) for b in batches}
        tensors = {b: (torch.from_numpy(f["images"]), torch.from_numpy(f["bbox_info"]))
                   for b, f in feeds.items()}  # fmt: skip
        times = {(name, b): [] for name in ("torch", "onnx") for b in batches}
        for b in batches:  # warm-up: first runs allocate
            with torch.inference_mode():
                net(*tensors[b])
            session.run(None, feeds[b])
        for _ in range(args.rounds):
            for b in batches:
                with torch.inference_mode():
                    times[("torch", b)].append(_timed(net, *tensors[b])[0])
                times[("onnx", b)].append(_timed(session.run, None, feeds[b])[0])
        for b in batches:
            med_t, med_o = (statistics.median(times[(n, b)]) for n in ("torch", "onnx"))
            best_t, best_o = (min(times[(n, b)]) for n in ("torch", "onnx"))
            rows += [
                (f"batch {b}: torch eager per crop, median (best)", _per_crop(med_t, best_t, b)),
                (f"batch {b}: ONNX Runtime per crop, median (best)", _per_crop(med_o, best_o, b)),
                (f"batch {b}: ONNX Runtime speed-up over torch, median (best)",
                 f"{med_t / med_o:.2f}x ({best_t / best_o:.2f}x)"),
            ]  # fmt: skip
        rows += _around_the_network(ckpt)

        if args.variants:
            rows += _variants(model, feeds[8], args.rounds, work)

        width = max(len(k) for k, _ in rows)
        print(f"\n{'measure':<{width}}  value\n{'-' * width}  {'-' * 40}")
        for key, value in rows:
            print(f"{key:<{width}}  {value}")
        del full
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _per_crop(median: float, best: float, batch: int) -> str:
    per_crop = f"{1000 * median / batch:.0f} ms ({1000 * best / batch:.0f} ms)"
    return f"{per_crop}; {batch / median:.2f} crops/s"


def _around_the_network(ckpt: Path) -> list[tuple[str, str]]:
    """numpy work per crop outside the network: crop + resize + normalise, SMPL-X joints."""
    from dpose_core import preprocess
    from dpose_core.body_model import BodyModel

    image = np.random.default_rng(0).integers(0, 256, (1080, 1920, 3), dtype=np.uint8)
    boxes = [(700.0, 100.0, 1100.0, 1000.0), (900.0, 500.0, 1000.0, 700.0)]
    crop_times = []
    for _ in range(5):
        for box in boxes:
            centre, scale = preprocess.box_to_center_scale(box)
            crop_times.append(_timed(preprocess.crop_image, image, centre, scale)[0])
    body = BodyModel.from_arrays(load_checkpoint_arrays(ckpt))
    rot = np.broadcast_to(np.eye(3), (8, 22, 3, 3)).copy()
    t_joints = min(
        _timed(body.forward, rot, np.zeros((8, 11)), return_vertices=False)[0] for _ in range(3)
    )
    return [
        ("crop + anti-aliased resize per crop (1080p frame, numpy)",
         f"{1000 * statistics.median(crop_times):.1f} ms"),
        ("SMPL-X joints per crop (batch 8, numpy)", f"{1000 * t_joints / 8:.1f} ms"),
    ]  # fmt: skip


def _variants(model: Path, feed: dict, rounds: int, work: Path) -> list[tuple[str, str]]:
    """Session options tried for speed (all fp32, same numerics), interleaved at batch 8."""
    saved = work / "optimized" / "model.onnx"
    saved.parent.mkdir()
    t_save, _ = _timed(_session, model, "extended", None, saved)
    t_reload, _ = _timed(_session, saved, "none")
    configs = {
        "level all, threads = physical cores": dict(level="all"),
        "level extended": dict(level="extended"),
        "level basic": dict(level="basic"),
        "threads = 1": dict(level="all", threads=1),
    }
    sessions = {name: _session(model, **cfg) for name, cfg in configs.items()}
    times = {name: [] for name in sessions}
    for s in sessions.values():
        s.run(None, feed)
    for _ in range(rounds):
        for name, s in sessions.items():
            times[name].append(_timed(s.run, None, feed)[0])
    base = statistics.median(times["level all, threads = physical cores"])
    rows = [
        (f"variant batch 8: {name}",
         f"{1000 * statistics.median(t) / 8:.0f} ms/crop ({base / statistics.median(t):.2f}x of "
         "level all)")
        for name, t in times.items()
    ]  # fmt: skip
    rows += [
        ("session start, saving optimised (extended) model", f"{t_save:.2f} s"),
        ("session start from the saved optimised model", f"{t_reload:.2f} s"),
    ]
    return rows


if __name__ == "__main__":
    main()
