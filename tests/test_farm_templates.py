"""The farm job descriptions: the OpenJD template checks and chunks a shot correctly, and the
Flamenco job compiler authors the right task graph (run under Node with a harness of the
documented `author` API). Stand-in commands record what the farm would run; the real solve and
merge are run end to end in test_farm_run.py."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "farm" / "openjd" / "dpose_mocap.yaml"
JOB_TYPE = REPO / "farm" / "flamenco" / "dpose_mocap.js"
HARNESS = Path(__file__).with_name("flamenco_harness.js")
OPENJD = Path(sys.executable).with_name("openjd")

RECORDER = """#!{python}
import json, sys
with open({log!r}, "a") as fh:
    fh.write(json.dumps([{name!r}] + sys.argv[1:]) + "\\n")
"""


def _recorder(tmp_path: Path, name: str, log: Path) -> Path:
    path = tmp_path / name
    path.write_text(RECORDER.format(python=sys.executable, log=str(log), name=name))
    path.chmod(0o755)
    return path


def _openjd_run(tmp_path: Path, **params) -> list[list[str]]:
    """Run the whole job with recording stand-ins for dpose and blender; their argv lists."""
    log = tmp_path / "calls.jsonl"
    values = {"Input": str(tmp_path / "clip.mp4"), "OutputDir": str(tmp_path / "out"),
              "HeadlessScript": str(REPO / "dpose_blender" / "headless.py"),
              "DposeCommand": str(_recorder(tmp_path, "dpose", log)),
              "BlenderExecutable": str(_recorder(tmp_path, "blender", log)), **params}
    args = [str(OPENJD), "run", str(TEMPLATE), "--step", "Merge", "--run-dependencies"]
    for key, value in values.items():
        args += ["-p", f"{key}={value}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return [json.loads(line) for line in log.read_text().splitlines()]


def _option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_openjd_template_passes_check():
    proc = subprocess.run([str(OPENJD), "check", str(TEMPLATE)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "passes validation" in proc.stdout


def test_openjd_job_solves_every_frame_once_then_merges_all_chunks(tmp_path):
    calls = _openjd_run(tmp_path, FrameStart=10, FrameEnd=259, ChunkSize=100, ChunkOverlap=16,
                        PersonBox="-80,-40,260,420", Strict="true", ExportFBX="true",
                        Checkpoint="/models/paper_arxiv.ckpt", Ground="none", FootLock=0.5,
                        SubjectHeight=1.75)
    solves = [c for c in calls if c[0] == "dpose"]
    merges = [c for c in calls if c[0] == "blender"]
    assert len(solves) == 3 and len(merges) == 1
    assert calls[-1] == merges[0]  # the merge runs after every solve
    owned, chunk_files = [], []
    for argv in solves:
        assert argv[1:3] == ["estimate", str(tmp_path / "clip.mp4")]
        start, end = int(_option(argv, "--start")), int(_option(argv, "--end"))
        owned.append((start, end))
        assert int(_option(argv, "--chunk-overlap")) == min(16, start - 10)
        assert "--bbox=-80,-40,260,420" in argv and "--strict" in argv
        assert _option(argv, "--progress") == "openjd"
        chunk_files.append(_option(argv, "-o"))
    assert sorted(owned) == [(10, 110), (110, 210), (210, 260)]
    assert sorted(chunk_files) == [str(tmp_path / "out" / "chunks" / f"chunk_{s:06d}.npz")
                                   for s in (10, 110, 210)]
    merge = merges[0]
    assert merge[1:5] == ["-b", "-y", "--python", str(REPO / "dpose_blender" / "headless.py")]
    rest = merge[merge.index("--") + 1:]
    listed = rest[rest.index("--merge") + 1:rest.index("--frames")]
    assert listed == sorted(chunk_files)
    assert _option(rest, "--frames") == "10-259"
    assert _option(rest, "--fbx") == str(tmp_path / "out" / "motion.fbx")
    assert "--bvh" not in rest and "--strict" in rest
    assert _option(rest, "--checkpoint") == "/models/paper_arxiv.ckpt"
    assert all(_option(argv, "--checkpoint") == "/models/paper_arxiv.ckpt" for argv in solves)
    # Grounding runs once, on the merged shot; the chunks stay raw solves.
    assert _option(rest, "--ground") == "none" and float(_option(rest, "--foot-lock")) == 0.5
    assert float(_option(rest, "--subject-height")) == 1.75
    assert _option(rest, "--report") == str(tmp_path / "out" / "report.json")
    assert not any(a in argv for argv in solves
                   for a in ("--ground", "--foot-lock", "--subject-height", "--report"))


def test_openjd_job_leaves_out_unset_options(tmp_path):
    calls = _openjd_run(tmp_path, FrameEnd=49, ChunkSize=100)
    solve, merge = calls
    assert "--checkpoint" not in solve and not any(a.startswith("--bbox") for a in solve)
    assert "--strict" not in solve and "--strict" not in merge and "--checkpoint" not in merge
    assert (int(_option(solve, "--start")), int(_option(solve, "--end"))) == (0, 50)
    for flag in ("--fbx", "--bvh", "--gltf", "--retarget-to", "--bone-map", "--root-motion"):
        assert flag not in merge, flag
    assert merge[1:4] == ["-b", "-y", "--python"]  # no scene .blend opened
    assert _option(merge, "--ground") == "auto" and float(_option(merge, "--foot-lock")) == 1.0
    assert "--subject-height" not in merge  # 0: the body's own height


def test_openjd_merge_retargets_onto_the_scenes_character_and_exports_it(tmp_path):
    calls = _openjd_run(tmp_path, FrameEnd=49, ChunkSize=100, ExportFBX="true",
                        FbxPreset="unreal", ExportGLTF="true", SceneFile="/shots/hero.blend",
                        RetargetTo="Hero Rig", BoneMap="/maps/hero map.json",
                        RootMotion="in_place")
    merge = calls[-1]
    assert merge[1:5] == ["-b", "-y", "/shots/hero.blend", "--python"]  # opened first
    rest = merge[merge.index("--") + 1:]
    assert _option(rest, "--fbx") == str(tmp_path / "out" / "motion.fbx")
    assert _option(rest, "--fbx-preset") == "unreal"
    assert _option(rest, "--gltf") == str(tmp_path / "out" / "motion.glb")
    assert _option(rest, "--retarget-to") == "Hero Rig"
    assert _option(rest, "--bone-map") == "/maps/hero map.json"
    assert _option(rest, "--root-motion") == "in_place"
    # The merge's arguments parse as the farm script reads them.
    from tests.blender_support import import_blender_module

    args = import_blender_module("headless").build_parser().parse_args(rest)
    assert (args.retarget_to, args.bone_map, args.root_motion, args.fbx_preset) == (
        "Hero Rig", "/maps/hero map.json", "in_place", "unreal")


def _compile_flamenco(tmp_path: Path, **settings) -> dict:
    values = {"input": "/shots/sh010.mp4", "output_dir": "/farm/sh010", "frames": "0-299",
              "chunk_size": 100, "chunk_overlap": 16,
              "headless_script": "/ext/dpose_blender/headless.py", "checkpoint": "",
              "device": "auto", "person_box": "", "smooth": 1.0, "export_fbx": False,
              "export_bvh": False, "export_gltf": False, "fbx_preset": "blender",
              "scene_blend": "", "retarget_to": "", "bone_map": "", "root_motion": "bone",
              "strict": False, "ground": "auto", "foot_lock": 1.0, "subject_height": 0.0,
              **settings}
    path = tmp_path / "settings.json"
    path.write_text(json.dumps(values))
    proc = subprocess.run([shutil.which("node"), str(HARNESS), str(JOB_TYPE), str(path)],
                          capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr.strip().splitlines()[-1] if proc.stderr else "failed")
    return json.loads(proc.stdout)


def test_flamenco_job_type_settings_cover_the_job(tmp_path):
    doc = _compile_flamenco(tmp_path)
    keys = {s["key"] for s in doc["job_type"]["settings"]}
    assert {"input", "output_dir", "frames", "chunk_size", "chunk_overlap", "checkpoint",
            "device", "person_box", "headless_script", "strict", "ground", "foot_lock",
            "subject_height"} <= keys


def test_flamenco_tasks_cover_every_frame_once_and_merge_depends_on_all(tmp_path):
    doc = _compile_flamenco(tmp_path, frames="5-254", chunk_size=100, chunk_overlap=16,
                            checkpoint="/models/paper_arxiv.ckpt", export_bvh=True,
                            ground="none", foot_lock=0.25, subject_height=1.6)
    tasks = {t["name"]: t for t in doc["tasks"]}
    solves = [t for t in doc["tasks"] if t["name"].startswith("solve-")]
    assert [t["name"] for t in solves] == ["solve-5-104", "solve-105-204", "solve-205-254"]
    covered = []
    for task in solves:
        (cmd,) = task["commands"]
        assert task["type"] == "blender" and cmd["name"] == "blender-render"
        params = cmd["parameters"]
        assert (params["exe"], params["exeArgs"], params["blendfile"]) == (
            "{blender}", "{blenderArgs}", "")
        args = params["args"]
        assert args[:3] == ["--python", "/ext/dpose_blender/headless.py", "--"]
        start, end = int(_option(args, "--start")), int(_option(args, "--end"))
        warm = int(_option(args, "--chunk-overlap"))
        assert warm == min(16, start - 5)
        assert cmd["totalStepCount"] == end - start + warm  # one progress step per frame
        assert _option(args, "--checkpoint") == "/models/paper_arxiv.ckpt"
        assert _option(args, "--chunk-output") == f"/farm/sh010/chunks/chunk_{start:06d}.npz"
        assert "--ground" not in args and "--report" not in args  # raw solves
        covered += range(start, end)
    assert covered == list(range(5, 255))
    merge = tasks["merge"]
    assert sorted(merge["dependencies"]) == sorted(t["name"] for t in solves)
    args = merge["commands"][0]["parameters"]["args"]
    listed = args[args.index("--merge") + 1:args.index("--frames")]
    assert listed == [f"/farm/sh010/chunks/chunk_{s:06d}.npz" for s in (5, 105, 205)]
    assert _option(args, "--bvh") == "/farm/sh010/motion.bvh" and "--fbx" not in args
    assert _option(args, "--checkpoint") == "/models/paper_arxiv.ckpt"  # the rig's body model
    assert _option(args, "--ground") == "none" and float(_option(args, "--foot-lock")) == 0.25
    assert float(_option(args, "--subject-height")) == 1.6
    assert _option(args, "--report") == "/farm/sh010/report.json"
    plain = _compile_flamenco(tmp_path)["tasks"][-1]["commands"][0]["parameters"]["args"]
    assert _option(plain, "--ground") == "auto" and "--subject-height" not in plain


@pytest.mark.parametrize("setting, message", [({"ground": "floor"}, "ground must be"),
                                              ({"foot_lock": 2.0}, "foot_lock must be")])
def test_flamenco_refuses_bad_grounding_settings(tmp_path, setting, message):
    with pytest.raises(RuntimeError, match=message):
        _compile_flamenco(tmp_path, **setting)


def test_flamenco_merge_retargets_onto_the_scenes_character(tmp_path):
    doc = _compile_flamenco(tmp_path, frames="0-99", export_fbx=True, fbx_preset="unity",
                            export_gltf=True, scene_blend="/shots/hero.blend",
                            retarget_to="Hero", bone_map="/maps/hero.json",
                            root_motion="object")
    params = {t["name"]: t for t in doc["tasks"]}["merge"]["commands"][0]["parameters"]
    assert params["blendfile"] == "/shots/hero.blend"
    args = params["args"]
    assert _option(args, "--fbx") == "/farm/sh010/motion.fbx"
    assert _option(args, "--fbx-preset") == "unity"
    assert _option(args, "--gltf") == "/farm/sh010/motion.glb"
    assert (_option(args, "--retarget-to"), _option(args, "--bone-map"),
            _option(args, "--root-motion")) == ("Hero", "/maps/hero.json", "object")
    plain = _compile_flamenco(tmp_path)
    params = {t["name"]: t for t in plain["tasks"]}["merge"]["commands"][0]["parameters"]
    assert params["blendfile"] == ""
    assert not {"--retarget-to", "--bone-map", "--gltf", "--fbx-preset"} & set(params["args"])


@pytest.mark.parametrize("frames", ["0-10,20-30", "30-10", "abc"])
def test_flamenco_refuses_frames_that_are_not_one_range(tmp_path, frames):
    with pytest.raises(RuntimeError, match="frames"):
        _compile_flamenco(tmp_path, frames=frames)
