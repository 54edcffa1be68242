"""One image -> posed SMPL-X rigs, a matching camera with the image behind it, a depth relief.

Two halves, so the network can run off the main thread: ``estimate_image`` (plain numpy, no
Blender data: safe in a worker) finds the people, runs D-PoSE and returns an ``ImageResult``;
``apply_image_result`` (main thread) turns it into Blender objects and stamps provenance.
``estimate_pose_from_image`` does both for scripts and ``execute()``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class ImageSettings:
    """What the image operator needs; the panel and headless both fill it."""

    image_path: str
    person: str | int = "all"  # "all", "largest" or an index into people sorted by box area
    fov_deg: float | None = None  # None: focal = image diagonal (the network's default)
    add_mesh: bool = False
    add_camera: bool = True
    add_depth_plane: bool = False
    depth_scale: float = 0.5
    target_rig: str | None = None  # key onto this existing rig at the current frame
    checkpoint: str | None = None
    device: str = "auto"
    body_model: str | None = None
    cache_dir: str | None = None

    def provenance_settings(self) -> dict:
        skip = {"checkpoint", "cache_dir", "image_path"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass
class ImageResult:
    """Network output for the chosen people of one image (crop order = person order)."""

    image_path: str
    image_size: tuple[int, int]
    estimate: object  # dpose_core.estimator.Estimate with one crop per chosen person
    boxes: np.ndarray  # (K, 4) person boxes used
    estimator: object = field(repr=False, default=None)
    checkpoint_sha256: str = ""


def background_image_path(scene) -> str | None:
    """The file behind the active camera's first background image, if any."""
    import bpy

    cam = scene.camera
    if cam is None or cam.type != "CAMERA":
        return None
    for bg in cam.data.background_images:
        image = bg.image if bg.source == "IMAGE" else None
        if image is not None and image.filepath:
            return bpy.path.abspath(image.filepath, library=image.library)
    return None


