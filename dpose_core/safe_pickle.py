"""An allow-listed unpickler: reads checkpoints and SMPL-X .pkl files without running their code.

A pickle can name any importable callable and have it called while loading (`os.system`, `exec`,
...). This unpickler never imports anything the file names. Each global is looked up in a fixed
table of harmless stand-ins: plain data types, numpy array rebuilding, and inert records for
PyTorch tensors, yacs configs, Lightning objects, chumpy arrays and scipy sparse matrices. Any
other global raises `UnsafePickleError` before anything is called.

Tensors come back as `LazyTensor` records (storage reference, offset, shape, stride); reading
their bytes is the caller's job (see `checkpoint.py`), so nothing large is read by unpickling.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import copyreg
import datetime
import io
import pickle
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO

import numpy as np

from .errors import CheckpointError, UnsafePickleError

# torch storage class name -> numpy dtype of its elements (None: no numpy equivalent).
TORCH_STORAGE_DTYPES: dict[str, str | None] = {
    "DoubleStorage": "float64", "FloatStorage": "float32", "HalfStorage": "float16",
    "BFloat16Storage": None, "LongStorage": "int64", "IntStorage": "int32",
    "ShortStorage": "int16", "CharStorage": "int8", "ByteStorage": "uint8",
    "BoolStorage": "bool", "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128", "UntypedStorage": "uint8",
}  # fmt: skip

# torch dtype attribute name -> numpy dtype (None: no numpy equivalent).
TORCH_DTYPES: dict[str, str | None] = {
    "float64": "float64", "double": "float64", "float32": "float32", "float": "float32",
    "float16": "float16", "half": "float16", "bfloat16": None, "int64": "int64",
    "long": "int64", "int32": "int32", "int": "int32", "int16": "int16", "short": "int16",
    "int8": "int8", "uint8": "uint8", "bool": "bool", "complex64": "complex64",
    "complex128": "complex128",
}  # fmt: skip


class _FrozenType(type):
    """Metaclass of the stand-ins: a pickle's BUILD cannot patch attributes onto the classes."""

    def __setattr__(cls, name: str, value: Any) -> None:
        raise UnsafePickleError(f"refused to set {name!r} on {cls.__name__}; nothing was run")

    def __delattr__(cls, name: str) -> None:
        raise UnsafePickleError(f"refused to delete {name!r} on {cls.__name__}; nothing was run")


@dataclass(frozen=True)
class TorchDType:
    """Stand-in for a torch storage class or dtype global: only remembers the element type."""

    torch_name: str
    numpy_dtype: str | None

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError("refused a BUILD on a torch dtype stand-in; nothing was run")


@dataclass(frozen=True)
class StorageRef:
    """Where a tensor's bytes live: the storage record `key` holding `numel` elements."""

    key: str
    dtype: TorchDType
    numel: int
    location: str = "cpu"


