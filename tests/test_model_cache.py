"""The converted-model cache heals itself: a manifest of sizes and sha256 digests is checked on
open, a damaged entry is rebuilt, builds are atomic, leftovers of killed builds are removed,
concurrent builds both succeed, and `dpose convert` never damages files already there.
(docs/model-cache.md)"""

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dpose_core import onnx_model
from dpose_core.checkpoint import load_checkpoint_arrays
from dpose_core.errors import DPoseError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def arrays(checkpoint_path):
    return load_checkpoint_arrays(checkpoint_path)


@pytest.fixture(scope="module")
def reference_manifest(checkpoint_path, arrays, tmp_path_factory) -> dict:
    """The manifest of a clean build: what every rebuilt entry must match byte for byte."""
    model = onnx_model.build_runtime_model(
        checkpoint_path, tmp_path_factory.mktemp("reference"), arrays=arrays, on_status=print
    )
    return json.loads((model.parent / onnx_model.MANIFEST_FILE).read_text())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digests(manifest: dict) -> dict:
    return {name: (f["bytes"], f["sha256"]) for name, f in manifest["files"].items()}


def _build(checkpoint_path, cache, arrays, messages=None) -> Path:
    say = messages.append if messages is not None else (lambda m: None)
    return onnx_model.build_runtime_model(checkpoint_path, cache, arrays=arrays, on_status=say)


@pytest.fixture
def tmpfs(tmp_path):
    """A 256 KiB file system that fills up (needs root); unmounted afterwards."""
    folder = tmp_path / "full"
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)


# ------------------------------------------------------------------------------ building


def test_entry_has_a_manifest_and_is_reused_without_rewriting(
    checkpoint_path, arrays, reference_manifest, tmp_path
):
    cache = tmp_path / "cache"
    messages: list[str] = []
    model = _build(checkpoint_path, cache, arrays, messages)
    entry = model.parent
    assert entry == onnx_model.cache_entry_dir(checkpoint_path, cache)
    manifest = json.loads((entry / onnx_model.MANIFEST_FILE).read_text())
    for name in (onnx_model.MODEL_FILE, onnx_model.WEIGHTS_FILE):
        stat = (entry / name).stat()
        assert manifest["files"][name] == {
            "bytes": stat.st_size,
            "sha256": _sha256(entry / name),
            "stat": [stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns],
        }
    assert _digests(manifest) == _digests(reference_manifest)  # the build is deterministic
    assert manifest["checkpoint"]["name"] == "paper_arxiv.ckpt"
    assert manifest["checkpoint"]["sha256"].startswith(entry.name)
    # The first conversion says what it does and where the cache goes, in one message.
    assert len(messages) == 1
    assert messages[0].startswith("Converting paper_arxiv.ckpt") and str(entry) in messages[0]
    assert "DPOSE_CACHE" in messages[0]

    stamp = (entry / onnx_model.WEIGHTS_FILE).stat().st_mtime_ns
    again: list[str] = []
    assert _build(checkpoint_path, cache, arrays, again) == model
    assert again == []
    assert (entry / onnx_model.WEIGHTS_FILE).stat().st_mtime_ns == stamp
    assert onnx_model.cached_runtime_model(checkpoint_path, cache) == model
    assert sorted(p.name for p in cache.iterdir()) == [f".{entry.name}.lock", entry.name]


def test_without_a_callback_the_status_is_a_log_warning(checkpoint_path, arrays, tmp_path, caplog):
    cache = tmp_path / "cache"
    with caplog.at_level("WARNING", logger="dpose_core.onnx_model"):
        onnx_model.build_runtime_model(checkpoint_path, cache, arrays=arrays)
    entry = onnx_model.cache_entry_dir(checkpoint_path, cache)
    messages = [r.getMessage() for r in caplog.records if r.name == "dpose_core.onnx_model"]
    assert len(messages) == 1 and str(entry) in messages[0]