def select_people(boxes: np.ndarray, person: str | int) -> np.ndarray:
    """Indices into ``boxes`` (sorted largest first) for "all", "largest" or an index."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    order = np.argsort(-area, kind="stable")
    if person == "all":
        return order
    if person == "largest":
        return order[:1]
    index = int(person)
    if not 0 <= index < len(order):
        from ..dpose_core.errors import NoPersonError

        raise NoPersonError(f"Person {index} was asked for, but {len(order)} were found "
                            f"(numbers start at 0, largest first).")
    return order[index : index + 1]


def person_boxes(estimator, image: np.ndarray, focal_px=None) -> np.ndarray:
    """Person boxes (K,4) xyxy from the core's person finder; the whole image if it finds none.

    The finder ("auto": the network's own part segmentation refined from OpenCV proposals)
    needs no downloaded detector.
    """
    from ..dpose_core import localise

    found = localise.make_finder(estimator, "auto", focal_px=focal_px).find(image)
    if not found:
        h, w = image.shape[:2]
        return np.array([[0.0, 0.0, float(w), float(h)]])
    return np.stack([np.asarray(d.box, dtype=np.float64)[:4] for d in found])


def estimate_image(settings: ImageSettings, *, estimator=None, progress=None,
                   warn=None) -> ImageResult:
    """Worker-safe: read the image, find people, run the network (no Blender data touched)."""
    from ..dpose_core import frames
    from ..dpose_core.camera import focal_from_fov
    from ..dpose_core.checkpoint import checkpoint_hash
    from ..dpose_core.errors import FrameError
    from .sequence_job import load_estimator

    if not settings.image_path:
        raise FrameError("No image given: choose an image file.")
    image = frames.read_image(settings.image_path)
    h, w = image.shape[:2]
    if estimator is None:
        estimator = load_estimator(settings.checkpoint, device=settings.device,
                                   body_model=settings.body_model, cache_dir=settings.cache_dir)
    if progress is not None:
        progress(0, 1, "finding people")
    focal = None if settings.fov_deg is None else focal_from_fov((w, h),
                                                                              settings.fov_deg)
    boxes = person_boxes(estimator, image, focal)
    chosen = boxes[select_people(boxes, settings.person)]
    if progress is not None:
        progress(0, 1, f"estimating {len(chosen)} person(s)")
    estimate = estimator.estimate(image, chosen, focal_px=focal)
    if progress is not None:
        progress(1, 1, "")
    return ImageResult(
        image_path=str(Path(settings.image_path).resolve()),
        image_size=(w, h),
        estimate=estimate,
        boxes=chosen,
        estimator=estimator,
        checkpoint_sha256=checkpoint_hash(estimator.checkpoint_path),
    )


def apply_image_result(scene, result: ImageResult, settings: ImageSettings) -> list:
    """Main thread: rigs (or keys on the target rig), camera + background, relief, provenance."""
    import bpy

    from ..dpose_core.motion import Motion
    from ..dpose_core.relief import relief_frame_from_estimate
    from . import depth_plane, keyframes, motion_import, provenance, scene_camera

    est, estimator = result.estimate, result.estimator
    record = provenance.build_record(
        checkpoint_path=estimator.checkpoint_path,
        checkpoint_sha256=result.checkpoint_sha256,
        settings=settings.provenance_settings(),
        inputs=[result.image_path],
        backend=estimator.backend,
        device=estimator.device,
        kind="image",
    )
    created = []
    target = bpy.data.objects.get(settings.target_rig) if settings.target_rig else None
    if settings.target_rig and target is None:
        from ..dpose_core.errors import DPoseError

        raise DPoseError(f"The rig '{settings.target_rig}' to key was renamed or deleted while "
                         f"D-PoSE ran: select a D-PoSE rig and run again.")
    collection = _collection(scene, f"D-PoSE {Path(result.image_path).stem}")
    if target is not None:
        armature = target
        keyframes.key_pose(armature, est.rotmats[0], est.cam_t[0],
                           frame=scene.frame_current, coordinate_frame="opencv_camera")
        provenance.stamp(armature, record)
        created.append(armature)
    else:
        for k in range(len(est)):
            motion = Motion.from_estimate(est.select(k), fps=keyframes.scene_fps(scene),
                                          frame_indices=np.array([0]))
            armature = motion_import.import_motion(
                motion, estimator.body_model, name=f"D-PoSE Person {k}",
                with_mesh=settings.add_mesh, frame_offset=scene.frame_current, scene=scene,
                collection=collection, set_scene_timing=False,
            )
            provenance.stamp(armature, record)
            created.append(armature)
            created += [c for c in armature.children if c.type == "MESH"]
    if settings.add_camera:
        cam = scene_camera.ensure_camera(
            scene, image_size=result.image_size, focal_px=est.focal_px[0],
            principal_point=est.principal_point[0], name="D-PoSE Camera",
        )
        _move_to(cam, collection)
        footage = scene_camera.load_footage(result.image_path)
        scene_camera.set_camera_background(cam, footage)
        provenance.stamp(cam, record)
        created.append(cam)
    if settings.add_depth_plane:
        footage = scene_camera.load_footage(result.image_path)
        for k in range(len(est)):
            frame = relief_frame_from_estimate(est, k)
            plane = depth_plane.create_depth_plane(
                collection, frame, image=footage, depth_scale=settings.depth_scale,
                name=f"D-PoSE Depth {k}",
            )
            provenance.stamp(plane, record)
            created.append(plane)
    return created


def _collection(scene, name: str):
    import bpy

    coll = bpy.data.collections.new(name)
    scene.collection.children.link(coll)
    return coll


def _move_to(obj, collection) -> None:
    for coll in list(obj.users_collection):
        coll.objects.unlink(obj)
    collection.objects.link(obj)


def estimate_pose_from_image(scene, settings: ImageSettings, *, estimator=None) -> list:
    """Both halves on the calling (main) thread: for scripts and synchronous execute()."""
    return apply_image_result(scene, estimate_image(settings, estimator=estimator), settings)
