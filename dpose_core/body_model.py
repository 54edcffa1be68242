"""The SMPL-X body model in numpy: shape blend, pose correctives, kinematic chain, skinning.

D-PoSE's checkpoint carries the neutral SMPL-X buffers, so the add-on needs no torch and no
licensed download to turn the network's rotations into a mesh and 127 joints. The maths is the
standard smplx `lbs` (docs/smplx.md): v_shaped = v_template + shapedirs . betas;
J = J_regressor . v_shaped; pose correctives from (R_j - I) for joints 1..54; rigid chain over
`parents` with the root rotating about J_0(beta); linear blend skinning; then 21 vertex joints
and 51 barycentric face landmarks. Output frame = the frame of rotation 0 (for D-PoSE: the
OpenCV camera frame, x right, y down, z forward, metres).
"""

import functools
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import BodyModelError
from .skeleton import (
    JOINT_NAMES,
    NUM_BETAS,
    NUM_JOINTS,
    NUM_LANDMARKS,
    NUM_PREDICTED_JOINTS,
    VERTEX_JOINTS,
)

# Where the D-PoSE checkpoint keeps its SMPL-X buffers (network state dict, `model.` stripped).
BODY_MODEL_PREFIX = "smpl.smplx."
# smplx treats files with fewer shape columns than this as 10-beta (v1.0) models.
_SHAPE_SPACE_DIM = 300
_NUM_EXPRESSION = 10
# Frames skinned at once: bounds the (chunk, V, 4, 4) temporaries to a few hundred MB.
_CHUNK = 64

_HOW_TO_GET = (
    "Download SMPL-X v1.1 (SMPLX_NEUTRAL.npz, 300 shape directions) from https://smpl-x.is.tue.mpg.de"
    " or leave the body model path empty to use the model stored in the D-PoSE checkpoint."
)


@dataclass
class BodyOutput:
    """Posed bodies. vertices (N,V,3) or None, joints (N,127,3), joint_world_transforms (N,55,4,4).

    joint_world_transforms are the rigid global transforms of the 55 skeleton joints: rotation
    = accumulated chain rotation, translation = posed joint position (including transl).
    """

    vertices: np.ndarray | None
    joints: np.ndarray
    joint_world_transforms: np.ndarray


