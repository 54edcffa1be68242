"""Retargeting SMPL-X motion onto any humanoid skeleton, in numpy (no bpy).

Frames: everything is compared in Blender's world (Z up, a rest character faces -Y). The
source is SMPL-X: local rotations R_j, `transl`, rest joints J (model frame, y up) and the
Motion.coordinate_frame whose rotation W = coords.frame_to_blender takes it to the world;
its world joint rotations are G_0 = W R_0, G_j = G_parent R_j. Upright at rest, SMPL-X
stands as S = coords.SMPLX_TO_BLENDER, so D_j = G_j S^T is joint j's world rotation away
from the upright rest. The target is an armature: per bone the rest matrix C_b in armature
space (Blender's Bone.matrix_local, Y along the bone) and the object matrix T.

Per mapped bone b <- joint j the target's world rotation is W_b = D_j Q_b (T C_b):
- F turns the target about the world's up axis so that its rest faces like SMPL-X's (left =
  right to left hip and shoulder), so rigs modelled facing +Y work too;
- Q_b = minimal rotation taking F v_b onto u_j, then F: v_b and u_j are the rest directions
  of the limb from the bone / joint to the first mapped bone further down SMPL-X's main chain
  (or the bone's own axis at a leaf). A-pose arms are thus swung onto the T-pose before the
  motion is applied, with no rotation about the limb: the twist of each bone is the twist of
  its own joint (a forearm never picks up the wrist's or the upper arm's twist).
Unmapped bones keep their rest pose relative to their parent, so a keyed bone hangs off the
nearest keyed bone a above it: basis_b = (M_a C_a^-1 C_b)^-1 M_b (4x4 armature matrices).

Root motion: the hips bone's head follows the SMPL-X pelvis scaled by k = target leg length /
source leg length about the ground under the first frame's pelvis, so strides fit the legs.
Modes: "bone" (horizontal travel on the topmost bone above the hips when there is one, e.g.
UE5's and Rigify's `root`; otherwise everything on the hips bone), "object" (horizontal
travel on the armature object's location), "in_place" (no horizontal travel).

Feet: given contact curves (N,4: left heel, left toe, right heel, right toe, 1 = touching),
each run of contact pins the heel (ankle) or, on the toes alone, the toe at its mean position
over the run, blended in and out over a few frames, and a two-bone IK in the plane of the
current knee bends thigh and shin to reach it; the foot keeps its world rotation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .bone_maps import check_bone_map
from .coords import SMPLX_TO_BLENDER, frame_to_blender
from .errors import DPoseError
from .rotations import make_quaternions_continuous, matrix_to_quaternion
from .skeleton import JOINT_NAMES, NUM_JOINTS, PARENTS

ROOT_MOTION_MODES = ("bone", "object", "in_place")
# Where a joint with several children points (as the SMPL-X rig builds its bones).
_MAIN_CHILD = {"pelvis": "spine1", "spine3": "neck", "left_wrist": "left_middle1",
               "right_wrist": "right_middle1", "head": None}  # fmt: skip
CONTACT_COLUMNS = ("left_heel", "left_toe", "right_heel", "right_toe")
_LEGS = {"left": ("left_hip", "left_knee", "left_ankle", "left_foot"),
         "right": ("right_hip", "right_knee", "right_ankle", "right_foot")}
_ORTHO_TOLERANCE = 1e-4


def _main_child(j: int) -> int | None:
    name = JOINT_NAMES[j]
    if name in _MAIN_CHILD:
        child = _MAIN_CHILD[name]
        return JOINT_NAMES.index(child) if child else None
    children = [c for c in range(NUM_JOINTS) if PARENTS[c] == j]
    return children[0] if len(children) == 1 else None


@dataclass(frozen=True)
class TargetSkeleton:
    """A target armature's rest pose. names (B,), parents (B,) int (-1 = none), rest (B,4,4)
    armature-space bone matrices (Blender Bone.matrix_local, metres), world (4,4) the
    armature object's matrix (rigid with uniform scale)."""

    names: tuple[str, ...]
    parents: np.ndarray
    rest: np.ndarray
    world: np.ndarray = field(default_factory=lambda: np.eye(4))
    name: str = "armature"

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))
        parents = np.asarray(self.parents, dtype=np.int64)
        rest = np.asarray(self.rest, dtype=np.float64)
        world = np.asarray(self.world, dtype=np.float64)
        b = len(self.names)
        if parents.shape != (b,) or rest.shape != (b, 4, 4) or world.shape != (4, 4):
            raise DPoseError(
                f"Armature {self.name!r}: {b} bone names but {parents.shape[0]} parents and "
                f"{rest.shape[0]} rest matrices; the counts must match."
            )
        if b == 0:
            raise DPoseError(f"Armature {self.name!r} has no bones.")
        if np.any((parents < -1) | (parents >= b)) or np.any(parents == np.arange(b)):
            raise DPoseError(f"Armature {self.name!r}: a bone's parent index is out of range.")
        r = rest[:, :3, :3]
        error = np.abs(np.swapaxes(r, -1, -2) @ r - np.eye(3)).max(axis=(1, 2))
        if np.any(error > _ORTHO_TOLERANCE) or np.any(np.linalg.det(r) < 0):
            bad = self.names[int(np.argmax(error))]
            raise DPoseError(
                f"Bone {bad!r} of {self.name!r} has scale or shear in its rest pose; apply "
                "scale (Ctrl+A) and rebuild the bone before retargeting."
            )
        linear = world[:3, :3]
        scale = np.cbrt(np.linalg.det(linear))
        if not np.isfinite(scale) or scale <= 0 or np.abs(
            linear.T @ linear - scale**2 * np.eye(3)
        ).max() > 1e-4 * scale**2:
            raise DPoseError(
                f"Armature object {self.name!r} has non-uniform scale or shear; apply scale "
                "(Ctrl+A) before retargeting."
            )
        object.__setattr__(self, "parents", parents)
        object.__setattr__(self, "rest", rest)
        object.__setattr__(self, "world", world)

    @classmethod
    def from_head_tail_roll(
        cls, names, parents, heads, tails, rolls, world=None, name: str = "armature"
    ) -> TargetSkeleton:
        """Rest matrices the way Blender builds them from edit-bone head, tail and roll."""
        heads, tails = np.asarray(heads, float), np.asarray(tails, float)
        rest = np.tile(np.eye(4), (len(heads), 1, 1))
        for i, (h, t, roll) in enumerate(zip(heads, tails, np.asarray(rolls, float),
                                             strict=True)):
            rest[i, :3, :3] = bone_matrix_from_direction(t - h, roll)
            rest[i, :3, 3] = h
        return cls(names, parents, rest, np.eye(4) if world is None else world, name)

    @property
    def scale(self) -> float:
        return float(np.cbrt(np.linalg.det(self.world[:3, :3])))

    @property
    def world_rotation(self) -> np.ndarray:
        return self.world[:3, :3] / self.scale

    def index(self, bone: str) -> int:
        return self.names.index(bone)

    def order(self) -> list[int]:
        """Bone indices with every parent before its children."""
        depth = np.zeros(len(self.names), dtype=int)
        for i in range(len(self.names)):
            p, d = self.parents[i], 0
            while p >= 0:
                p, d = self.parents[p], d + 1
                if d > len(self.names):
                    raise DPoseError(f"Armature {self.name!r} has a parent cycle.")
            depth[i] = d
        return [int(i) for i in np.argsort(depth, kind="stable")]

    def ancestors(self, i: int) -> list[int]:
        out, p = [], int(self.parents[i])
        while p >= 0:
            out.append(p)
            p = int(self.parents[p])
        return out

    def rest_world_heads(self) -> np.ndarray:
        return self.rest[:, :3, 3] @ self.world[:3, :3].T + self.world[:3, 3]


