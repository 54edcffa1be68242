"""Where a rig came from: checkpoint hash, settings and input paths stored on the objects.

A render farm re-running a job needs exactly these: the same weights (hash, not path: paths
differ between machines), the same settings and the same footage. They are stored as a JSON
string custom property (``dpose_provenance``) plus a few flat ID properties for quick reading
in the UI (plain ID properties, not ``bpy.props``, so Blender 4.2-5.x read them the same way).
"""

from __future__ import annotations

import datetime
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

PROP_JSON = "dpose_provenance"
PROP_HASH = "dpose_checkpoint_sha256"
PROP_INPUT = "dpose_input"
PROP_KIND = "dpose_kind"


def build_record(
    *,
    checkpoint_path: str | Path | None,
    checkpoint_sha256: str,
    settings: Mapping[str, Any],
    inputs: Iterable[str | Path],
    backend: str = "",
    device: str = "",
    kind: str = "",
) -> dict[str, Any]:
    """A JSON-ready provenance dict (absolute paths, sorted settings, UTC time).

    checkpoint_path is None for what no network made (an imported motion file).
    """
    return {
        "tool": "D-PoSE for Blender",
        "version": _extension_version(),
        "kind": kind,
        "checkpoint": (str(Path(checkpoint_path).expanduser().resolve())
                       if checkpoint_path else ""),
        "checkpoint_sha256": checkpoint_sha256,
        "backend": backend,
        "device": device,
        "inputs": [str(Path(p).expanduser().resolve()) for p in inputs],
        "settings": {k: _plain(v) for k, v in sorted(settings.items())},
        "created_utc": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


def _plain(value: Any) -> Any:
    """JSON-safe value: numpy scalars/arrays and paths become plain Python."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def _extension_version() -> str:
    manifest = Path(__file__).resolve().parents[1] / "blender_manifest.toml"
    try:
        import tomllib

        return str(tomllib.loads(manifest.read_text(encoding="utf-8")).get("version", ""))
    except (OSError, ValueError):
        return ""


def stamp(id_block, record: Mapping[str, Any]) -> None:
    """Store ``record`` on a Blender ID (object, action, camera ...) as custom properties."""
    id_block[PROP_JSON] = json.dumps(record, sort_keys=True)
    id_block[PROP_HASH] = str(record.get("checkpoint_sha256", ""))
    id_block[PROP_KIND] = str(record.get("kind", ""))
    inputs = record.get("inputs") or []
    id_block[PROP_INPUT] = str(inputs[0]) if len(inputs) == 1 else json.dumps(inputs)


def read(id_block) -> dict[str, Any] | None:
    """The record stored by ``stamp``, or None."""
    text = id_block.get(PROP_JSON)
    return json.loads(text) if text else None
