"""Checkpoint reading: strict, lazy, torch-free, safe, with errors that say what to do."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from dpose_core import checkpoint as ck
from dpose_core.errors import CheckpointError, UnsafePickleError
from dpose_core.safe_pickle import LazyTensor
from tests.synth_checkpoint import (
    _FakeCfgNode,
    all_entries,
    cheap_state_dict,
    fake_modules,
    smplx_buffers,
    write_malicious_checkpoint,
    write_truncated_copy,
)

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def network_arrays(checkpoint_path):
    return ck.load_checkpoint_arrays(checkpoint_path)


def _save(path, tree):
    import torch

    torch.save(tree, path)
    return path


# ----------------------------------------------------------------------------- the table


def test_stand_in_checkpoint_has_the_documented_composition():
    """2346 entries: the H36M regressor first, 2309 network entries, 25 SMPL-X and 11 SMPL
    trainer-level entries (docs/checkpoint.md#the-state-dict)."""
    names = [name for name, *_ in all_entries()]
    assert len(names) == len(set(names)) == 2346
    assert names[0] == "J_regressor"
    prefixes = [n.split(".", 1)[0] for n in names[1:]]
    assert prefixes == ["model"] * 2309 + ["smplx"] * 25 + ["smpl"] * 11
    packaged = [(e.name, e.shape, e.dtype, e.kind) for e in ck.expected_state_dict().values()]
    network = [(n[len("model.") :], s, d, k) for n, s, d, k in all_entries()
               if n.startswith("model.")]  # fmt: skip
    assert network == packaged


def test_packaged_table_has_the_documented_counts():
    table = ck.expected_state_dict()
    assert len(table) == 2309
    params = sum(int(np.prod(e.shape)) for e in table.values() if e.kind == "param")
    assert params == 81_099_394  # docs/network.md#parameter-counts
    assert sum(n.endswith("num_batches_tracked") for n in table) == 377
    assert table["head.init_pose"].shape == (1, 132)
    assert table["smpl.smplx.posedirs"].shape == (486, 31425)
    assert table["backbone.bn1.num_batches_tracked"].shape == ()


# ----------------------------------------------------------------------------- loading


def test_generated_checkpoint_loads_strictly(network_arrays):
    table = ck.expected_state_dict()
    assert list(network_arrays) == list(table)
    for name, entry in table.items():
        array = network_arrays[name]
        assert array.shape == entry.shape and array.dtype == np.dtype(entry.dtype), name
        assert array.flags.c_contiguous and array.flags.writeable, name


def test_values_equal_what_torch_reads(checkpoint_path, network_arrays):
    torch = pytest.importorskip("torch")
    with fake_modules({"yacs.config": {"CfgNode": _FakeCfgNode}}):
        reference = torch.load(checkpoint_path, map_location="cpu", mmap=True, weights_only=False)
    state = reference["state_dict"]
    for name, array in network_arrays.items():
        assert np.array_equal(array, state["model." + name].numpy()), name


def test_network_carries_generator_values(network_arrays, body_model_npz):
    body = smplx_buffers(body_model_npz)
    for name, value in body.items():
        assert np.array_equal(network_arrays["smpl.smplx." + name], value), name
    assert np.array_equal(network_arrays["head.init_pose"][0, :6], [1, 0, 0, 1, 0, 0])
    assert np.array_equal(network_arrays["head.init_cam"][0], np.float32([0.9, 0, 0]))
    assert np.all(network_arrays["backbone.bn1.running_var"] >= 0.5)


def test_synthetic_body_buffers_match_smplx(body_model_npz):
    smplx = pytest.importorskip("smplx")
    model = smplx.SMPLX(str(body_model_npz), num_betas=11)
    reference = {k: v.numpy() for k, v in model.state_dict().items()}
    ours = smplx_buffers(body_model_npz)
    buffers = {k for k in reference if k not in dict(model.named_parameters())}
    assert buffers == set(ours)
    for name in buffers:
        assert ours[name].dtype == reference[name].dtype, name
        assert np.array_equal(ours[name], reference[name]), name


def _network_storage_keys(path):
    with ck.CheckpointArchive(path) as archive:
        state = archive.load_pickle()["state_dict"]
    return {v.storage.key for k, v in state.items() if k.startswith("model.")}


def test_only_network_tensors_are_read(checkpoint_path, tmp_path):
    """Drop every other storage record from a copy: loading still works, so none was read."""
    keep = _network_storage_keys(checkpoint_path)
    stripped = tmp_path / "network_only.ckpt"
    dropped_bytes = 0
    with zipfile.ZipFile(checkpoint_path) as src, zipfile.ZipFile(stripped, "w") as dst:
        for info in src.infolist():
            folder, _, leaf = info.filename.rpartition("/")
            if folder.endswith("/data") and leaf not in keep:
                dropped_bytes += info.file_size  # J_regressor, smplx/smpl, Adam moments, scores
                continue
            with src.open(info) as record, dst.open(info.filename, "w") as out:
                shutil.copyfileobj(record, out, 8 << 20)
    assert dropped_bytes > 100e6
    arrays = ck.load_checkpoint_arrays(stripped)
    original = ck.load_checkpoint_arrays(checkpoint_path)
    assert all(np.array_equal(arrays[k], original[k]) for k in original)
    with ck.CheckpointArchive(checkpoint_path) as archive:
        state = archive.load_pickle()["state_dict"]
        assert archive.members_read == []  # unpickling reads no tensor data
        init_cam = state["model.head.init_cam"]
        archive.read(init_cam)
        assert archive.members_read == [f"paper_arxiv/data/{init_cam.storage.key}"]


def test_info_reads_no_tensor_data(checkpoint_path, tmp_path):
    skeleton = tmp_path / "no_tensor_data.ckpt"
    with zipfile.ZipFile(checkpoint_path) as src, zipfile.ZipFile(skeleton, "w") as dst:
        for info in src.infolist():
            if "/data/" not in info.filename:
                dst.writestr(info.filename, src.read(info))
    info = ck.checkpoint_info(skeleton)
    assert info.valid and info.network_parameters == 81_099_394
    assert info.flags["TRIAL.bedlam_bbox"] is True
    with pytest.raises(CheckpointError, match="lacks the tensor record"):
        ck.load_checkpoint_arrays(skeleton)


def test_peak_memory_is_about_the_network(checkpoint_path):
    size = checkpoint_path.stat().st_size
    tracemalloc.start()
    try:
        arrays = ck.load_checkpoint_arrays(checkpoint_path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    returned = sum(a.nbytes for a in arrays.values())
    assert peak < 1.05 * returned + 16e6  # one copy of the network, no second buffer
    assert peak < 0.8 * size


def test_loads_with_torch_blocked(checkpoint_path):
    code = f"""
import importlib.abc, json, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith(("torch.", "pytorch_lightning", "yacs", "smplx")):
            raise ImportError("blocked: " + name)
sys.meta_path.insert(0, Block())
sys.modules["torch"] = None
from dpose_core import checkpoint
arrays = checkpoint.load_checkpoint_arrays({str(checkpoint_path)!r})
info = checkpoint.checkpoint_info({str(checkpoint_path)!r})
loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "yacs", "smplx"))
print(json.dumps([len(arrays), float(arrays["head.init_cam"][0, 0]), info.valid, loaded]))
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                            text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr
    count, init_s, valid, loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert (count, valid) == (2309, True)
    assert init_s == pytest.approx(0.9)
    assert loaded == ["torch"]  # only our None placeholder


# ----------------------------------------------------------------------------- plain state dicts


def _marked_state_dict(prefix="model."):
    """Cheap full-shape tensors (stride 0) whose single value is the entry's index."""
    state = cheap_state_dict(prefix)
    for index, (name, tensor) in enumerate(state.items()):
        state[name] = (tensor[(0,) * tensor.dim()] * 0 + index).expand(tensor.shape)
    return state


@pytest.mark.parametrize("layout", ["prefixed", "stripped", "wrapped"])
def test_plain_state_dict_files_load(tmp_path, layout):
    state = _marked_state_dict("" if layout == "stripped" else "model.")
    tree = {"state_dict": state} if layout == "wrapped" else state
    arrays = ck.load_checkpoint_arrays(_save(tmp_path / "sd.pth", tree))
    for index, (name, entry) in enumerate(ck.expected_state_dict().items()):
        assert arrays[name].shape == entry.shape, name
        assert np.all(arrays[name] == index), name  # broadcast views come back materialised


def test_non_contiguous_and_offset_tensors_read_correctly(tmp_path):
    import torch

    base = torch.arange(60, dtype=torch.float32).reshape(3, 4, 5)
    tree = {"t": base.transpose(0, 2), "s": base[1, 1:3, ::2], "i": torch.tensor(7)}
    path = _save(tmp_path / "views.pt", tree)
    with ck.CheckpointArchive(path) as archive:
        lazy = archive.load_pickle()
        for key, tensor in tree.items():
            assert isinstance(lazy[key], LazyTensor)
            assert np.array_equal(archive.read(lazy[key]), tensor.numpy()), key


# ----------------------------------------------------------------------------- wrong files


def _edited(edit):
    state = cheap_state_dict()
    edit(state)
    return state


@pytest.mark.parametrize(
    "edit, key, details",
    [
        (lambda s: s.pop("model.head.init_cam"), "model.head.init_cam", ["1x3", "missing"]),
        (lambda s: s.__setitem__("model.head.init_pose", s["model.head.init_pose"][:, :126]),
         "model.head.init_pose", ["1x126", "1x132"]),
        (lambda s: s.__setitem__("model.head.extra", s["model.head.init_cam"]),
         "model.head.extra", ["unexpected", "1x3"]),
        (lambda s: s.__setitem__("model.smpl.smplx.parents",
                                 s["model.smpl.smplx.parents"].float()),
         "model.smpl.smplx.parents", ["float32", "int64"]),
    ],
)  # fmt: skip
def test_wrong_architecture_names_the_key(tmp_path, edit, key, details):
    path = _save(tmp_path / "wrong.ckpt", {"state_dict": _edited(edit)})
    with pytest.raises(CheckpointError) as info:
        ck.load_checkpoint_arrays(path)
    message = str(info.value)
    assert key in message and all(d in message for d in details), message
    assert message.rstrip().endswith("paper_arxiv.ckpt?")
    assert ck.checkpoint_info(path).problem is not None and key in ck.checkpoint_info(path).problem


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_by_loading_and_conversion(tmp_path, bad):
    """NaN weights used to write JSON full of NaN with exit 0 (docs/model-cache.md#nan-weights)."""
    from dpose_core import onnx_model

    state = cheap_state_dict()
    state["model.head.deccam.weight"] = state["model.head.deccam.weight"] * 0 + bad
    path = _save(tmp_path / "paper_arxiv.ckpt", {"state_dict": state})
    with pytest.raises(CheckpointError) as info:
        ck.load_checkpoint_arrays(path)
    message = str(info.value)
    assert "not finite numbers (NaN or inf) in 1 tensor, e.g." in message
    assert "model.head.deccam.weight" in message
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="model.head.deccam.weight"):
        onnx_model.build_runtime_model(path, cache, on_status=lambda m: None)
    assert [p.name for p in cache.iterdir()] == [f".{ck.checkpoint_hash(path)[:16]}.lock"]


def test_missing_file_says_where_to_get_and_put_it(tmp_path, monkeypatch):
    monkeypatch.delenv(ck.CHECKPOINT_ENV, raising=False)
    with pytest.raises(CheckpointError) as info:
        ck.load_checkpoint_arrays(tmp_path / "nope.ckpt")
    message = str(info.value)
    for needle in ("nope.ckpt", "github.com/nvasilik/D-PoSE", "DPOSE_CHECKPOINT",
                   ".local/share/dpose/paper_arxiv.ckpt"):  # fmt: skip
        assert needle in message


def test_default_path_and_environment_variable(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(ck.CHECKPOINT_ENV, raising=False)
    default = tmp_path / ".local/share/dpose/paper_arxiv.ckpt"
    assert ck.default_checkpoint_path() == default
    with pytest.raises(CheckpointError, match="default location"):
        ck.resolve_checkpoint(None)
    default.parent.mkdir(parents=True)
    default.write_bytes(b"x")
    assert ck.resolve_checkpoint(None) == default
    assert ck.resolve_checkpoint(default.parent) == default  # a folder holding the file
    other = tmp_path / "elsewhere.ckpt"
    other.write_bytes(b"y")
    monkeypatch.setenv(ck.CHECKPOINT_ENV, str(other))
    assert ck.resolve_checkpoint(None) == other


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"", "empty"),
        (b"<html>quota exceeded</html>", "not a PyTorch checkpoint"),
        (b"\x80\x02\x8a\x0alegacy-torch", "re-save it with torch>=1.6"),
    ],
)
def test_unreadable_files_give_clear_errors(tmp_path, content, needle):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as info:
        ck.load_checkpoint_arrays(path)
    assert needle.lower() in str(info.value).lower()


