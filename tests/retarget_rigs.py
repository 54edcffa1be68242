"""Target rigs for the retargeting tests, built from published bone names and rest poses.

Each rig is laid out on a SMPL-X rest skeleton (upright in Blender: Z up, facing -Y) and then
changed the way real characters differ: longer legs, arms down in an A-pose, more spine bones,
twist bones, a root bone on the floor, arbitrary bone rolls. Names are written out here from
the published conventions (Mixamo, UE5 Mannequin, VRM 1.0), independently of the presets.
"""

from __future__ import annotations

import numpy as np

from dpose_core.coords import SMPLX_TO_BLENDER
from dpose_core.skeleton import JOINT_NAMES

J = {name: i for i, name in enumerate(JOINT_NAMES)}
_FINGERS = ("Thumb", "Index", "Middle", "Ring", "Pinky")


def _mixamo() -> list[tuple[str, str | None, str | None]]:
    """(bone, SMPL-X joint at its head, parent bone)."""
    p = "mixamorig:"
    bones = [(p + "Hips", "pelvis", None), (p + "Spine", "spine1", p + "Hips"),
             (p + "Spine1", "spine2", p + "Spine"), (p + "Spine2", "spine3", p + "Spine1"),
             (p + "Neck", "neck", p + "Spine2"), (p + "Head", "head", p + "Neck")]
    for side, s in (("Left", "left"), ("Right", "right")):
        bones += [(f"{p}{side}Shoulder", f"{s}_collar", p + "Spine2"),
                  (f"{p}{side}Arm", f"{s}_shoulder", f"{p}{side}Shoulder"),
                  (f"{p}{side}ForeArm", f"{s}_elbow", f"{p}{side}Arm"),
                  (f"{p}{side}Hand", f"{s}_wrist", f"{p}{side}ForeArm"),
                  (f"{p}{side}UpLeg", f"{s}_hip", p + "Hips"),
                  (f"{p}{side}Leg", f"{s}_knee", f"{p}{side}UpLeg"),
                  (f"{p}{side}Foot", f"{s}_ankle", f"{p}{side}Leg"),
                  (f"{p}{side}ToeBase", f"{s}_foot", f"{p}{side}Foot")]
        for finger in _FINGERS:
            parent = f"{p}{side}Hand"
            for k in (1, 2, 3):
                name = f"{p}{side}Hand{finger}{k}"
                bones.append((name, f"{s}_{finger.lower()}{k}", parent))
                parent = name
    return bones


def _ue5() -> list[tuple[str, str | None, str | None]]:
    bones = [("root", None, None), ("pelvis", "pelvis", "root"),
             ("spine_01", "spine1", "pelvis"), ("spine_02", None, "spine_01"),
             ("spine_03", "spine2", "spine_02"), ("spine_04", None, "spine_03"),
             ("spine_05", "spine3", "spine_04"), ("neck_01", "neck", "spine_05"),
             ("neck_02", None, "neck_01"), ("head", "head", "neck_02")]
    for s, side in (("l", "left"), ("r", "right")):
        bones += [(f"clavicle_{s}", f"{side}_collar", "spine_05"),
                  (f"upperarm_{s}", f"{side}_shoulder", f"clavicle_{s}"),
                  (f"lowerarm_{s}", f"{side}_elbow", f"upperarm_{s}"),
                  (f"hand_{s}", f"{side}_wrist", f"lowerarm_{s}"),
                  (f"upperarm_twist_01_{s}", None, f"upperarm_{s}"),
                  (f"lowerarm_twist_01_{s}", None, f"lowerarm_{s}"),
                  (f"thigh_{s}", f"{side}_hip", "pelvis"),
                  (f"calf_{s}", f"{side}_knee", f"thigh_{s}"),
                  (f"foot_{s}", f"{side}_ankle", f"calf_{s}"),
                  (f"ball_{s}", f"{side}_foot", f"foot_{s}"),
                  (f"thigh_twist_01_{s}", None, f"thigh_{s}"),
                  (f"calf_twist_01_{s}", None, f"calf_{s}")]
    return bones


def _vrm() -> list[tuple[str, str | None, str | None]]:
    bones = [("hips", "pelvis", None), ("spine", "spine1", "hips"), ("chest", "spine2", "spine"),
             ("upperChest", "spine3", "chest"), ("neck", "neck", "upperChest"),
             ("head", "head", "neck")]
    for side in ("left", "right"):
        bones += [(f"{side}Shoulder", f"{side}_collar", "upperChest"),
                  (f"{side}UpperArm", f"{side}_shoulder", f"{side}Shoulder"),
                  (f"{side}LowerArm", f"{side}_elbow", f"{side}UpperArm"),
                  (f"{side}Hand", f"{side}_wrist", f"{side}LowerArm"),
                  (f"{side}UpperLeg", f"{side}_hip", "hips"),
                  (f"{side}LowerLeg", f"{side}_knee", f"{side}UpperLeg"),
                  (f"{side}Foot", f"{side}_ankle", f"{side}LowerLeg"),
                  (f"{side}Toes", f"{side}_foot", f"{side}Foot")]
    return bones