def bone_matrix_from_direction(direction: np.ndarray, roll: float) -> np.ndarray:
    """Blender's bone rest rotation: the shortest turn of +Y onto `direction`, then `roll`
    radians about it (vec_roll_to_mat3)."""
    y = np.asarray(direction, float)
    y = y / np.linalg.norm(y)
    if 1.0 + y[1] < 1e-10:  # pointing down -Y: Blender's fixed choice
        base = np.diag([-1.0, -1.0, 1.0])
    else:
        base = minimal_rotation(np.array([0.0, 1.0, 0.0]), y)
    return axis_rotation(y, roll) @ base


def axis_rotation(axis: np.ndarray, angle) -> np.ndarray:
    """Rotation matrices (..., 3, 3) of `angle` radians about unit `axis` (...,3)."""
    axis = np.asarray(axis, float)
    angle = np.asarray(angle, float)
    k = np.zeros(axis.shape[:-1] + (3, 3))
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -axis[..., 2], axis[..., 1], -axis[..., 0]
    k = k - np.swapaxes(k, -1, -2)
    s, c = np.sin(angle)[..., None, None], np.cos(angle)[..., None, None]
    return np.eye(3) + s * k + (1 - c) * (k @ k)


def minimal_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest rotations (..., 3, 3) turning direction a onto direction b (batched)."""
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    v = np.cross(a, b)
    c = np.sum(a * b, axis=-1)
    s = np.linalg.norm(v, axis=-1)
    # Antiparallel: half a turn about any axis perpendicular to a.
    helper = np.where(np.abs(a[..., :1]) < 0.9, [1.0, 0.0, 0.0], [0.0, 1.0, 0.0])
    perp = np.cross(a, helper)
    perp /= np.linalg.norm(perp, axis=-1, keepdims=True)
    axis = np.where((s > 1e-12)[..., None], v / np.maximum(s, 1e-300)[..., None], perp)
    return axis_rotation(axis, np.arctan2(s, c))


# ---------------------------------------------------------------------- source side
def smplx_world_pose(
    rotmats: np.ndarray, transl: np.ndarray, rest_joints: np.ndarray, coordinate_frame: str
) -> tuple[np.ndarray, np.ndarray]:
    """World rotations G (N,55,3,3) and joint positions (N,55,3) of SMPL-X in Blender's world."""
    g, p = _world_pose_by_joint(rotmats, transl, rest_joints, coordinate_frame)
    return np.moveaxis(g, 0, 1), np.moveaxis(p, 0, 1)


