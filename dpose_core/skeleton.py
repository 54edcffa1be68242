"""SMPL-X skeleton facts in one place: joint names, parents and the selected vertices.

Names follow the SMPL-X Blender add-on so that animations move between tools.
Order is the SMPL-X joint order used by the body model, the network and motion files.
"""

JOINT_NAMES: tuple[str, ...] = (
    "pelvis", "left_hip", "right_hip", "spine1", "left_knee", "right_knee", "spine2",
    "left_ankle", "right_ankle", "spine3", "left_foot", "right_foot", "neck",
    "left_collar", "right_collar", "head", "left_shoulder", "right_shoulder",
    "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "jaw", "left_eye_smplhf", "right_eye_smplhf",
    "left_index1", "left_index2", "left_index3",
    "left_middle1", "left_middle2", "left_middle3",
    "left_pinky1", "left_pinky2", "left_pinky3", "left_ring1", "left_ring2", "left_ring3",
    "left_thumb1", "left_thumb2", "left_thumb3",
    "right_index1", "right_index2", "right_index3",
    "right_middle1", "right_middle2", "right_middle3",
    "right_pinky1", "right_pinky2", "right_pinky3", "right_ring1", "right_ring2", "right_ring3",
    "right_thumb1", "right_thumb2", "right_thumb3",
)  # fmt: skip

# Parent of each joint (-1 for the root), the SMPL-X kinematic tree.
PARENTS: tuple[int, ...] = (
    -1, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 12, 13, 14, 16, 17, 18, 19,
    15, 15, 15,
    20, 25, 26, 20, 28, 29, 20, 31, 32, 20, 34, 35, 20, 37, 38,
    21, 40, 41, 21, 43, 44, 21, 46, 47, 21, 49, 50, 21, 52, 53,
)  # fmt: skip

NUM_JOINTS = 55
# The network predicts the global orientation (index 0) and the 21 body joints.
NUM_PREDICTED_JOINTS = 22
NUM_BETAS = 11

# Joints 55-75 of the 127 output joints are read off these vertices, in this order.
VERTEX_JOINTS: tuple[tuple[str, int], ...] = (
    ("nose", 9120), ("right_eye", 9929), ("left_eye", 9448), ("right_ear", 616), ("left_ear", 6),
    ("left_big_toe", 5770), ("left_small_toe", 5780), ("left_heel", 8846),
    ("right_big_toe", 8463), ("right_small_toe", 8474), ("right_heel", 8635),
    ("left_thumb", 5361), ("left_index", 4933), ("left_middle", 5058), ("left_ring", 5169),
    ("left_pinky", 5286),
    ("right_thumb", 8079), ("right_index", 7669), ("right_middle", 7794), ("right_ring", 7905),
    ("right_pinky", 8022),
)  # fmt: skip
NUM_LANDMARKS = 51
NUM_OUTPUT_JOINTS = NUM_JOINTS + len(VERTEX_JOINTS) + NUM_LANDMARKS  # 127

NUM_VERTICES = 10475
NUM_FACES = 20908

assert len(JOINT_NAMES) == NUM_JOINTS and len(PARENTS) == NUM_JOINTS
assert NUM_OUTPUT_JOINTS == 127
