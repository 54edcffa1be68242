"""Farm chunks: the raw per-frame solves of part of a shot, and their seamless merge.

A farm splits a long shot into chunks of source frames solved on different machines. Each
chunk also solves `overlap` frames before its own range (its warm-up): the person finder and
tracker settle there, and the merge uses those frames, solved twice, to tell which track of
one chunk is which of the next. Chunk files hold only raw solves (no smoothing, no gap
filling, no body-shape averaging): all of that runs once over the merged shot, so the result
does not depend on where the seams fall. Files are written deterministically (fixed zip
timestamps, no wall-clock values) so farm retries reproduce them byte for byte.
See docs/farm.md.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic_io import atomic_write
from .constants import NUM_PART_CLASSES
from .errors import DPoseError
from .rotations import matrix_to_quaternion
from .sequence import RawTrack
from .skeleton import NUM_BETAS, NUM_PREDICTED_JOINTS
from .tracking import box_iou, linear_sum_assignment

CHUNK_FORMAT = "dpose-chunk-1"
INPUT_HASH_BYTES = 1 << 20  # the input is identified by its size and its first MiB
MIN_SEAM_IOU = 0.3  # mean box overlap over the shared frames for two tracks to be one person
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # zip entries carry no wall-clock time
_TRACK_ARRAYS = {"frames": ((), np.int64), "rotmats": ((NUM_PREDICTED_JOINTS, 3, 3), np.float32),
                 "cam_t": ((3,), np.float32), "betas": ((NUM_BETAS,), np.float32),
                 "boxes": ((4,), np.float32), "focal": ((2,), np.float32),
                 "principal": ((2,), np.float32), "confidence": ((), np.float32),
                 "part_iou": ((NUM_PART_CLASSES,), np.float32),
                 "silhouette_iou": ((), np.float32), "feet_seen": ((4,), np.float32),
                 "foot_map_depth": ((4,), np.float32)}
# Columns a chunk written before they existed lacks: read as NaN (not scored, unknown).
_OPTIONAL_TRACK_ARRAYS = ("part_iou", "silhouette_iou", "feet_seen", "foot_map_depth")


class ChunkError(DPoseError):
    """Chunk files that cannot be read or merged (wrong file, mixed runs, missing frames)."""


@dataclass
class ChunkSolve:
    """What one solve task produced for source frames [own_start, own_end)."""

    own_start: int
    own_end: int
    frames: np.ndarray  # (m,) every source frame processed, warm-up included, in order
    fps: float
    image_size: np.ndarray  # (2,) w, h
    provenance: dict  # checkpoint, solve options, input identity: must agree across chunks
    source: str = ""  # the footage's path on the solving machine (for the merged scene)
    source_kind: str = "video"  # "video" or "folder"
    tracks: list[RawTrack] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)  # (source frame, message)


def input_identity(path: str | os.PathLike) -> dict:
    """Size and SHA-256 of the first MiB of a video; for a folder, of its listing and first file.

    Cheap enough for every task, and enough to refuse chunks solved from different footage.
    """
    path = Path(path)
    digest = hashlib.sha256()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file())
        size = 0
        for p in files:
            size += p.stat().st_size
            digest.update(f"{p.name}:{p.stat().st_size}\n".encode())
        first = files[0] if files else None
    else:
        size = path.stat().st_size
        first = path
    if first is not None:
        with open(first, "rb") as fh:
            digest.update(fh.read(INPUT_HASH_BYTES))
    return {"name": path.name, "size": size, "sha256_first_mib": digest.hexdigest()}


# ---------------------------------------------------------------------------- files
def write_chunk(path: str | os.PathLike, chunk: ChunkSolve) -> Path:
    """Write a chunk file atomically; the same chunk always gives the same bytes."""
    arrays = {
        "format": np.array(CHUNK_FORMAT),
        "own_range": np.array([chunk.own_start, chunk.own_end], np.int64),
        "frames": np.asarray(chunk.frames, np.int64),
        "fps": np.array(float(chunk.fps)),
        "image_size": np.asarray(chunk.image_size, np.float64),
        "provenance": np.array(json.dumps(chunk.provenance, sort_keys=True)),
        "failures": np.array(json.dumps(chunk.failures)),
        "source": np.array(json.dumps([chunk.source, chunk.source_kind])),
        "num_tracks": np.array(len(chunk.tracks), np.int64),
    }
    for k, track in enumerate(chunk.tracks):
        for name, (shape, dtype) in _TRACK_ARRAYS.items():
            arrays[f"track{k}_{name}"] = np.asarray(getattr(track, name), dtype).reshape(
                (len(track),) + shape)
    path = Path(path)
    with atomic_write(path) as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, arrays[name], allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())
    return path


def read_chunk(path: str | os.PathLike) -> ChunkSolve:
    """Read a chunk file (never unpickling); ChunkError naming the file when it is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            if "format" not in data.files or str(data["format"]) != CHUNK_FORMAT:
                raise ChunkError(f"{path} is not a D-PoSE chunk file (write chunks with "
                                 "dpose estimate ... --chunk-overlap K -o chunk.npz).")
            own = data["own_range"]
            source, source_kind = json.loads(str(data["source"]))
            tracks = []
            for k in range(int(data["num_tracks"])):
                tracks.append(RawTrack(**{
                    name: data[f"track{k}_{name}"].astype(dtype if name == "frames" else np.float32)
                    for name, (_, dtype) in _TRACK_ARRAYS.items()
                    if name not in _OPTIONAL_TRACK_ARRAYS or f"track{k}_{name}" in data.files}))
            return ChunkSolve(
                own_start=int(own[0]), own_end=int(own[1]), frames=data["frames"].astype(np.int64),
                fps=float(data["fps"]), image_size=data["image_size"].astype(np.float64),
                provenance=json.loads(str(data["provenance"])), source=source,
                source_kind=source_kind,
                failures=[(int(f), str(m)) for f, m in json.loads(str(data["failures"]))],
                tracks=tracks)
    except ChunkError:
        raise
    except FileNotFoundError as exc:
        raise ChunkError(f"Chunk file {path} does not exist.") from exc
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise ChunkError(f"{path} is damaged or not a D-PoSE chunk file ({exc}).") from exc


