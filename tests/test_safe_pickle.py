"""safe_pickle: plain data and SMPL-X pickles load; anything that would run code is refused."""

import datetime
import io
import pickle
import sys
from collections import OrderedDict

import numpy as np
import pytest

from dpose_core import safe_pickle
from dpose_core.errors import CheckpointError, UnsafePickleError
from tests.synth_checkpoint import (
    fake_modules,
    malicious_payload,
    write_malicious_pkl,
    write_smplx_pkl,
)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_plain_data_round_trips(protocol):
    data = {
        "c_array": np.arange(12.0).reshape(3, 4),
        "f_array": np.asfortranarray(np.arange(6, dtype=np.int32).reshape(2, 3)),
        "objects": np.array([1, "two", None], dtype=object),
        "scalar": np.float32(2.5),
        "ordered": OrderedDict(b=1, a=2),
        "set": {1, 2},
        "frozen": frozenset({"x"}),
        "slice": slice(1, 9, 2),
        "complex": 1 + 2j,
        "bytes": b"\x00\xffraw",
        "when": datetime.timedelta(days=2),
        "nested": [(1, 2.0, "three"), None, True],
    }
    loaded = safe_pickle.loads(pickle.dumps(data, protocol=protocol))
    assert loaded.keys() == data.keys()
    for key in ("c_array", "f_array"):
        assert np.array_equal(loaded[key], data[key]) and loaded[key].dtype == data[key].dtype
    assert loaded["f_array"].flags.f_contiguous
    assert list(loaded["objects"]) == [1, "two", None]
    assert loaded["scalar"] == np.float32(2.5) and loaded["scalar"].dtype == np.float32
    assert list(loaded["ordered"]) == ["b", "a"]
    for key in ("set", "frozen", "slice", "complex", "bytes", "when", "nested"):
        assert loaded[key] == data[key], key


@pytest.mark.parametrize("kind", ["os.system", "exec", "subprocess"])
def test_code_in_a_pickle_is_refused_and_not_run(tmp_path, kind):
    marker = tmp_path / "pwned"
    payload = pickle.dumps({"weights": np.zeros(3), "cfg": malicious_payload(kind, marker)})
    with pytest.raises(UnsafePickleError) as info:
        safe_pickle.loads(payload)
    named = {"os.system": "system", "exec": "builtins.exec", "subprocess": "subprocess.call"}
    assert named[kind] in str(info.value)
    assert "nothing in it was run" in str(info.value)
    assert not marker.exists()
    # the stock unpickler would have run it: the payload is real
    pickle.loads(payload)
    assert marker.exists()


@pytest.mark.parametrize("kind", ["os.system", "exec", "subprocess"])
def test_malicious_smplx_pkl_is_refused(tmp_path, kind):
    marker = tmp_path / "pwned"
    path = write_malicious_pkl(tmp_path / "SMPLX_NEUTRAL.pkl", marker, kind)
    with open(path, "rb") as f, pytest.raises(UnsafePickleError, match="refused"):
        safe_pickle.load(f, encoding="latin1")
    assert not marker.exists()


@pytest.mark.parametrize(
    "module, name",
    [("builtins", "eval"), ("builtins", "getattr"), ("builtins", "__import__"),
     ("importlib", "import_module"), ("torch", "load"), ("numpy", "load"),
     ("pickle", "loads"), ("yacs.config", "load_cfg"), ("chumpy.ch", "Ch.__init__"),
     ("pytorch_lightning", "os.system")],
)  # fmt: skip
def test_dangerous_globals_are_refused(module, name):
    payload = b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R."
    with pytest.raises(UnsafePickleError) as info:
        safe_pickle.loads(payload)
    assert f"{module}.{name}" in str(info.value)


def test_build_cannot_rewire_allowed_functions_or_stand_ins():
    # GLOBAL torch._utils._rebuild_tensor_v2 ; EMPTY_DICT ; BUILD
    on_function = b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n}b."
    with pytest.raises(UnsafePickleError):
        safe_pickle.loads(on_function)
    # GLOBAL chumpy.ch.Ch ; (None, {"__setstate__": 1}) ; BUILD: patching the class itself
    original = dict(vars(safe_pickle.ChumpyArray))
    on_class = b"\x80\x02cchumpy.ch\nCh\nN}X\x0c\x00\x00\x00__setstate__K\x01s\x86b."
    with pytest.raises(CheckpointError):
        safe_pickle.loads(on_class)
    assert dict(vars(safe_pickle.ChumpyArray)) == original
    with pytest.raises(UnsafePickleError):
        safe_pickle.ChumpyArray.x = 1


