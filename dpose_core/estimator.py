"""Image + person boxes -> SMPL-X pose, shape and camera: the one entry point for inference.

The network runs on ONNX Runtime by default (no torch needed; the runtime model is built from
the checkpoint and cached, see `onnx_model`) or on torch when asked. Everything around the
network -- cropping, CLIFF box features, full-image translation, SMPL-X joints, projection --
is numpy and identical for both backends. Unlike the reference, each crop keeps its own focal
length, so a batch may mix image sizes (docs/camera.md#focal-length).

`.backend` and `.device` say what really runs: a CUDA request on a machine without CUDA falls
back to the CPU, and the reason is logged and kept in `.notes`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from . import camera, preprocess
from .body_model import BODY_MODEL_PREFIX, BodyModel
from .checkpoint import load_checkpoint_arrays, resolve_checkpoint
from .constants import CROP_SIZE, NUM_PART_CLASSES
from .errors import DPoseError, FrameError
from .rotations import matrix_to_axis_angle

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 8
_BACKENDS = ("auto", "onnx", "torch")
_DEVICES = ("auto", "cpu", "cuda")
_CUDA_EP = "CUDAExecutionProvider"
_CPU_EP = "CPUExecutionProvider"
# Estimate fields with one value per crop pixel: too big for JSON summaries.
DENSE_FIELDS = ("depth", "part_logits", "part_labels")


@dataclass
class Estimate:
    """Per-crop results (leading axis = crop). Frames: OpenCV camera, metres, pixels.

    rotmats (B,22,3,3) local SMPL-X rotations, 0 = camera-frame global orientation;
    pose_axis_angle (B,22,3); betas (B,11); cam_crop (B,3) weak-perspective (s, tx, ty) of the
    224 crop; cam_t (B,3) camera-frame translation (vertices + cam_t = camera-frame mesh);
    focal_px (B,2) (fx, fy); principal_point (B,2); joints3d (B,127,3) untranslated SMPL-X
    joints; joints2d (B,127,2) full-image pixels; depth (B,224,224) in (0,1);
    part_logits (B,23,224,224); part_labels (B,224,224) uint8 argmax; crop_box (B,4) xyxy of
    the square crop; box_center (B,2); box_scale (B,) = side/200; image_size (B,2) (w,h);
    image_index (B,) which input image each crop came from.
    """

    rotmats: np.ndarray
    pose_axis_angle: np.ndarray
    betas: np.ndarray
    cam_crop: np.ndarray
    cam_t: np.ndarray
    focal_px: np.ndarray
    principal_point: np.ndarray
    joints3d: np.ndarray
    joints2d: np.ndarray
    depth: np.ndarray
    part_logits: np.ndarray
    part_labels: np.ndarray
    crop_box: np.ndarray
    box_center: np.ndarray
    box_scale: np.ndarray
    image_size: np.ndarray
    image_index: np.ndarray

    def __len__(self) -> int:
        return len(self.rotmats)

    def to_dict(self, dense: bool = True) -> dict[str, np.ndarray]:
        """Field name -> array; without the per-pixel maps when `dense` is False."""
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if dense or f.name not in DENSE_FIELDS
        }

    def select(self, index) -> Estimate:
        """The crops picked by `index` (int array, slice or bool mask), as a new Estimate."""
        if isinstance(index, int | np.integer):
            index = [int(index)]
        return Estimate(**{f.name: getattr(self, f.name)[index] for f in fields(self)})


def physical_cores() -> int | None:
    """Physical CPU cores, or None when unknown (ONNX Runtime then picks them itself).

    One intra-op thread per physical core is fastest; hyper-threads only add contention.
    """
    try:
        import psutil  # optional

        count = psutil.cpu_count(logical=False)
        if count:
            return int(count)
    except ImportError:
        pass
    try:
        with open("/proc/cpuinfo") as fh:
            text = fh.read()
    except OSError:
        return None
    cores = set()
    for block in text.split("\n\n"):
        fields_ = dict(
            (k.strip(), v.strip()) for k, _, v in (ln.partition(":") for ln in block.splitlines())
        )
        if "core id" in fields_:
            cores.add((fields_.get("physical id"), fields_["core id"]))
    if not cores:
        return None
    try:  # a container may be allowed fewer CPUs than the host has
        return max(1, min(len(cores), len(os.sched_getaffinity(0))))
    except (AttributeError, OSError):
        return len(cores)


class _OnnxRunner:
    """ONNX Runtime session on the best provider that really works."""

    backend = "onnxruntime"

    def __init__(self, model_path: Path, device: str, notes: list[str], threads: int | None):
        import onnxruntime as ort

        available = ort.get_available_providers()
        providers = [_CPU_EP]
        if device in ("auto", "cuda"):
            if _CUDA_EP in available:
                providers = [_CUDA_EP, _CPU_EP]
            elif device == "cuda":
                notes.append(
                    "CUDA was requested but this onnxruntime has no CUDAExecutionProvider "
                    f"(available: {', '.join(available)}); running on the CPU. Install "
                    "onnxruntime-gpu with a matching CUDA to use the GPU."
                )
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or physical_cores() or 0  # 0: ORT decides
        options.log_severity_level = 3  # errors only: provider fallbacks are reported below
        # Idle worker threads sleep instead of spinning: after `run` returns, spinning threads
        # keep the cores busy while the crop, joints and finder need them (bench/README.md).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_path), options, providers=providers)
        used = self.session.get_providers()
        self.device = used[0] if used else _CPU_EP
        if providers[0] == _CUDA_EP and self.device != _CUDA_EP:
            notes.append(
                "CUDAExecutionProvider is installed but could not start (missing CUDA/cuDNN "
                "libraries?); running on the CPU."
            )
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, images: np.ndarray, bbox_info: np.ndarray) -> list[np.ndarray]:
        return self.session.run(None, {"images": images, "bbox_info": bbox_info})


class _TorchRunner:
    """The PyTorch network (eager), for comparison and export."""

    backend = "torch"

    def __init__(self, arrays: dict, device: str, notes: list[str]):
        import torch

        from .network import build_network

        want_cuda = device in ("auto", "cuda")
        if want_cuda and torch.cuda.is_available():
            target = "cuda:0"
        else:
            target = "cpu"
            if device == "cuda":
                notes.append(
                    "CUDA was requested but torch.cuda.is_available() is False "
                    f"(torch {torch.__version__}); running on the CPU."
                )
        self._torch = torch
        self.net = build_network(arrays, device=target)
        self.device = target

    def run(self, images: np.ndarray, bbox_info: np.ndarray) -> list[np.ndarray]:
        torch = self._torch
        with torch.inference_mode():
            outputs = self.net(
                torch.from_numpy(images).to(self.device),
                torch.from_numpy(bbox_info).to(self.device),
            )
        return [o.float().cpu().numpy() for o in outputs]


def _torch_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


def _onnxruntime_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("onnxruntime") is not None


class Estimator:
    """D-PoSE on images: `estimate(image, boxes)` / `estimate_batch(images, boxes_per_image)`.

    checkpoint: path to paper_arxiv.ckpt (None: $DPOSE_CHECKPOINT or the default location).
    backend: "auto" (ONNX Runtime, torch if onnxruntime is missing), "onnx" or "torch".
    device: "auto" (GPU when usable), "cpu" or "cuda" (falls back to the CPU with a note).
    cache_dir: where the ONNX runtime model is cached (default `onnx_model.default_cache_dir`).
    body_model: a BodyModel or an SMPL-X model file; default: the checkpoint's own buffers.
    """

    def __init__(
        self,
        checkpoint: str | os.PathLike | None = None,
        backend: str = "auto",
        device: str = "auto",
        cache_dir: str | os.PathLike | None = None,
        body_model: BodyModel | str | os.PathLike | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        threads: int | None = None,
    ) -> None:
        if backend not in _BACKENDS:
            raise DPoseError(f"Unknown backend {backend!r}; use one of {', '.join(_BACKENDS)}.")
        if device not in _DEVICES:
            raise DPoseError(f"Unknown device {device!r}; use one of {', '.join(_DEVICES)}.")
        if max_batch < 1:
            raise DPoseError(f"max_batch must be at least 1, got {max_batch}.")
        self.checkpoint_path = resolve_checkpoint(checkpoint)
        self.max_batch = int(max_batch)
        self.notes: list[str] = []
        self._arrays: dict[str, np.ndarray] | None = None
        if backend == "auto":
            backend = "onnx" if _onnxruntime_installed() else "torch"
            if backend == "torch" and not _torch_installed():
                raise DPoseError(
                    "Neither onnxruntime nor torch is installed; install onnxruntime "
                    "(pip install onnxruntime)."
                )
        if backend == "onnx":
            if not _onnxruntime_installed():
                raise DPoseError("The ONNX backend needs onnxruntime: pip install onnxruntime.")
            from .onnx_model import build_runtime_model, cached_runtime_model

            model_path = cached_runtime_model(self.checkpoint_path, cache_dir)
            if model_path is None:
                model_path = build_runtime_model(
                    self.checkpoint_path, cache_dir, arrays=self._checkpoint_arrays()
                )
            self.model_path: Path | None = model_path
            self._runner: _OnnxRunner | _TorchRunner = _OnnxRunner(
                model_path, device, self.notes, threads
            )
        else:
            if not _torch_installed():
                raise DPoseError(
                    "The torch backend needs PyTorch (pip install torch); or use backend='onnx'."
                )
            self.model_path = None
            self._runner = _TorchRunner(self._checkpoint_arrays(), device, self.notes)
        for note in self.notes:
            log.warning(note)
        self._body_model_source = body_model
        self._body_model: BodyModel | None = None

    # ------------------------------------------------------------------ properties
    @property
    def backend(self) -> str:
        """"onnxruntime" or "torch"."""
        return self._runner.backend

    @property
    def device(self) -> str:
        """What really runs: an ONNX Runtime provider name, or a torch device ("cpu", "cuda:0")."""
        return self._runner.device

    @property
    def body_model(self) -> BodyModel:
        """SMPL-X model for joints: the given one, else the checkpoint's own buffers."""
        if self._body_model is None:
            source = self._body_model_source
            if isinstance(source, BodyModel):
                self._body_model = source
            elif source is not None:
                self._body_model = BodyModel.load(source)
            else:
                arrays = self._arrays or load_checkpoint_arrays(self.checkpoint_path,
                                                                only=BODY_MODEL_PREFIX)
                self._body_model = BodyModel.from_arrays(arrays, prefix=BODY_MODEL_PREFIX)
                self._arrays = None  # the network weights are no longer needed in memory
        return self._body_model

    def _checkpoint_arrays(self) -> dict[str, np.ndarray]:
        if self._arrays is None:
            self._arrays = load_checkpoint_arrays(self.checkpoint_path)
        return self._arrays

    # ------------------------------------------------------------------ low level
    def run_crops(self, crops: np.ndarray, bbox_info: np.ndarray) -> dict[str, np.ndarray]:
        """Network only: normalised crops (B,3,224,224), CLIFF bbox_info (B,3) -> outputs.

        Keys rotmat (B,22,3,3), betas (B,11), cam_crop (B,3), depth (B,224,224),
        part_logits (B,23,224,224), all float32; runs in chunks of `max_batch`.
        """
        crops = np.ascontiguousarray(crops, dtype=np.float32)
        bbox_info = np.ascontiguousarray(bbox_info, dtype=np.float32)
        if crops.ndim != 4 or crops.shape[1:] != (3, CROP_SIZE, CROP_SIZE):
            raise FrameError(f"crops must be (B, 3, {CROP_SIZE}, {CROP_SIZE}), got {crops.shape}")
        if bbox_info.shape != (len(crops), 3):
            raise FrameError(f"bbox_info must be ({len(crops)}, 3), got {bbox_info.shape}")
        names = ("rotmat", "betas", "cam_crop", "depth", "part_logits")
        if len(crops) == 0:
            empty = {
                "rotmat": (0, 22, 3, 3),
                "betas": (0, 11),
                "cam_crop": (0, 3),
                "depth": (0, CROP_SIZE, CROP_SIZE),
                "part_logits": (0, NUM_PART_CLASSES, CROP_SIZE, CROP_SIZE),
            }
            return {k: np.zeros(s, dtype=np.float32) for k, s in empty.items()}
        chunks = [
            self._runner.run(crops[i : i + self.max_batch], bbox_info[i : i + self.max_batch])
            for i in range(0, len(crops), self.max_batch)
        ]
        if len(chunks) == 1:  # no copy: the logits alone are 4.6 MB per crop
            return dict(zip(names, chunks[0], strict=True))
        return {
            name: np.concatenate([c[k] for c in chunks], axis=0) for k, name in enumerate(names)
        }

    # ------------------------------------------------------------------ high level
    def estimate(self, image_rgb: np.ndarray, boxes, focal_px=None) -> Estimate:
        """One image (H,W,3) uint8 RGB, boxes (K,4) xyxy px -> Estimate with K crops.

        focal_px: None (image diagonal, as the reference), a number, or (fx, fy).
        """
        return self.estimate_batch([image_rgb], [boxes], None if focal_px is None else [focal_px])

    def estimate_batch(
        self, images: Sequence[np.ndarray], boxes_per_image: Sequence, focal_px=None
    ) -> Estimate:
        """Crops of several images in one network batch; `Estimate.image_index` maps them back.

        focal_px: None, one value for all images, or a sequence with one entry (number or
        (fx, fy)) per image. Every crop uses its own image's size and focal length.
        """
        if len(images) != len(boxes_per_image):
            raise FrameError(f"{len(images)} images but {len(boxes_per_image)} box lists.")
        focal_list = _focal_per_image(focal_px, len(images))
        # Each list starts with an empty block so that zero images/boxes concatenate cleanly.
        crops = [np.zeros((0, CROP_SIZE, CROP_SIZE, 3), dtype=np.float32)]
        centres, sizes, focals = [np.zeros((0, 2))], [np.zeros((0, 2))], [np.zeros((0, 2))]
        scales, index = [np.zeros(0)], [np.zeros(0, dtype=np.int64)]
        for i, (image, boxes) in enumerate(zip(images, boxes_per_image, strict=True)):
            image = _check_image(image)
            c, ctr, sc = preprocess.prepare_crops(image, boxes)
            h, w = image.shape[:2]
            f = focal_list[i]
            if f is None:
                f = camera.default_focal_px(np.array([[w, h]], dtype=np.float64))[0]
            crops.append(c)
            centres.append(ctr)
            scales.append(sc)
            sizes.append(np.tile(np.array([w, h], dtype=np.float64), (len(c), 1)))
            focals.append(np.tile(f, (len(c), 1)))
            index.append(np.full(len(c), i, dtype=np.int64))
        crops_all = np.concatenate(crops)
        centre, scale = np.concatenate(centres), np.concatenate(scales)
        size, focal = np.concatenate(sizes), np.concatenate(focals)
        image_index = np.concatenate(index)
        info = camera.bbox_info(centre, scale, size, focal)
        out = self.run_crops(preprocess.normalize_crops(crops_all), info)
        return self._assemble(out, centre, scale, size, focal, image_index)

    def _assemble(self, out, centre, scale, size, focal, image_index) -> Estimate:
        rotmats = out["rotmat"]
        betas = out["betas"]
        cam_t = camera.crop_cam_to_full_translation(out["cam_crop"], centre, scale, size, focal)
        principal = camera.principal_point(size)
        if len(rotmats):
            joints3d = self.body_model.forward(
                rotmats.astype(np.float64), betas.astype(np.float64), return_vertices=False
            ).joints
        else:
            joints3d = np.zeros((0, 127, 3))
        joints2d = camera.project(joints3d, cam_t, focal, principal)
        crop_boxes = np.array(
            [preprocess.crop_box(c, s) for c, s in zip(centre, scale, strict=True)]
        )
        return Estimate(
            rotmats=rotmats,
            pose_axis_angle=matrix_to_axis_angle(rotmats.astype(np.float64)),
            betas=betas,
            cam_crop=out["cam_crop"],
            cam_t=cam_t,
            focal_px=focal,
            principal_point=principal,
            joints3d=joints3d,
            joints2d=joints2d,
            depth=out["depth"],
            part_logits=out["part_logits"],
            part_labels=part_labels(out["part_logits"]),
            crop_box=crop_boxes.reshape(-1, 4),
            box_center=centre,
            box_scale=scale,
            image_size=size,
            image_index=image_index,
        )