def _truncate_weights(entry: Path) -> None:
    weights = entry / onnx_model.WEIGHTS_FILE
    with open(weights, "r+b") as fh:
        fh.truncate(weights.stat().st_size // 3)


def _garbage_weights(entry: Path) -> None:
    weights = entry / onnx_model.WEIGHTS_FILE
    size = weights.stat().st_size
    weights.write_bytes(np.full(size // 4, np.nan, dtype=np.float32).tobytes())


def _delete_model(entry: Path) -> None:
    (entry / onnx_model.MODEL_FILE).unlink()


def _garbage_manifest(entry: Path) -> None:
    (entry / onnx_model.MANIFEST_FILE).write_text("{not json")


def _manifest_of_wrong_structure(entry: Path) -> None:
    manifest = json.loads((entry / onnx_model.MANIFEST_FILE).read_text())
    manifest["checkpoint"] = "paper_arxiv.ckpt"
    (entry / onnx_model.MANIFEST_FILE).write_text(json.dumps(manifest))


def _entry_of_older_release(entry: Path) -> None:
    """Before manifests, an entry held only a template stamp."""
    (entry / onnx_model.MANIFEST_FILE).unlink()
    (entry / "template.sha256").write_text("0" * 64)


def _other_template(entry: Path) -> None:
    manifest = json.loads((entry / onnx_model.MANIFEST_FILE).read_text())
    manifest["template_sha256"] = "f" * 64
    (entry / onnx_model.MANIFEST_FILE).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_truncate_weights, "weights.bin has"),
        (_garbage_weights, "weights.bin does not match its sha256"),
        (_delete_model, "model.onnx is missing"),
        (_garbage_manifest, "manifest.json is missing or unreadable"),
        (_manifest_of_wrong_structure, "manifest.json is malformed"),
        (_entry_of_older_release, "it was made by an older release (no manifest.json)"),
        (_other_template, "it was made from another version of the network graph"),
    ],
)
def test_damaged_entry_is_detected_and_rebuilt(
    checkpoint_path, arrays, reference_manifest, tmp_path, damage, problem
):
    cache = tmp_path / "cache"
    model = _build(checkpoint_path, cache, arrays)
    damage(model.parent)
    state = onnx_model.inspect_entry(model.parent)
    assert not state.ok and problem in state.problem
    assert onnx_model.cached_runtime_model(checkpoint_path, cache) is None

    messages: list[str] = []
    assert _build(checkpoint_path, cache, arrays, messages) == model
    assert len(messages) == 2
    assert messages[0].startswith(f"The converted model in {model.parent} is damaged ({problem}")
    assert messages[1].startswith("Converting paper_arxiv.ckpt")
    rebuilt = json.loads((model.parent / onnx_model.MANIFEST_FILE).read_text())
    assert _digests(rebuilt) == _digests(reference_manifest)
    assert onnx_model.cached_runtime_model(checkpoint_path, cache) == model
    assert onnx_model.leftover_folders(cache) == []
    assert not (model.parent / "template.sha256").exists()


