"""Bone maps: which target bone is driven by which SMPL-X joint, with presets and auto-detection.

A bone map is a plain dict ``{target bone name: SMPL-X joint name}`` (JOINT_NAMES), one entry
per driven bone; target bones without an entry follow their parent. Presets are written the
other way round (joint -> bone) because that is how the naming conventions are published:

- "rigify": the rig Rigify generates from its human metarig; its FK controls (torso, spine_fk,
  neck, head, shoulder, upper_arm_fk, forearm_fk, hand_fk, thigh_fk, shin_fk, foot_fk, toe_fk,
  finger controls). IK controls are handled by the Blender side when a limb's IK is on.
- "mixamo": Adobe Mixamo characters, ``mixamorig:`` names (any ``mixamorigN:`` prefix).
- "ue5": the Unreal Engine 5 Mannequin (pelvis, spine_01..05, thigh_l, calf_l, ...).
- "vrm": the VRM 1.0 humanoid bone names (hips, upperChest, leftUpperArm, ...), also the usual
  generic naming of humanoid rigs exported from VRoid and many tools.
- "smplx": our own SMPL-X rig (identity map).

JSON files: ``{"format": "dpose-bone-map", "version": 1, "bones": {bone: joint}}``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from .atomic_io import write_text
from .errors import DPoseError
from .skeleton import JOINT_NAMES

FORMAT = "dpose-bone-map"
FORMAT_VERSION = 1

# Joints a rig must have mapped to count as humanoid (hips, spine, head, two arms, two legs).
REQUIRED_JOINTS: tuple[str, ...] = (
    "pelvis", "head", "left_shoulder", "left_elbow", "left_wrist", "right_shoulder",
    "right_elbow", "right_wrist", "left_hip", "left_knee", "left_ankle", "right_hip",
    "right_knee", "right_ankle",
)  # fmt: skip

_FINGERS = ("index", "middle", "pinky", "ring", "thumb")
_SIDES = (("left", "L", "l", "Left"), ("right", "R", "r", "Right"))


def _per_side(table: dict[str, str]) -> dict[str, str]:
    """Expand {"shoulder": "upperarm_{s}"} for both sides with the naming's side tokens."""
    out = {}
    for side, upper, lower, word in _SIDES:
        for joint, pattern in table.items():
            out[f"{side}_{joint}"] = pattern.format(S=upper, s=lower, Side=word, side=side)
    return out


def _fingers(pattern) -> dict[str, str]:
    out = {}
    for side, upper, lower, word in _SIDES:
        for finger in _FINGERS:
            for k in (1, 2, 3):
                out[f"{side}_{finger}{k}"] = pattern(finger, k, upper, lower, word, side)
    return out


_MIXAMO_FINGER = {"index": "Index", "middle": "Middle", "pinky": "Pinky", "ring": "Ring",
                  "thumb": "Thumb"}
_VRM_THUMB = {1: "Metacarpal", 2: "Proximal", 3: "Distal"}
_VRM_FINGER = {1: "Proximal", 2: "Intermediate", 3: "Distal"}

# joint -> bone, per preset.
PRESETS: dict[str, dict[str, str]] = {
    "smplx": {name: name for name in JOINT_NAMES},
    "mixamo": {
        "pelvis": "mixamorig:Hips", "spine1": "mixamorig:Spine", "spine2": "mixamorig:Spine1",
        "spine3": "mixamorig:Spine2", "neck": "mixamorig:Neck", "head": "mixamorig:Head",
        **_per_side({"collar": "mixamorig:{Side}Shoulder", "shoulder": "mixamorig:{Side}Arm",
                     "elbow": "mixamorig:{Side}ForeArm", "wrist": "mixamorig:{Side}Hand",
                     "hip": "mixamorig:{Side}UpLeg", "knee": "mixamorig:{Side}Leg",
                     "ankle": "mixamorig:{Side}Foot", "foot": "mixamorig:{Side}ToeBase"}),
        **_fingers(lambda f, k, S, s, W, side: f"mixamorig:{W}Hand{_MIXAMO_FINGER[f]}{k}"),
    },
    "ue5": {
        "pelvis": "pelvis", "spine1": "spine_01", "spine2": "spine_03", "spine3": "spine_05",
        "neck": "neck_01", "head": "head",
        **_per_side({"collar": "clavicle_{s}", "shoulder": "upperarm_{s}",
                     "elbow": "lowerarm_{s}", "wrist": "hand_{s}", "hip": "thigh_{s}",
                     "knee": "calf_{s}", "ankle": "foot_{s}", "foot": "ball_{s}"}),
        **_fingers(lambda f, k, S, s, W, side: f"{f}_0{k}_{s}"),
    },
    "vrm": {
        "pelvis": "hips", "spine1": "spine", "spine2": "chest", "spine3": "upperChest",
        "neck": "neck", "head": "head", "jaw": "jaw",
        **_per_side({"collar": "{side}Shoulder", "shoulder": "{side}UpperArm",
                     "elbow": "{side}LowerArm", "wrist": "{side}Hand", "hip": "{side}UpperLeg",
                     "knee": "{side}LowerLeg", "ankle": "{side}Foot", "foot": "{side}Toes",
                     "eye_smplhf": "{side}Eye"}),
        **_fingers(lambda f, k, S, s, W, side: f"{side}{f.capitalize()}"
                   f"{(_VRM_THUMB if f == 'thumb' else _VRM_FINGER)[k]}"),
    },
    "rigify": {
        "pelvis": "torso", "spine1": "spine_fk.001", "spine2": "spine_fk.002",
        "spine3": "spine_fk.003", "neck": "neck", "head": "head",
        **_per_side({"collar": "shoulder.{S}", "shoulder": "upper_arm_fk.{S}",
                     "elbow": "forearm_fk.{S}", "wrist": "hand_fk.{S}", "hip": "thigh_fk.{S}",
                     "knee": "shin_fk.{S}", "ankle": "foot_fk.{S}", "foot": "toe_fk.{S}"}),
        **_fingers(lambda f, k, S, s, W, side:
                   f"thumb.0{k}.{S}" if f == "thumb" else f"f_{f}.0{k}.{S}"),
    },
}