# ---------------------------------------------------------------------------- merge
@dataclass
class MergedSolve:
    """Raw solves of the whole shot: global tracks, every frame's place, the gaps filled."""

    frames: np.ndarray  # (m,) source frames of the shot in order, gap frames included
    fps: float
    image_size: np.ndarray
    provenance: dict
    source: str
    source_kind: str
    tracks: list[RawTrack]
    failures: list[tuple[int, str]]
    gaps: list[tuple[int, int]]  # [start, end) source frame ranges no chunk solved


def merge_chunks(chunks: list[ChunkSolve], *, frames: tuple[int, int] | None = None,
                 allow_gaps: bool = False, names: list[str] | None = None) -> MergedSolve:
    """Join chunks into one shot: same provenance, contiguous ranges, tracks matched at seams.

    frames: the (first, last) source frames the shot must cover, inclusive; chunks missing
    at its ends count as gaps too. A gap is a ChunkError naming its frame range, unless
    allow_gaps, when its frames join the shot unsolved (filled and flagged downstream).
    """
    if not chunks:
        raise ChunkError("No chunk files to merge.")
    names = names or [f"chunk {k}" for k in range(len(chunks))]
    _check_same_run(chunks, names)
    order = sorted(range(len(chunks)), key=lambda k: chunks[k].own_start)
    chunks = [chunks[k] for k in order]
    names = [names[k] for k in order]
    gaps = _find_gaps(chunks, names, frames)
    if gaps and not allow_gaps:
        listed = ", ".join(f"{a}-{b - 1}" for a, b in gaps)
        raise ChunkError(f"No chunk covers source frames {listed}: re-run the missing solve "
                         "task(s), or merge with --allow-gaps to fill and flag them.")

    shot_frames: list[np.ndarray] = []
    failures: list[tuple[int, str]] = []
    merged: list[list[RawTrack]] = []  # global track -> its pieces, in frame order
    for chunk in chunks:
        own = (chunk.frames >= chunk.own_start) & (chunk.frames < chunk.own_end)
        shot_frames.append(chunk.frames[own])
        failures += [(f, m) for f, m in chunk.failures if chunk.own_start <= f < chunk.own_end]
        local = [t for t in chunk.tracks
                 if np.any((t.frames >= chunk.own_start) & (t.frames < chunk.own_end))]
        matches = _match_at_seam(merged, local, chunk.own_start)
        for k, track in enumerate(local):
            piece = track.rows((track.frames >= chunk.own_start) & (track.frames < chunk.own_end))
            if k in matches:
                merged[matches[k]].append(piece)
            else:
                merged.append([piece])
    for a, b in gaps:  # unsolved frames keep their place in the shot
        step = _frame_step(chunks)
        shot_frames.append(np.arange(a, b, step, dtype=np.int64))
    all_frames = np.unique(np.concatenate(shot_frames))
    first = chunks[0]
    return MergedSolve(frames=all_frames, fps=first.fps, image_size=first.image_size,
                       provenance=first.provenance, source=first.source,
                       source_kind=first.source_kind,
                       tracks=[RawTrack.concatenate(p) for p in merged],
                       failures=sorted(failures), gaps=gaps)


