"""Which provider --device runs on: found by starting a session, said by `dpose doctor`."""

import subprocess
import sys
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from dpose_core import providers

REPO = Path(__file__).resolve().parents[1]


def test_probe_model_is_the_identity_model_onnx_builds():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="dpose")
    model.ir_version = 7
    onnx.checker.check_model(model)
    assert model.SerializeToString() == providers.PROBE_MODEL


def test_cpu_is_what_runs_without_a_cuda_provider():
    assert "CUDAExecutionProvider" not in ort.get_available_providers()  # the CI machine
    assert providers.provider_for("cpu") == ("CPUExecutionProvider", "the CPU was asked for")
    provider, why = providers.provider_for("auto")
    assert provider == "CPUExecutionProvider" and 'dpose-blender[cuda]' in why


@pytest.mark.filterwarnings("ignore:Specified provider 'CUDAExecutionProvider'")
def test_a_listed_cuda_provider_that_cannot_start_means_the_cpu(monkeypatch):
    """This CPU build, told that CUDA is there, starts the session on the CPU (ORT warns)."""
    listed = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: listed)
    assert providers.provider_for("cuda") == (
        "CPUExecutionProvider",
        "the CUDA provider is installed but could not start (CUDA/cuDNN missing?)")


def test_doctor_says_which_provider_runs():
    proc = subprocess.run([sys.executable, "-m", "dpose_core.cli", "doctor", "--device", "auto"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    line = next(ln for ln in proc.stdout.splitlines() if "device auto" in ln)
    assert line.startswith("[     ok] device auto: CPUExecutionProvider (")
    assert "onnxruntime packages" not in proc.stdout  # one runtime installed here