_MIXAMO_PREFIX = re.compile(r"^(mixamorig\d*:)Hips$")


def preset_map(preset: str, bone_names: Iterable[str] | None = None) -> dict[str, str]:
    """The bone map {bone: joint} of a preset, keeping only bones present in `bone_names`.

    For "mixamo" the actual prefix of the rig (mixamorig1:, ...) is used when bones are given.
    """
    if preset not in PRESETS:
        raise DPoseError(f"Unknown bone map preset {preset!r}; use one of {', '.join(PRESETS)}.")
    table = PRESETS[preset]
    names = None if bone_names is None else list(bone_names)
    if preset == "mixamo" and names is not None:
        prefix = next((m.group(1) for n in names if (m := _MIXAMO_PREFIX.match(n))), None)
        if prefix:
            table = {j: prefix + b.split(":", 1)[1] for j, b in table.items()}
    present = None if names is None else set(names)
    return {bone: joint for joint, bone in table.items() if present is None or bone in present}


def detect_preset(bone_names: Iterable[str]) -> tuple[str, dict[str, str]]:
    """(preset name, bone map) of the preset that names the most required joints of this rig.

    Raises DPoseError when no preset covers every joint of REQUIRED_JOINTS.
    """
    names = list(bone_names)
    best = None
    for preset in PRESETS:
        mapping = preset_map(preset, names)
        covered = set(mapping.values())
        score = (sum(j in covered for j in REQUIRED_JOINTS), len(mapping))
        if best is None or score > best[0]:
            best = (score, preset, mapping)
    (required, _), preset, mapping = best
    if required < len(REQUIRED_JOINTS):
        missing = [j for j in REQUIRED_JOINTS if j not in set(mapping.values())]
        raise DPoseError(
            f"No bone map preset fits this armature (closest: {preset}, missing "
            f"{', '.join(missing[:4])}); load or edit a bone map."
        )
    return preset, mapping


def check_bone_map(bone_map: dict[str, str], bone_names: Iterable[str]) -> None:
    """One-line DPoseError when the map names unknown bones or joints, maps a joint twice, or
    leaves a required (humanoid) joint unmapped."""
    names = set(bone_names)
    missing = [b for b in bone_map if b not in names]
    if missing:
        raise DPoseError(
            f"The bone map names {len(missing)} bone(s) the armature lacks: "
            f"{', '.join(missing[:4])}; fix the map or pick another armature."
        )
    unknown = [j for j in bone_map.values() if j not in JOINT_NAMES]
    if unknown:
        raise DPoseError(f"The bone map names unknown SMPL-X joints: {', '.join(unknown[:4])}.")
    seen: dict[str, str] = {}
    for bone, joint in bone_map.items():
        if joint in seen:
            raise DPoseError(
                f"Joint {joint!r} is mapped to two bones ({seen[joint]!r} and {bone!r}); "
                "map each joint once."
            )
        seen[joint] = bone
    missing_joints = [j for j in REQUIRED_JOINTS if j not in seen]
    if missing_joints:
        raise DPoseError(
            f"The armature is not humanoid under this bone map: nothing drives "
            f"{', '.join(missing_joints[:4])}; map those bones or choose a preset."
        )


def unmapped_report(bone_map: dict[str, str], bone_names: Iterable[str]) -> str:
    """One readable paragraph: which SMPL-X body joints and which rig bones are not mapped."""
    names = list(bone_names)
    mapped_joints = set(bone_map.values())
    joints = [j for j in JOINT_NAMES if j not in mapped_joints]
    bones = [b for b in names if b not in bone_map]
    return (f"{len(bone_map)} bones mapped; {len(joints)} SMPL-X joints unused"
            f"{': ' + ', '.join(joints[:8]) + ('...' if len(joints) > 8 else '') if joints else ''}"
            f"; {len(bones)} rig bones follow their parent.")


def save_bone_map(path: str | os.PathLike, bone_map: dict[str, str]) -> Path:
    """Write a bone map as JSON, atomically (temp file in the same folder, fsync, rename)."""
    path = Path(path)
    text = json.dumps({"format": FORMAT, "version": FORMAT_VERSION,
                       "bones": dict(bone_map)}, indent=2, sort_keys=True)
    return write_text(path, text + "\n")


def load_bone_map(path: str | os.PathLike) -> dict[str, str]:
    """Read a bone map JSON file (ours, or a plain {bone: joint} object). DPoseError if bad."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DPoseError(f"Bone map {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DPoseError(f"Cannot read bone map {path.name}: {exc}") from None
    bones = data.get("bones", data) if isinstance(data, dict) else None
    if isinstance(data, dict) and "format" in data and data["format"] != FORMAT:
        raise DPoseError(f"{path.name} is not a D-PoSE bone map (format {data['format']!r}).")
    if not isinstance(bones, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in bones.items()
    ):
        raise DPoseError(f"{path.name}: expected an object of bone name -> SMPL-X joint name.")
    return dict(bones)