@dataclass(eq=False)
class BodyModel:
    """A neutral SMPL-X model with 11 betas, float64 arrays in the smplx layouts."""

    v_template: np.ndarray  # (V, 3)
    shapedirs: np.ndarray  # (V, 3, 11)
    posedirs: np.ndarray  # (486, V*3)
    J_regressor: np.ndarray  # (55, V), smplx name
    parents: np.ndarray  # (55,) int64, parents[0] = -1
    lbs_weights: np.ndarray  # (V, 55)
    faces: np.ndarray  # (F, 3) int64
    lmk_faces_idx: np.ndarray  # (51,) int64
    lmk_bary_coords: np.ndarray  # (51, 3)
    expr_dirs: np.ndarray | None = None  # (V, 3, 10); expression is always zero in D-PoSE
    vertex_joint_ids: np.ndarray | None = None  # (21,) defaults to skeleton.VERTEX_JOINTS

    skinning_joint_names = JOINT_NAMES

    def __post_init__(self) -> None:
        try:
            self._validate()
        except (ValueError, TypeError, IndexError) as exc:
            raise BodyModelError(f"SMPL-X arrays are malformed: {exc}. {_HOW_TO_GET}") from exc

    # ------------------------------------------------------------------ construction
    def _validate(self) -> None:
        f64 = np.float64
        for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights",
                     "lmk_bary_coords"):
            setattr(self, name, np.asarray(getattr(self, name), dtype=f64))
        for name in ("parents", "faces", "lmk_faces_idx"):
            setattr(self, name, np.array(getattr(self, name)).astype(np.int64))
        if self.v_template.ndim != 2:
            raise ValueError(f"v_template has shape {self.v_template.shape}, expected Vx3")
        num_v = self.v_template.shape[0]
        expect = {
            "v_template": (num_v, 3),
            "shapedirs": (num_v, 3, None),
            "posedirs": ((NUM_JOINTS - 1) * 9, num_v * 3),
            "J_regressor": (NUM_JOINTS, num_v),
            "parents": (NUM_JOINTS,),
            "lbs_weights": (num_v, NUM_JOINTS),
            "faces": (None, 3),
            "lmk_faces_idx": (NUM_LANDMARKS,),
            "lmk_bary_coords": (NUM_LANDMARKS, 3),
        }
        for name, shape in expect.items():
            arr = getattr(self, name)
            ok = arr.ndim == len(shape) and all(
                s is None or s == a for s, a in zip(shape, arr.shape, strict=True)
            )
            if not ok:
                shown = "x".join("*" if s is None else str(s) for s in shape)
                raise ValueError(f"{name} has shape {arr.shape}, expected {shown}")
        if self.shapedirs.shape[-1] < NUM_BETAS:
            raise ValueError(
                f"shapedirs has {self.shapedirs.shape[-1]} shape directions; D-PoSE needs "
                f"{NUM_BETAS} (a SMPL-X v1.0 file has only 10)"
            )
        self.shapedirs = np.ascontiguousarray(self.shapedirs[..., :NUM_BETAS])
        for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "lbs_weights",
                     "lmk_bary_coords"):  # fmt: skip
            if not np.all(np.isfinite(getattr(self, name))):
                raise ValueError(f"{name} contains NaN or infinite values")
        self.parents[0] = -1
        if np.any(self.parents[1:] < 0) or np.any(self.parents[1:] >= np.arange(1, NUM_JOINTS)):
            raise ValueError("parents must list each joint after its parent (kinematic tree)")
        if self.faces.size and (self.faces.min() < 0 or self.faces.max() >= num_v):
            raise ValueError("faces index vertices that do not exist")
        if self.lmk_faces_idx.min() < 0 or self.lmk_faces_idx.max() >= len(self.faces):
            raise ValueError("lmk_faces_idx indexes faces that do not exist")
        if self.expr_dirs is not None:
            self.expr_dirs = np.asarray(self.expr_dirs, dtype=f64)
            if self.expr_dirs.shape[:2] != (num_v, 3):
                raise ValueError(f"expr_dirs has shape {self.expr_dirs.shape}")
        if self.vertex_joint_ids is None:
            self.vertex_joint_ids = np.array([vid for _, vid in VERTEX_JOINTS], dtype=np.int64)
        self.vertex_joint_ids = np.asarray(self.vertex_joint_ids).astype(np.int64).reshape(-1)
        if len(self.vertex_joint_ids) != len(VERTEX_JOINTS):
            raise ValueError(f"expected {len(VERTEX_JOINTS)} vertex joints")
        if self.vertex_joint_ids.min() < 0 or self.vertex_joint_ids.max() >= num_v:
            raise ValueError("vertex joint ids exceed the number of vertices")

    @classmethod
    def from_arrays(cls, arrays: dict, prefix: str = BODY_MODEL_PREFIX) -> "BodyModel":
        """Build from the smplx Layer buffers stored in the checkpoint (keys `prefix + name`)."""

        def get(name: str, required: bool = True):
            key = prefix + name
            if key not in arrays:
                if required:
                    raise BodyModelError(
                        f"The checkpoint has no SMPL-X buffer {key!r}; is this the D-PoSE "
                        f"checkpoint? Alternatively give an SMPL-X model file. {_HOW_TO_GET}"
                    )
                return None
            return _to_numpy(arrays[key])

        return cls(
            v_template=get("v_template"),
            shapedirs=get("shapedirs"),
            posedirs=get("posedirs"),
            J_regressor=get("J_regressor"),
            parents=get("parents"),
            lbs_weights=get("lbs_weights"),
            faces=get("faces_tensor"),
            lmk_faces_idx=get("lmk_faces_idx"),
            lmk_bary_coords=get("lmk_bary_coords"),
            expr_dirs=get("expr_dirs", required=False),
            vertex_joint_ids=get("vertex_joint_selector.extra_joints_idxs", required=False),
        )

    @classmethod
    def load(cls, path: str | Path) -> "BodyModel":
        """Read an SMPL-X model file (.npz, or .pkl through the safe unpickler).

        A folder is searched for SMPLX_NEUTRAL.npz / .pkl (also in a `smplx/` sub-folder).
        """
        path = _resolve_model_path(Path(path))
        if path.suffix.lower() == ".npz":
            try:
                with np.load(path, allow_pickle=False) as npz:
                    data = {k: npz[k] for k in npz.files}
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
                raise BodyModelError(
                    f"Cannot read SMPL-X file {path} (damaged or cut short?): {exc}. {_HOW_TO_GET}"
                ) from exc
        elif path.suffix.lower() == ".pkl":
            data = _read_pkl(path)
        else:
            raise BodyModelError(f"{path} is not an SMPL-X .npz or .pkl file. {_HOW_TO_GET}")
        try:
            return cls._from_model_file_dict(data, path)
        except (ValueError, TypeError, IndexError) as exc:  # e.g. text where numbers belong
            raise BodyModelError(f"{path.name} holds malformed SMPL-X arrays: {exc}. "
                                 f"{_HOW_TO_GET}") from exc  # fmt: skip

    @classmethod
    def _from_model_file_dict(cls, data: dict, path: Path) -> "BodyModel":
        required = ("v_template", "shapedirs", "posedirs", "J_regressor", "kintree_table",
                    "weights", "f", "lmk_faces_idx", "lmk_bary_coords")
        missing = [k for k in required if k not in data]
        if missing:
            raise BodyModelError(
                f"{path.name} lacks the SMPL-X keys {missing}; is it an SMPL-X (not SMPL/SMPL-H) "
                f"model file? {_HOW_TO_GET}"
            )
        shapedirs = np.asarray(data["shapedirs"])
        if shapedirs.ndim != 3 or shapedirs.shape[-1] < _SHAPE_SPACE_DIM:
            count = shapedirs.shape[-1] if shapedirs.ndim == 3 else "?"
            raise BodyModelError(
                f"{path.name} has {count} shape+expression directions; smplx reads such a file as "
                f"a 10-beta SMPL-X v1.0 model but D-PoSE predicts {NUM_BETAS} betas. {_HOW_TO_GET}"
            )
        posedirs = np.asarray(data["posedirs"])
        if posedirs.ndim != 3:
            raise BodyModelError(
                f"{path.name}: posedirs has shape {posedirs.shape}, expected Vx3x486"
            )
        num_pose_basis = posedirs.shape[-1]
        expr = shapedirs[..., _SHAPE_SPACE_DIM:_SHAPE_SPACE_DIM + _NUM_EXPRESSION]
        kintree = np.asarray(data["kintree_table"])
        if kintree.ndim != 2 or kintree.shape[0] != 2:
            raise BodyModelError(
                f"{path.name}: kintree_table has shape {kintree.shape}, expected 2x55"
            )
        parents = kintree[0].astype(np.int64)
        return cls(
            v_template=data["v_template"],
            shapedirs=shapedirs[..., :NUM_BETAS],
            posedirs=posedirs.reshape(-1, num_pose_basis).T,
            J_regressor=data["J_regressor"],
            parents=parents,
            lbs_weights=data["weights"],
            faces=data["f"],
            lmk_faces_idx=data["lmk_faces_idx"],
            lmk_bary_coords=data["lmk_bary_coords"],
            expr_dirs=expr if expr.shape[-1] else None,
        )

    # ------------------------------------------------------------------ properties
    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_betas(self) -> int:
        return int(self.shapedirs.shape[-1])

    # ------------------------------------------------------------------ rest pose
    def shaped_vertices(self, betas: np.ndarray) -> np.ndarray:
        """Rest-pose vertices for betas (11,) -> (V,3), or (N,11) -> (N,V,3)."""
        b = self._betas(betas)
        return self.v_template + np.einsum("...l,vkl->...vk", b, self.shapedirs)

    def rest_joints(self, betas: np.ndarray) -> np.ndarray:
        """Rest-pose skeleton joints J(beta): (11,) -> (55,3), or (N,11) -> (N,55,3).

        The rig's bone heads; the pelvis rest position J_0(beta) is where transl is measured from.
        """
        b = self._betas(betas)
        j_template, j_dirs = self._joint_regression
        return j_template + np.einsum("...l,jkl->...jk", b, j_dirs)

    @functools.cached_property
    def _joint_regression(self) -> tuple[np.ndarray, np.ndarray]:
        """J_regressor applied to the template and the shape directions, once per model.

        J_regressor is linear, so this is exact; the model's arrays are never changed after
        construction, which is what makes caching it (and `_skinned_subset`) safe.
        """
        return (self.J_regressor @ self.v_template,
                np.einsum("jv,vkl->jkl", self.J_regressor, self.shapedirs))

    @functools.cached_property
    def _skinned_subset(self) -> "_SkinnedSubset":
        """The vertices the 21 vertex joints and 51 landmarks read, and their model rows."""
        lmk_vids = self.faces[self.lmk_faces_idx]  # (51, 3)
        vids, inverse = np.unique(
            np.concatenate([self.vertex_joint_ids, lmk_vids.ravel()]), return_inverse=True
        )
        cols = (vids[:, None] * 3 + np.arange(3)).ravel()
        return _SkinnedSubset(
            vids=vids,
            extra_ids=inverse[: len(self.vertex_joint_ids)],
            lmk_ids=inverse[len(self.vertex_joint_ids):].reshape(lmk_vids.shape),
            v_template=self.v_template[vids], shapedirs=self.shapedirs[vids],
            posedirs=self.posedirs[:, cols], lbs_weights=self.lbs_weights[vids],
        )

    def _betas(self, betas: np.ndarray) -> np.ndarray:
        b = np.asarray(betas, dtype=np.float64)
        if b.ndim not in (1, 2) or b.shape[-1] > self.num_betas:
            raise ValueError(
                f"betas must be ({self.num_betas},) or (N,{self.num_betas}), got {b.shape}"
            )
        if b.shape[-1] < self.num_betas:  # fewer betas: the rest are zero
            pad = [(0, 0)] * (b.ndim - 1) + [(0, self.num_betas - b.shape[-1])]
            b = np.pad(b, pad)
        return b

    # ------------------------------------------------------------------ posing
    def forward(
        self,
        rotmats: np.ndarray,
        betas: np.ndarray,
        transl: np.ndarray | None = None,
        pose_correctives: bool = True,
        return_vertices: bool = True,
    ) -> BodyOutput:
        """Pose the model: rotmats (N,55,3,3) or (N,22,3,3) local joint rotations.

        With 22 rotations the jaw, eyes and both hands are identity (flat hands, no hand
        mean), exactly what D-PoSE's SMPL-X call does. betas (11,) or (N,11); transl (N,3)
        or (3,) metres added to everything (the pelvis ends at J_0(beta) + transl).
        With return_vertices=False only the vertices the extra joints need are skinned.
        """
        rot = np.asarray(rotmats, dtype=np.float64)
        if rot.ndim != 4 or rot.shape[-2:] != (3, 3) or rot.shape[1] not in (
            NUM_PREDICTED_JOINTS, NUM_JOINTS
        ):
            raise ValueError(f"rotmats must be (N,55,3,3) or (N,22,3,3), got {rot.shape}")
        n = rot.shape[0]
        if rot.shape[1] == NUM_PREDICTED_JOINTS:
            full = np.broadcast_to(np.eye(3), (n, NUM_JOINTS, 3, 3)).copy()
            full[:, :NUM_PREDICTED_JOINTS] = rot
            rot = full
        b = self._betas(betas)
        if b.ndim == 2 and b.shape[0] != n:
            raise ValueError(f"betas has {b.shape[0]} rows for {n} frames")
        if transl is None:
            t = np.zeros((n, 3))
        else:
            t = np.broadcast_to(np.asarray(transl, dtype=np.float64), (n, 3))

        subset = None
        extra_ids, lmk_ids = self.vertex_joint_ids, self.faces[self.lmk_faces_idx]
        if not return_vertices:  # skin only the vertices the extra joints read
            subset = self._skinned_subset
            extra_ids, lmk_ids = subset.extra_ids, subset.lmk_ids

        verts_out = np.empty((n, self.num_vertices, 3)) if return_vertices else None
        joints_out = np.empty((n, NUM_JOINTS + len(extra_ids) + NUM_LANDMARKS, 3))
        transforms_out = np.empty((n, NUM_JOINTS, 4, 4))
        for start in range(0, n, _CHUNK):
            sl = slice(start, min(n, start + _CHUNK))
            verts, joints, transforms = self._lbs(
                rot[sl], b[sl] if b.ndim == 2 else b, pose_correctives, subset
            )
            verts += t[sl, None]
            transforms[:, :, :3, 3] += t[sl, None]
            landmarks = np.einsum("nlfk,lf->nlk", verts[:, lmk_ids], self.lmk_bary_coords)
            joints_out[sl] = np.concatenate(
                [joints + t[sl, None], verts[:, extra_ids], landmarks], axis=1
            )
            transforms_out[sl] = transforms
            if verts_out is not None:
                verts_out[sl] = verts
        return BodyOutput(verts_out, joints_out, transforms_out)

    __call__ = forward

    def _lbs(
        self, rot: np.ndarray, betas: np.ndarray, pose_correctives: bool,
        subset: "_SkinnedSubset | None",
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Skin one chunk -> vertices (n,V or subset,3), joints (n,55,3), transforms (n,55,4,4)."""
        n = rot.shape[0]
        joints_rest = self.rest_joints(betas)  # (55,3) or (n,55,3)
        joints_rest = np.broadcast_to(joints_rest, (n, NUM_JOINTS, 3))
        model = self if subset is None else subset
        template = model.v_template
        v = template + np.einsum("...l,vkl->...vk", betas, model.shapedirs)
        v = np.broadcast_to(v, (n, *template.shape))
        if pose_correctives:
            feature = (rot[:, 1:] - np.eye(3)).reshape(n, -1)  # (n, 486)
            v = v + (feature @ model.posedirs).reshape(n, -1, 3)

        # Rigid chain: local transforms (R_j, J_j - J_parent), composed root to leaves.
        rel = joints_rest.copy()
        rel[:, 1:] -= joints_rest[:, self.parents[1:]]
        world_rot = np.empty((n, NUM_JOINTS, 3, 3))
        world_pos = np.empty((n, NUM_JOINTS, 3))
        world_rot[:, 0] = rot[:, 0]
        world_pos[:, 0] = rel[:, 0]
        for j in range(1, NUM_JOINTS):
            p = self.parents[j]
            world_rot[:, j] = world_rot[:, p] @ rot[:, j]
            world_pos[:, j] = world_pos[:, p] + np.einsum("nab,nb->na", world_rot[:, p], rel[:, j])
        transforms = np.zeros((n, NUM_JOINTS, 4, 4))
        transforms[:, :, :3, :3] = world_rot
        transforms[:, :, :3, 3] = world_pos
        transforms[:, :, 3, 3] = 1.0

        # Skinning transforms map rest-pose points: x -> R (x - J_rest) + J_posed.
        skin_t = world_pos - np.einsum("njab,njb->nja", world_rot, joints_rest)
        weights = model.lbs_weights
        blend_r = (weights @ world_rot.reshape(n, NUM_JOINTS, 9)).reshape(n, -1, 3, 3)
        blend_t = weights @ skin_t
        verts = np.einsum("nvab,nvb->nva", blend_r, v) + blend_t
        return verts, world_pos, transforms


@dataclass(frozen=True)
class _SkinnedSubset:
    """Rows of a BodyModel for the vertices a joints-only forward pass skins."""

    vids: np.ndarray
    extra_ids: np.ndarray
    lmk_ids: np.ndarray
    v_template: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    lbs_weights: np.ndarray


def _to_numpy(value) -> np.ndarray:
    """Arrays from torch tensors (lazy: torch is optional) or anything array-like."""
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _resolve_model_path(path: Path) -> Path:
    if path.is_dir():
        for folder in (path, path / "smplx", path / "models" / "smplx"):
            for name in ("SMPLX_NEUTRAL.npz", "SMPLX_NEUTRAL.pkl"):
                if (folder / name).is_file():
                    return folder / name
        raise BodyModelError(f"No SMPLX_NEUTRAL.npz or .pkl in folder {path}. {_HOW_TO_GET}")
    if not path.is_file():
        raise BodyModelError(f"SMPL-X model file {path} does not exist. {_HOW_TO_GET}")
    return path


def _read_pkl(path: Path) -> dict:
    """Read an SMPL-X .pkl with the allow-listed unpickler; chumpy/sparse become numpy."""
    from . import safe_pickle
    from .errors import UnsafePickleError

    try:
        with open(path, "rb") as fh:
            data = safe_pickle.load(fh, encoding="latin1")
    except UnsafePickleError as exc:
        raise BodyModelError(f"{path.name} asks for code we do not run: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad model file
        raise BodyModelError(f"Cannot read SMPL-X pickle {path}: {exc}. {_HOW_TO_GET}") from exc
    if not isinstance(data, dict):
        raise BodyModelError(f"{path.name} does not hold an SMPL-X model dictionary. {_HOW_TO_GET}")
    out = {}
    for key, value in data.items():
        key = key.decode("latin1") if isinstance(key, bytes) else str(key)
        try:
            out[key] = safe_pickle.to_numpy(value)
        except Exception:  # noqa: BLE001 - entries we do not use may be odd objects
            continue
    return out
