"""Checkpoint -> ONNX Runtime model without torch (numpy + the committed graph template).

The template (`data/dpose_template.onnx`, written by `onnx_export.write_template`) holds the
graph with every weight stored as an EXTERNAL reference into `weights.bin`. Its metadata entry
`dpose.weights_layout` lists, one line per initializer, `name offset nbytes dtype shape`
(tab-separated): initializers in state-dict order (`data/state_dict.tsv`), each starting on a
64-byte boundary. Building a runtime model is therefore just writing the checkpoint's arrays
at those offsets next to a copy of the template -- no torch and no onnx package needed.

Runtime models are cached per checkpoint under `<cache>/<checkpoint hash[:16]>/` with a
`manifest.json` of file sizes and sha256 digests, checked every time the entry is opened, so
a damaged entry is rebuilt instead of failing or running on garbage. See docs/model-cache.md.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .checkpoint import file_sha256
from .errors import CheckpointError, DPoseError

TEMPLATE_PATH = Path(__file__).resolve().parent / "data" / "dpose_template.onnx"
MODEL_FILE = "model.onnx"
WEIGHTS_FILE = "weights.bin"
WEIGHTS_ALIGNMENT = 64
LAYOUT_KEY = "dpose.weights_layout"
CACHE_ENV = "DPOSE_CACHE"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
_ENTRY_FILES = (MODEL_FILE, WEIGHTS_FILE)
_ENTRY_MB = 330  # model.onnx + weights.bin of the real network
_BUILD_PREFIX, _TRASH_PREFIX = ".build-", ".trash-"
_LEFTOVER_PREFIXES = (_BUILD_PREFIX, _TRASH_PREFIX)
_LOCK_SUFFIX = ".lock"
_OLD_RELEASE_STAMP = "template.sha256"  # what entries held before manifests

log = logging.getLogger(__name__)


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


# ------------------------------------------------------------------------- writing model files
def _new_temp_file(target: Path) -> Path:
    """A fresh, exclusive temporary file beside `target` (same folder, so renaming is atomic)."""
    while True:
        temp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.part")
        try:
            with open(temp, "xb"):
                return temp
        except FileExistsError:
            continue


def _fsync_folder(folder: Path) -> None:
    """Make a rename inside `folder` durable (POSIX only; Windows has no folder handles)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_weights(
    arrays: Mapping[str, np.ndarray], weights_path: str | os.PathLike, layout: list[LayoutEntry]
) -> None:
    """Write `arrays` into `weights_path` at the layout's offsets (zero padding between), synced."""
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
        fh.flush()
        os.fsync(fh.fileno())


