"""Files that are not .npz archives are named for what they are."""

import numpy as np
import pytest

from dpose_core.npz_sniff import npz_problem


def test_a_real_npz_passes(tmp_path):
    path = tmp_path / "m.npz"
    np.savez(path, poses=np.zeros((1, 165)))
    assert npz_problem(path) is None


@pytest.mark.parametrize("content, expected", [
    (b"poses,trans\n0,0\n", "a text file, not a motion .npz archive"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "a PNG image, not a motion .npz archive"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF", "a JPEG image, not a motion .npz archive"),
    (b"", "empty"),
    (b"\x00\xff\x13\x37\x00\x00", "not a NumPy .npz archive (it does not start like a zip file)"),
])
def test_other_files_say_what_they_are(tmp_path, content, expected):
    path = tmp_path / "motion.npz"
    path.write_bytes(content)
    assert npz_problem(path) == expected


def test_a_single_npy_array_is_named(tmp_path):
    path = tmp_path / "poses.npy"
    np.save(path, np.zeros(3))
    assert npz_problem(path) == "a single .npy array, not an .npz archive of named arrays"
