"""Atomic file writes: a failed run never leaves a damaged or half-written file behind.

Data goes to a temp file with a unique name in the target's own folder (so two runs writing
the same output never share one), is flushed and fsynced, then renamed over the target
(`os.replace` is atomic on one file system). On any failure (a full disk, an exception, a
Ctrl-C) the temp file is removed and the old file, if any, is left byte for byte as it was.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

import numpy as np

from .errors import DPoseError

TEMP_SUFFIX = ".dpose-tmp"
_DEFAULT_UMASK = 0o022


class OutputError(DPoseError):
    """An output file could not be written; the old file is untouched."""


def _umask() -> int:
    """The process umask without changing it (os.umask would, racing other threads)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _DEFAULT_UMASK


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (POSIX; Windows has no directory handles for this)."""
    if os.name != "posix":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb",
                 encoding: str | None = None) -> Iterator[IO]:
    """Open a temp file beside `path` for writing; on success it replaces `path` atomically.

    Raises OutputError (one line, with the reason) when the file cannot be written; the temp
    file is removed and an existing `path` is not touched. The new file gets the old file's
    permissions, or the usual ones (0666 less the umask) for a new file.
    """
    if "w" not in mode:
        raise ValueError(f"atomic_write writes whole files; mode must contain 'w', got {mode!r}")
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=TEMP_SUFFIX)
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror or exc}.") from exc
    tmp = Path(tmp_name)
    try:
        try:
            os.fchmod(fd, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        except (OSError, AttributeError):  # no fchmod on Windows; permissions stay default
            pass
        with os.fdopen(fd, mode, encoding=encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        if isinstance(exc, OSError):
            raise OutputError(f"Cannot write {path}: {exc.strerror or exc}; the old file, if "
                              "any, is unchanged.") from exc
        raise
    _fsync_folder(folder)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A fresh temp file name beside `path` (same suffix) for writers that take a file name
    (Blender's exporters); after the body it is fsynced and renamed over `path`.

    OutputError when the writer left nothing (or an empty file) or the rename fails; the temp
    file is removed on any failure and an existing `path` is not touched.
    """
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    try:
        fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{path.stem}.",
                                        suffix=f"{TEMP_SUFFIX}{path.suffix}")
        os.close(fd)
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror or exc}.") from exc
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise OutputError(f"Nothing was written for {path.name}; the old file, if any, "
                              "is unchanged.")
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"Cannot write {path}: {exc.strerror or exc}; the old file, if any, "
                          "is unchanged.") from exc
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_folder(folder)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically (OutputError on failure)."""
    with atomic_write(path, "wb") as fh:
        fh.write(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """Write `text` to `path` atomically (OutputError on failure)."""
    with atomic_write(path, "w", encoding=encoding) as fh:
        fh.write(text)
    return Path(path)


def write_npz(path: str | os.PathLike, arrays: dict[str, np.ndarray], *,
              compressed: bool = False) -> Path:
    """np.savez / np.savez_compressed, atomically and never with pickled objects inside.

    The zip is closed on every path, so a failed write leaves nothing open behind it.
    """
    compression = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with atomic_write(path, "wb") as fh:
        with zipfile.ZipFile(fh, mode="w", compression=compression, allowZip64=True) as archive:
            for key, value in arrays.items():
                with archive.open(f"{key}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(value), allow_pickle=False)
    return Path(path)


def check_writable(path: str | os.PathLike) -> None:
    """OutputError now, before any work, when `path` cannot be written (a folder, a missing
    or read-only parent folder). Tries a real file: os.access says yes to root and on
    read-only mounts."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"Cannot write {path}: it is a folder; choose another output name.")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise OutputError(f"Cannot write {path}: the folder {folder} does not exist.")
    try:
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".dpose-write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"Cannot write in {folder} ({exc.strerror or exc}); choose another "
                          "output.") from exc
