"""Several people of one shot in one world: the first grounded person's.

The refine stage grounds each person on their own (own floor fit, origin under their own first
pelvis, own track scale), but they were all filmed by one camera. So every other person is
moved rigidly, frame by frame, into the first person's world, by the transform that makes
their cameras agree: M_t = C_first(f) inv(C_this(f)), C = camera-to-world, f the frame both
have that is nearest to t. Through the camera each body stays exactly where it was.
"""

from __future__ import annotations

import numpy as np

from .motion import Motion


def world_moves(frames: np.ndarray, cams: np.ndarray, first_frames: np.ndarray,
                first_cams: np.ndarray) -> np.ndarray:
    """(N,4,4) moves from one person's world into the first person's, per frame of `frames`.

    frames (N,), cams (N,4,4): this person's source frames and camera-to-world; first_*: the
    first person's. Frames the first person lacks use the move of the nearest frame both have
    (with no frame in common: of the two frames nearest in time). Applying the moves and then
    asking again gives identities, so a world may be shared twice without harm.
    """
    frames = np.asarray(frames)
    first_frames = np.asarray(first_frames)
    common, mine, theirs = np.intersect1d(frames, first_frames, return_indices=True)
    if len(common):
        at = np.abs(common[None, :] - frames[:, None]).argmin(axis=1)
        return first_cams[theirs[at]] @ np.linalg.inv(cams[mine[at]])
    gap = np.abs(first_frames[None, :] - frames[:, None])
    i, j = np.unravel_index(np.argmin(gap), gap.shape)
    return np.broadcast_to(first_cams[j] @ np.linalg.inv(cams[i]), (len(frames), 4, 4)).copy()


def moved_motion(motion: Motion, moves: np.ndarray, pelvis_rest: np.ndarray) -> Motion:
    """The motion and its cameras carried rigidly by moves (N,4,4) (the root turns about the
    pelvis, whose rest position is pelvis_rest)."""
    rot = motion.rotmats.copy()
    rot[:, 0] = moves[:, :3, :3] @ motion.rotmats[:, 0]
    pelvis = motion.transl + pelvis_rest
    transl = np.einsum("nab,nb->na", moves[:, :3, :3], pelvis) + moves[:, :3, 3] - pelvis_rest
    return motion.replace(rotmats=rot, transl=transl,
                          camera_to_world=moves @ motion.camera_to_world)
