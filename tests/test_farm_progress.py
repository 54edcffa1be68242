"""Farm progress lines: what an OpenJD runtime and a Flamenco worker parse."""

import io
import re

import pytest

from dpose_core.farm_progress import FarmProgress, frame_ranges


def test_openjd_lines_give_whole_percents_once_each():
    out = io.StringIO()
    progress = FarmProgress("openjd", out)
    progress.status("solving frames 0-199")
    for done in range(1, 201):
        progress(done, 200)
    progress.fail("2 frames skipped: 5, 9")
    lines = out.getvalue().splitlines()
    assert lines[0] == "openjd_status: solving frames 0-199"
    percents = [int(line.split(": ")[1]) for line in lines[1:-1]]
    assert percents == list(range(0, 101))
    assert all(re.fullmatch(r"openjd_progress: \d{1,3}", line) for line in lines[1:-1])
    assert lines[-1] == "openjd_fail: 2 frames skipped: 5, 9"


def test_flamenco_counts_one_time_line_per_frame():
    out = io.StringIO()
    progress = FarmProgress("flamenco", out)
    progress(1, 10)
    progress(4, 10)  # three frames done at once still count three steps
    progress(4, 10)
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    # the Flamenco worker's pattern for a finished step
    assert all(re.match(r"^Time: ([0-9:.]+)", line) for line in lines)


def test_unknown_style_is_refused():
    with pytest.raises(ValueError, match="openjd, flamenco"):
        FarmProgress("deadline10")


def test_frame_ranges_read_as_an_operator_would():
    assert frame_ranges([9, 3, 4, 5, 11, 12]) == "3-5, 9, 11-12"
    assert frame_ranges([]) == ""