def test_truncated_download_is_reported(tmp_path):
    full = _save(tmp_path / "full.ckpt", {"state_dict": cheap_state_dict()})
    for fraction in (0.3, 0.99):
        cut = write_truncated_copy(full, tmp_path / f"cut{fraction}.ckpt", fraction)
        with pytest.raises(CheckpointError, match="incomplete zip archive"):
            ck.load_checkpoint_arrays(cut)


def test_zip_without_torch_records(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError, match="no data.pkl"):
        ck.load_checkpoint_arrays(path)


def test_damaged_tensor_record_is_reported(tmp_path):
    import torch

    path = _save(tmp_path / "short.ckpt", {"w": torch.zeros(4, 4)})
    damaged = tmp_path / "damaged.ckpt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(damaged, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info.filename, data[:8] if "/data/" in info.filename else data)
    with ck.CheckpointArchive(damaged) as archive:
        lazy = archive.load_pickle()["w"]
        with pytest.raises(CheckpointError, match="damaged"):
            archive.read(lazy)


@pytest.mark.parametrize("kind", ["os.system", "exec", "subprocess"])
def test_malicious_checkpoint_is_refused_and_not_run(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = write_malicious_checkpoint(tmp_path / "evil.ckpt", marker, kind)
    for reader in (ck.load_checkpoint_arrays, ck.checkpoint_info):
        with pytest.raises(UnsafePickleError) as info:
            reader(path)
        assert "refused" in str(info.value) and "nothing in it was run" in str(info.value)
        assert str(path) in str(info.value)
    assert not marker.exists()


# ----------------------------------------------------------------------------- info and hash


def test_checkpoint_info_reports_training_flags(checkpoint_path):
    info = ck.checkpoint_info(checkpoint_path)
    assert info.valid and info.problem is None
    assert info.lightning_version == "1.9.0"
    assert (info.epoch, info.global_step) == (28, 123456)
    assert info.flags["DATASET.USE_DEPTH"] is True
    assert info.flags["DATASET.USE_DEPTH_CONC"] is False
    assert info.flags["DATASET.USE_SEGM"] is True
    assert info.flags["DATASET.SUPERVISE_DEPTH"] is False
    assert info.flags["DATASET.IMG_RES"] == 224
    assert info.flags["MODEL.BACKBONE"] == "hrnet_w48-conv"
    assert info.flags["TRIAL.bedlam_bbox"] is True
    assert info.network_tensors == 2309 and info.other_tensors == 37
    assert info.network_parameters == 81_099_394
    assert info.has_optimizer_state
    assert {"state_dict", "optimizer_states", "hyper_parameters"} <= set(info.top_level_keys)
    text = ck.format_info(info)
    assert "1.9.0" in text and "TRIAL.bedlam_bbox = True" in text and "OK" in text


def test_checkpoint_info_of_a_plain_state_dict(tmp_path):
    info = ck.checkpoint_info(_save(tmp_path / "sd.pth", cheap_state_dict("")))
    assert info.valid and info.lightning_version is None and info.flags == {}
    assert info.network_tensors == 2309 and info.top_level_keys == ()
    assert "plain state dict" in ck.format_info(info)


def test_checkpoint_hash_is_the_file_sha256_and_tracks_content(tmp_path):
    path = tmp_path / "a.ckpt"
    path.write_bytes(b"0123456789" * 1000)
    first = ck.checkpoint_hash(path)
    assert first == hashlib.sha256(path.read_bytes()).hexdigest()
    assert ck.checkpoint_hash(path) == first
    stat = path.stat()
    path.write_bytes(b"0123456789" * 999 + b"abcdefghij")  # same size, new content
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
    assert ck.checkpoint_hash(path) != first
    copy = tmp_path / "b.ckpt"
    shutil.copyfile(path, copy)
    assert ck.checkpoint_hash(copy) == ck.checkpoint_hash(path)


# ----------------------------------------------------------------------------- raw archives


class _Storage:
    def __init__(self, key, numel):
        self.key, self.numel = key, numel


class _Tensor:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)."""

    def __init__(self, storage, offset, size, stride):
        self.args = (storage, offset, size, stride)

    def __reduce__(self):
        import collections

        import torch

        return torch._utils._rebuild_tensor_v2, (*self.args, False, collections.OrderedDict())


def _write_raw_archive(path, tree, records, byteorder="little"):
    """A torch-style zip written by hand, to test layouts torch.save never produces."""
    import io
    import pickle

    import torch

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, _Storage):
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
            return None

    data = io.BytesIO()
    Pickler(data, protocol=2).dump(tree)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("raw/data.pkl", data.getvalue())
        z.writestr("raw/byteorder", byteorder)
        for key, payload in records.items():
            z.writestr(f"raw/data/{key}", payload)
        z.writestr("raw/version", "3\n")
    return path


def test_big_endian_archive_reads_native_values(tmp_path):
    values = (np.arange(6) * 1.5).astype(">f4")
    storage = _Storage("0", 6)
    path = _write_raw_archive(tmp_path / "be.ckpt", {"w": _Tensor(storage, 0, (2, 3), (3, 1))},
                              {"0": values.tobytes()}, byteorder="big")  # fmt: skip
    with ck.CheckpointArchive(path) as archive:
        got = archive.read(archive.load_pickle()["w"])
    assert got.dtype == np.float32 and got.dtype.isnative
    assert np.array_equal(got, values.astype(np.float32).reshape(2, 3))


@pytest.mark.parametrize(
    "offset, size, stride, needle",
    [(0, (2, 3), (-3, 1), "invalid layout"), (-1, (2,), (1,), "invalid layout"),
     (4, (2, 3), (3, 1), "damaged"), (0, (4, 4), (4, 1), "damaged")],
)  # fmt: skip
def test_tensor_layouts_outside_their_storage_are_refused(tmp_path, offset, size, stride, needle):
    storage = _Storage("0", 6)
    path = _write_raw_archive(tmp_path / "odd.ckpt", {"w": _Tensor(storage, offset, size, stride)},
                              {"0": np.zeros(6, "<f4").tobytes()})  # fmt: skip
    with pytest.raises(CheckpointError, match=needle), ck.CheckpointArchive(path) as archive:
        archive.read(archive.load_pickle()["w"])


def test_only_reads_the_named_entries(checkpoint_path):
    full = ck.load_checkpoint_arrays(checkpoint_path)
    body = ck.load_checkpoint_arrays(checkpoint_path, only="smpl.smplx.")
    assert len(body) == 16 and all(name.startswith("smpl.smplx.") for name in body)
    for name, array in body.items():
        np.testing.assert_array_equal(array, full[name])