def write_runtime_model(
    arrays: Mapping[str, np.ndarray],
    out_dir: str | os.PathLike,
    template_path: str | os.PathLike = TEMPLATE_PATH,
    model_name: str = MODEL_FILE,
) -> Path:
    """Write `model_name` (template copy) + `weights.bin` into `out_dir`; return the model path.

    The graph refers to its weights as `weights.bin` in its own folder: keep them together.
    Both files are written under temporary names in `out_dir`, synced, then renamed over the
    old ones, so a failure (full disk, wrong weight) leaves files already there untouched.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    template = Path(template_path).read_bytes()
    layout = template_layout(template_path)
    temps: list[Path] = []
    try:
        temps.append(_new_temp_file(out_dir / WEIGHTS_FILE))
        write_weights(arrays, temps[0], layout)
        temps.append(_new_temp_file(out_dir / model_name))
        with open(temps[1], "wb") as fh:
            fh.write(template)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temps[0], out_dir / WEIGHTS_FILE)
        os.replace(temps[1], out_dir / model_name)
    finally:
        for temp in temps:
            temp.unlink(missing_ok=True)
    _fsync_folder(out_dir)
    return out_dir / model_name


# ------------------------------------------------------------------------- the model cache
def default_cache_dir() -> Path:
    """$DPOSE_CACHE, else ~/.cache/dpose."""
    env = os.environ.get(CACHE_ENV, "").strip()
    return Path(env).expanduser() if env else Path.home() / ".cache" / "dpose"


def _cache_folder(cache_dir: str | os.PathLike | None) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def cache_entry_dir(
    checkpoint_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None
) -> Path:
    """`<cache>/<sha256 of the checkpoint file, first 16 hex digits>`: one entry per checkpoint."""
    from .checkpoint import checkpoint_hash

    return _cache_folder(cache_dir) / checkpoint_hash(checkpoint_path)[:16]


def _stat_signature(path: Path) -> list[int]:
    """[inode, size, mtime, ctime] (ns): every write to the file changes mtime or ctime, and
    ctime cannot be set back by user tools, so an unchanged signature means unchanged bytes."""
    stat = path.stat()
    return [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns]


def _template_digest(template_path: str | os.PathLike) -> str:
    return hashlib.sha256(Path(template_path).read_bytes()).hexdigest()


@dataclass(frozen=True)
class CacheEntry:
    """One converted checkpoint in the cache and whether it can be used as it is."""

    path: Path
    problem: str | None  # why it cannot be used; None when every file matches the manifest
    size_bytes: int
    checkpoint_name: str | None  # file name of the checkpoint it was converted from

    @property
    def ok(self) -> bool:
        return self.problem is None


def _read_manifest(entry: Path) -> dict | None:
    try:
        manifest = json.loads((entry / MANIFEST_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def _manifest_problem(entry: Path, manifest: dict | None, template_digest: str) -> str | None:
    if manifest is None and (entry / _OLD_RELEASE_STAMP).is_file():
        return f"it was made by an older release (no {MANIFEST_FILE})"
    if manifest is None:
        return f"{MANIFEST_FILE} is missing or unreadable"
    if manifest.get("format") != MANIFEST_FORMAT:
        return f"{MANIFEST_FILE} has format {manifest.get('format')!r}, not {MANIFEST_FORMAT}"
    if manifest.get("template_sha256") != template_digest:
        return "it was made from another version of the network graph"
    if not str(manifest.get("checkpoint", {}).get("sha256", "")).startswith(entry.name):
        return f"{MANIFEST_FILE} names another checkpoint"
    files = manifest.get("files")
    if not isinstance(files, dict) or sorted(files) != sorted(_ENTRY_FILES):
        return f"{MANIFEST_FILE} does not list {' and '.join(_ENTRY_FILES)}"
    for name in _ENTRY_FILES:
        path, expected = entry / name, files[name]
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != expected.get("bytes"):
            return f"{name} has {size} bytes, the manifest says {expected.get('bytes')}"
    for name in _ENTRY_FILES:  # sizes first: a truncated file is found without reading it
        if _stat_signature(entry / name) == files[name].get("stat"):
            continue  # not written to since the build (any write changes mtime or ctime)
        if file_sha256(entry / name) != files[name].get("sha256"):
            return f"{name} does not match its sha256 in the manifest (overwritten or corrupted)"
    return None


def inspect_entry(entry: str | os.PathLike, template_path: str | os.PathLike = TEMPLATE_PATH
                  ) -> CacheEntry:  # fmt: skip
    """Check a cache entry against its manifest: made from this graph template, files present
    with the recorded sizes, and their sha256 as recorded. A file whose inode, size, mtime and
    ctime are still those recorded at the build has not been written since and is not re-read;
    any other (copied, touched, overwritten) is hashed: 0.2-0.7 s for the ~330 MB entry, once
    per process (bench/bench_model_cache.py).
    """
    entry = Path(entry)
    manifest = _read_manifest(entry)
    try:
        problem = _manifest_problem(entry, manifest, _template_digest(template_path))
    except OSError as exc:
        problem = f"cannot read it ({exc.strerror or exc})"
    except (AttributeError, TypeError):  # valid JSON, wrong structure
        problem = f"{MANIFEST_FILE} is malformed"
    size = sum(p.stat().st_size for p in entry.iterdir() if p.is_file()) if entry.is_dir() else 0
    checkpoint = (manifest or {}).get("checkpoint")
    name = checkpoint.get("name") if isinstance(checkpoint, dict) else None
    return CacheEntry(entry, problem, size, name if isinstance(name, str) else None)


def cached_runtime_model(
    checkpoint_path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    template_path: str | os.PathLike = TEMPLATE_PATH,
) -> Path | None:
    """The cached runtime model of this checkpoint if it is there and intact, else None.

    Also removes what killed builds left in the cache (see `remove_stale_leftovers`).
    """
    entry = cache_entry_dir(checkpoint_path, cache_dir)
    remove_stale_leftovers(entry.parent)
    if entry.is_dir() and inspect_entry(entry, template_path).ok:
        return entry / MODEL_FILE
    return None


# Leftover folders are named `<prefix><pid>@<host>-<random>` so a later run can tell whether
# their owner is still alive; a folder of another host is left for a day.
_FOREIGN_LEFTOVER_AGE_S = 24 * 3600


def _owner_tag() -> str:
    return f"{os.getpid()}@{socket.gethostname()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # no harmless probe there (signal 0 is CTRL_C_EVENT): assume alive
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftover_is_stale(folder: Path) -> bool:
    owner = folder.name.split("-", 1)[1] if "-" in folder.name else ""
    pid_text, _, host_and_tag = owner.partition("@")
    host = host_and_tag.rpartition("-")[0]
    if pid_text.isdigit() and host == socket.gethostname():
        return not _pid_alive(int(pid_text))
    try:
        return time.time() - folder.stat().st_mtime > _FOREIGN_LEFTOVER_AGE_S
    except OSError:
        return False


def leftover_folders(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Build and trash folders in the cache (live ones included)."""
    folder = _cache_folder(cache_dir)
    try:
        children = list(folder.iterdir())
    except OSError:
        return []
    return sorted(p for p in children if p.name.startswith(_LEFTOVER_PREFIXES) and p.is_dir())


