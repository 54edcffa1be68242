"""DPoseNet: checkpoint-compatible layout, parameter counts, output contract, head maths.

The network is built once per module and run forward only three times (about 1 s each).
"""

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from dpose_core import network  # noqa: E402
from dpose_core.errors import CheckpointError  # noqa: E402
from dpose_core.rotations import rot6d_to_matrix  # noqa: E402

_STATE_DICT_TABLE = Path(__file__).resolve().parents[1] / "dpose_core" / "data" / "state_dict.tsv"


def _expected_rows() -> list[tuple[str, tuple[int, ...], str]]:
    """(name without 'model.', shape, dtype) from the packaged table (docs/checkpoint.md)."""
    rows = []
    for line in _STATE_DICT_TABLE.read_text().splitlines():
        if not line or line.startswith("#") or line.startswith("name\t"):
            continue
        name, shape, dtype = line.split("\t")[:3]
        dims = () if shape == "scalar" else tuple(int(d) for d in shape.split("x"))
        rows.append((name, dims, dtype))
    return rows


@pytest.fixture(scope="module")
def net():
    """Random weights, with non-trivial BatchNorm statistics so eval-mode BN does something."""
    torch.manual_seed(0)
    model = network.build_network()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=gen) * 0.2 - 0.1)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=gen) + 0.5)
        model.head.init_pose.copy_(torch.randn(1, 132, generator=gen))
        model.head.init_shape.copy_(torch.randn(1, 11, generator=gen))
        model.head.init_cam.copy_(torch.tensor([[0.9, 0.0, 0.2]]))
    return model


@pytest.fixture(scope="module")
def inputs():
    gen = torch.Generator().manual_seed(2)
    images = torch.randn(2, 3, 224, 224, generator=gen)
    bbox_info = torch.tensor([[0.1, -0.05, 0.4], [-0.3, 0.2, 1.1]])
    return images, bbox_info


@pytest.fixture(scope="module")
def outputs(net, inputs):
    with torch.no_grad():
        return net(*inputs)


def _count(model, prefix: str = "") -> int:
    return sum(p.numel() for n, p in model.named_parameters() if n.startswith(prefix))


# ----------------------------------------------------------------------------- layout


def test_state_dict_matches_reference_table_in_order(net):
    expected = _expected_rows()
    actual = [
        (name, tuple(t.shape), str(t.dtype).removeprefix("torch."))
        for name, t in net.state_dict().items()
    ]
    assert len(actual) == network.STATE_DICT_SIZE == 2309
    assert actual == expected


def test_expected_spec_matches_module(net):
    spec = network.expected_state_dict_spec()
    assert list(spec) == list(net.state_dict())
    assert all(spec[k][0] == tuple(t.shape) for k, t in net.state_dict().items())


def test_parameter_counts_match_spec(net):
    assert _count(net) == 81_099_394
    backbone_body = (
        _count(net, "backbone.")
        - _count(net, "backbone.final_layer.")
        - _count(net, "backbone.upsample_stage_")
    )
    assert backbone_body == 65_325_120
    assert _count(net, "backbone.final_layer.") == 1_176
    assert _count(net, "backbone.upsample_stage_") == 4_731_072
    assert _count(net, "depth_decoder.") == 4_182_049
    assert _count(net, "segmentation_decoder.") == 4_183_127
    assert _count(net, "attention.conv1x1_pose.") == 519_120
    assert _count(net, "attention.conv1x1_shape_cam.") == 519_120
    assert _count(net, "head.") == 1_638_610
    head = {k: _count(net, f"head.{k}.") for k in ("p", "s", "c", "decpose", "decshape", "deccam")}
    assert head == {
        "p": 547_712,
        "s": 543_168,
        "c": 542_912,
        "decpose": 4_356,
        "decshape": 363,
        "deccam": 99,
    }
    assert _count(net, "smpl.") == 0
    assert sum(b.numel() for n, b in net.named_buffers() if n.startswith("smpl.")) == 17_179_949


# ----------------------------------------------------------------------------- forward


def test_outputs_have_the_contract_shapes(outputs):
    assert len(outputs) == len(network.OUTPUT_NAMES) == 5
    named = network.outputs_as_dict(outputs)
    assert list(named) == ["rotmat", "betas", "cam_crop", "depth", "part_logits"]
    assert named["rotmat"].shape == (2, 22, 3, 3)
    assert named["betas"].shape == (2, 11)
    assert named["cam_crop"].shape == (2, 3)
    assert named["depth"].shape == (2, 224, 224)
    assert named["part_logits"].shape == (2, 23, 224, 224)
    assert all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in outputs)
    depth = named["depth"]
    assert depth.min() > 0 and depth.max() < 1  # sigmoid