def _check_same_run(chunks: list[ChunkSolve], names: list[str]) -> None:
    reference = chunks[0].provenance
    for chunk, name in zip(chunks[1:], names[1:], strict=True):
        for key in sorted(set(reference) | set(chunk.provenance)):
            if reference.get(key) != chunk.provenance.get(key):
                raise ChunkError(
                    f"{name} and {names[0]} come from different runs ({key}: "
                    f"{_short(chunk.provenance.get(key))} vs {_short(reference.get(key))}); "
                    "solve every chunk with the same checkpoint, options and input.")


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 80 else text[:77] + "..."


def _frame_step(chunks: list[ChunkSolve]) -> int:
    steps = [np.diff(c.frames) for c in chunks if len(c.frames) > 1]
    return int(np.min(np.concatenate(steps))) if steps else 1


def _find_gaps(chunks: list[ChunkSolve], names: list[str],
               frames: tuple[int, int] | None) -> list[tuple[int, int]]:
    gaps = []
    if frames is not None and chunks[0].own_start > frames[0]:
        gaps.append((frames[0], chunks[0].own_start))
    for k in range(len(chunks) - 1):
        (a, name_a), (b, name_b) = (chunks[k], names[k]), (chunks[k + 1], names[k + 1])
        if b.own_start < a.own_end:
            raise ChunkError(f"{name_a} (frames {a.own_start}-{a.own_end - 1}) and {name_b} "
                             f"(frames {b.own_start}-{b.own_end - 1}) overlap: they come from "
                             "different chunkings; merge the chunks of one job only.")
        if b.own_start > a.own_end:
            gaps.append((a.own_end, b.own_start))
    if frames is not None and chunks[-1].own_end < frames[1] + 1:
        gaps.append((chunks[-1].own_end, frames[1] + 1))
    return gaps


def _match_at_seam(merged: list[list[RawTrack]], local: list[RawTrack],
                   seam: int) -> dict[int, int]:
    """local track index -> global track index, by boxes and poses on the frames solved twice.

    Each chunk re-solves the frames just before its seam (its warm-up) that the previous
    chunk owns; a person is the same on both sides when the two tracks' boxes overlap over
    those frames. The cost is one minus the mean IoU plus the mean joint-rotation angle over
    pi, so two people whose boxes cross at the seam are still told apart by their poses.
    Without shared frames (no overlap, or a gap), the last box before the seam, moved on at
    its velocity, is compared with the first box after it.
    """
    if not merged or not local:
        return {}
    ends = [pieces[-1] for pieces in merged]
    cost = np.full((len(ends), len(local)), 10.0)
    for g, before in enumerate(ends):
        for k, after in enumerate(local):
            common, ib, ia = np.intersect1d(before.frames, after.frames, return_indices=True)
            if len(common):
                iou = np.diag(box_iou(before.boxes[ib], after.boxes[ia])).mean()
            else:  # no frame solved twice: carry the last box across at its velocity
                ib = np.array([len(before) - 1])
                ia = np.nonzero(after.frames >= seam)[0][:1]
                iou = box_iou(_predict_box(before, after.frames[ia[0]]), after.boxes[ia])[0, 0]
            if iou < MIN_SEAM_IOU:
                continue
            cost[g, k] = 1.0 - iou + _pose_angle(before.rotmats[ib], after.rotmats[ia]) / np.pi
    rows, cols = linear_sum_assignment(cost)
    return {int(k): int(g) for g, k in zip(rows, cols, strict=True) if cost[g, k] < 10.0}


def _predict_box(track: RawTrack, frame: int, history: int = 5) -> np.ndarray:
    """The track's box at `frame`, moved on at its velocity over its last few rows."""
    boxes, frames = track.boxes[-history:].astype(np.float64), track.frames[-history:]
    if len(frames) < 2:
        return boxes[-1]
    velocity = (boxes[-1] - boxes[0]) / (frames[-1] - frames[0])
    return boxes[-1] + velocity * (frame - frames[-1])


def _pose_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Mean geodesic angle (radians) between two sequences of joint rotations."""
    qa = matrix_to_quaternion(a.astype(np.float64))
    qb = matrix_to_quaternion(b.astype(np.float64))
    dot = np.abs(np.sum(qa * qb, axis=-1)).clip(0.0, 1.0)
    return float(np.mean(2.0 * np.arccos(dot)))
