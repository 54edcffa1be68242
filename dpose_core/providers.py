"""Which ONNX Runtime provider a --device setting really runs on, found by starting one.

A provider listed by `get_available_providers()` may still fail to start (CUDA or cuDNN
libraries missing), so the answer comes from a session on a 76-byte model. Farm nodes mix GPU
and CPU machines: `dpose doctor` on each says what `--device auto` will use there.
"""

from __future__ import annotations

from importlib import metadata

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
RUNTIME_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
# y = Identity(x), one float, opset 13, IR version 7 (tests rebuild it with the onnx package).
PROBE_MODEL = bytes.fromhex(
    "0807120564706f73653a3b0a100a017812017922084964656e74697479120570726f62655a0f0a0178120a"
    "0a08080112040a020801620f0a0179120a0a08080112040a02080142040a00100d"
)


def provider_for(device: str) -> tuple[str, str]:
    """(the provider `--device` runs on, why) for "auto", "cpu" or "cuda"."""
    import onnxruntime as ort

    if device == "cpu":
        return CPU_PROVIDER, "the CPU was asked for"
    if CUDA_PROVIDER not in ort.get_available_providers():
        return CPU_PROVIDER, ("this onnxruntime has no CUDA provider; for NVIDIA GPUs install "
                              '"dpose-blender[cuda]" as the README says')
    try:
        session = ort.InferenceSession(PROBE_MODEL, providers=[CUDA_PROVIDER, CPU_PROVIDER])
    except Exception as exc:  # noqa: BLE001 - any failure to start means the CPU runs
        return CPU_PROVIDER, f"the CUDA provider failed to start ({exc})"
    used = session.get_providers()[0]
    if used != CUDA_PROVIDER:
        return used, "the CUDA provider is installed but could not start (CUDA/cuDNN missing?)"
    return used, "the CUDA provider starts"


def installed_runtimes() -> list[str]:
    """The ONNX Runtime distributions installed. Both at once share one `onnxruntime` folder,
    and whichever was installed last decides whether the CUDA provider is there."""
    found = []
    for name in RUNTIME_DISTRIBUTIONS:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            pass
    return found
