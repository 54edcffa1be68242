"""Say what a file is when it is not the .npz archive it was given as, from its first bytes.

``numpy.load`` reads anything that is not a zip or .npy header as a pickle, so a text file or a
PNG renamed to .npz fails as "pickled data" (and, with pickles refused, as "stores Python
objects"): the wrong reason. Checking the signature first gives the right one.
"""

from __future__ import annotations

from pathlib import Path

_ZIP = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or an empty archive
_NPY = b"\x93NUMPY"
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"RIFF", "a RIFF file (AVI video, WAV audio or WebP image)"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM video"),
    (b"%PDF", "a PDF document"),
    (b"BLENDER", "a .blend file"),
    (b"\x80", "a Python pickle"),
)
_HEAD_BYTES = 512


def npz_problem(path: str | Path) -> str | None:
    """None when ``path`` starts like a zip archive (an .npz); else what it is instead.

    The answer completes "<name> is ...", e.g. "a PNG image, not a motion .npz archive".
    """
    with open(path, "rb") as fh:
        head = fh.read(_HEAD_BYTES)
    if head.startswith(_ZIP):
        return None
    if not head:
        return "empty"
    if head.startswith(_NPY):
        return "a single .npy array, not an .npz archive of named arrays"
    for signature, what in _SIGNATURES:
        if head.startswith(signature):
            return f"{what}, not a motion .npz archive"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return "not a NumPy .npz archive (it does not start like a zip file)"
    if all(c.isprintable() or c in "\r\n\t" for c in text):
        return "a text file, not a motion .npz archive"
    return "not a NumPy .npz archive (it does not start like a zip file)"
