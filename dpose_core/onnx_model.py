"""Checkpoint -> ONNX Runtime model without torch (numpy + the committed graph template).

The template (`data/dpose_template.onnx`, written by `onnx_export.write_template`) holds the
graph with every weight stored as an EXTERNAL reference into `weights.bin`. Its metadata entry
`dpose.weights_layout` lists, one line per initializer, `name offset nbytes dtype shape`
(tab-separated): initializers in state-dict order (`data/state_dict.tsv`), each starting on a
64-byte boundary. Building a runtime model is therefore just writing the checkpoint's arrays
at those offsets next to a copy of the template -- no torch and no onnx package needed.

Runtime models are cached per checkpoint under `<cache>/<checkpoint hash[:16]>/` and built in
a temporary folder that is renamed into place, so an interrupted build never leaves a half
written model behind.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CheckpointError, DPoseError

TEMPLATE_PATH = Path(__file__).resolve().parent / "data" / "dpose_template.onnx"
MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.bin"
WEIGHTS_ALIGNMENT = 64
LAYOUT_KEY = "dpose.weights_layout"
_STAMP_FILE = "template.sha256"


@dataclass(frozen=True)
class LayoutEntry:
    """Where one state-dict array lives in `weights.bin`."""

    name: str
    offset: int
    nbytes: int
    dtype: str  # numpy dtype string, e.g. '<f4'
    shape: tuple[int, ...]


def format_layout(entries) -> str:
    """(name, offset, nbytes, dtype, shape) rows -> the metadata text stored in the template."""
    lines = []
    for name, offset, nbytes, dtype, shape in entries:
        dims = "x".join(str(int(d)) for d in shape) or "scalar"
        lines.append(f"{name}\t{int(offset)}\t{int(nbytes)}\t{dtype}\t{dims}")
    return "\n".join(lines) + "\n"


def parse_layout(text: str) -> list[LayoutEntry]:
    """Inverse of `format_layout`."""
    entries = []
    for line in text.splitlines():
        if not line.strip():
            continue
        name, offset, nbytes, dtype, dims = line.split("\t")
        shape = () if dims == "scalar" else tuple(int(d) for d in dims.split("x"))
        entries.append(LayoutEntry(name, int(offset), int(nbytes), dtype, shape))
    return entries


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes):
    """Yield (field number, wire type, value) of one protobuf message's top-level fields."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos : pos + 8], pos + 8
        elif wire == 2:
            length, pos = _read_varint(buf, pos)
            value, pos = buf[pos : pos + length], pos + length
        elif wire == 5:
            value, pos = buf[pos : pos + 4], pos + 4
        else:
            raise DPoseError(f"Unsupported protobuf wire type {wire} in the ONNX template.")
        yield field, wire, value


def read_metadata(model_bytes: bytes) -> dict[str, str]:
    """ModelProto.metadata_props (field 14) without the onnx package."""
    meta = {}
    for field, wire, value in _proto_fields(model_bytes):
        if field == 14 and wire == 2:
            entry = {f: v for f, w, v in _proto_fields(value) if w == 2}
            meta[entry.get(1, b"").decode()] = entry.get(2, b"").decode()
    return meta


def template_layout(template_path: str | os.PathLike = TEMPLATE_PATH) -> list[LayoutEntry]:
    """The weight layout recorded in a template."""
    meta = read_metadata(Path(template_path).read_bytes())
    if LAYOUT_KEY not in meta:
        raise DPoseError(f"{template_path} has no {LAYOUT_KEY!r} metadata; regenerate it.")
    return parse_layout(meta[LAYOUT_KEY])