def test_unchanged_files_are_not_reread_but_any_write_is_caught(
    checkpoint_path, arrays, tmp_path, monkeypatch
):
    """Opening an entry nobody wrote to costs a few stat calls; a write that even restores the
    old mtime still changes the ctime, so the file is hashed and the damage found."""
    model = _build(checkpoint_path, tmp_path, arrays)
    hashed: list[str] = []
    real_sha256 = onnx_model.file_sha256
    monkeypatch.setattr(onnx_model, "file_sha256", lambda p: hashed.append(p.name) or
                        real_sha256(p))  # fmt: skip
    assert onnx_model.inspect_entry(model.parent).ok
    assert hashed == []
    weights = model.parent / onnx_model.WEIGHTS_FILE
    before = weights.stat()
    with open(weights, "r+b") as fh:
        fh.seek(before.st_size // 2)
        fh.write(b"\x7f\xc0\x00\x00" * 16)  # NaN over a few weights, same size
    os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
    state = onnx_model.inspect_entry(model.parent)
    assert hashed == [onnx_model.WEIGHTS_FILE]
    assert state.problem == (
        "weights.bin does not match its sha256 in the manifest (overwritten or corrupted)"
    )


def test_garbage_weights_are_rebuilt_into_a_model_with_finite_outputs(
    checkpoint_path, arrays, tmp_path
):
    """Overwritten with NaN of the same size, the entry used to give NaN with exit 0."""
    ort = pytest.importorskip("onnxruntime")
    cache = tmp_path / "cache"
    model = _build(checkpoint_path, cache, arrays)
    _garbage_weights(model.parent)
    model = _build(checkpoint_path, cache, arrays)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    outputs = session.run(None, {
        "images": rng.standard_normal((1, 3, 224, 224)).astype(np.float32),
        "bbox_info": np.array([[0.1, -0.05, 0.4]], dtype=np.float32),
    })  # fmt: skip
    assert all(np.isfinite(out).all() for out in outputs)


def test_a_full_cache_disk_is_one_clear_error_and_leaves_nothing(
    checkpoint_path, arrays, tmpfs
):
    with pytest.raises(DPoseError, match="Set DPOSE_CACHE to a writable folder") as info:
        _build(checkpoint_path, tmpfs, arrays)
    assert "No space left on device" in str(info.value)
    assert onnx_model.leftover_folders(tmpfs) == []
    assert not onnx_model.cache_entry_dir(checkpoint_path, tmpfs).exists()
    assert [p.name for p in tmpfs.iterdir() if not p.name.endswith(".lock")] == []


# ------------------------------------------------------------------------------ leftovers


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_leftovers_of_dead_processes_and_old_foreign_ones_are_removed(tmp_path):
    host = socket.gethostname()
    names = {
        "dead": f".build-{_dead_pid()}@{host}-0a1b2c3d",
        "dead_trash": f".trash-{_dead_pid()}@{host}-0a1b2c3e",
        "alive": f".build-{os.getpid()}@{host}-0a1b2c3f",
        "foreign_recent": ".build-123@another-node-0a1b2c40",
        "foreign_old": ".build-123@another-node-0a1b2c41",
        "unnamed_old": ".build-k2j4h5",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
        (tmp_path / name / "weights.bin").write_bytes(b"\0" * 1000)
    two_days_ago = time.time() - 2 * 24 * 3600
    for key in ("foreign_old", "unnamed_old"):
        os.utime(tmp_path / names[key], (two_days_ago, two_days_ago))
    removed = onnx_model.remove_stale_leftovers(tmp_path)
    gone = {"dead", "dead_trash", "foreign_old", "unnamed_old"}
    assert sorted(p.name for p in removed) == sorted(names[k] for k in gone)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        names[k] for k in names if k not in gone
    )


_SLOW_BUILD = """
import sys, time
from pathlib import Path
from dpose_core import onnx_model

def stall(folder, *args):  # the files are written; stop before the manifest and the rename
    Path(sys.argv[3]).write_text(str(folder))
    time.sleep(120)

onnx_model._write_manifest = stall
onnx_model.build_runtime_model(sys.argv[1], sys.argv[2])
"""


def _start_stalled_build(checkpoint_path, cache: Path, marker: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_BUILD, str(checkpoint_path), str(cache), str(marker)],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.time() < deadline, "the build never started"
        time.sleep(0.05)
    return proc


def test_sigterm_during_the_first_conversion_removes_the_build_folder(checkpoint_path, tmp_path):
    cache, marker = tmp_path / "cache", tmp_path / "started"
    proc = _start_stalled_build(checkpoint_path, cache, marker)
    build = Path(marker.read_text())
    assert build.parent == cache and (build / onnx_model.WEIGHTS_FILE).is_file()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    assert onnx_model.leftover_folders(cache) == []
    assert not onnx_model.cache_entry_dir(checkpoint_path, cache).exists()


def test_a_killed_conversion_is_cleaned_up_by_the_next_run(checkpoint_path, arrays, tmp_path):
    cache, marker = tmp_path / "cache", tmp_path / "started"
    proc = _start_stalled_build(checkpoint_path, cache, marker)
    build = Path(marker.read_text())
    proc.kill()  # SIGKILL: nothing in the process can clean up
    proc.communicate(timeout=60)
    assert onnx_model.leftover_folders(cache) == [build]
    assert onnx_model.cached_runtime_model(checkpoint_path, cache) is None  # opening cleans up
    assert onnx_model.leftover_folders(cache) == []
    model = _build(checkpoint_path, cache, arrays)
    assert onnx_model.cached_runtime_model(checkpoint_path, cache) == model


def test_two_processes_converting_one_checkpoint_both_succeed(checkpoint_path, tmp_path):
    cache = tmp_path / "shared-cache"
    script = textwrap.dedent("""
        import sys
        from dpose_core.onnx_model import build_runtime_model
        print(build_runtime_model(sys.argv[1], sys.argv[2], on_status=lambda m: None))
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(checkpoint_path), str(cache)],
                         cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]  # fmt: skip
    results = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err for _, err in results]
    entry = onnx_model.cache_entry_dir(checkpoint_path, cache)
    assert [out.strip() for out, _ in results] == [str(entry / onnx_model.MODEL_FILE)] * 2
    assert onnx_model.inspect_entry(entry).ok
    assert onnx_model.leftover_folders(cache) == []


def test_losing_a_race_on_a_file_system_without_locks_uses_the_winners_entry(
    checkpoint_path, arrays, tmp_path, monkeypatch
):
    """Without locks two builds may finish together; the one whose rename fails takes the
    other's entry instead of failing."""
    import contextlib
    import shutil

    winner = _build(checkpoint_path, tmp_path / "elsewhere", arrays).parent
    cache = tmp_path / "cache"
    entry = onnx_model.cache_entry_dir(checkpoint_path, cache)
    monkeypatch.setattr(onnx_model, "_exclusive_lock", lambda *a: contextlib.nullcontext())
    real_replace = os.replace

    def replace(src, dst):
        if Path(dst) == entry and Path(src).name.startswith(".build-"):
            shutil.copytree(winner, entry)  # the other process renames its entry in first
        return real_replace(src, dst)

    monkeypatch.setattr(onnx_model.os, "replace", replace)
    assert _build(checkpoint_path, cache, arrays) == entry / onnx_model.MODEL_FILE
    assert onnx_model.inspect_entry(entry).ok
    assert onnx_model.leftover_folders(cache) == []


# ------------------------------------------------------------------------------ dpose convert


def test_convert_replaces_both_files_and_leaves_no_temporaries(checkpoint_path, arrays, tmp_path):
    (tmp_path / "model.onnx").write_bytes(b"old graph")
    (tmp_path / "weights.bin").write_bytes(b"old weights")
    model = onnx_model.write_runtime_model(arrays, tmp_path)
    assert model.read_bytes() == onnx_model.TEMPLATE_PATH.read_bytes()
    size = onnx_model.template_layout()[-1]
    assert (tmp_path / "weights.bin").stat().st_size == size.offset + size.nbytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "weights.bin"]


def test_convert_on_a_full_disk_keeps_the_old_files(checkpoint_path, tmpfs):
    (tmpfs / "model.onnx").write_bytes(b"old graph")
    (tmpfs / "weights.bin").write_bytes(b"old weights")
    result = subprocess.run(
        [sys.executable, "-m", "dpose_core.cli", "convert", "-o", str(tmpfs / "model.onnx")],
        cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO),
                       "DPOSE_CHECKPOINT": str(checkpoint_path)},
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0
    assert "No space left on device" in result.stderr
    assert (tmpfs / "model.onnx").read_bytes() == b"old graph"
    assert (tmpfs / "weights.bin").read_bytes() == b"old weights"
    assert sorted(p.name for p in tmpfs.iterdir()) == ["model.onnx", "weights.bin"]


