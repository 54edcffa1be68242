"""`dpose` end to end on the random checkpoint: info, convert, estimate (json + npz), doctor."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from dpose_core import onnx_model
from dpose_core.cli import main

REPO = Path(__file__).resolve().parents[1]
BOX = "40,30,260,400"


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[Path]:
    cv2 = pytest.importorskip("cv2")
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for k, (h, w) in enumerate([(420, 300), (500, 640)]):
        rgb = np.random.default_rng(k).integers(0, 256, (h, w, 3), dtype=np.uint8)
        path = folder / f"img{k}.png"
        cv2.imwrite(str(path), rgb[:, :, ::-1])
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("dpose_cache")


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, cache_dir):
    monkeypatch.setenv("DPOSE_CACHE", str(cache_dir))
    monkeypatch.delenv("DPOSE_CHECKPOINT", raising=False)


def test_info_reports_a_valid_checkpoint(checkpoint_path, capsys):
    assert main(["info", str(checkpoint_path)]) == 0
    out = capsys.readouterr().out
    assert "strict network check: OK" in out and "2309" in out


def test_convert_without_torch_writes_graph_and_weights(checkpoint_path, tmp_path):
    out = tmp_path / "export" / "dpose.onnx"
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules["torch"] = None
        from dpose_core.cli import main
        sys.exit(main(["convert", {str(checkpoint_path)!r}, "-o", {str(out)!r}]))
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                            text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == onnx_model.TEMPLATE_PATH.read_bytes()
    layout = onnx_model.template_layout()
    weights = out.parent / onnx_model.WEIGHTS_FILE
    assert weights.stat().st_size == layout[-1].offset + layout[-1].nbytes
    from dpose_core.checkpoint import load_checkpoint_arrays

    arrays = load_checkpoint_arrays(checkpoint_path)
    for entry in (layout[0], layout[len(layout) // 2], layout[-1]):
        stored = np.fromfile(weights, dtype=entry.dtype, count=int(np.prod(entry.shape)),
                             offset=entry.offset).reshape(entry.shape)  # fmt: skip
        np.testing.assert_array_equal(stored, arrays[entry.name])


def test_estimate_json_and_npz(checkpoint_path, images, tmp_path, capsys):
    out_json = tmp_path / "out.json"
    args = ["estimate", *map(str, images), "--checkpoint", str(checkpoint_path), "--bbox", BOX]
    assert main([*args, "-o", str(out_json), "--device", "cpu"]) == 0
    doc = json.loads(out_json.read_text())
    assert doc["image_paths"] == [str(p) for p in images]
    assert doc["backend"] == "onnxruntime" and doc["device"] == "CPUExecutionProvider"
    assert "depth" not in doc and "part_logits" not in doc and "part_labels" not in doc
    assert np.shape(doc["joints2d"]) == (2, 127, 2)
    assert doc["image_index"] == [0, 1]
    assert doc["image_size"] == [[300, 420], [640, 500]]
    assert doc["focal_px"][0][0] == pytest.approx(np.hypot(300, 420))

    out_npz = tmp_path / "out.npz"
    assert main(["estimate", str(images[1]), "--checkpoint", str(checkpoint_path),
                 "--bbox", BOX, "-o", str(out_npz), "--batch", "1"]) == 0  # fmt: skip
    with np.load(out_npz) as npz:
        assert npz["depth"].shape == (1, 224, 224)
        assert npz["part_labels"].dtype == np.uint8
        assert str(npz["image_paths"][0]) == str(images[1])
        # Same image and box as the JSON's second crop: same answer.
        np.testing.assert_allclose(npz["rotmats"][0], doc["rotmats"][1], atol=1e-4)
        np.testing.assert_allclose(npz["cam_t"][0], doc["cam_t"][1], rtol=1e-4)
    assert "wrote" in capsys.readouterr().err


def test_estimate_rejects_unknown_output_format(checkpoint_path, images, capsys):
    rc = main(["estimate", str(images[0]), "--checkpoint", str(checkpoint_path), "-o", "x.csv"])
    assert rc == 2
    assert "json or .npz" in capsys.readouterr().err


def test_doctor_passes_with_checkpoint_and_body_model(checkpoint_path, body_model_npz, capsys):
    rc = main(["doctor", "--checkpoint", str(checkpoint_path), "--body-model", str(body_model_npz)])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "onnxruntime" in out and "all required parts found" in out


def test_doctor_fails_and_explains_a_missing_checkpoint(tmp_path, capsys):
    rc = main(["doctor", "--checkpoint", str(tmp_path / "missing.ckpt")])
    out = capsys.readouterr().out
    assert rc == 1
    assert "MISSING" in out and "DPOSE_CHECKPOINT" in out and "paper_arxiv.ckpt" in out


def test_missing_checkpoint_is_one_clear_line_and_exit_2(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dpose_core.cli", "info", str(tmp_path / "nope.ckpt")],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dpose: error:")
    assert "DPOSE_CHECKPOINT" in lines[0] and "Traceback" not in result.stderr


def test_estimate_without_bbox_finds_people_or_uses_the_whole_image(
    checkpoint_path, images, tmp_path
):
    out = tmp_path / "found.json"
    assert main(["estimate", str(images[0]), "--checkpoint", str(checkpoint_path),
                 "-o", str(out)]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    assert len(doc["rotmats"]) >= 1 and set(doc["image_index"]) == {0}
    assert np.shape(doc["crop_box"])[1] == 4


def test_folder_with_a_box_and_a_stride(checkpoint_path, tmp_path, capsys):
    """A folder through the video pipeline: two frames with --bbox are a track (a drawn box
    needs no three frames), and the file's rate is the rows' rate (24 fps, stride 2 -> 12)."""
    cv2 = pytest.importorskip("cv2")
    folder = tmp_path / "clip"
    folder.mkdir()
    for k in range(3):
        frame = np.random.default_rng(10 + k).integers(0, 256, (240, 320, 3), dtype=np.uint8)
        cv2.imwrite(str(folder / f"frame{k:03d}.png"), frame)
    out = tmp_path / "motion.npz"
    rc = main(["estimate", str(folder), "--checkpoint", str(checkpoint_path), "--bbox",
               "60,20,220,230", "--smooth", "0", "--fps", "24", "--stride", "2",
               "-o", str(out)])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    with np.load(out) as npz:
        np.testing.assert_array_equal(npz["dpose_frame_indices"], [0, 2])
        assert float(npz["mocap_frame_rate"]) == 12.0 and float(npz["dpose_source_fps"]) == 24.0
    assert "track 0: 2 frames (12 per second)" in capsys.readouterr().out


def test_a_box_partly_outside_and_person_largest(checkpoint_path, images, tmp_path):
    """`--bbox -80,-40,260,420` is a box, not an option; --person largest keeps the bigger."""
    out = tmp_path / "largest.json"
    assert main(["estimate", str(images[0]), "--checkpoint", str(checkpoint_path),
                 "--bbox", "-80,-40,260,420", "--bbox", "100,100,160,200",
                 "--person", "largest", "-o", str(out)]) == 0  # fmt: skip
    doc = json.loads(out.read_text())
    assert doc["box_center"] == [[90.0, 190.0]]  # the first box, used as given


def test_estimate_output_folder_case_and_cuda_note(checkpoint_path, images, tmp_path, capsys):
    """-o in a folder not made yet is created; .NPZ is an npz; a CUDA fallback is said once."""
    ort = pytest.importorskip("onnxruntime")
    out = tmp_path / "new" / "sub" / "OUT.NPZ"
    assert main(["estimate", str(images[0]), "--checkpoint", str(checkpoint_path),
                 "--bbox", BOX, "--device", "cuda", "-o", str(out)]) == 0  # fmt: skip
    with np.load(out) as npz:
        assert npz["depth"].shape == (1, 224, 224)
    err = capsys.readouterr().err
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    assert err.count("CUDA was requested") == (0 if has_cuda else 1), err


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--bbox", "5000,5000,9000,9000"], "outside the 300x420 image"),
        (["--bbox", BOX, "-o", "{tmp}/file.txt/out.json"], "choose another -o"),
        (["--bbox", BOX, "-o", "{tmp}/folder.json"], "it is a folder; choose another output"),
        # /proc takes no new files, even from root (for whom os.access says yes)
        pytest.param(["--bbox", BOX, "-o", "/proc/dpose_out.json"], "choose another output",
                     marks=pytest.mark.skipif(not Path("/proc/self").exists(), reason="no /proc")),
    ],
)
def test_estimate_bad_box_or_output_fails_before_running(
    checkpoint_path, images, tmp_path, capsys, extra, message
):
    (tmp_path / "file.txt").write_text("in the way")
    (tmp_path / "folder.json").mkdir()
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    rc = main(["estimate", str(images[0]), "--checkpoint", str(checkpoint_path), *extra])
    err = capsys.readouterr().err
    assert rc == 2 and message in err and "wrote" not in err


def test_convert_to_an_unwritable_place_is_one_clear_error(checkpoint_path, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("in the way")
    rc = main(["convert", str(checkpoint_path), "-o", str(tmp_path / "file.txt" / "m.onnx")])
    assert rc == 2 and "choose another -o" in capsys.readouterr().err


def test_doctor_says_a_truncated_checkpoint_is_broken_not_missing(tmp_path, capsys):
    broken = tmp_path / "paper_arxiv.ckpt"
    broken.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    assert main(["doctor", "--checkpoint", str(broken)]) == 1
    out = capsys.readouterr().out
    assert "[   FAIL] checkpoint" in out and "MISSING" not in out


@pytest.mark.parametrize(
    "option", [["--start", "-1"], ["--start", "5", "--end", "2"], ["--stride", "0"],
               ["--fps", "-3"], ["--fps", "0"], ["--smooth", "-1"], ["--focal", "nan"],
               ["--person", "-1"], ["--person", "abc"], ["--fov", "0"], ["--batch", "0"]],
)
def test_bad_frame_options_are_one_clear_error(option, tmp_path, capsys):
    (tmp_path / "clip").mkdir()
    rc = main(["estimate", str(tmp_path / "clip"), "-o", str(tmp_path / "m.npz"), *option])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("dpose: error: --") and len(err.splitlines()) == 1, err


def test_one_bad_image_among_several_is_skipped_not_fatal(checkpoint_path, images, tmp_path,
                                                          capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 cut short")
    out = tmp_path / "some.json"
    rc = main(["estimate", str(broken), str(images[0]), "--checkpoint", str(checkpoint_path),
               "--bbox", BOX, "-o", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 1 and "skipped: Cannot decode image" in err and "1 of 2 images skipped" in err
    doc = json.loads(out.read_text())
    assert doc["image_index"] == [1] and doc["image_paths"][1] == str(images[0])


@pytest.fixture(scope="module")
def nan_checkpoint(tmp_path_factory, body_model_npz) -> Path:
    """The random checkpoint with its first convolution's weights set to NaN."""
    from tests.synth_checkpoint import write_random_checkpoint

    def poison(state):
        key = next(k for k in state if k.startswith("model.") and k.endswith("conv1.weight"))
        state[key] = np.full_like(state[key], np.nan)

    path = tmp_path_factory.mktemp("nan") / "paper_arxiv.ckpt"
    return write_random_checkpoint(path, body_model_npz, seed=0, edit_state=poison)