def test_damaged_pickle_is_a_checkpoint_error_not_a_crash():
    data = pickle.dumps({"a": np.arange(100.0)}, protocol=2)
    with pytest.raises(CheckpointError) as info:
        safe_pickle.loads(data[: len(data) // 2])
    assert not isinstance(info.value, UnsafePickleError)


def test_persistent_records_need_a_loader():
    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", obj[1:]) if isinstance(obj, str) and obj.startswith("@") else None

    buffer = io.BytesIO()
    Pickler(buffer, protocol=2).dump({"weight": "@7"})
    with pytest.raises(CheckpointError, match="persistent"):
        safe_pickle.loads(buffer.getvalue())
    loaded = safe_pickle.loads(buffer.getvalue(), persistent_load=lambda pid: ("read", pid))
    assert loaded == {"weight": ("read", ("storage", "7"))}


@pytest.mark.parametrize("protocol", [0, 2])
def test_official_style_smplx_pkl_reads_to_arrays(tmp_path, body_model_npz, protocol):
    path = write_smplx_pkl(tmp_path / "SMPLX_NEUTRAL.pkl", body_model_npz, protocol=protocol)
    raw = path.read_bytes()
    # the file names the real-world classes, exactly as the official pickle does
    assert b"chumpy.ch" in raw and b"scipy.sparse.csc" in raw and b"csc_matrix" in raw
    assert (b"copy_reg" in raw) == (protocol == 0)
    with open(path, "rb") as f:
        model = safe_pickle.load(f, encoding="latin1")
    assert isinstance(model["shapedirs"], safe_pickle.ChumpyArray)
    assert isinstance(model["J_regressor"], safe_pickle.SparseMatrix)
    reference = np.load(body_model_npz)
    for key in reference.files:
        got = safe_pickle.to_numpy(model[key])
        assert got.shape == reference[key].shape, key
        assert np.array_equal(got, reference[key]), key


@pytest.mark.parametrize("fmt", ["csc", "csr", "coo"])
def test_real_scipy_sparse_pickles_densify(fmt):
    sparse = pytest.importorskip("scipy.sparse")
    rng = np.random.default_rng(3)
    dense = rng.normal(size=(7, 5)) * (rng.random((7, 5)) < 0.3)
    matrix = getattr(sparse, f"{fmt}_matrix")(dense)
    loaded = safe_pickle.loads(pickle.dumps(matrix, protocol=2))
    assert isinstance(loaded, safe_pickle.SparseMatrix)
    assert np.array_equal(safe_pickle.to_numpy(loaded), dense)


def test_yacs_config_becomes_a_plain_dict():
    class CfgNode(dict):
        def __init__(self, init=None):
            super().__init__(init or {})
            self.__dict__.update({"__immutable__": True, "__deprecated_keys__": {"OLD"}})

    with fake_modules({"yacs.config": {"CfgNode": CfgNode}}):
        blob = pickle.dumps({"DATASET": CfgNode({"USE_DEPTH": True, "IMG_RES": 224}),
                             "TRIAL": CfgNode({"bedlam_bbox": True})}, protocol=2)  # fmt: skip
    assert b"yacs.config" in blob
    loaded = safe_pickle.loads(blob)
    assert isinstance(loaded["DATASET"], dict)
    assert loaded["DATASET"] == {"USE_DEPTH": True, "IMG_RES": 224}
    assert loaded["DATASET"].USE_DEPTH is True and loaded["TRIAL"]["bedlam_bbox"] is True


def test_lightning_objects_become_inert_records():
    ran = []

    class ModelCheckpoint:
        def __init__(self):
            self.monitor, self.best_model_score = "val_loss", 0.25

        def __setstate__(self, state):  # the real class would run code here
            ran.append(state)

    class TrainerFn(str):
        def __reduce__(self):
            return TrainerFn, (str(self),)

    modules = {"pytorch_lightning.callbacks.model_checkpoint": {"ModelCheckpoint": ModelCheckpoint},
               "pytorch_lightning.trainer.states": {"TrainerFn": TrainerFn}}  # fmt: skip
    with fake_modules(modules):
        blob = pickle.dumps([ModelCheckpoint(), TrainerFn("fit")], protocol=2)
    callback, stage = safe_pickle.loads(blob)
    assert isinstance(callback, safe_pickle.RecordedObject)
    assert callback.qualified_name == "pytorch_lightning.callbacks.model_checkpoint.ModelCheckpoint"
    assert callback.state == {"monitor": "val_loss", "best_model_score": 0.25}
    assert isinstance(stage, safe_pickle.RecordedObject) and stage.args == ("fit",)
    assert ran == []
    assert "pytorch_lightning.callbacks.model_checkpoint" not in sys.modules


def test_to_numpy_rejects_unread_tensors():
    dtype = safe_pickle.TorchDType("FloatStorage", "float32")
    tensor = safe_pickle.LazyTensor(safe_pickle.StorageRef("0", dtype, 6), 0, (2, 3), (3, 1), dtype)
    assert tensor.span() == (0, 6) and tensor.nbytes == 24
    with pytest.raises(CheckpointError):
        safe_pickle.to_numpy(tensor)
    assert safe_pickle.to_numpy([[1, 2]], dtype=np.float32).dtype == np.float32


def test_no_module_named_by_a_pickle_gets_imported():
    name = "dpose_test_never_imported"
    blob = b"\x80\x02c" + name.encode() + b"\nthing\n."
    sys.modules.pop(name, None)
    with pytest.raises(UnsafePickleError):
        safe_pickle.loads(blob)
    assert name not in sys.modules
