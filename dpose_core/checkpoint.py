"""Read the D-PoSE Lightning checkpoint without torch, lazily and safely.

`torch.save` writes a zip: `<archive>/data.pkl` (the object tree) and one raw record per tensor
storage under `<archive>/data/<key>`. The pickle goes through `safe_pickle` (nothing in the file
is run) and yields `LazyTensor` records; only the tensors asked for are read, straight from their
offset in the zip. The real file is ~1 GB because it carries Adam states and trainer-level body
models; loading the network costs about the network's 400 MB and never touches the rest.
"""

from __future__ import annotations

import hashlib
import os
import struct
import zipfile
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from . import safe_pickle
from .errors import CheckpointError
from .safe_pickle import LazyTensor, StorageRef, TorchDType

CHECKPOINT_ENV = "DPOSE_CHECKPOINT"
CHECKPOINT_NAME = "paper_arxiv.ckpt"
DOWNLOAD_HINT = (
    f"Download {CHECKPOINT_NAME} from the link in the README of https://github.com/nvasilik/D-PoSE "
    f"and put it at ~/.local/share/dpose/{CHECKPOINT_NAME}, or point the {CHECKPOINT_ENV} "
    "environment variable at it."
)
WRONG_FILE_HINT = f"Is this the D-PoSE {CHECKPOINT_NAME}?"
NETWORK_PREFIX = "model."
_STATE_DICT_TABLE = Path(__file__).parent / "data" / "state_dict.tsv"
_ZIP_MAGIC = b"PK\x03\x04"
_HASH_CHUNK = 8 * 1024 * 1024

# Flags that decide which branches the weights were trained with (docs/checkpoint.md).
INFO_FLAGS = (
    "DATASET.USE_DEPTH", "DATASET.USE_DEPTH_CONC", "DATASET.USE_SEGM",
    "DATASET.SUPERVISE_DEPTH", "DATASET.SUPERVISE_SEGM", "DATASET.IMG_RES",
    "MODEL.BACKBONE", "TRIAL.bedlam_bbox",
)  # fmt: skip