def _world_pose_by_joint(rotmats, transl, rest_joints, coordinate_frame):
    """smplx_world_pose with the joint axis first ((55,N,3,3), (55,N,3)): each joint's frames
    are contiguous, which keeps the batched 3x3 products fast."""
    w = frame_to_blender(coordinate_frame)
    rest_joints = np.asarray(rest_joints, float)
    local = np.ascontiguousarray(np.moveaxis(rotmats, 1, 0))
    g = np.empty_like(local)
    p = np.empty((NUM_JOINTS, rotmats.shape[0], 3))
    g[0] = w @ local[0]
    p[0] = (rest_joints[0] + transl) @ w.T
    for j in range(1, NUM_JOINTS):
        parent = PARENTS[j]
        g[j] = g[parent] @ local[j]
        p[j] = p[parent] + g[parent] @ (rest_joints[j] - rest_joints[parent])
    return g, p


# ---------------------------------------------------------------------- the engine
@dataclass
class RetargetResult:
    """Keys for the target, in the armature's own terms.

    rotated (K,) names of the bones to key, parents first; rotations (N,K,4) their pose-basis
    quaternions (w first, sign-continuous in time). located (L,) the bones that also get
    location keys; locations (N,L,3) their pose-basis locations (bone rest space, metres).
    object_location (N,3) world metres for root_motion="object", else None. pose {bone:
    (N,4,4)} intended armature-space matrices of the keyed bones (a bone that is not keyed
    keeps its rest pose relative to the nearest keyed bone above it).
    report: one line on the map; leg_scale: target / source leg length.
    """

    rotated: tuple[str, ...]
    rotations: np.ndarray
    located: tuple[str, ...]
    locations: np.ndarray
    object_location: np.ndarray | None
    pose: dict
    report: str
    leg_scale: float