def _bad_inputs(tmp: Path) -> dict[str, Path]:
    cv2 = pytest.importorskip("cv2")
    short, broken = tmp / "short", tmp / "broken"
    short.mkdir()
    broken.mkdir()
    for k in range(2):
        cv2.imwrite(str(short / f"f{k}.png"), np.full((60, 40, 3), 90, np.uint8))
    for k in range(3):
        (broken / f"f{k}.png").write_bytes(b"not a png")
    (tmp / "body.npz").write_text("not a body model")
    return {"short": short, "broken": broken, "model": tmp / "body.npz",
            "photo": short / "f0.png"}


@pytest.mark.parametrize("case, args, message", [
    ("person", ["{photo}", "--person", "tallest", "-o", "{tmp}/o.json"],
     "--person must be 'all', 'largest' or a number"),
    ("start", ["{short}", "--start", "9", "-o", "{tmp}/m.npz"],
     "--start 9 is past the end of"),
    ("body model", ["{photo}", "--body-model", "{model}", "-o", "{tmp}/o.json"],
     "Cannot read SMPL-X file"),
    ("unreadable", ["{broken}", "--bbox", "0,0,20,20", "-o", "{tmp}/m.npz"],
     "None of the 3 frames of"),
    # NaN weights are refused when the checkpoint is read, before any frame (the network's
    # own non-finite output is tested with stand-ins in test_pipeline.py)
    ("nan", ["{photo}", "--bbox", "0,0,40,60", "--checkpoint", "{nan}", "-o", "{tmp}/o.json"],
     "has weights that are not finite numbers (NaN or inf) in 1 tensor"),
    ("nan video", ["{short}", "--bbox", "0,0,40,60", "--checkpoint", "{nan}", "-o",
                   "{tmp}/m.npz"], "has weights that are not finite numbers (NaN or inf)"),
])
def test_each_bad_input_is_one_line_exit_2_in_a_subprocess(case, args, message, tmp_path,
                                                          checkpoint_path, nan_checkpoint,
                                                          cache_dir):
    paths = {k: str(v) for k, v in _bad_inputs(tmp_path).items()}
    paths.update(tmp=str(tmp_path), nan=str(nan_checkpoint))
    argv = [a.format(**paths) for a in args]
    if "--checkpoint" not in argv:
        argv += ["--checkpoint", str(checkpoint_path)]
    env = {**os.environ, "DPOSE_CACHE": str(cache_dir), "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "dpose_core.cli", "estimate", *argv,
                             "--device", "cpu"], cwd=REPO, capture_output=True, text=True,
                            timeout=600, env=env)
    errors = [ln for ln in result.stderr.splitlines() if ln.startswith("dpose: error:")]
    assert result.returncode == 2, result.stderr
    assert len(errors) == 1 and message in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.glob("o.json")) and not list(tmp_path.glob("m*.npz"))  # no output


def test_the_add_on_runs_without_tqdm_or_colorama():
    """The zip no longer carries tqdm/colorama: nothing the add-on or the pipeline imports
    needs them (the CLI's bar falls back to plain lines)."""
    script = (
        "import sys\n"
        "sys.modules['tqdm'] = None\n"
        "sys.modules['colorama'] = None\n"
        "import dpose_core.pipeline, dpose_core.sequence, dpose_core.cli\n"
        "bar = dpose_core.cli._Progress(5, 'x', 'frame')\n"
        "bar.progress(1, 5)\n"
        "bar.write('ok')\n"
        "print(bar.bar)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.split() == ["ok", "None"], proc.stderr