@dataclass(frozen=True)
class ExpectedTensor:
    """One network entry the D-PoSE module needs for strict loading."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str  # "param" or "buffer"


def _parse_shape(text: str) -> tuple[int, ...]:
    return () if text == "scalar" else tuple(int(n) for n in text.split("x"))


def format_shape(shape: tuple[int, ...]) -> str:
    """Shapes as the reference TSV writes them: `AxBxC`, `scalar` for 0-d."""
    return "x".join(str(n) for n in shape) if shape else "scalar"


@lru_cache(maxsize=1)
def expected_state_dict() -> dict[str, ExpectedTensor]:
    """The 2309 network entries (prefix stripped) in state_dict order, from the packaged table."""
    entries: dict[str, ExpectedTensor] = {}
    with open(_STATE_DICT_TABLE, encoding="utf-8") as table:
        for line in table:
            if line.startswith("#") or line.startswith("name\t") or not line.strip():
                continue
            name, shape, dtype, kind = line.rstrip("\n").split("\t")[:4]
            entries[name] = ExpectedTensor(name, _parse_shape(shape), dtype, kind)
    return entries


def default_checkpoint_path() -> Path:
    """$DPOSE_CHECKPOINT if set, else ~/.local/share/dpose/paper_arxiv.ckpt."""
    configured = os.environ.get(CHECKPOINT_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path("~/.local/share/dpose").expanduser() / CHECKPOINT_NAME


def resolve_checkpoint(path: str | os.PathLike[str] | None = None) -> Path:
    """The checkpoint file to use (given path, or the default); CheckpointError if it is absent."""
    resolved = Path(path).expanduser() if path is not None else default_checkpoint_path()
    if resolved.is_dir() and (resolved / CHECKPOINT_NAME).is_file():
        resolved = resolved / CHECKPOINT_NAME
    if not resolved.is_file():
        where = "the given path" if path is not None else "the default location"
        raise CheckpointError(f"No D-PoSE checkpoint at {resolved} ({where}). {DOWNLOAD_HINT}")
    return resolved


class CheckpointArchive:
    """An open torch zip checkpoint: the unpickled tree with lazy tensors, and `read(tensor)`.

    One archive serves one thread (reads seek a shared file handle).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.members_read: list[str] = []  # storage records read so far (diagnostics, tests)
        try:
            self._file: BinaryIO = open(self.path, "rb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise CheckpointError(f"Cannot open the checkpoint {self.path}: {exc}") from exc
        try:
            self._zip = self._open_zip()
            self._prefix = self._find_prefix()
            self._byteorder = self._read_byteorder()
        except BaseException:
            self._file.close()
            raise

    def __enter__(self) -> CheckpointArchive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._zip.close()
        self._file.close()

    def _open_zip(self) -> zipfile.ZipFile:
        size = os.fstat(self._file.fileno()).st_size
        if size == 0:
            raise CheckpointError(f"{self.path} is empty (0 bytes). {DOWNLOAD_HINT}")
        head = self._file.read(4)
        self._file.seek(0)
        try:
            return zipfile.ZipFile(self._file)
        except (zipfile.BadZipFile, OSError, ValueError) as exc:
            if head == _ZIP_MAGIC:
                raise CheckpointError(
                    f"{self.path} is an incomplete zip archive ({size} bytes; the real checkpoint "
                    f"is about 1 GB): the download or copy was cut short. {DOWNLOAD_HINT}"
                ) from exc
            if head[:1] == b"\x80":
                raise CheckpointError(
                    f"{self.path} is a legacy (pre-1.6) torch file, which is not supported. "
                    "Re-save it with torch>=1.6: torch.save(torch.load(old, weights_only=False), "
                    "new)."
                ) from exc
            raise CheckpointError(
                f"{self.path} is not a PyTorch checkpoint (it starts with {head!r}, not a zip "
                f"archive). {DOWNLOAD_HINT}"
            ) from exc

    def _find_prefix(self) -> str:
        for name in self._zip.namelist():
            folder, _, leaf = name.rpartition("/")
            if leaf == "data.pkl" and "/" not in folder:
                return folder
        raise CheckpointError(
            f"{self.path} is a zip archive but not a torch checkpoint (no data.pkl inside). "
            f"{WRONG_FILE_HINT}"
        )

    def _read_byteorder(self) -> str:
        try:
            order = self._zip.read(f"{self._prefix}/byteorder").decode("ascii").strip()
        except KeyError:
            return "<"  # files from torch < 1.10 have no record and are little-endian
        return ">" if order == "big" else "<"

    def _persistent_load(self, pid: Any) -> StorageRef:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise CheckpointError(f"{self.path} has an unknown storage record {pid!r:.80}")
        _, dtype, key, location, numel = pid
        if not isinstance(dtype, TorchDType):
            raise CheckpointError(f"{self.path} has a storage of unknown type {dtype!r:.80}")
        return StorageRef(str(key), dtype, int(numel), str(location))

    def load_pickle(self) -> Any:
        """The checkpoint's object tree; tensors are `LazyTensor` records, nothing is read."""
        with self._zip.open(f"{self._prefix}/data.pkl") as data:
            return safe_pickle.load(data, self._persistent_load, source_name=str(self.path))

    def read(self, tensor: LazyTensor) -> np.ndarray:
        """The tensor's values as a new, writable, C-contiguous numpy array."""
        if tensor.dtype.numpy_dtype is None:
            raise CheckpointError(
                f"{self.path} stores a {tensor.dtype.torch_name} tensor, which numpy cannot hold; "
                "re-save the checkpoint in float32."
            )
        dtype = np.dtype(tensor.dtype.numpy_dtype)
        start, stop = tensor.span()
        if tensor.numel == 0:
            return np.zeros(tensor.shape, dtype=dtype)
        flat = self._read_elements(tensor.storage, dtype, start, stop - start)
        itemsize = dtype.itemsize
        if _is_contiguous(tensor.shape, tensor.stride):
            return flat.reshape(tensor.shape)
        view = np.lib.stride_tricks.as_strided(
            flat, tensor.shape, tuple(s * itemsize for s in tensor.stride), writeable=False
        )
        return np.ascontiguousarray(view)

    def _read_elements(
        self, storage: StorageRef, dtype: np.dtype, first: int, count: int
    ) -> np.ndarray:
        member = f"{self._prefix}/data/{storage.key}"
        try:
            info = self._zip.getinfo(member)
        except KeyError:
            raise CheckpointError(
                f"{self.path} lacks the tensor record {member}; the file is damaged. "
                + DOWNLOAD_HINT
            ) from None
        start_byte, n_bytes = first * dtype.itemsize, count * dtype.itemsize
        if start_byte + n_bytes > info.file_size:
            raise CheckpointError(
                f"{self.path}: tensor record {member} holds {info.file_size} bytes, fewer than its "
                f"tensor needs ({start_byte + n_bytes}); the file is damaged. {DOWNLOAD_HINT}"
            )
        self.members_read.append(member)
        out = np.empty(count, dtype=dtype.newbyteorder(self._byteorder))
        buffer = memoryview(out).cast("B")
        if info.compress_type == zipfile.ZIP_STORED:
            self._file.seek(self._data_offset(info) + start_byte)
            got = self._file.readinto(buffer)
        else:
            with self._zip.open(info) as record:
                record.seek(start_byte)
                got = record.readinto(buffer)
        if got != n_bytes:
            raise CheckpointError(f"{self.path}: {member} ends early; the file is damaged.")
        if not out.dtype.isnative:  # written on a big-endian machine (or read on one)
            out = out.byteswap(inplace=True).view(out.dtype.newbyteorder("="))
        return out

    def _data_offset(self, info: zipfile.ZipInfo) -> int:
        self._file.seek(info.header_offset)
        header = self._file.read(30)
        if len(header) != 30 or header[:4] != _ZIP_MAGIC:
            raise CheckpointError(f"{self.path}: bad zip entry {info.filename}; file is damaged.")
        name_len, extra_len = struct.unpack("<HH", header[26:30])
        return info.header_offset + 30 + name_len + extra_len


def _is_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, s in zip(reversed(shape), reversed(stride), strict=True):
        if n != 1 and s != expected:
            return False
        expected *= n
    return True


def _state_dict_of(tree: Any, path: Path) -> dict[str, Any]:
    """The tensor dict: a Lightning checkpoint's `state_dict`, or a plain state-dict file."""
    if isinstance(tree, dict) and isinstance(tree.get("state_dict"), dict):
        return tree["state_dict"]
    if isinstance(tree, dict) and tree and all(isinstance(v, LazyTensor) for v in tree.values()):
        return tree
    keys = ", ".join(map(str, list(tree)[:8])) if isinstance(tree, dict) else type(tree).__name__
    raise CheckpointError(f"{path} holds no state_dict (top level: {keys}). {WRONG_FILE_HINT}")


def _network_entries(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Entries under `prefix` with it stripped; a file without any prefixed key is taken whole."""
    if prefix and any(str(k).startswith(prefix) for k in state):
        return {str(k)[len(prefix) :]: v for k, v in state.items() if str(k).startswith(prefix)}
    return {str(k): v for k, v in state.items()}


def _describe(value: Any) -> str:
    if isinstance(value, LazyTensor):
        return f"{format_shape(value.shape)} {value.dtype.numpy_dtype or value.dtype.torch_name}"
    return f"a {type(value).__name__}, not a tensor"


def first_mismatch(network: dict[str, Any], prefix: str = NETWORK_PREFIX) -> str | None:
    """Why `network` (prefix stripped) cannot load strictly into D-PoSE, or None if it can."""
    expected = expected_state_dict()
    for name, want in expected.items():
        wanted = f"{format_shape(want.shape)} {want.dtype}"
        if name not in network:
            return (f"the network tensor {prefix}{name} ({wanted}) is missing; the file has "
                    f"{len(network)} network tensors, D-PoSE needs {len(expected)}")  # fmt: skip
        got = network[name]
        if (
            not isinstance(got, LazyTensor)
            or got.shape != want.shape
            or (got.dtype.numpy_dtype != want.dtype)
        ):
            return f"{prefix}{name} is {_describe(got)} in the file, but D-PoSE expects {wanted}"
    for name, got in network.items():
        if name not in expected:
            return (f"the file has an unexpected network tensor {prefix}{name} ({_describe(got)}); "
                    f"D-PoSE has no such entry")  # fmt: skip
    return None


def load_checkpoint_arrays(
    path: str | os.PathLike[str] | None, prefix: str = NETWORK_PREFIX, *, only: str | None = None
) -> dict[str, np.ndarray]:
    """The 2309 D-PoSE network arrays (prefix stripped, state_dict order), strictly validated.

    Reads only those tensors; with `only` (e.g. "smpl.smplx." for the body model) just the
    entries whose names start with it, after validating the whole table. CheckpointError names
    the first missing, unexpected or misshapen key or a tensor holding NaN/inf,
    UnsafePickleError refuses a file that asks to run code.
    """
    resolved = resolve_checkpoint(path)
    with CheckpointArchive(resolved) as archive:
        network = _network_entries(_state_dict_of(archive.load_pickle(), resolved), prefix)
        problem = first_mismatch(network, prefix)
        if problem is not None:
            raise CheckpointError(f"{resolved} does not match the D-PoSE network: {problem}. "
                                  f"{WRONG_FILE_HINT}")  # fmt: skip
        arrays = {name: archive.read(network[name]) for name in expected_state_dict()
                  if only is None or name.startswith(only)}  # fmt: skip
    _check_finite(arrays, resolved)
    return arrays


def _check_finite(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Refuse NaN/inf weights: they give NaN everywhere downstream instead of an error."""
    bad = [name for name, a in arrays.items()
           if a.dtype.kind == "f" and not np.isfinite(a).all()]  # fmt: skip
    if bad:
        raise CheckpointError(
            f"{path} has weights that are not finite numbers (NaN or inf) in {len(bad)} "
            f"tensor{'s' * (len(bad) != 1)}, e.g. {NETWORK_PREFIX}{bad[0]}: the file is damaged "
            f"or not trained weights. {DOWNLOAD_HINT}"
        )


@dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint says about itself, for `dpose info` and provenance."""

    path: Path
    size_bytes: int
    top_level_keys: tuple[str, ...]
    lightning_version: str | None
    epoch: int | None
    global_step: int | None
    flags: dict[str, Any] = field(default_factory=dict)
    network_tensors: int = 0
    network_parameters: int = 0  # trainable parameter elements among the network tensors
    other_tensors: int = 0  # state_dict entries outside the network (trainer-level body models)
    has_optimizer_state: bool = False
    problem: str | None = None  # first reason the network would not load strictly

    @property
    def valid(self) -> bool:
        return self.problem is None


def _lookup(tree: Any, dotted: str) -> Any:
    node = tree
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def checkpoint_info(path: str | os.PathLike[str] | None) -> CheckpointInfo:
    """Summarise a checkpoint (versions, training flags, key check) without reading tensors."""
    resolved = resolve_checkpoint(path)
    with CheckpointArchive(resolved) as archive:
        tree = archive.load_pickle()
    state = _state_dict_of(tree, resolved)
    network = _network_entries(state, NETWORK_PREFIX)
    expected = expected_state_dict()
    hparams = tree.get("hyper_parameters") if isinstance(tree, dict) else None
    flags = {}
    for flag in INFO_FLAGS:
        value = _lookup(hparams, flag)
        if value is not None:
            flags[flag] = _plain(value)
    parameters = sum(
        t.numel for n, t in network.items()
        if isinstance(t, LazyTensor) and n in expected and expected[n].kind == "param"
    )  # fmt: skip
    top = tuple(str(k) for k in tree) if isinstance(tree, dict) and tree is not state else ()

    def scalar(key: str) -> Any:
        return _plain(tree.get(key)) if isinstance(tree, dict) and tree is not state else None

    problem = first_mismatch(network)
    return CheckpointInfo(
        path=resolved,
        size_bytes=resolved.stat().st_size,
        top_level_keys=top,
        lightning_version=scalar("pytorch-lightning_version"),
        epoch=scalar("epoch"),
        global_step=scalar("global_step"),
        flags=flags,
        network_tensors=len(network),
        network_parameters=parameters,
        other_tensors=len(state) - len(network),
        has_optimizer_state=bool(scalar("optimizer_states")),
        problem=problem,
    )


def format_info(info: CheckpointInfo) -> str:
    """Human-readable summary for `dpose info`."""
    lines = [
        f"checkpoint:        {info.path}",
        f"size:              {info.size_bytes / 1e6:.1f} MB",
        f"lightning version: {info.lightning_version or 'unknown'}",
        f"epoch / step:      {info.epoch} / {info.global_step}",
        f"top-level keys:    {', '.join(info.top_level_keys) or '(plain state dict)'}",
        f"network tensors:   {info.network_tensors} (expected {len(expected_state_dict())}), "
        f"{info.network_parameters:,} trainable parameters",
        f"other tensors:     {info.other_tensors}"
        + (" + optimizer state (not loaded)" if info.has_optimizer_state else ""),
    ]
    if info.flags:
        lines.append("training flags:")
        lines += [f"  {name} = {value}" for name, value in info.flags.items()]
    lines.append("strict network check: " + ("OK" if info.valid else f"FAILED: {info.problem}"))
    return "\n".join(lines)


_digest_memo: dict[tuple[int, int, int, int, int], str] = {}


def file_sha256(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file, remembered per (device, inode, size, mtime, ctime) for this
    process: any write changes mtime or ctime, so a remembered digest is never stale, and a
    renamed file keeps its inode, so it is not hashed twice."""
    stat = Path(path).stat()
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)
    if key not in _digest_memo:
        digest = hashlib.sha256()
        with open(path, "rb") as fh:
            while chunk := fh.read(_HASH_CHUNK):
                digest.update(chunk)
        _digest_memo[key] = digest.hexdigest()
    return _digest_memo[key]


def checkpoint_hash(path: str | os.PathLike[str] | None) -> str:
    """Full sha256 (hex) of the checkpoint `path` resolves to (see resolve_checkpoint)."""
    return file_sha256(resolve_checkpoint(path))