# ------------------------------------------------------------------------------ dpose doctor


def test_doctor_shows_where_the_cache_is_and_its_state(
    checkpoint_path, arrays, tmp_path, monkeypatch, capsys
):
    from dpose_core.cli import main

    cache = tmp_path / "cache"
    monkeypatch.setenv("DPOSE_CACHE", str(cache))

    def cache_lines() -> list[str]:
        main(["doctor", "--checkpoint", str(checkpoint_path)])
        out = capsys.readouterr().out.splitlines()
        first = next(i for i, line in enumerate(out) if "model cache" in line)
        return [out[first]] + [line for line in out[first + 1 :] if line.startswith("   ")]

    assert cache_lines() == [
        f"[      -] model cache: {cache} (from DPOSE_CACHE): empty; the first run converts "
        "the checkpoint into it (about 330 MB)"
    ]
    model = _build(checkpoint_path, cache, arrays)
    size_mb = sum(p.stat().st_size for p in model.parent.iterdir()) / 1e6
    assert cache_lines() == [
        f"[     ok] model cache: {cache} (from DPOSE_CACHE): ok, 1 converted checkpoint, "
        f"{size_mb:.0f} MB",
        f"          {model.parent.name}: paper_arxiv.ckpt, ok",
    ]
    _truncate_weights(model.parent)
    lines = cache_lines()
    assert lines[0].startswith(f"[DAMAGED] model cache: {cache} (from DPOSE_CACHE): damaged, ")
    assert lines[1].startswith(f"          {model.parent.name}: paper_arxiv.ckpt, damaged "
                               "(weights.bin has ")  # fmt: skip
    assert lines[1].endswith("rebuilt on its next use")
