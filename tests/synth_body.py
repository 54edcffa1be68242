"""A synthetic SMPL-X body model: the real array shapes, keys and kinematic tree, made-up values.

The licensed SMPLX_NEUTRAL.npz cannot be shipped, so tests build a stand-in that the `smplx`
package loads like the real file. Vertices cluster around a rough T-pose skeleton, so the body
looks like a person (useful for silhouettes and projections), and each vertex is skinned mostly to
the joint it surrounds.
"""

from pathlib import Path

import numpy as np

from dpose_core.skeleton import NUM_FACES, NUM_JOINTS, NUM_VERTICES, PARENTS

# Rough offsets from the parent joint, metres, SMPL-X model frame (y up, facing +z).
_BODY_OFFSETS = {
    0: (0.0, 0.0, 0.0), 1: (0.08, -0.08, 0.0), 2: (-0.08, -0.08, 0.0), 3: (0.0, 0.11, -0.02),
    4: (0.02, -0.38, 0.0), 5: (-0.02, -0.38, 0.0), 6: (0.0, 0.13, 0.0), 7: (0.0, -0.40, -0.04),
    8: (0.0, -0.40, -0.04), 9: (0.0, 0.05, 0.02), 10: (0.02, -0.05, 0.12),
    11: (-0.02, -0.05, 0.12), 12: (0.0, 0.22, -0.02), 13: (0.08, 0.12, -0.01),
    14: (-0.08, 0.12, -0.01), 15: (0.0, 0.08, 0.05),
    16: (0.11, 0.03, 0.0), 17: (-0.11, 0.03, 0.0), 18: (0.26, 0.0, 0.0), 19: (-0.26, 0.0, 0.0),
    20: (0.25, 0.0, 0.0), 21: (-0.25, 0.0, 0.0), 22: (0.0, 0.02, 0.03), 23: (0.03, 0.06, 0.08),
    24: (-0.03, 0.06, 0.08),
}  # fmt: skip


def _rest_targets(rng: np.random.Generator) -> np.ndarray:
    """Joint positions of a rough T-pose; fingers splay out of the wrists."""
    joints = np.zeros((NUM_JOINTS, 3))
    joints[0] = (0.0, 0.0, 0.0)
    for j in range(1, NUM_JOINTS):
        parent = PARENTS[j]
        if j in _BODY_OFFSETS:
            offset = np.array(_BODY_OFFSETS[j])
        else:  # finger segments: 5 chains of 3 per hand, pointing away from the body
            side = 1.0 if j < 40 else -1.0
            finger = ((j - 25) % 15) // 3
            offset = np.array([side * 0.035, 0.0, 0.02 * (finger - 2)])
            if PARENTS[j] in (20, 21):
                offset[0] *= 2.5
        joints[j] = joints[parent] + offset + rng.normal(0, 0.003, 3)
    return joints


def synthetic_smplx_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """The arrays of an SMPL-X v1.1 neutral .npz (keys and shapes as smplx 0.1.28 reads them)."""
    rng = np.random.default_rng(seed)
    targets = _rest_targets(rng)
    owner = rng.integers(0, NUM_JOINTS, NUM_VERTICES)
    owner[:NUM_JOINTS] = np.arange(NUM_JOINTS)  # every joint owns at least one vertex
    radius = np.where(owner < 25, 0.06, 0.012)[:, None]
    v_template = targets[owner] + rng.normal(0, 1, (NUM_VERTICES, 3)) * radius

    j_regressor = np.zeros((NUM_JOINTS, NUM_VERTICES))
    for j in range(NUM_JOINTS):
        members = np.flatnonzero(owner == j)[:20]
        w = rng.uniform(0.5, 1.0, members.size)
        j_regressor[j, members] = w / w.sum()

    weights = np.zeros((NUM_VERTICES, NUM_JOINTS))
    main = rng.uniform(0.6, 1.0, NUM_VERTICES)
    weights[np.arange(NUM_VERTICES), owner] = main
    parents = np.array(PARENTS)
    has_parent = parents[owner] >= 0
    idx = np.flatnonzero(has_parent)
    weights[idx, parents[owner[idx]]] += 1.0 - main[idx]
    weights[~has_parent, owner[~has_parent]] = 1.0

    faces = rng.integers(0, NUM_VERTICES, (NUM_FACES, 3))
    kintree = np.stack([np.where(parents < 0, 2**32 - 1, parents), np.arange(NUM_JOINTS)])
    return {
        "v_template": v_template,
        "shapedirs": rng.normal(0, 0.004, (NUM_VERTICES, 3, 400)),
        "posedirs": rng.normal(0, 0.002, (NUM_VERTICES, 3, (NUM_JOINTS - 1) * 9)),
        "J_regressor": j_regressor,
        "kintree_table": kintree.astype(np.int64),
        "weights": weights,
        "f": faces.astype(np.uint32),
        "hands_componentsl": rng.normal(0, 0.1, (45, 45)),
        "hands_componentsr": rng.normal(0, 0.1, (45, 45)),
        "hands_meanl": rng.normal(0, 0.1, 45),
        "hands_meanr": rng.normal(0, 0.1, 45),
        "lmk_faces_idx": rng.integers(0, NUM_FACES, 51).astype(np.int64),
        "lmk_bary_coords": rng.dirichlet(np.ones(3), 51),
        "dynamic_lmk_faces_idx": rng.integers(0, NUM_FACES, (79, 17)).astype(np.int64),
        "dynamic_lmk_bary_coords": rng.dirichlet(np.ones(3), (79, 17)),
    }


def write_synthetic_smplx_npz(path: Path, seed: int = 0) -> Path:
    """Write the synthetic model where smplx (and our loader) expect SMPLX_NEUTRAL.npz."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **synthetic_smplx_arrays(seed))
    return path
