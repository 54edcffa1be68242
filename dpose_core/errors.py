"""Typed, user-facing errors: each message says what went wrong and what to do."""


class DPoseError(Exception):
    """Base class for every error this package raises on purpose."""


class CheckpointError(DPoseError):
    """The checkpoint is missing, unreadable, unsafe or not the D-PoSE network."""


class UnsafePickleError(CheckpointError):
    """A pickle asked for a global that is not on the allow-list; nothing was executed."""


class BodyModelError(DPoseError):
    """The SMPL-X body model file is missing or has the wrong contents."""


class FrameError(DPoseError):
    """An image or video frame could not be read."""


class NoPersonError(DPoseError):
    """No person was found where one was expected."""


class NonFiniteOutputError(DPoseError):
    """The network returned NaN or inf (damaged weights): never written to a file."""


class MotionFileError(DPoseError):
    """A motion file is unreadable or lacks the SMPL-X keys."""


class CancelledError(DPoseError):
    """The user cancelled a running job."""