def remove_stale_leftovers(cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Remove build/trash folders whose owner process is gone (a killed conversion leaves
    up to 330 MB); returns what was removed. Folders of running builds are kept."""
    removed = []
    for folder in leftover_folders(cache_dir):
        if _leftover_is_stale(folder):
            shutil.rmtree(folder, ignore_errors=True)
            if not folder.exists():
                removed.append(folder)
    return removed


@contextlib.contextmanager
def _exclusive_lock(lock_path: Path, on_wait: Callable[[], None]) -> Iterator[None]:
    """Hold an exclusive lock on `lock_path` (a separate file per checkpoint).

    Two processes (or threads) converting the same checkpoint take turns, and the second then
    finds the first one's entry. Where the file system cannot lock, the build goes on unlocked:
    every step is still an atomic rename, only the work may be done twice.
    """
    with open(lock_path, "a+b") as fh:
        if os.name == "nt":
            import msvcrt

            waited = False
            while True:
                try:
                    msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
                    break
                except OSError:
                    if not waited:
                        on_wait()
                        waited = True
                    time.sleep(0.5)
        else:
            import fcntl

            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                on_wait()
                fcntl.flock(fh, fcntl.LOCK_EX)
            except OSError as exc:
                log.debug("cannot lock %s (%s); building unlocked", lock_path, exc)
        yield  # the lock is released when the file is closed


@contextlib.contextmanager
def _termination_raises() -> Iterator[None]:
    """While a build runs in the main thread, SIGTERM/SIGHUP raise SystemExit(128 + signal)
    instead of killing the process outright, so `finally` removes the half-written folder.
    Handlers someone else installed are left alone; other threads cannot set handlers (a
    killed build there is removed by the next run, see `remove_stale_leftovers`)."""
    if threading.current_thread() is not threading.main_thread() or os.name == "nt":
        yield
        return

    def raise_exit(signum, _frame):
        raise SystemExit(128 + signum)

    replaced = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            replaced[sig] = signal.signal(sig, raise_exit)
    try:
        yield
    finally:
        for sig, previous in replaced.items():
            signal.signal(sig, previous)


def _write_manifest(folder: Path, checkpoint_path: Path, template_path) -> None:
    from .checkpoint import checkpoint_hash

    manifest = {
        "format": MANIFEST_FORMAT,
        "checkpoint": {"name": checkpoint_path.name, "sha256": checkpoint_hash(checkpoint_path),
                       "bytes": checkpoint_path.stat().st_size},
        "template_sha256": _template_digest(template_path),
        "files": {name: {"bytes": (folder / name).stat().st_size,
                         "sha256": file_sha256(folder / name),
                         "stat": _stat_signature(folder / name)} for name in _ENTRY_FILES},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }  # fmt: skip
    with open(folder / MANIFEST_FILE, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())


def _install_entry(arrays, entry: Path, checkpoint_path: Path, template_path) -> None:
    """Write the entry in `.build-<owner>` beside it, then rename it into place."""
    cache = entry.parent
    build = cache / f"{_BUILD_PREFIX}{_owner_tag()}"
    build.mkdir()
    try:
        with _termination_raises():
            write_runtime_model(arrays, build, template_path)
            _write_manifest(build, checkpoint_path, template_path)
            if entry.exists():  # damaged or outdated: move it aside in one step, then delete
                trash = cache / f"{_TRASH_PREFIX}{_owner_tag()}"
                os.replace(entry, trash)
                shutil.rmtree(trash, ignore_errors=True)
            try:
                os.replace(build, entry)
            except OSError:  # unlocked file system: a concurrent build may have won the race
                if not (entry.is_dir() and inspect_entry(entry, template_path).ok):
                    raise
            _fsync_folder(cache)
    finally:
        shutil.rmtree(build, ignore_errors=True)  # nothing left after a successful rename


def build_runtime_model(
    checkpoint_path: str | os.PathLike,
    cache_dir: str | os.PathLike | None = None,
    template_path: str | os.PathLike = TEMPLATE_PATH,
    arrays: Mapping[str, np.ndarray] | None = None,
    on_status: Callable[[str], None] | None = None,
) -> Path:
    """Checkpoint -> cached `<cache>/<hash[:16]>/model.onnx` (+ weights.bin, manifest.json).

    An intact entry is reused. A damaged one (a file missing, truncated or overwritten, or made
    from another graph template) is rebuilt, and build folders of killed runs are removed.
    Concurrent builds of one checkpoint take turns, and all of them succeed. `arrays`, when
    the caller already has them, must be `load_checkpoint_arrays(checkpoint_path)`.
    `on_status` gets one-line messages for the user (converting, rebuilding, waiting); without
    it they are logged as warnings of this module's logger, which the CLI prints as notes.
    """
    from .checkpoint import load_checkpoint_arrays, resolve_checkpoint

    checkpoint_path = resolve_checkpoint(checkpoint_path)
    say = on_status or log.warning
    cache = _cache_folder(cache_dir)
    entry = cache_entry_dir(checkpoint_path, cache)
    remove_stale_leftovers(cache)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = cache / f".{entry.name}{_LOCK_SUFFIX}"
        wait_note = f"Waiting for another process converting {checkpoint_path.name} into {entry}."
        with _exclusive_lock(lock, lambda: say(wait_note)):
            if entry.is_dir():
                state = inspect_entry(entry, template_path)
                if state.ok:
                    return entry / MODEL_FILE
                say(f"The converted model in {entry} is damaged ({state.problem}); rebuilding it.")
            say(
                f"Converting {checkpoint_path.name} for ONNX Runtime into {entry} "
                f"(about {_ENTRY_MB} MB, once per checkpoint; set {CACHE_ENV} to move it)."
            )
            if arrays is None:
                arrays = load_checkpoint_arrays(checkpoint_path)
            _install_entry(arrays, entry, checkpoint_path, template_path)
    except OSError as exc:
        raise DPoseError(
            f"Cannot write the ONNX model cache in {cache} ({exc.strerror or exc}); it needs "
            f"about {_ENTRY_MB} MB. Set {CACHE_ENV} to a writable folder with enough space."
        ) from exc
    return entry / MODEL_FILE


@dataclass(frozen=True)
class CacheReport:
    """What `dpose doctor` shows about the model cache."""

    folder: Path
    from_env: bool  # the folder came from $DPOSE_CACHE
    entries: tuple[CacheEntry, ...]
    leftovers: tuple[Path, ...]  # build/trash folders (of running or killed conversions)

    @property
    def state(self) -> str:
        """"empty", "ok" or "damaged" (at least one entry would be rebuilt on its next use)."""
        if not self.entries:
            return "empty"
        return "ok" if all(e.ok for e in self.entries) else "damaged"

    @property
    def size_bytes(self) -> int:
        return sum(e.size_bytes for e in self.entries)


def inspect_cache(
    cache_dir: str | os.PathLike | None = None, template_path: str | os.PathLike = TEMPLATE_PATH
) -> CacheReport:
    """Every converted checkpoint in the cache, checked against its manifest (reads them all)."""
    folder = _cache_folder(cache_dir)
    try:
        children = sorted(folder.iterdir()) if folder.is_dir() else []
    except OSError:
        children = []
    entries = tuple(
        inspect_entry(p, template_path) for p in children
        if p.is_dir() and len(p.name) == 16 and all(c in "0123456789abcdef" for c in p.name)
    )  # fmt: skip
    from_env = cache_dir is None and bool(os.environ.get(CACHE_ENV, "").strip())
    return CacheReport(folder, from_env, entries, tuple(leftover_folders(folder)))