def retarget(
    rotmats: np.ndarray,
    transl: np.ndarray,
    source_rest_joints: np.ndarray,
    target: TargetSkeleton,
    bone_map: dict[str, str],
    *,
    coordinate_frame: str = "opencv_camera",
    root_motion: str = "bone",
    contacts: np.ndarray | None = None,
    blend_frames: int = 3,
) -> RetargetResult:
    """SMPL-X motion (rotmats (N,55,3,3), transl (N,3) metres, rest joints (55,3) model frame)
    -> pose keys for `target` under `bone_map` ({bone: joint}). DPoseError on bad input."""
    rotmats = np.asarray(rotmats, float)
    transl = np.asarray(transl, float)
    if rotmats.ndim != 4 or rotmats.shape[1:] != (NUM_JOINTS, 3, 3):
        raise DPoseError(f"Source rotations must be (N,55,3,3), got {rotmats.shape}.")
    n = rotmats.shape[0]
    if n == 0:
        raise DPoseError("The source motion has no frames; there is nothing to retarget.")
    if transl.shape != (n, 3):
        raise DPoseError(f"{n} frames of rotations but translations of shape {transl.shape}.")
    if root_motion not in ROOT_MOTION_MODES:
        raise DPoseError(f"root_motion must be one of {', '.join(ROOT_MOTION_MODES)}.")
    if contacts is not None:
        contacts = np.asarray(contacts, float)
        if contacts.shape != (n, 4):
            raise DPoseError(f"Contacts must be ({n},4) (heel/toe per foot), got "
                             f"{contacts.shape}.")
    check_bone_map(bone_map, target.names)
    rest_joints = np.asarray(source_rest_joints, float).reshape(NUM_JOINTS, 3)

    plan = _Plan(target, bone_map, rest_joints)
    g, positions = _world_pose_by_joint(rotmats, transl, rest_joints, coordinate_frame)
    world_rot = plan.world_rotations(g)  # (K,N,3,3) armature-space rotations of mapped bones
    heads = plan.root_heads(positions, root_motion)
    pose = plan.forward(world_rot, heads)
    if contacts is not None:
        world_rot = plan.plant_feet(pose, world_rot, contacts, blend_frames, heads)
        pose = plan.forward(world_rot, heads)
    return plan.result(pose, heads)