STYLES = {"mixamo": _mixamo, "ue5": _ue5, "vrm": _vrm}


def rig_layout(style: str, rest_joints: np.ndarray, *, leg_scale: float = 1.0,
               arm_down_deg: float = 0.0, roll_seed: int | None = 0) -> dict:
    """names, parents, heads, tails, rolls (armature space, metres) and the joint of each bone.

    rest_joints: SMPL-X J(beta) in the model frame. leg_scale stretches hip-knee-ankle-toe;
    arm_down_deg lowers both arms about the shoulder (A-pose); rolls are random when seeded.
    """
    spec = STYLES[style]()
    p = np.asarray(rest_joints, float)[:55] @ SMPLX_TO_BLENDER.T  # upright, facing -Y
    for side in ("left", "right"):
        chain = [J[f"{side}_{n}"] for n in ("hip", "knee", "ankle", "foot")]
        rest = p.copy()
        for a, b in zip(chain[:-1], chain[1:], strict=True):
            p[b] = p[a] + leg_scale * (rest[b] - rest[a])
        if arm_down_deg:
            sign = 1.0 if side == "left" else -1.0
            angle = np.radians(arm_down_deg) * sign
            c, s = np.cos(angle), np.sin(angle)
            turn = np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])  # about +Y (forward axis)
            pivot = p[J[f"{side}_shoulder"]].copy()
            arm = [j for j in range(55) if _is_below(j, J[f"{side}_shoulder"])]
            p[arm] = (p[arm] - pivot) @ turn.T + pivot
    names = [b for b, _, _ in spec]
    index = {b: i for i, b in enumerate(names)}
    joint = [j for _, j, _ in spec]
    parents = [index[par] if par else -1 for _, _, par in spec]
    heads = np.zeros((len(spec), 3))
    for i, (_, j, _) in enumerate(spec):
        if j is not None:
            heads[i] = p[J[j]]
    for i, (_, j, par) in enumerate(spec):  # extra bones sit halfway along the limb
        if j is None and par is None:
            heads[i] = [p[0, 0], p[0, 1], p[J["left_ankle"], 2] - 0.08]  # root on the floor
        elif j is None:
            child = next((c for c in range(len(spec)) if parents[c] == i), None)
            if child is None:  # twist bone: halfway to its parent's mapped child
                child = next(c for c in range(len(spec)) if parents[c] == parents[i]
                             and c != i and spec[c][1] is not None)
            heads[i] = 0.5 * (heads[parents[i]] + heads[child])
    tails = np.zeros_like(heads)
    for i, (name, j, par) in enumerate(spec):
        kids = [c for c in range(len(spec)) if parents[c] == i and "twist" not in spec[c][0]
                and np.linalg.norm(heads[c] - heads[i]) > 1e-3]
        if j in ("left_wrist", "right_wrist"):
            kids = [c for c in kids if "Middle" in spec[c][0]]
        elif j == "spine3":
            kids = [c for c in kids if "eck" in spec[c][0]]
        elif j is None and par is None:  # the root bone lies on the floor, pointing forward
            kids = []
        elif j == "pelvis" or par is None:
            kids = [c for c in kids if heads[c, 2] > heads[i, 2] + 0.02]
        if kids and "twist" not in name:
            tails[i] = heads[kids[0]]
        elif par is None:
            tails[i] = heads[i] + ([0.0, -0.2, 0.0] if j is None else [0.0, 0.0, 0.1])
        else:
            d = heads[i] - heads[parents[i]]
            tails[i] = heads[i] + 0.06 * d / np.linalg.norm(d)
    rng = np.random.default_rng(roll_seed)
    rolls = rng.uniform(-np.pi, np.pi, len(spec)) if roll_seed is not None else np.zeros(len(spec))
    return {"names": names, "parents": np.array(parents), "heads": heads, "tails": tails,
            "rolls": rolls, "joints": joint}


def _is_below(j: int, ancestor: int) -> bool:
    from dpose_core.skeleton import PARENTS

    while j >= 0:
        if j == ancestor:
            return True
        j = PARENTS[j]
    return False
