"""Synthetic D-PoSE checkpoints: the official Lightning 1.9.0 layout with random weights.

The released paper_arxiv.ckpt cannot be shipped, so tests write a stand-in with `torch.save`
holding every entry of the official state dict (docs/checkpoint.md), an Adam state that must
never be read, and hyper-parameters as nested `yacs.config.CfgNode` objects. A throw-away
`yacs.config` module is registered while pickling, so the pickle names that class exactly as the
real file does. Also here: plain state-dict files, truncated copies, malicious pickles and an
SMPL-X .pkl in the Python 2 layout (chumpy arrays, scipy sparse regressor).
"""

from __future__ import annotations

import contextlib
import pickle
import sys
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from dpose_core.skeleton import VERTEX_JOINTS

_PACKAGED_TSV = Path(__file__).resolve().parents[1] / "dpose_core" / "data" / "state_dict.tsv"

# The released config merged over the defaults (docs/checkpoint.md#training-flags).
HYPER_PARAMETERS: dict[str, Any] = {
    "LOG_DIR": "logs/", "EXP_NAME": "dpose", "SEED_VALUE": -1, "RUN_TEST": False,
    "DATASET": {
        "BATCH_SIZE": 48, "NUM_WORKERS": 8, "PIN_MEMORY": True, "SHUFFLE_TRAIN": True,
        "TRAIN_DS": "agora-bedlam", "VAL_DS": "3dpw-test-cam", "IMG_RES": 224,
        "USE_DEPTH": True, "USE_DEPTH_CONC": False, "USE_SEGM": True,
        "SUPERVISE_DEPTH": False, "SUPERVISE_SEGM": True, "MESH_COLOR": "pinkish",
    },
    "OPTIMIZER": {"TYPE": "adam", "LR": 5e-5, "WD": 0.0},
    "TRAINING": {"PRETRAINED_CKPT": "coco", "MAX_EPOCHS": 200, "LOG_FREQ_TB_IMAGES": 500,
                 "SAVE_IMAGES": False, "POSE_LOSS_WEIGHT": 1.0},
    "TESTING": {"SAVE_IMAGES": False, "SAVE_RESULTS": False, "DISP_ALL": True},
    "MODEL": {"BACKBONE": "hrnet_w48-conv", "SHAPE_LOSS_WEIGHT": 0.0},
    "TRIAL": {"bedlam_bbox": True, "criterion": "mse", "losses_abs": True},
}  # fmt: skip

CALLBACK_KEY = (
    "ModelCheckpoint{'monitor': 'val_loss', 'mode': 'min', 'every_n_train_steps': 0, "
    "'every_n_epochs': 1, 'train_time_interval': None}"
)


def read_tsv(path: Path = _PACKAGED_TSV) -> list[tuple[str, tuple[int, ...], str, str]]:
    """(name, shape, dtype, kind) rows of a state-dict table, in order."""
    rows = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if line.startswith("#") or line.startswith("name\t") or not line.strip():
            continue
        name, shape, dtype, kind = line.split("\t")[:4]
        dims = () if shape == "scalar" else tuple(int(n) for n in shape.split("x"))
        rows.append((name, dims, dtype, kind))
    return rows


def all_entries() -> list[tuple[str, tuple[int, ...], str, str]]:
    """Every entry of the official checkpoint's state dict (2346), in its order: the packaged
    network table under `model.`, then the trainer-level entries with their documented shapes
    (docs/checkpoint.md#the-state-dict).
    """
    network = [("model." + n, s, d, k) for n, s, d, k in read_tsv(_PACKAGED_TSV)]
    smplx = [(n.replace("model.smpl.smplx.", "smplx."), s, d, k) for n, s, d, k in network
             if n.startswith("model.smpl.smplx.")]  # fmt: skip
    params = [("smplx.betas", (64, 11)), ("smplx.global_orient", (64, 3)),
              ("smplx.body_pose", (64, 63)), ("smplx.left_hand_pose", (64, 6)),
              ("smplx.right_hand_pose", (64, 6)), ("smplx.jaw_pose", (64, 3)),
              ("smplx.leye_pose", (64, 3)), ("smplx.reye_pose", (64, 3)),
              ("smplx.expression", (64, 10))]  # fmt: skip
    smpl = [("smpl.betas", (64, 10), "float32", "param"),
            ("smpl.global_orient", (64, 3), "float32", "param"),
            ("smpl.body_pose", (64, 69), "float32", "param"),
            ("smpl.shapedirs", (6890, 3, 10), "float32", "buffer"),
            ("smpl.faces_tensor", (13776, 3), "int64", "buffer"),
            ("smpl.v_template", (6890, 3), "float32", "buffer"),
            ("smpl.J_regressor", (24, 6890), "float32", "buffer"),
            ("smpl.posedirs", (207, 20670), "float32", "buffer"),
            ("smpl.parents", (24,), "int64", "buffer"),
            ("smpl.lbs_weights", (6890, 24), "float32", "buffer"),
            ("smpl.vertex_joint_selector.extra_joints_idxs", (21,), "int64", "buffer")]  # fmt: skip
    return ([("J_regressor", (17, 6890), "float32", "buffer")] + network
            + [(n, s, "float32", "param") for n, s in params] + smplx + smpl)  # fmt: skip


