"""Torch side of the ONNX runtime: full export, and the weight-free graph template.

Why a template: users without torch must still get an ONNX model from their checkpoint. The
graph does not depend on the weights, so we export it once (from a randomly initialised
network) and commit it with every weight replaced by an EXTERNAL-data reference into
`weights.bin`. `onnx_model.build_runtime_model` then only writes the checkpoint's arrays into
that file at the documented offsets (numpy only) -- no torch, no onnx package at run time.

Export choices: the legacy TorchScript exporter (`dynamo=False`) with
`do_constant_folding=False` keeps every initializer named exactly like its state-dict entry
(no Conv+BN fusion, no folded transposes). The exporter also merges initializers with equal
values (BN weights of a fresh network are all ones), so the template network is filled with
distinct seeded random values first. Output is deterministic for a given torch version, so a
test regenerates the template and compares bytes.

Regenerate the committed template with: `python -m dpose_core.onnx_export`.
"""

from __future__ import annotations

import io
import os
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import torch

from .network import INPUT_NAMES, OUTPUT_NAMES, DPoseNet, build_network
from .onnx_model import (
    LAYOUT_KEY,
    TEMPLATE_PATH,
    WEIGHTS_ALIGNMENT,
    WEIGHTS_FILE,
    format_layout,
)

DEFAULT_OPSET = 17
_TEMPLATE_SEED = 20241007
_EXAMPLE_BATCH = 2


def _as_network(arrays_or_network: DPoseNet | Mapping[str, np.ndarray]) -> DPoseNet:
    if isinstance(arrays_or_network, torch.nn.Module):
        return arrays_or_network.to("cpu").eval()
    return build_network(arrays_or_network, device="cpu")


def _export_to(net: DPoseNet, target, opset: int) -> None:
    """Legacy export with a dynamic batch axis on every input and output."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(_EXAMPLE_BATCH, 3, 224, 224, generator=gen)
    bbox = torch.randn(_EXAMPLE_BATCH, 3, generator=gen)
    names = list(INPUT_NAMES) + list(OUTPUT_NAMES)
    # The TorchScript exporter is deprecated but is the one that keeps state-dict names.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            net,
            (images, bbox),
            target,
            input_names=list(INPUT_NAMES),
            output_names=list(OUTPUT_NAMES),
            dynamic_axes={name: {0: "batch"} for name in names},
            opset_version=opset,
            do_constant_folding=False,
            dynamo=False,
        )


def export_onnx(
    arrays_or_network: DPoseNet | Mapping[str, np.ndarray],
    path: str | os.PathLike,
    opset: int = DEFAULT_OPSET,
) -> Path:
    """Export the network with its weights embedded to a self-contained .onnx file.

    Inputs `images` (B,3,224,224) and `bbox_info` (B,3); outputs rotmat (B,22,3,3),
    betas (B,11), cam_crop (B,3), depth (B,224,224), part_logits (B,23,224,224); B is dynamic.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _export_to(_as_network(arrays_or_network), str(path), opset)
    return path


def _distinct_random_network() -> DPoseNet:
    """A network whose every float entry is distinct, so the exporter merges no initializer."""
    with torch.device("meta"):  # skip the slow default initialisation: every value is set below
        net = DPoseNet()
    net = net.to_empty(device="cpu").eval()
    gen = torch.Generator().manual_seed(_TEMPLATE_SEED)
    with torch.no_grad():
        for tensor in net.state_dict().values():
            if not tensor.is_floating_point():
                tensor.zero_()
            else:
                values = torch.rand(tensor.shape, generator=gen, dtype=torch.float64)
                # Positive, well away from zero: BN variances must stay valid.
                tensor.copy_((0.5 + values).to(tensor.dtype))
    return net


def template_bytes(opset: int = DEFAULT_OPSET) -> bytes:
    """The serialised weight-free template (deterministic for a given torch version)."""
    net = _distinct_random_network()
    buffer = io.BytesIO()
    _export_to(net, buffer, opset)
    model = onnx.load_from_string(buffer.getvalue())
    state_order = {name: i for i, name in enumerate(net.state_dict())}
    unknown = [t.name for t in model.graph.initializer if t.name not in state_order]
    if unknown:
        raise RuntimeError(f"ONNX initializers not named like the state dict: {unknown[:5]}")
    inits = sorted(model.graph.initializer, key=lambda t: state_order[t.name])
    layout = []
    offset = 0
    for tensor in inits:
        array = onnx.numpy_helper.to_array(tensor)
        offset = -(-offset // WEIGHTS_ALIGNMENT) * WEIGHTS_ALIGNMENT
        layout.append((tensor.name, offset, array.nbytes, array.dtype.str, array.shape))
        tensor.ClearField("raw_data")
        tensor.ClearField("float_data")
        tensor.ClearField("int64_data")
        tensor.data_location = onnx.TensorProto.EXTERNAL
        del tensor.external_data[:]
        for key, value in (
            ("location", WEIGHTS_FILE),
            ("offset", str(offset)),
            ("length", str(array.nbytes)),
        ):
            entry = tensor.external_data.add()
            entry.key, entry.value = key, value
        offset += array.nbytes
    model.producer_name = "dpose_core.onnx_export"
    model.producer_version = f"torch {torch.__version__.split('+')[0]}"
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = LAYOUT_KEY, format_layout(layout)
    return model.SerializeToString(deterministic=True)


def write_template(path: str | os.PathLike = TEMPLATE_PATH, opset: int = DEFAULT_OPSET) -> Path:
    """Regenerate the committed graph template (atomically replaces `path`)."""
    path = Path(path)
    data = template_bytes(opset)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    return path


if __name__ == "__main__":
    print(write_template())