def test_output_rotations_are_proper(outputs):
    # float32 single-pass Gram-Schmidt: orthogonality holds to ~2e-5 for near-parallel inputs.
    r = outputs[0].double()
    eye = torch.eye(3, dtype=torch.float64).expand_as(r)
    torch.testing.assert_close(r.transpose(-1, -2) @ r, eye, atol=1e-4, rtol=0)
    det = torch.linalg.det(r)
    torch.testing.assert_close(det, torch.ones_like(det), atol=1e-5, rtol=0)


def test_depth_head_does_not_reach_pose_shape_or_camera(net, inputs, outputs):
    """The depth map and its head never feed the attention or the regressor (docs/network.md)."""
    final = net.depth_decoder.final_layers[3]
    saved = final.weight.detach().clone(), final.bias.detach().clone()
    try:
        with torch.no_grad():
            final.weight.mul_(-3.0)
            final.bias.add_(1.0)
            net.depth_decoder.upscaling.conv3_2.weight.mul_(2.0)
            changed = net(*inputs)
    finally:
        with torch.no_grad():
            final.weight.copy_(saved[0])
            final.bias.copy_(saved[1])
            net.depth_decoder.upscaling.conv3_2.weight.div_(2.0)
    assert not torch.allclose(changed[3], outputs[3])  # the depth map did change
    for i in (0, 1, 2, 4):  # rotmat, betas, cam_crop, part_logits did not
        assert torch.equal(changed[i], outputs[i])


def test_batch_elements_are_independent(net, inputs, outputs):
    images, bbox_info = inputs
    with torch.no_grad():
        single = net(images[1:], bbox_info[1:])
    for a, b in zip(single, outputs, strict=True):
        torch.testing.assert_close(a[0], b[1], atol=2e-5, rtol=1e-4)


# ----------------------------------------------------------------------------- pieces


def _rot6d_by_qr(x: np.ndarray) -> np.ndarray:
    """Independent reference: Gram-Schmidt of the columns of the row-major 3x2 = QR, R_ii > 0."""
    out = np.empty((*x.shape[:-1], 3, 3))
    for idx in np.ndindex(*x.shape[:-1]):
        m = x[idx].reshape(3, 2)
        q, r = np.linalg.qr(m)
        q = q * np.sign(np.diag(r))
        out[idx] = np.column_stack([q[:, 0], q[:, 1], np.cross(q[:, 0], q[:, 1])])
    return out