class _Plan:
    """The per-skeleton precomputation of retarget(): indices, rest alignment, leg scale."""

    def __init__(self, target: TargetSkeleton, bone_map: dict[str, str], rest_joints) -> None:
        self.t = target
        self.map = {target.index(b): JOINT_NAMES.index(j) for b, j in bone_map.items()}
        self.by_joint = {j: b for b, j in self.map.items()}
        self.order = target.order()
        self.mapped = [b for b in self.order if b in self.map]
        self.rest_rot = target.rest[:, :3, :3]
        self.rest_world = target.world_rotation @ self.rest_rot
        self.heads_world = target.rest_world_heads()
        self.source_rest = rest_joints @ SMPLX_TO_BLENDER.T  # upright SMPL-X, world
        self.facing = self._facing_alignment()
        self.align = np.stack([self._alignment(b) for b in self.mapped])  # (K,3,3)
        self.pelvis = self.by_joint[0]
        above = target.ancestors(self.pelvis)
        self.top = above[-1] if above and above[-1] not in self.map else None
        self.leg_scale = self._leg_length(self.heads_world) / self._leg_length(self.source_rest,
                                                                                joints=True)

    # -- rest alignment
    def _facing_alignment(self) -> np.ndarray:
        """F: the turn about the world's up axis (Z) that gives the target's rest the facing
        of SMPL-X's (left = right to left hip plus right to left shoulder, made horizontal).
        Only a heading, rounded to a quarter turn (rigs are modelled facing along an axis, and
        an asymmetric body must not turn the whole rig); leaning is left to each limb's swing."""
        def left(points, index):
            v = (points[index("left_hip")] - points[index("right_hip")]
                 + points[index("left_shoulder")] - points[index("right_shoulder")])
            return v[:2] / np.linalg.norm(v[:2])

        source = left(self.source_rest, JOINT_NAMES.index)
        target = left(self.heads_world, lambda n: self.by_joint[JOINT_NAMES.index(n)])
        angle = np.arctan2(target[0] * source[1] - target[1] * source[0], target @ source)
        angle = np.round(angle / (np.pi / 2)) * (np.pi / 2)
        return axis_rotation(np.array([0.0, 0.0, 1.0]), angle)

    def _alignment(self, b: int) -> np.ndarray:
        """Q_b: target rest world frame -> the frame the source joint's motion is applied to."""
        j = self.map[b]
        child = _main_child(j)
        v = u = None
        c = child
        while c is not None:
            if c in self.by_joint and b in self.t.ancestors(self.by_joint[c]):
                v = self.heads_world[self.by_joint[c]] - self.heads_world[b]
                u = self.source_rest[c] - self.source_rest[j]
                break
            c = _main_child(c)
        if v is None or np.linalg.norm(v) < 1e-4:
            v = self.rest_world[b][:, 1]
            if child is not None:
                u = self.source_rest[child] - self.source_rest[j]
            elif "eye" in JOINT_NAMES[j]:
                u = SMPLX_TO_BLENDER @ np.array([0.0, 0.0, 1.0])
            else:
                u = self.source_rest[j] - self.source_rest[PARENTS[j]]
        fv = self.facing @ v
        return minimal_rotation(fv, u) @ self.facing

    def _leg_length(self, points: np.ndarray, joints: bool = False) -> float:
        total = 0.0
        for side in ("left", "right"):
            hip, knee, ankle, _ = (JOINT_NAMES.index(n) for n in _LEGS[side])
            idx = (hip, knee, ankle) if joints else tuple(self.by_joint[i] for i in
                                                          (hip, knee, ankle))
            p = points[list(idx)]
            total += np.linalg.norm(p[1] - p[0]) + np.linalg.norm(p[2] - p[1])
        return total / 2.0

    # -- motion
    def world_rotations(self, g: np.ndarray) -> np.ndarray:
        """Armature-space rotations (K,N,3,3) of the mapped bones (in self.mapped order) from
        SMPL-X world rotations by joint (55,N,3,3): T^T D_j Q_b T C_b, D_j = G_j S^T."""
        joints = [self.map[b] for b in self.mapped]
        after = SMPLX_TO_BLENDER.T @ self.align @ self.rest_world[self.mapped]  # (K,3,3)
        out = g[joints] @ after[:, None]
        return self.t.world_rotation.T @ out

    def root_heads(self, positions: np.ndarray, mode: str) -> dict[int, np.ndarray]:
        """Armature-space heads (N,3) of the bones that get location keys."""
        k = self.leg_scale
        pelvis_s = positions[0]  # joint-major (55,N,3)
        ankles = positions[[JOINT_NAMES.index("left_ankle"), JOINT_NAMES.index("right_ankle")]]
        ground = ankles[..., 2].min()
        anchor_s = np.array([pelvis_s[0, 0], pelvis_s[0, 1], ground])
        ankle_t = min(self.heads_world[self.by_joint[JOINT_NAMES.index(n)], 2]
                      for n in ("left_ankle", "right_ankle"))
        anchor_t = np.array([*self.heads_world[self.pelvis, :2], ankle_t])
        head_world = anchor_t + k * (pelvis_s - anchor_s)
        travel = np.zeros_like(head_world)
        travel[:, :2] = head_world[:, :2] - anchor_t[:2]
        self.object_travel = None
        heads = {}
        inverse = np.linalg.inv(self.t.world)
        if mode == "in_place":
            head_world = head_world - travel
        elif mode == "object":
            self.object_travel = travel
            head_world = head_world - travel
        elif self.top is not None:
            heads[self.top] = self.t.rest[self.top, :3, 3] + travel @ inverse[:3, :3].T
        heads[self.pelvis] = head_world @ inverse[:3, :3].T + inverse[:3, 3]
        return heads

    def forward(self, world_rot: np.ndarray, heads: dict[int, np.ndarray]) -> dict:
        """{keyed bone: armature-space pose (N,4,4)}. Bones in between keep their rest pose
        relative to the keyed bone above them, so each keyed bone hangs off that one."""
        n = world_rot.shape[1]
        pose: dict[int, np.ndarray] = {}
        slot = {b: i for i, b in enumerate(self.mapped)}
        for b in self._keyed(heads):
            anchor, offset = self._anchor(b, heads)
            chain = (np.broadcast_to(offset, (n, 4, 4)) if anchor < 0
                     else pose[anchor] @ offset)
            m = np.empty((n, 4, 4))
            m[:, 3] = (0.0, 0.0, 0.0, 1.0)
            m[:, :3, :3] = world_rot[slot[b]] if b in slot else chain[:, :3, :3]
            m[:, :3, 3] = heads[b] if b in heads else chain[:, :3, 3]
            pose[b] = m
        return pose

    def _keyed(self, heads: dict) -> list[int]:
        return sorted(set(self.mapped) | set(heads), key=self.order.index)

    def _anchor(self, b: int, heads: dict) -> tuple[int, np.ndarray]:
        """(nearest keyed bone above b or -1, b's rest matrix relative to it)."""
        for a in self.t.ancestors(b):
            if a in self.map or a in heads:
                return a, rigid_inverse(self.t.rest[a]) @ self.t.rest[b]
        return -1, self.t.rest[b]

    def result(self, pose: dict, heads: dict[int, np.ndarray]) -> RetargetResult:
        n = next(iter(pose.values())).shape[0]
        names = self.t.names
        keyed = self._keyed(heads)
        located = [b for b in keyed if b in heads]
        rotations = np.empty((n, len(keyed), 4))
        locations = np.empty((n, len(located), 3))
        for i, b in enumerate(keyed):
            anchor, offset = self._anchor(b, heads)
            chain = offset if anchor < 0 else pose[anchor] @ offset
            basis = rigid_inverse(chain) @ pose[b]
            rotations[:, i] = matrix_to_quaternion(basis[:, :3, :3])
            if b in heads:
                locations[:, located.index(b)] = basis[:, :3, 3]
        rotations = make_quaternions_continuous(rotations, axis=0)
        b_count = len(names)
        unused = [j for j in JOINT_NAMES[:22] if j not in {JOINT_NAMES[v]
                                                           for v in self.map.values()}]
        report = (f"{len(self.map)} of {b_count} bones driven; "
                  f"{b_count - len(self.map)} follow their parent"
                  + (f"; body joints not used: {', '.join(unused)}" if unused else "")
                  + f"; legs x{self.leg_scale:.3f}.")
        object_location = None
        if self.object_travel is not None:
            object_location = self.t.world[:3, 3] + self.object_travel
        return RetargetResult(
            rotated=tuple(names[b] for b in keyed), rotations=rotations,
            located=tuple(names[b] for b in located), locations=locations,
            object_location=object_location, pose={names[b]: m for b, m in pose.items()},
            report=report, leg_scale=float(self.leg_scale),
        )

    # -- feet
    def plant_feet(self, pose, world_rot, contacts, blend_frames, heads) -> np.ndarray:
        """Thigh and shin rotations re-solved so contacting feet stay where they touched."""
        world_rot = world_rot.copy()
        slot = {b: i for i, b in enumerate(self.mapped)}
        travel = np.zeros((world_rot.shape[1], 3))
        if self.object_travel is not None:  # pins live in the world, the rig moves under them
            travel = self.object_travel @ np.linalg.inv(self.t.world)[:3, :3].T
        for s, side in enumerate(("left", "right")):
            bones = [self.by_joint.get(JOINT_NAMES.index(n)) for n in _LEGS[side]]
            thigh, shin, foot, toe = bones
            hip_p = pose[thigh][:, :3, 3]
            knee_p = pose[shin][:, :3, 3]
            ankle_p = pose[foot][:, :3, 3]
            toe_p = (pose[toe][:, :3, 3] if toe is not None else
                     ankle_p + pose[foot][:, :3, 1] * self._length(foot))
            heel_on = contacts[:, 2 * s] > 0.5
            toe_on = contacts[:, 2 * s + 1] > 0.5
            goal = ankle_p.copy()
            weight = np.zeros(len(goal))
            for start, stop in _runs(heel_on | toe_on):
                # The pinned point: the heel (ankle) when it touches, else the toe.
                offset = (0.0 if heel_on[start:stop].any() else toe_p - ankle_p)
                offset = np.broadcast_to(offset, ankle_p.shape)
                pin = (ankle_p + offset + travel)[start:stop].mean(axis=0)
                lo, hi = max(0, start - blend_frames), min(len(goal), stop + blend_frames)
                for f in range(lo, hi):
                    outside = start - f if f < start else max(0, f - stop + 1)
                    w = 1.0 - outside / (blend_frames + 1)
                    w = 3 * w**2 - 2 * w**3  # smooth in and out
                    if w > weight[f]:
                        goal[f] = pin - travel[f] - offset[f]
                        weight[f] = w
            target = ankle_p + weight[:, None] * (goal - ankle_p)
            r_thigh, r_shin = _two_bone_ik(hip_p, knee_p, ankle_p, target)
            world_rot[slot[thigh]] = r_thigh @ world_rot[slot[thigh]]
            world_rot[slot[shin]] = r_shin @ r_thigh @ world_rot[slot[shin]]
        return world_rot

    def _length(self, b: int) -> float:
        children = [c for c in range(len(self.t.names)) if self.t.parents[c] == b]
        if children:
            return float(np.linalg.norm(self.t.rest[children[0], :3, 3] - self.t.rest[b, :3, 3]))
        return 0.1


