"""Benchmark (not a test): what checking the model cache on open costs next to session start.

Opening a cached model means hashing the checkpoint (to find its entry), checking the entry
against its manifest and starting the ONNX Runtime session. The entry check reads only stat()
when the files are as built, and hashes them (sha256 of ~330 MB) when they were copied or
touched: both are timed. Rounds alternate the measures, from a fresh process memo each time.

    python bench/bench_model_cache.py [--checkpoint CKPT] [--rounds 5]

Without --checkpoint a random-weight checkpoint in the official layout is generated (needs
torch and the tests' synthetic writers); its entry has the real network's size.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from dpose_core import checkpoint, onnx_model  # noqa: E402


def _timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    import onnxruntime as ort

    work = Path(tempfile.mkdtemp(prefix="dpose-bench-cache-"))
    try:
        _measure(args, work, ort)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _measure(args: argparse.Namespace, work: Path, ort) -> None:
    ckpt = args.checkpoint
    if ckpt is None:
        from tests.synth_body import write_synthetic_smplx_npz
        from tests.synth_checkpoint import write_random_checkpoint

        body = write_synthetic_smplx_npz(work / "SMPLX_NEUTRAL.npz", seed=0)
        ckpt = write_random_checkpoint(work / "paper_arxiv.ckpt", body, include_optimizer=False)
    model = onnx_model.build_runtime_model(ckpt, work / "cache", on_status=lambda m: None)
    entry = model.parent
    files = [entry / name for name in (onnx_model.MODEL_FILE, onnx_model.WEIGHTS_FILE)]
    times: dict[str, list[float]] = {"checkpoint sha256": [], "entry check": [],
                                     "entry sha256": [], "session": []}  # fmt: skip
    for _ in range(args.rounds):
        checkpoint._hash_cache.clear()
        onnx_model._digest_memo.clear()
        times["checkpoint sha256"].append(_timed(lambda: checkpoint.checkpoint_hash(ckpt)))
        times["entry check"].append(_timed(lambda: onnx_model.inspect_entry(entry)))
        times["entry sha256"].append(_timed(lambda: [onnx_model._file_sha256(f) for f in files]))
        times["session"].append(_timed(lambda: ort.InferenceSession(
            str(model), providers=["CPUExecutionProvider"])))  # fmt: skip
    entry_mb = sum(p.stat().st_size for p in entry.iterdir()) / 1e6
    ckpt_mb = Path(ckpt).stat().st_size / 1e6
    print(f"entry {entry_mb:.0f} MB, checkpoint {ckpt_mb:.0f} MB, {args.rounds} rounds (median)")
    med = {k: statistics.median(v) for k, v in times.items()}
    for name, value in med.items():
        print(f"  {name:<18} {value * 1000:7.0f} ms")
    opening = med["checkpoint sha256"] + med["session"]
    print(f"  entry check (files unchanged since the build) / the rest of opening: "
          f"{med['entry check'] / opening:.1%}")
    print(f"  entry sha256 (files copied or touched) / the rest of opening: "
          f"{med['entry sha256'] / opening:.0%}")


if __name__ == "__main__":
    main()
