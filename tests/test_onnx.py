"""ONNX: the committed template is current, and every path to an ONNX model (torch export,
torch-free conversion) reproduces the torch network to 1e-4 on every output."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dpose_core import onnx_model  # noqa: E402
from dpose_core.checkpoint import load_checkpoint_arrays  # noqa: E402
from dpose_core.errors import CheckpointError  # noqa: E402
from dpose_core.network import OUTPUT_NAMES, build_network  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TOL = 1e-4


def _run_session(model_path: Path, inputs: dict) -> dict:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUT_NAMES, session.run(None, inputs), strict=True))


@pytest.fixture(scope="module")
def inputs() -> dict:
    rng = np.random.default_rng(7)
    return {
        "images": rng.standard_normal((2, 3, 224, 224)).astype(np.float32),
        "bbox_info": np.array([[0.1, -0.05, 0.4], [-0.2, 0.1, 0.9]], dtype=np.float32),
    }


@pytest.fixture(scope="module")
def network(checkpoint_path):
    return build_network(load_checkpoint_arrays(checkpoint_path))


@pytest.fixture(scope="module")
def torch_outputs(network, inputs) -> dict:
    with torch.inference_mode():
        out = network(torch.from_numpy(inputs["images"]), torch.from_numpy(inputs["bbox_info"]))
    return {name: t.numpy() for name, t in zip(OUTPUT_NAMES, out, strict=True)}


@pytest.fixture(scope="module")
def torch_free_outputs(checkpoint_path, inputs, tmp_path_factory) -> dict:
    """Build the runtime model and run it in a process where `import torch` fails."""
    work = tmp_path_factory.mktemp("torch_free")
    np.savez(work / "inputs.npz", **inputs)
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None  # any torch import now raises ImportError
        import json
        import numpy as np
        import onnxruntime as ort
        from dpose_core.onnx_model import build_runtime_model
        model = build_runtime_model({str(checkpoint_path)!r}, {str(work / "cache")!r})
        inputs = dict(np.load({str(work / "inputs.npz")!r}))
        session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        names = [o.name for o in session.get_outputs()]
        np.savez({str(work / "outputs.npz")!r}, **dict(zip(names, session.run(None, inputs))))
        loaded = sorted(m for m in sys.modules if m.startswith("dpose_core"))
        print(json.dumps({{"model": str(model), "modules": loaded}}))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert "dpose_core.network" not in report["modules"]
    assert Path(report["model"]).parent.parent == work / "cache"
    return dict(np.load(work / "outputs.npz"))


def test_committed_template_is_current():
    from dpose_core.onnx_export import template_bytes

    committed = onnx_model.TEMPLATE_PATH.read_bytes()
    assert template_bytes() == committed, (
        "dpose_core/data/dpose_template.onnx is stale: run `python -m dpose_core.onnx_export`"
    )


def test_template_is_small_and_all_weights_external():
    data = onnx_model.TEMPLATE_PATH.read_bytes()
    assert len(data) < 4_000_000
    model = onnx.load_from_string(data)
    layout = {e.name: e for e in onnx_model.template_layout()}
    assert len(model.graph.initializer) == len(layout) > 1000
    for tensor in model.graph.initializer:
        assert tensor.data_location == onnx.TensorProto.EXTERNAL
        ext = {e.key: e.value for e in tensor.external_data}
        entry = layout[tensor.name]
        assert ext == {
            "location": onnx_model.WEIGHTS_FILE,
            "offset": str(entry.offset),
            "length": str(entry.nbytes),
        }
    assert [i.name for i in model.graph.input] == ["images", "bbox_info"]
    assert [o.name for o in model.graph.output] == list(OUTPUT_NAMES)


def test_layout_follows_state_dict_order_aligned_without_overlap():
    from dpose_core.checkpoint import expected_state_dict

    order = {name: i for i, name in enumerate(expected_state_dict())}
    layout = onnx_model.template_layout()
    assert [order[e.name] for e in layout] == sorted(order[e.name] for e in layout)
    end = 0
    for entry in layout:
        assert entry.offset % onnx_model.WEIGHTS_ALIGNMENT == 0 and entry.offset >= end
        end = entry.offset + entry.nbytes
    # Only weights the graph never reads are left out.
    left_out = set(order) - {e.name for e in layout}
    assert all(
        n.startswith(("smpl.", "backbone.final_layer.", "attention.conv1x1_shape_cam."))
        or n.endswith("num_batches_tracked")
        for n in left_out
    )


def test_torch_free_conversion_matches_torch(torch_free_outputs, torch_outputs):
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(torch_free_outputs[name], torch_outputs[name], atol=TOL,
                                   err_msg=name)  # fmt: skip
    assert torch_outputs["rotmat"].shape == (2, 22, 3, 3)
    assert torch_outputs["part_logits"].shape == (2, 23, 224, 224)


def test_torch_export_matches_torch_and_torch_free(
    network, inputs, torch_outputs, torch_free_outputs, tmp_path
):
    from dpose_core.onnx_export import export_onnx

    path = export_onnx(network, tmp_path / "full.onnx")
    exported = _run_session(path, inputs)
    for name in OUTPUT_NAMES:
        np.testing.assert_allclose(exported[name], torch_outputs[name], atol=TOL, err_msg=name)
        np.testing.assert_allclose(exported[name], torch_free_outputs[name], atol=TOL,
                                   err_msg=name)  # fmt: skip
    # Dynamic batch: one sample alone gives the same answer as inside the batch.
    single = _run_session(path, {k: v[1:] for k, v in inputs.items()})
    np.testing.assert_allclose(single["rotmat"], exported["rotmat"][1:], atol=TOL)


def test_metadata_reader_agrees_with_onnx():
    data = onnx_model.TEMPLATE_PATH.read_bytes()
    model = onnx.load_from_string(data)
    expected = {p.key: p.value for p in model.metadata_props}
    assert onnx_model.read_metadata(data) == expected


def test_wrong_weight_shape_is_a_checkpoint_error(tmp_path):
    layout = onnx_model.template_layout()[:2]
    arrays = {e.name: np.zeros(e.shape, dtype=np.float32) for e in layout}
    arrays[layout[0].name] = np.zeros((1, 2, 3), dtype=np.float32)
    with pytest.raises(CheckpointError, match=layout[0].name):
        onnx_model.write_weights(arrays, tmp_path / "w.bin", layout)
    with pytest.raises(CheckpointError, match="lacks"):
        onnx_model.write_weights({}, tmp_path / "w.bin", layout)


def test_unwritable_cache_is_a_clear_error(checkpoint_path, tmp_path):
    from dpose_core.errors import DPoseError

    blocker = tmp_path / "not_a_folder"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(DPoseError, match="DPOSE_CACHE"):
        onnx_model.build_runtime_model(checkpoint_path, blocker / "cache")
