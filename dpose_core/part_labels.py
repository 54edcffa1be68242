"""Which of D-PoSE's 23 segmentation classes each SMPL-X vertex belongs to.

The network's part map was trained on renders of the body coloured by a 22-part vertex
segmentation, turned into class numbers by a bucketing step that merges the first two parts
and never produces class 1 (see docs/part-labels.md). We derive a vertex's part from its
skinning instead of shipping that segmentation: the joint with the largest blend weight names
the part, so the labels follow any SMPL-X model file, the checkpoint's own or a user's.
"""

from __future__ import annotations

import weakref

import numpy as np

from .constants import NUM_PART_CLASSES
from .skeleton import JOINT_NAMES, NUM_JOINTS

BACKGROUND_CLASS = 0
UNUSED_CLASS = 1  # the training labels never contain it (docs/part-labels.md)

# The network's 22 body parts in the order of its training segmentation (Mixamo-style names).
SEGMENTATION_PART_ORDER: tuple[str, ...] = (
    "rightHand", "rightUpLeg", "leftArm", "head", "leftLeg", "leftToeBase", "leftFoot",
    "spine1", "spine2", "leftShoulder", "rightShoulder", "rightFoot", "rightArm", "rightLeg",
    "leftForeArm", "rightForeArm", "neck", "rightToeBase", "spine", "leftUpLeg", "leftHand",
    "hips",
)  # fmt: skip


def _class_of_part(order_index: int) -> int:
    """Training-label class of the part at `order_index`: the first two share class 2."""
    return 2 if order_index < 2 else order_index + 1


PART_CLASS: dict[str, int] = {
    name: _class_of_part(i) for i, name in enumerate(SEGMENTATION_PART_ORDER)
}

# Plain-words names for the parts, for legends (the Mixamo names mislead: "leftArm" is the
# upper arm, "leftLeg" the lower leg, "spine2" the chest).
_PART_DISPLAY = {
    "rightHand": "right hand", "rightUpLeg": "right thigh", "leftArm": "left upper arm",
    "head": "head", "leftLeg": "left lower leg", "leftToeBase": "left toes",
    "leftFoot": "left foot", "spine1": "middle spine", "spine2": "chest",
    "leftShoulder": "left shoulder", "rightShoulder": "right shoulder", "rightFoot": "right foot",
    "rightArm": "right upper arm", "rightLeg": "right lower leg", "leftForeArm": "left forearm",
    "rightForeArm": "right forearm", "neck": "neck", "rightToeBase": "right toes",
    "spine": "lower spine", "leftUpLeg": "left thigh", "leftHand": "left hand", "hips": "hips",
}  # fmt: skip

# One legend name per class; class 2 holds two parts, class 1 is never predicted on purpose.
CLASS_NAMES: tuple[str, ...] = tuple(
    "background" if c == BACKGROUND_CLASS
    else "unused" if c == UNUSED_CLASS
    else " + ".join(_PART_DISPLAY[n] for n in SEGMENTATION_PART_ORDER if PART_CLASS[n] == c)
    for c in range(NUM_PART_CLASSES)
)  # fmt: skip

# SMPL-X joint -> segmentation part. The Mixamo names are off by one on the spine: SMPL-X
# spine1/2/3 are the parts spine/spine1/spine2. Jaw and eyes belong to the head, finger
# joints to their hand.
_BODY_JOINT_PART = {
    "pelvis": "hips", "left_hip": "leftUpLeg", "right_hip": "rightUpLeg", "spine1": "spine",
    "left_knee": "leftLeg", "right_knee": "rightLeg", "spine2": "spine1",
    "left_ankle": "leftFoot", "right_ankle": "rightFoot", "spine3": "spine2",
    "left_foot": "leftToeBase", "right_foot": "rightToeBase", "neck": "neck",
    "left_collar": "leftShoulder", "right_collar": "rightShoulder", "head": "head",
    "left_shoulder": "leftArm", "right_shoulder": "rightArm", "left_elbow": "leftForeArm",
    "right_elbow": "rightForeArm", "left_wrist": "leftHand", "right_wrist": "rightHand",
    "jaw": "head", "left_eye_smplhf": "head", "right_eye_smplhf": "head",
}  # fmt: skip


def _joint_part(name: str) -> str:
    if name in _BODY_JOINT_PART:
        return _BODY_JOINT_PART[name]
    if name.startswith("left_"):  # finger joints
        return "leftHand"
    if name.startswith("right_"):
        return "rightHand"
    raise ValueError(f"no segmentation part for SMPL-X joint {name!r}")


# (55,) uint8: class of the part each SMPL-X joint's skinned vertices belong to.
JOINT_CLASS: np.ndarray = np.array(
    [PART_CLASS[_joint_part(n)] for n in JOINT_NAMES], dtype=np.uint8
)
assert JOINT_CLASS.shape == (NUM_JOINTS,)

_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def vertex_part_classes(lbs_weights: np.ndarray) -> np.ndarray:
    """(V,55) skinning weights -> (V,) uint8 class of each vertex (its dominant joint's part)."""
    w = np.asarray(lbs_weights)
    if w.ndim != 2 or w.shape[1] != NUM_JOINTS:
        raise ValueError(f"lbs_weights must be (V, {NUM_JOINTS}), got {w.shape}")
    return JOINT_CLASS[np.argmax(w, axis=1)]


def body_model_part_classes(body_model) -> np.ndarray:
    """Vertex classes of a `BodyModel`, computed once per model object (read-only array)."""
    classes = _CACHE.get(body_model)
    if classes is None:
        classes = vertex_part_classes(body_model.lbs_weights)
        classes.setflags(write=False)
        _CACHE[body_model] = classes
    return classes