def rigid_inverse(m: np.ndarray) -> np.ndarray:
    """Inverse of rigid 4x4 matrices (..., 4, 4) (rotation + translation)."""
    out = np.zeros_like(m)
    rt = np.swapaxes(m[..., :3, :3], -1, -2)
    out[..., :3, :3] = rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", rt, m[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, stop) of each run of True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def _two_bone_ik(hip, knee, ankle, goal) -> tuple[np.ndarray, np.ndarray]:
    """World rotations (N,3,3) for thigh then shin (applied after the thigh's) that move the
    ankle onto `goal`, keeping the knee in the plane of hip, goal and the current knee."""
    l1 = np.linalg.norm(knee - hip, axis=-1)
    l2 = np.linalg.norm(ankle - knee, axis=-1)
    to_goal = goal - hip
    d = np.clip(np.linalg.norm(to_goal, axis=-1), np.abs(l1 - l2) + 1e-6, l1 + l2 - 1e-6)
    e = to_goal / np.maximum(np.linalg.norm(to_goal, axis=-1, keepdims=True), 1e-12)
    bend = (knee - hip) - np.sum((knee - hip) * e, axis=-1, keepdims=True) * e
    norm = np.linalg.norm(bend, axis=-1, keepdims=True)
    fallback = np.cross(e, np.array([1.0, 0.0, 0.0]))
    bend = np.where(norm > 1e-8, bend / np.maximum(norm, 1e-12), fallback)
    along = (l1**2 - l2**2 + d**2) / (2 * d)
    height = np.sqrt(np.maximum(l1**2 - along**2, 0.0))
    new_knee = hip + e * along[:, None] + bend * height[:, None]
    r_thigh = minimal_rotation(knee - hip, new_knee - hip)
    moved_ankle = hip + np.einsum("nij,nj->ni", r_thigh, ankle - hip)
    r_shin = minimal_rotation(moved_ankle - new_knee, hip + e * d[:, None] - new_knee)
    return r_thigh, r_shin