def default_cache_dir() -> Path:
    """$DPOSE_CACHE, else ~/.cache/dpose."""
    env = os.environ.get("DPOSE_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dpose"


def write_weights(
    arrays: Mapping[str, np.ndarray], weights_path: str | os.PathLike, layout: list[LayoutEntry]
) -> None:
    """Write `arrays` into `weights_path` at the layout's offsets (zero padding between)."""
    missing = [e.name for e in layout if e.name not in arrays]
    if missing:
        raise CheckpointError(
            f"The checkpoint lacks {len(missing)} network weights (e.g. {missing[:3]}); "
            "is this the D-PoSE checkpoint?"
        )
    with open(weights_path, "wb") as fh:
        for entry in layout:
            array = np.asarray(arrays[entry.name])
            if tuple(array.shape) != entry.shape:
                raise CheckpointError(
                    f"Checkpoint weight {entry.name} has shape {tuple(array.shape)}, the network "
                    f"expects {entry.shape}; is this the D-PoSE checkpoint?"
                )
            data = np.ascontiguousarray(array, dtype=np.dtype(entry.dtype)).tobytes()
            if len(data) != entry.nbytes:
                raise DPoseError(f"Layout size mismatch for {entry.name}; regenerate the template.")
            fh.seek(entry.offset)
            fh.write(data)


def write_runtime_model(
    arrays: Mapping[str, np.ndarray],
    out_dir: str | os.PathLike,
    template_path: str | os.PathLike = TEMPLATE_PATH,
    model_name: str = MODEL_FILE,
) -> Path:
    """Write `model_name` (template copy) + `weights.bin` into `out_dir`; return the model path.

    The graph refers to its weights as `weights.bin` in its own folder: keep them together.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    template = Path(template_path).read_bytes()
    write_weights(arrays, out_dir / WEIGHTS_FILE, template_layout(template_path))
    (out_dir / model_name).write_bytes(template)
    return out_dir / model_name


def _template_digest(template_path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(template_path).read_bytes()).hexdigest()


def cached_runtime_model(
    checkpoint_path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    template_path: str | os.PathLike = TEMPLATE_PATH,
) -> Path | None:
    """The cached runtime model of this checkpoint if it exists and is current, else None."""
    from .checkpoint import checkpoint_hash

    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache_dir / checkpoint_hash(checkpoint_path)[:16]
    stamp = final / _STAMP_FILE
    if (
        (final / MODEL_FILE).is_file()
        and (final / WEIGHTS_FILE).is_file()
        and stamp.is_file()
        and stamp.read_text() == _template_digest(template_path)
    ):
        return final / MODEL_FILE
    return None


def build_runtime_model(
    checkpoint_path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    template_path: str | os.PathLike = TEMPLATE_PATH,
    arrays: Mapping[str, np.ndarray] | None = None,
) -> Path:
    """Checkpoint -> cached `<cache>/<hash[:16]>/model.onnx` (+ weights.bin); reused when current.

    The cache entry is rebuilt when the template it was made from has changed. `arrays`, when
    the caller already has them, must be `load_checkpoint_arrays(checkpoint_path)`.
    """
    from .checkpoint import checkpoint_hash, load_checkpoint_arrays

    cached = cached_runtime_model(checkpoint_path, cache_dir, template_path)
    if cached is not None:
        return cached
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    final = cache_dir / checkpoint_hash(checkpoint_path)[:16]
    digest = _template_digest(template_path)
    if arrays is None:
        arrays = load_checkpoint_arrays(checkpoint_path)
    try:
        return _build_into(final, arrays, digest, checkpoint_path, cache_dir, template_path)
    except OSError as exc:
        raise DPoseError(
            f"Cannot write the ONNX model cache in {cache_dir} ({exc.strerror or exc}); it needs "
            "about 330 MB. Set DPOSE_CACHE to a writable folder with enough space."
        ) from exc


def _build_into(final, arrays, digest, checkpoint_path, cache_dir, template_path) -> Path:
    """Write the model in a temporary folder next to `final`, then rename it into place."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".build-"))
    try:
        write_runtime_model(arrays, tmp, template_path)
        (tmp / _STAMP_FILE).write_text(digest)
        finished = cached_runtime_model(checkpoint_path, cache_dir, template_path)
        if finished is not None:  # a concurrent build finished first: use it
            return finished
        if final.exists():  # stale entry (older template): move aside, then replace
            trash = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".stale-"))
            os.replace(final, trash / "old")
            shutil.rmtree(trash, ignore_errors=True)
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / MODEL_FILE).is_file():  # not a concurrent build that won the race
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final / MODEL_FILE