def test_rot6d_layout_matches_independent_numpy():
    x = np.random.default_rng(3).normal(size=(4, 22, 6))
    got = network.rot6d_to_rotmat(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(got, _rot6d_by_qr(x), atol=1e-12)
    np.testing.assert_allclose(got, rot6d_to_matrix(x), atol=1e-12)  # numpy backend agrees
    np.testing.assert_allclose(np.linalg.det(got), 1.0, atol=1e-12)
    # Columns, not rows: the first column is the normalised (a0, a2, a4).
    e = network.rot6d_to_rotmat(torch.tensor([[0.0, 1.0, 2.0, 0.0, 0.0, 0.0]])).numpy()[0]
    np.testing.assert_allclose(e, [[0, 1, 0], [1, 0, 0], [0, 0, -1]], atol=1e-12)


def test_attention_pool_equals_adaptive_pool_and_softmax_weights():
    gen = torch.Generator().manual_seed(4)
    att = network.KeypointAttention(channels=8)
    feats = torch.randn(2, 8, 56, 56, generator=gen)
    maps = torch.randn(2, 22, 224, 224, generator=gen)
    pooled = torch.nn.functional.adaptive_avg_pool2d(maps, 56)
    w = pooled.reshape(2, 22, -1).softmax(-1)
    z = torch.einsum("bkp,bcp->bck", w, feats.reshape(2, 8, -1))
    expected = torch.einsum("oc,bck->bok", att.conv1x1_pose.weight[:, :, 0], z)
    expected = expected + att.conv1x1_pose.bias[None, :, None]
    torch.testing.assert_close(att(feats, maps), expected, atol=1e-5, rtol=1e-5)


def test_regressor_matches_independent_einsum(net):
    """docs/network.md in numpy: per-joint [6D, att, bbox, mean depth], joint-major flat."""
    head = net.head
    gen = torch.Generator().manual_seed(5)
    att = torch.randn(2, 720, 22, generator=gen)
    bbox = torch.randn(2, 3, generator=gen)
    depth_feats = torch.randn(2, 48, 56, 56, generator=gen)
    with torch.no_grad():
        pose, betas, cam = head(att, bbox, depth_feats)
    sd = {k: v.double().numpy() for k, v in head.state_dict().items()}
    a, b, d = att.double().numpy(), bbox.double().numpy(), depth_feats.double().numpy()
    g = d.mean(axis=(2, 3))
    feats = np.concatenate(
        [a.transpose(0, 2, 1), np.repeat(b[:, None], 22, 1), np.repeat(g[:, None], 22, 1)], axis=2
    )
    init_pose = np.broadcast_to(sd["init_pose"].reshape(1, 22, 6), (2, 22, 6))
    x = np.concatenate([init_pose, feats], axis=2)
    h = np.maximum(np.einsum("koi,bki->bko", sd["p.0.weight"], x) + sd["p.0.bias"], 0)
    pose_ref = init_pose + np.einsum("koi,bki->bko", sd["decpose.weight"], h) + sd["decpose.bias"]

    def stream(init, first, dec):
        inp = np.concatenate([np.repeat(init, 2, 0), feats.reshape(2, -1)], axis=1)
        hidden = np.maximum(inp @ sd[f"{first}.weight"].T + sd[f"{first}.bias"], 0)
        return init + hidden @ sd[f"{dec}.weight"].T + sd[f"{dec}.bias"]

    np.testing.assert_allclose(pose.numpy(), pose_ref, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(
        betas.numpy(), stream(sd["init_shape"], "s.0", "decshape"), atol=1e-4
    )
    np.testing.assert_allclose(cam.numpy(), stream(sd["init_cam"], "c.0", "deccam"), atol=1e-4)


def test_bbox_info_enters_every_joint_at_offset_720(net):
    """Perturbing bbox_info[:, 1] changes exactly the flat inputs 11 + k*771 + 721 of `s.0`."""
    captured = []
    hook = net.head.s[0].register_forward_hook(lambda m, i, o: captured.append(i[0].clone()))
    gen = torch.Generator().manual_seed(6)
    att = torch.randn(1, 720, 22, generator=gen)
    depth_feats = torch.randn(1, 48, 56, 56, generator=gen)
    bbox = torch.tensor([[0.1, 0.2, 0.3]])
    try:
        with torch.no_grad():
            net.head(att, bbox, depth_feats)
            net.head(att, bbox + torch.tensor([[0.0, 0.5, 0.0]]), depth_feats)
    finally:
        hook.remove()
    changed = torch.nonzero(captured[0][0] != captured[1][0]).flatten().tolist()
    assert changed == [11 + k * 771 + 721 for k in range(22)]


# ----------------------------------------------------------------------------- loading


@pytest.fixture(scope="module")
def random_arrays(net):
    """A random state dict as numpy arrays (the shape `load_checkpoint_arrays` returns)."""
    rng = np.random.default_rng(7)
    out = {}
    for name, t in net.state_dict().items():
        if t.dtype == torch.int64:
            out[name] = rng.integers(0, 100, size=tuple(t.shape), dtype=np.int64)
        else:
            out[name] = rng.standard_normal(tuple(t.shape), dtype=np.float32)
    return out


def test_strict_loading_round_trips(random_arrays):
    loaded = network.build_network(random_arrays)
    assert not loaded.training
    state = loaded.state_dict()
    assert list(state) == list(random_arrays)
    for name, array in random_arrays.items():
        assert np.array_equal(state[name].numpy(), array), name
    assert all(p.device.type == "cpu" for p in loaded.parameters())


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("head.init_cam"), "missing"),
        (lambda d: d.__setitem__("head.extra", np.zeros(1, np.float32)), "unexpected"),
        (lambda d: d.__setitem__("head.init_cam", np.zeros((1, 4), np.float32)), "shape"),
        (lambda d: d.__setitem__("smpl.smplx.parents", np.zeros(55, np.float32)), "dtype"),
    ],
)
def test_mismatched_weights_raise_checkpoint_error(random_arrays, edit, message):
    arrays = dict(random_arrays)
    edit(arrays)
    with pytest.raises(CheckpointError, match=message):
        network.build_network(arrays)


def test_checkpoint_arrays_load_strictly(request):
    """The checkpoint reader's output (Lightning layout, `model.` stripped) loads as is."""
    pytest.importorskip("tests.synth_checkpoint")
    checkpoint = pytest.importorskip("dpose_core.checkpoint")
    path = request.getfixturevalue("checkpoint_path")
    arrays = checkpoint.load_checkpoint_arrays(path)
    loaded = network.build_network(arrays)
    state = loaded.state_dict()
    assert list(state) == list(network.expected_state_dict_spec())
    for name in (
        "head.init_pose",
        "smpl.smplx.parents",
        "backbone.stage4.2.fuse_layers.3.0.2.1.bias",
    ):
        assert np.array_equal(state[name].numpy(), np.asarray(arrays[name])), name