# --------------------------------------------------------------------------- body-model buffers


def smplx_buffers(body_npz: str | Path) -> dict[str, np.ndarray]:
    """The 16 buffers smplx 0.1.28 `SMPLX(path, num_betas=11)` registers, from an SMPL-X .npz."""
    data = np.load(body_npz, allow_pickle=False)
    shapedirs = np.asarray(data["shapedirs"])
    posedirs = np.asarray(data["posedirs"])
    parents = data["kintree_table"][0].astype(np.float32).astype(np.int64)  # smplx's to_np path
    parents[0] = -1
    left_mean = np.asarray(data["hands_meanl"], dtype=np.float32)
    right_mean = np.asarray(data["hands_meanr"], dtype=np.float32)
    pose_mean = np.concatenate([np.zeros(3 + 63 + 9, np.float32), left_mean, right_mean])
    buffers = {
        "shapedirs": shapedirs[:, :, :11],
        "faces_tensor": np.asarray(data["f"]).astype(np.int64),
        "v_template": data["v_template"],
        "J_regressor": data["J_regressor"],
        "posedirs": posedirs.reshape(-1, posedirs.shape[-1]).T,
        "parents": parents,
        "lbs_weights": data["weights"],
        "left_hand_components": data["hands_componentsl"][:6],
        "right_hand_components": data["hands_componentsr"][:6],
        "left_hand_mean": left_mean,
        "right_hand_mean": right_mean,
        "pose_mean": pose_mean,
        "lmk_faces_idx": np.asarray(data["lmk_faces_idx"]).astype(np.int64),
        "lmk_bary_coords": data["lmk_bary_coords"],
        "expr_dirs": shapedirs[:, :, 300:310],
        "vertex_joint_selector.extra_joints_idxs": np.array(
            [v for _, v in VERTEX_JOINTS], dtype=np.int64
        ),  # fmt: skip
    }
    return {k: np.ascontiguousarray(v, dtype=np.int64 if v.dtype.kind in "iu" else np.float32)
            for k, v in buffers.items()}  # fmt: skip


# --------------------------------------------------------------------------- random network