def part_labels(part_logits: np.ndarray) -> np.ndarray:
    """(B, 23, H, W) logits -> (B, H, W) uint8 argmax over the classes, ties to the lower class.

    Equal to np.argmax(part_logits, axis=1) (NaN counts as the largest, as there), ~2.5x
    faster: a running maximum over the 23 contiguous class planes instead of numpy's
    argmax along a strided axis.
    """
    logits = np.asarray(part_logits)
    labels = np.zeros((logits.shape[0], *logits.shape[2:]), np.uint8)
    for i, planes in enumerate(logits):
        best = planes[0].copy()
        better = np.empty(best.shape, bool)
        for c in range(1, len(planes)):
            np.greater(planes[c], best, out=better)
            np.putmask(labels[i], better, c)
            np.maximum(best, planes[c], out=best)
        if np.isnan(best).any():  # a NaN plane: np.argmax's rule (first NaN) applies
            labels[i] = np.argmax(planes, axis=0)
    return labels


def _check_image(image) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise FrameError(
            f"Expected an (H, W, 3) uint8 RGB image, got shape {image.shape} {image.dtype}."
        )
    return image


def _focal_per_image(focal_px, n_images: int) -> list[np.ndarray | None]:
    """None | number | (fx, fy) | per-image sequence -> one (2,) array (or None) per image."""
    if focal_px is None:
        return [None] * n_images
    if isinstance(focal_px, int | float | np.number) or (
        isinstance(focal_px, np.ndarray) and focal_px.ndim == 0
    ):  # not np.ndim: it fails on a ragged list such as [None, (fx, fy)]
        focal_px = [focal_px] * n_images
    if len(focal_px) != n_images:
        raise DPoseError(f"focal_px has {len(focal_px)} entries for {n_images} images.")
    result = []
    for f in focal_px:
        if f is None:
            result.append(None)
            continue
        f = np.asarray(f, dtype=np.float64).reshape(-1)
        if f.size == 1:
            f = np.repeat(f, 2)
        if f.shape != (2,) or np.any(f <= 0) or not np.all(np.isfinite(f)):
            raise DPoseError(f"focal_px must be positive (f or (fx, fy)) pixels, got {f}.")
        result.append(f)
    return result