@dataclass(frozen=True)
class LazyTensor:
    """A tensor not read yet: element `offset`, `shape` and `stride` into a storage."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: TorchDType

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        np_dtype = self.dtype.numpy_dtype
        return self.numel * (np.dtype(np_dtype).itemsize if np_dtype else 2)

    def span(self) -> tuple[int, int]:
        """First and one-past-last storage element this tensor touches."""
        if self.numel == 0:
            return self.offset, self.offset
        last = sum((n - 1) * s for n, s in zip(self.shape, self.stride, strict=True))
        return self.offset, self.offset + last + 1


class ConfigNode(dict, metaclass=_FrozenType):
    """Stand-in for yacs `CfgNode` and Lightning `AttributeDict`: a plain dict of the values."""

    def __setstate__(self, state: Any) -> None:
        # yacs keeps bookkeeping (immutability flag, renamed keys) in the instance __dict__.
        self.__dict__["pickled_state"] = state

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None


class RecordedObject(metaclass=_FrozenType):
    """Inert record of an object the file names (e.g. a Lightning callback): args and state only."""

    qualified_name = "unknown"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.__dict__["args"] = args
        self.__dict__["kwargs"] = kwargs

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __repr__(self) -> str:
        return f"<recorded {self.qualified_name}>"


class ChumpyArray(RecordedObject):
    """Stand-in for `chumpy.ch.Ch`: its pickled state keeps the values in `x`."""

    qualified_name = "chumpy.ch.Ch"

    @property
    def x(self) -> np.ndarray:
        state = self.__dict__.get("state")
        if isinstance(state, dict) and "x" in state:
            return np.asarray(state["x"])
        raise CheckpointError("a chumpy object in the file holds no array 'x'; cannot read it")


class SparseMatrix(RecordedObject):
    """Stand-in for a scipy.sparse csc/csr/coo matrix: the index arrays, densified on request."""

    sparse_format = "csc"

    def toarray(self) -> np.ndarray:
        state = self.__dict__.get("state")
        if not isinstance(state, dict):
            raise CheckpointError("a scipy.sparse matrix in the file has no state; cannot read it")
        shape = tuple(int(n) for n in state.get("_shape", state.get("shape", ())))
        data = np.asarray(state["data"])
        dense = np.zeros(shape, dtype=data.dtype)
        if self.sparse_format == "coo":
            coords = state.get("coords") or (state["row"], state["col"])
            rows, cols = (np.asarray(c, dtype=np.int64) for c in coords)
        else:
            indptr = np.asarray(state["indptr"], dtype=np.int64)
            major = np.repeat(np.arange(indptr.size - 1), np.diff(indptr))
            minor = np.asarray(state["indices"], dtype=np.int64)[: major.size]
            rows, cols = (minor, major) if self.sparse_format == "csc" else (major, minor)
        np.add.at(dense, (rows, cols), data[: rows.size])
        return dense


class _SafeCallable:
    """A harmless function handed to the pickle; refuses BUILD so it cannot be re-wired."""

    __slots__ = ("fn", "qualified_name")

    def __init__(self, fn: Callable[..., Any], qualified_name: str) -> None:
        object.__setattr__(self, "fn", fn)
        object.__setattr__(self, "qualified_name", qualified_name)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.fn(*args, **kwargs)

    def __setattr__(self, name: str, value: Any) -> None:
        raise UnsafePickleError(f"refused to modify {self.qualified_name}; nothing was run")

    def __setstate__(self, state: Any) -> None:
        raise UnsafePickleError(f"refused a BUILD on {self.qualified_name}; nothing was run")


def _rebuild_tensor(storage: Any, offset: int, size: Any, stride: Any, *_: Any) -> LazyTensor:
    if not isinstance(storage, StorageRef):
        raise CheckpointError("a tensor in the file has no storage record; the file is damaged")
    shape, steps = tuple(int(n) for n in size), tuple(int(s) for s in stride)
    # Reading uses as_strided, so a layout reaching outside its storage must never get there.
    if len(shape) != len(steps) or min((int(offset), *shape, *steps)) < 0:
        raise CheckpointError(
            f"a tensor in the file has an invalid layout (offset {offset}, size {shape}, "
            f"stride {steps}); the file is damaged"
        )
    return LazyTensor(storage, int(offset), shape, steps, storage.dtype)


def _rebuild_tensor_v3(storage: Any, offset: int, size: Any, stride: Any, requires_grad: Any,
                       hooks: Any, dtype: Any, *_: Any) -> LazyTensor:  # fmt: skip
    tensor = _rebuild_tensor(storage, offset, size, stride)
    if isinstance(dtype, TorchDType):
        tensor = LazyTensor(tensor.storage, tensor.offset, tensor.shape, tensor.stride, dtype)
    return tensor


def _rebuild_parameter(data: Any, *_: Any) -> Any:
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    if func not in (_GLOBALS[("torch._utils", "_rebuild_tensor_v2")],
                    _GLOBALS[("torch._utils", "_rebuild_parameter")]) or new_type not in (
        _GLOBALS[("torch", "Tensor")], _GLOBALS[("torch.nn.parameter", "Parameter")]
    ):  # fmt: skip
        raise UnsafePickleError(
            "refused torch._tensor._rebuild_from_type_v2 with an unknown"
            " builder; the file was refused and nothing in it was run"
        )
    return func(*args)


def _reconstruct_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype not in (np.ndarray, np.matrix):
        raise UnsafePickleError(f"refused numpy _reconstruct of {subtype!r}; nothing was run")
    if isinstance(dtype, bytes):  # Python 3 pickles pass the placeholder dtype as b"b"
        dtype = dtype.decode("latin1")
    return np.ndarray.__new__(subtype, shape, np.dtype(dtype))


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype):
        raise UnsafePickleError("refused numpy scalar without a numpy dtype; nothing was run")
    if dtype.hasobject:
        return data
    if isinstance(data, str):  # Python 2 pickles store the bytes as latin-1 text
        data = data.encode("latin1")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _array_from_buffer(buffer: Any, dtype: Any, shape: Any, order: str = "C") -> np.ndarray:
    # Protocol-5 pickles of numpy arrays: raw bytes plus dtype, shape and memory order.
    if not isinstance(dtype, np.dtype) or dtype.hasobject or order not in ("C", "F"):
        raise UnsafePickleError("refused numpy _frombuffer with an odd dtype; nothing was run")
    flat = np.frombuffer(bytes(buffer), dtype=dtype)
    return flat.reshape(tuple(int(n) for n in shape), order=order).copy(order=order)


def _codecs_encode(text: Any, encoding: str = "utf-8", *_: Any) -> bytes:
    # Protocol-2 pickles from Python 3 spell bytes as _codecs.encode(latin-1 text).
    if not isinstance(text, str) or encoding.replace("-", "").lower() not in ("latin1", "utf8"):
        raise UnsafePickleError("refused _codecs.encode with non-text input; nothing was run")
    return text.encode(encoding)


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    if not isinstance(cls, type) or not isinstance(base, type):
        raise UnsafePickleError("refused copyreg._reconstructor of a non-class; nothing was run")
    return copyreg._reconstructor(cls, base, state)


def _newobj(cls: Any, *args: Any) -> Any:
    if not isinstance(cls, type):
        raise UnsafePickleError("refused copyreg.__newobj__ of a non-class; nothing was run")
    return cls.__new__(cls, *args)


def _torch_device(*parts: Any) -> str:
    return ":".join(str(p) for p in parts)


def _path_text(*parts: Any) -> str:
    return "/".join(str(p) for p in parts)


def _recorded_class(qualified_name: str, base: type = RecordedObject) -> type:
    module, _, name = qualified_name.rpartition(".")
    return _FrozenType(name, (base,), {"qualified_name": qualified_name, "__module__": module})


def _build_allow_list() -> dict[tuple[str, str], Any]:
    table: dict[tuple[str, str], Any] = {}

    def safe(module: str, name: str, fn: Callable[..., Any]) -> None:
        table[(module, name)] = _SafeCallable(fn, f"{module}.{name}")

    # Plain data types: calling them with data is harmless, and they are immutable C types.
    table[("collections", "OrderedDict")] = OrderedDict
    for name in ("set", "frozenset", "slice", "complex", "bytearray", "bytes", "range", "list",
                 "dict", "tuple", "int", "float", "bool", "str", "object"):  # fmt: skip
        table[("builtins", name)] = getattr(builtins, name)
    for name in ("datetime", "date", "time", "timedelta", "timezone"):
        table[("datetime", name)] = getattr(datetime, name)
    safe("_codecs", "encode", _codecs_encode)
    safe("copyreg", "_reconstructor", _reconstructor)
    safe("copyreg", "__newobj__", _newobj)
    for module in ("pathlib",):
        for name in ("Path", "PosixPath", "WindowsPath", "PurePosixPath", "PureWindowsPath"):
            safe(module, name, _path_text)

    # numpy arrays, dtypes and scalars (numpy 1.x and 2.x module names).
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        safe(module, "_reconstruct", _reconstruct_array)
        safe(module, "scalar", _numpy_scalar)
    for module in ("numpy.core.numeric", "numpy._core.numeric"):
        safe(module, "_frombuffer", _array_from_buffer)
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    table[("numpy", "matrix")] = np.matrix
    table[("numpy.matrixlib.defmatrix", "matrix")] = np.matrix

    # PyTorch: tensors become LazyTensor records, storage classes and dtypes become TorchDType.
    safe("torch._utils", "_rebuild_tensor", _rebuild_tensor)
    safe("torch._utils", "_rebuild_tensor_v2", _rebuild_tensor)
    safe("torch._utils", "_rebuild_tensor_v3", _rebuild_tensor_v3)
    safe("torch._utils", "_rebuild_parameter", _rebuild_parameter)
    safe("torch._utils", "_rebuild_parameter_with_state", _rebuild_parameter)
    safe("torch._tensor", "_rebuild_from_type_v2", _rebuild_from_type)
    table[("torch", "Tensor")] = _recorded_class("torch.Tensor")
    table[("torch.nn.parameter", "Parameter")] = _recorded_class("torch.nn.parameter.Parameter")
    safe("torch", "device", _torch_device)
    safe("torch", "Size", lambda dims=(): tuple(int(d) for d in dims))
    for name, np_dtype in TORCH_STORAGE_DTYPES.items():
        table[("torch", name)] = TorchDType(name, np_dtype)
    table[("torch.storage", "UntypedStorage")] = TorchDType("UntypedStorage", "uint8")
    for name, np_dtype in TORCH_DTYPES.items():
        table[("torch", name)] = TorchDType(name, np_dtype)

    # Training objects: configs become dicts, everything else an inert record of its state.
    table[("yacs.config", "CfgNode")] = ConfigNode
    for module in (
        "pytorch_lightning.utilities.parsing",
        "lightning.pytorch.utilities.parsing",
        "lightning_fabric.utilities.data",
        "lightning.fabric.utilities.data",
    ):
        table[(module, "AttributeDict")] = ConfigNode
    table[("argparse", "Namespace")] = _recorded_class("argparse.Namespace")

    # SMPL/SMPL-X .pkl contents: chumpy arrays and scipy sparse matrices.
    table[("chumpy.ch", "Ch")] = ChumpyArray
    for fmt in ("csc", "csr", "coo"):
        for module in (f"scipy.sparse.{fmt}", f"scipy.sparse._{fmt}"):
            for kind in ("matrix", "array"):
                cls = _FrozenType(f"{fmt}_{kind}", (SparseMatrix,),
                                  {"qualified_name": f"{module}.{fmt}_{kind}",
                                   "sparse_format": fmt, "__module__": module})  # fmt: skip
                table[(module, f"{fmt}_{kind}")] = cls
    return table


_GLOBALS = _build_allow_list()

# Module prefixes whose globals become inert records (Lightning enums, callbacks, loop states).
_RECORDED_PREFIXES = ("pytorch_lightning.", "lightning.pytorch.", "lightning_fabric.",
                      "lightning.fabric.")  # fmt: skip
_recorded_cache: dict[str, type] = {}


class SafeUnpickler(pickle.Unpickler):
    """`pickle.Unpickler` whose globals come only from the allow-list above."""

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (copy_reg, __builtin__) are mapped as the stock unpickler would.
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        elif module in _compat_pickle.IMPORT_MAPPING:
            module = _compat_pickle.IMPORT_MAPPING[module]
        found = _GLOBALS.get((module, name))
        if found is not None:
            return found
        if module.startswith(_RECORDED_PREFIXES) and name.isidentifier():
            qualified = f"{module}.{name}"
            if qualified not in _recorded_cache:
                _recorded_cache[qualified] = _recorded_class(qualified)
            return _recorded_cache[qualified]
        raise UnsafePickleError(
            f"refused to load {_source_name(self)}: it asks for {module}.{name}, which is not "
            "on the allow-list of plain data types. The file was refused and nothing in it was "
            "run. Only load checkpoints and body models from their official sources."
        )


def _source_name(unpickler: SafeUnpickler) -> str:
    return getattr(unpickler, "source_name", "the file")


def load(
    fileobj: BinaryIO,
    persistent_load: Callable[[Any], Any] | None = None,
    encoding: str = "ASCII",
    *,
    source_name: str | None = None,
) -> Any:
    """Unpickle `fileobj` with the allow-list; Python 2 pickles need encoding="latin1".

    Raises UnsafePickleError for a refused global (nothing was called) and CheckpointError for a
    damaged or unsupported pickle.
    """
    unpickler = SafeUnpickler(fileobj, encoding=encoding)
    unpickler.source_name = source_name or str(getattr(fileobj, "name", "the file"))
    if persistent_load is not None:
        unpickler.persistent_load = persistent_load
    try:
        return unpickler.load()
    except (UnsafePickleError, CheckpointError):
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError,
            IndexError, KeyError, UnicodeDecodeError, MemoryError) as exc:  # fmt: skip
        raise CheckpointError(
            f"could not read {unpickler.source_name} as a pickle ({type(exc).__name__}: {exc}); "
            "the file is damaged or not in a supported format"
        ) from exc


def loads(data: bytes, persistent_load: Callable[[Any], Any] | None = None,
          encoding: str = "ASCII") -> Any:  # fmt: skip
    """`load` for bytes in memory."""
    return load(io.BytesIO(data), persistent_load, encoding, source_name="the pickle")


def to_numpy(obj: Any, dtype: Any = None) -> np.ndarray:
    """Plain numpy array from an unpickled value: arrays, chumpy and sparse stand-ins, lists."""
    if isinstance(obj, ChumpyArray):
        array = obj.x
    elif isinstance(obj, SparseMatrix):
        array = obj.toarray()
    elif isinstance(obj, LazyTensor):
        raise CheckpointError("a tensor must be read from its archive (checkpoint.py), not here")
    else:
        array = np.asarray(obj)
    if dtype is not None:
        array = array.astype(dtype, copy=False)
    return np.asarray(array)