def _random_entry(name: str, shape: tuple[int, ...], dtype: str, rng: np.random.Generator,
                  siblings: set[str]) -> np.ndarray:  # fmt: skip
    """He-style weights scaled down (residual HRNet stays finite), BN near identity."""
    leaf = name.rsplit(".", 1)[-1]
    stem = name[: -len(leaf)]
    if dtype == "int64":
        return np.asarray(rng.integers(1_000, 200_000, size=shape), dtype=np.int64)
    if name.endswith("head.init_pose"):
        return np.tile(np.array([1, 0, 0, 1, 0, 0], np.float32), shape[-1] // 6).reshape(shape)
    if name.endswith("head.init_shape"):
        return np.zeros(shape, np.float32)
    if name.endswith("head.init_cam"):
        return np.array([0.9, 0.0, 0.0], np.float32).reshape(shape)
    if leaf == "running_mean":
        return np.zeros(shape, np.float32)
    if leaf == "running_var":
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    is_bn = stem + "running_mean" in siblings
    if leaf == "weight" and is_bn:
        return (1.0 + 0.05 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)
    if leaf == "bias" or len(shape) < 2:
        return 0.01 * rng.standard_normal(shape, dtype=np.float32)
    if ".head." in name or name.startswith("head."):
        fan_in = shape[-1]  # Linear (out, in) and MultiLinear (heads, out, in)
    else:
        fan_in = int(np.prod(shape[1:]))  # Conv (out, in, k...)
    gain = 0.01 if ".dec" in name else 0.5  # the decoders only nudge the mean parameters
    scale = np.float32(gain * np.sqrt(2.0 / fan_in))
    out = rng.standard_normal(shape, dtype=np.float32)
    out *= scale
    return out


def random_state_dict(body_npz: str | Path, seed: int = 0) -> OrderedDict[str, np.ndarray]:
    """All 2346 checkpoint entries in TSV order (numpy), random network + real-format buffers."""
    rng = np.random.default_rng(seed)
    entries = all_entries()
    names = {n for n, *_ in entries}
    body = smplx_buffers(body_npz)
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for name, shape, dtype, _kind in entries:
        for prefix in ("model.smpl.smplx.", "smplx."):
            if name.startswith(prefix) and name[len(prefix) :] in body:
                out[name] = body[name[len(prefix) :]]
                break
        else:
            if name.startswith("model."):
                out[name] = _random_entry(name, shape, dtype, rng, names)
            elif name.endswith("parents"):
                out[name] = np.concatenate([[-1], rng.integers(0, shape[0] - 1, shape[0] - 1)])
            elif dtype == "int64":
                out[name] = rng.integers(0, 6890, size=shape, dtype=np.int64)
            elif name.startswith("smplx."):  # smplx initialises its pose/shape parameters to 0
                out[name] = np.zeros(shape, np.float32)
            else:
                out[name] = 0.01 * rng.standard_normal(shape, dtype=np.float32)
        out[name] = np.array(out[name], dtype=np.dtype(dtype), order="C", copy=False)
        assert out[name].shape == shape, (name, out[name].shape, shape)
    return out


# --------------------------------------------------------------------------- writing


class _FakeCfgNode(dict):
    """Pickles as `yacs.config.CfgNode` with yacs' instance bookkeeping in its __dict__."""

    def __init__(self, init: dict | None = None) -> None:
        super().__init__()
        for key, value in (init or {}).items():
            self[key] = _FakeCfgNode(value) if isinstance(value, dict) else value
        self.__dict__.update({"__immutable__": False, "__deprecated_keys__": set(),
                              "__renamed_keys__": {}, "__new_allowed__": False})  # fmt: skip


@contextlib.contextmanager
def fake_modules(classes: dict[str, dict[str, type]]) -> Iterator[None]:
    """Register throw-away modules so pickle names classes by their real-world module path."""
    saved = {name: sys.modules.get(name) for name in classes}
    try:
        for module_name, members in classes.items():
            module = types.ModuleType(module_name)
            for cls_name, cls in members.items():
                cls.__module__, cls.__qualname__, cls.__name__ = module_name, cls_name, cls_name
                setattr(module, cls_name, cls)
            sys.modules[module_name] = module
            parent = module_name.rpartition(".")[0]
            while parent and parent not in sys.modules:
                sys.modules[parent] = types.ModuleType(parent)
                saved.setdefault(parent, None)
                parent = parent.rpartition(".")[0]
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def _as_torch(arrays: dict[str, np.ndarray]) -> OrderedDict:
    import torch

    return OrderedDict(
        (k, torch.from_numpy(np.array(v, order="C", copy=False))) for k, v in arrays.items()
    )


def _lightning_extras(state: OrderedDict, rng: np.random.Generator, include_optimizer: bool):
    import torch

    trainer_params = [n for n, _, _, kind in all_entries() if kind == "param"]
    # Adam moments for part of the network: bytes in the file that loading must never touch.
    stateful = ("model.head.", "model.attention.", "model.segmentation_decoder.")
    with_state = [n for n in trainer_params if n.startswith(stateful)]
    adam_state = {}
    for index, name in enumerate(trainer_params):
        if name in with_state:
            shape = tuple(state[name].shape)
            adam_state[index] = {
                "step": torch.tensor(123456.0),
                "exp_avg": torch.from_numpy(1e-4 * rng.standard_normal(shape, dtype=np.float32)),
                "exp_avg_sq": torch.from_numpy(rng.uniform(0, 1e-6, shape).astype(np.float32)),
            }
    optimizer = {
        "state": adam_state,
        "param_groups": [{"lr": 5e-5, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                          "amsgrad": False, "maximize": False, "foreach": None,
                          "capturable": False, "differentiable": False, "fused": None,
                          "params": list(range(len(trainer_params)))}],
    }  # fmt: skip
    best = "logs/dpose/checkpoints/epoch=28-step=123456.ckpt"
    callbacks = {CALLBACK_KEY: {
        "monitor": "val_loss", "best_model_score": torch.tensor(0.0731),
        "best_model_path": best, "current_score": torch.tensor(0.0745),
        "dirpath": "logs/dpose/checkpoints", "best_k_models": {best: torch.tensor(0.0731)},
        "kth_best_model_path": best, "kth_value": torch.tensor(0.0731), "last_model_path": "",
    }}  # fmt: skip
    progress = {
        "total": {"ready": 29, "started": 29, "processed": 29, "completed": 28},
        "current": {"ready": 29, "started": 29, "processed": 29, "completed": 28},
    }
    loops = {"fit_loop": {"state_dict": {}, "epoch_progress": progress,
                          "epoch_loop.state_dict": {"_batches_that_stepped": 123456},
                          "epoch_loop.batch_progress": {**progress, "is_last_batch": False}},
             "validate_loop": {"state_dict": {}}, "test_loop": {"state_dict": {}},
             "predict_loop": {"state_dict": {}}}  # fmt: skip
    return {
        "loops": loops,
        "callbacks": callbacks,
        "optimizer_states": [optimizer] if include_optimizer else [],
        "lr_schedulers": [],
    }


def write_random_checkpoint(
    path: str | Path,
    body_npz: str | Path,
    seed: int = 0,
    *,
    include_optimizer: bool = True,
    extra: dict[str, Any] | None = None,
    edit_state: Callable[[OrderedDict], None] | None = None,
) -> Path:
    """Write a Lightning-1.9.0-layout checkpoint with random weights; returns the path.

    `extra` adds or replaces top-level keys; `edit_state` may change the numpy state dict
    (e.g. drop or reshape a key) before it is saved.
    """
    import torch

    rng = np.random.default_rng(seed + 1)
    state = random_state_dict(body_npz, seed)
    if edit_state is not None:
        edit_state(state)
    checkpoint = {
        "epoch": 28,
        "global_step": 123456,
        "pytorch-lightning_version": "1.9.0",
        "state_dict": _as_torch(state),
        **_lightning_extras(state, rng, include_optimizer),
    }
    with fake_modules({"yacs.config": {"CfgNode": _FakeCfgNode}}):
        checkpoint["hyper_parameters"] = {
            k: _FakeCfgNode(v) if isinstance(v, dict) else v for k, v in HYPER_PARAMETERS.items()
        }
        checkpoint.update(extra or {})
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, path)
    return path


