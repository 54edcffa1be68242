"""The run's quality report: what an artist or a farm checks before trusting the motion.

One JSON document per run (`--report R.json` on the CLI and the farm script; curves and
markers on the rig in Blender). Per track and per frame: the network's confidence and flags
(low confidence, interpolated), and, when the refine stage grounded it, the contact states,
foot skate, float, penetration and the 2D reprojection residual against the raw solve
(dpose_core.refine.RefineReport), plus the frames that need a look (`bad_frames`). Other
stages add their own sections through `extra_sections`.

    report = build_report(video_result, video_result.refine_reports,
                          extra_sections={"part_agreement": {...}})
    write_report("run_report.json", report)        # atomic; never bare NaN
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from .motion import FLAG_INTERPOLATED, FLAG_LOW_CONFIDENCE

REPORT_FORMAT = "dpose-quality-report"
REPORT_VERSION = 1
# A frame needs a look when, after refinement, ...
PENETRATION_LIMIT_MM = 10.0  # a foot point is this far below the floor,
FLOAT_LIMIT_MM = 20.0  # a contacting foot hovers this high,
SKATE_LIMIT_MM = 10.0  # a contacting point slides this far in one frame,
REPROJECTION_LIMIT_PX = 5.0  # or locks and floor moved the body this far in the image.


def bad_frames(motion, refine_report=None) -> dict[int, list[str]]:
    """Source frame -> reasons, for the frames of `motion` an artist should look at.

    Reasons: "low confidence", "interpolated" (from the motion's flags), and with a refine
    report "penetration", "float", "foot skate", "reprojection" (over the limits above).
    """
    frames = np.asarray(motion.frame_indices)
    flags = np.asarray(motion.flags)
    checks: list[tuple[str, np.ndarray]] = [
        ("low confidence", (flags & FLAG_LOW_CONFIDENCE) != 0),
        ("interpolated", (flags & FLAG_INTERPOLATED) != 0),
    ]
    if refine_report is not None:
        r = refine_report
        checks += [
            ("penetration", np.asarray(r.penetration_mm) > PENETRATION_LIMIT_MM),
            ("float", np.asarray(r.float_mm) > FLOAT_LIMIT_MM),
            ("foot skate", np.asarray(r.skate_mm) > SKATE_LIMIT_MM),
        ]
        if r.reprojection_beyond_slide_px is not None:
            checks.append(("reprojection",
                           np.asarray(r.reprojection_beyond_slide_px) > REPROJECTION_LIMIT_PX))
    out: dict[int, list[str]] = {}
    for reason, hit in checks:
        for frame in frames[hit]:
            out.setdefault(int(frame), []).append(reason)
    return dict(sorted(out.items()))


def track_report(motion, refine_report=None, not_grounded: str | None = None) -> dict:
    """One person's section: frames, confidence, flags, the refine report, the bad frames."""
    bad = bad_frames(motion, refine_report)
    return {
        "frames": np.asarray(motion.frame_indices).tolist(),
        "fps": float(motion.fps),
        "coordinate_frame": motion.coordinate_frame,
        "confidence": np.round(np.asarray(motion.confidence, np.float64), 4).tolist(),
        "flags": np.asarray(motion.flags).astype(int).tolist(),
        "grounded": refine_report is not None,
        "not_grounded": not_grounded,
        "refine": None if refine_report is None else refine_report.to_dict(),
        "bad_frames": [{"frame": f, "reasons": reasons} for f, reasons in bad.items()],
    }


def build_report(result, refine_reports: dict | None = None,
                 extra_sections: dict[str, Any] | None = None) -> dict:
    """The quality report of a run, as JSON-ready data.

    result: a pipeline.VideoResult (a video run or a farm merge), or a dict key -> Motion
    (a motion file, an image's people). refine_reports: key -> RefineReport for the motions
    the refine stage grounded (default: result.refine_reports). extra_sections: name -> JSON-
    ready data added at the top level (a name already used is refused: ValueError).
    """
    if isinstance(result, dict):
        motions, run, not_refined = result, {}, {}
    else:
        motions, not_refined = result.tracks, dict(getattr(result, "not_refined", {}))
        if refine_reports is None:
            refine_reports = getattr(result, "refine_reports", None)
        run = {
            "source": str(result.source),
            "source_fps": float(result.fps),
            "stride": int(result.stride),
            "frames_processed": int(result.frames_processed),
            "cancelled": bool(result.cancelled),
            "skipped_frames": [{"frame": int(f.index), "reason": str(f.message)}
                               for f in result.failures],
            "unsolved_ranges": [[int(a), int(b)] for a, b in getattr(result, "gaps", [])],
        }
    refine_reports = refine_reports or {}
    tracks = []
    for key in sorted(motions, key=str):
        section = track_report(motions[key], refine_reports.get(key), not_refined.get(key))
        tracks.append({"track": key if isinstance(key, int | np.integer) else str(key),
                       **section})
    report: dict[str, Any] = {"format": REPORT_FORMAT, "version": REPORT_VERSION, **run,
                              "limits": {"penetration_mm": PENETRATION_LIMIT_MM,
                                         "float_mm": FLOAT_LIMIT_MM,
                                         "skate_mm_per_frame": SKATE_LIMIT_MM,
                                         "reprojection_px": REPROJECTION_LIMIT_PX},
                              "tracks": tracks}
    for name, section in (extra_sections or {}).items():
        if name in report:
            raise ValueError(f"report section {name!r} already exists")
        report[name] = section
    return _json_ready(report)


def write_report(path: str | os.PathLike, report: dict) -> Path:
    """Write the report as JSON, atomically (OutputError, one line, when it cannot be)."""
    import json

    from .atomic_io import write_text

    return write_text(path, json.dumps(_json_ready(report), indent=1, allow_nan=False) + "\n")


def _json_ready(value):
    """numpy values as Python ones, non-finite numbers as null (JSON has no NaN)."""
    if isinstance(value, dict):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return _json_ready(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