def write_state_dict_file(path: str | Path, arrays: dict[str, np.ndarray], *,
                          wrap: bool = False) -> Path:  # fmt: skip
    """torch.save of a plain dict of tensors (optionally as {"state_dict": ...})."""
    import torch

    tensors = _as_torch(arrays)
    torch.save({"state_dict": tensors} if wrap else tensors, path)
    return Path(path)


def cheap_state_dict(prefix: str = "model.") -> OrderedDict[str, Any]:
    """The network entries as 1-element tensors broadcast to full shape: right keys and shapes,
    a few bytes on disk (torch.save keeps the stride-0 view). Values are not meaningful."""
    import torch

    out = OrderedDict()
    for name, shape, dtype, _ in read_tsv(_PACKAGED_TSV):
        one = torch.zeros(1, dtype=torch.int64 if dtype == "int64" else torch.float32)
        out[prefix + name] = one.reshape(()).expand(shape)
    return out


def write_truncated_copy(source: str | Path, target: str | Path, fraction: float = 0.5) -> Path:
    """The first `fraction` of `source`, as an interrupted download leaves it."""
    with open(source, "rb") as src, open(target, "wb") as dst:
        size = src.seek(0, 2)
        src.seek(0)
        remaining = int(size * fraction)
        while remaining > 0:
            chunk = src.read(min(remaining, 8 << 20))
            dst.write(chunk)
            remaining -= len(chunk)
    return Path(target)


class _Payload:
    """Pickles as a call of `func(*args)`: what a malicious file would run on load."""

    def __init__(self, func: Callable[..., Any], args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def malicious_payload(kind: str, marker: str | Path) -> _Payload:
    """A pickled call that would create `marker` if any loader ran it."""
    import builtins
    import os
    import subprocess

    marker = str(marker)
    if kind == "os.system":
        return _Payload(os.system, (f"touch '{marker}'",))
    if kind == "exec":
        return _Payload(builtins.exec, (f"open({marker!r}, 'w').close()",))
    if kind == "subprocess":
        return _Payload(subprocess.call, (["touch", marker],))
    raise ValueError(kind)


def write_malicious_checkpoint(
    path: str | Path, marker: str | Path, kind: str = "os.system"
) -> Path:
    """A torch zip checkpoint whose data.pkl would run `kind` on load (inside hyper_parameters)."""
    import torch

    torch.save({"state_dict": cheap_state_dict(), "epoch": 1,
                "hyper_parameters": {"cfg": malicious_payload(kind, marker)}}, path)  # fmt: skip
    return Path(path)


def write_malicious_pkl(path: str | Path, marker: str | Path, kind: str = "os.system") -> Path:
    """An SMPL-X-like .pkl whose unpickling would run `kind`."""
    with open(path, "wb") as f:
        pickle.dump({"v_template": np.zeros((3, 3)), "f": malicious_payload(kind, marker)}, f,
                    protocol=2)  # fmt: skip
    return Path(path)


# --------------------------------------------------------------------------- SMPL-X .pkl


class _FakeCh:
    """Pickles as `chumpy.ch.Ch` with chumpy's state layout (values in `x`)."""

    def __init__(self, x: np.ndarray) -> None:
        self.x = x
        self._depends_on_deps = {}
        self._dirty_vars = set()

    def __getstate__(self):
        return dict(self.__dict__)


class _FakeCscMatrix:
    """Pickles as `scipy.sparse.csc.csc_matrix` with scipy's attribute layout."""

    def __init__(self, dense: np.ndarray) -> None:
        rows, cols = np.nonzero(dense.T)[::-1]
        order = np.lexsort((rows, cols))
        rows, cols = rows[order], cols[order]
        self._shape = dense.shape
        self.maxprint = 50
        self.indices = rows.astype(np.int32)
        self.indptr = np.searchsorted(cols, np.arange(dense.shape[1] + 1)).astype(np.int32)
        self.data = dense[rows, cols]
        self._has_sorted_indices = True

    def __getstate__(self):
        return dict(self.__dict__)


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 `str` (BINSTRING), like the 2017 SMPL-X pickles."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + len(obj).to_bytes(4, "little") + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def write_smplx_pkl(path: str | Path, body_npz: str | Path, protocol: int = 2) -> Path:
    """The synthetic body model as an official-style SMPLX_NEUTRAL.pkl (read with latin1).

    shapedirs/posedirs become chumpy `Ch`, J_regressor a `scipy.sparse.csc.csc_matrix`; the rest
    stay numpy arrays. Protocol 0 uses `copy_reg._reconstructor`, as Python 2 wrote it.
    """
    data = dict(np.load(body_npz, allow_pickle=False))
    with fake_modules({"chumpy.ch": {"Ch": _FakeCh},
                       "scipy.sparse.csc": {"csc_matrix": _FakeCscMatrix}}):  # fmt: skip
        model = {k: v for k, v in data.items()}
        model["shapedirs"] = _FakeCh(data["shapedirs"])
        model["posedirs"] = _FakeCh(data["posedirs"])
        model["J_regressor"] = _FakeCscMatrix(data["J_regressor"])
        with open(path, "wb") as f:
            _Py2Pickler(f, protocol=protocol).dump(model)
    if protocol < 2:  # Python 2 spelled copyreg as copy_reg
        raw = Path(path).read_bytes()
        raw = raw.replace(b"ccopyreg\n_reconstructor", b"ccopy_reg\n_reconstructor")
        Path(path).write_bytes(raw)
    return Path(path)
