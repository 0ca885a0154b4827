"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder::

    model.safetensors      model state dict (the only file deployment needs)
    train_state.safetensors optimizer/scheduler tensors, flattened (for resuming)
    checkpoint.json        format version, model kind + config, epoch, metrics, the non-tensor
                           optimizer/scheduler state, and the sha256 of both tensor files

It is written crash-safely (:func:`~distilvpr_ros.utils.fileio.atomic_write`: a fsynced temporary sibling,
the previous checkpoint kept as ``<name>.bak`` until the new one is in place). Loading falls back to
``<name>.bak`` after a crash between the two renames, removes temporaries of killed writers, verifies the
hashes, and turns every problem with the files (corrupt, truncated, other model's weights) into a
:class:`CheckpointError` that names the file; tensor shapes are checked against the model its recorded
config builds before anything is loaded into it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..utils.fileio import atomic_write, backup_path, recovered_path, sha256_file

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.safetensors"
META_FILE = "checkpoint.json"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt or incompatible; the message says which file and why."""


def _flatten(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Replace tensors in a nested dict/list by ``{"__tensor__": key}`` and collect them."""
    if isinstance(obj, torch.Tensor):
        key = prefix or "root"
        tensors[key] = obj.detach().cpu().contiguous()
        return {"__tensor__": key}
    if isinstance(obj, dict):
        return {"__dict__": [[_flatten(k, f"{prefix}.k{i}", tensors), _flatten(v, f"{prefix}.{i}", tensors)]
                             for i, (k, v) in enumerate(obj.items())]}
    if isinstance(obj, (list, tuple)):
        return {"__list__": [_flatten(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)],
                "tuple": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store {type(obj).__name__} in a checkpoint")


def _unflatten(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {_unflatten(k, tensors): _unflatten(v, tensors) for k, v in obj["__dict__"]}
        if "__list__" in obj:
            items = [_unflatten(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("tuple") else items
    return obj


def save_checkpoint(path: str | Path, model: torch.nn.Module, *, kind: str, config: dict,
                    epoch: int = 0, metrics: dict | None = None, train_state: dict | None = None) -> Path:
    """Write a checkpoint folder crash-safely. ``train_state``: e.g. optimizer/scheduler state dicts."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(train_state or {}, "s", tensors)
    with atomic_write(path, folder=True) as tmp:
        save_file(state, str(tmp / MODEL_FILE))
        save_file(tensors, str(tmp / STATE_FILE))
        meta = {
            "format_version": FORMAT_VERSION,
            "kind": kind,
            "config": config,
            "epoch": epoch,
            "metrics": metrics or {},
            "train_state": structure,
            "sha256": {MODEL_FILE: sha256_file(tmp / MODEL_FILE), STATE_FILE: sha256_file(tmp / STATE_FILE)},
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2))
    return path


def read_checkpoint_meta(path: str | Path) -> dict:
    """``checkpoint.json`` of a checkpoint folder (or of its ``.bak`` after an interrupted save), checked."""
    path = recovered_path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: not a checkpoint (no {META_FILE})")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{meta_file}: corrupt JSON ({e})") from None
    if not isinstance(meta, dict):
        raise CheckpointError(f"{meta_file}: expected a JSON object, got {type(meta).__name__}")
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_file}: format version {meta.get('format_version')} not supported "
                              f"(this package reads {FORMAT_VERSION})")
    for key, kind in (("kind", str), ("config", dict), ("sha256", dict)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"{meta_file}: {key!r} must be a JSON {'string' if kind is str else 'object'}, "
                                  f"got {type(meta.get(key)).__name__}")
    return meta


def _read_tensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except (SafetensorError, OSError) as e:
        raise CheckpointError(f"{file}: unreadable safetensors file, truncated or not safetensors ({e})") from None


def load_checkpoint(path: str | Path, *, with_train_state: bool = False) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """Return (meta, model state dict, train state) after verifying file hashes."""
    path = recovered_path(path)
    meta = read_checkpoint_meta(path)
    files = [MODEL_FILE] + ([STATE_FILE] if with_train_state else [])
    for name in files:
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if sha256_file(f) != meta["sha256"].get(name):
            raise CheckpointError(f"{f}: checksum mismatch (file corrupt or replaced)")
    state = _read_tensors(path / MODEL_FILE)
    train_state = {}
    if with_train_state:
        try:
            train_state = _unflatten(meta.get("train_state", {}), _read_tensors(path / STATE_FILE))
        except (KeyError, TypeError, ValueError) as e:
            raise CheckpointError(f"{path / META_FILE}: train_state does not match {STATE_FILE} "
                                  f"({type(e).__name__}: {e})") from None
    return meta, state, train_state


def save_model_checkpoint(path: str | Path, model, **kw) -> Path:
    """Checkpoint a :mod:`distilvpr_ros.models` network; its kind and ModelConfig go into the JSON."""
    config = dict(kw.pop("config", {}))
    config["model"] = model.cfg.model_dump(mode="json")
    return save_checkpoint(path, model, kind=model.kind, config=config, **kw)


def _check_shapes(path: Path, kind: str, expected: dict[str, torch.Size], state: dict[str, torch.Tensor]) -> None:
    """Refuse weights that do not fit the model (names and shapes), before any is copied into it."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k])}" for k in expected
             if k in state and state[k].shape != expected[k]]
    if missing or unexpected or wrong:
        raise CheckpointError(f"{path / MODEL_FILE}: weights do not fit a {kind} built from its config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]}, {len(wrong)} shape "
                              f"mismatches, file vs model: {wrong[:3]}); wrong weights for this config?")


def classical_kind(path: str | Path) -> str | None:
    """The no-training LiDAR kind (``ring_key``, ``scan_context_fft``) that ``path`` names, when it names one
    and no checkpoint folder of that name exists (a folder wins); None otherwise. Such a name may stand
    wherever a checkpoint folder is asked for (default ``ModelConfig``: 20 x 60 Scan Context to 100 m)."""
    from .classical import CLASSICAL_MODELS

    name = str(path)
    if name not in CLASSICAL_MODELS or Path(name).exists() or backup_path(Path(name)).exists():
        return None
    return name


def load_model(path: str | Path, expect_kind: str | None = None):
    """Rebuild a network from a checkpoint folder (in eval mode), or build the classical kind ``path`` names
    (:func:`classical_kind`); refuses a mismatched kind, and weights whose names or shapes do not fit the
    model the recorded config builds (:class:`CheckpointError`)."""
    from .config import ModelConfig
    from .factory import build_model

    named = classical_kind(path)
    if named is not None:
        if expect_kind is not None and named != expect_kind:
            raise CheckpointError(f"{path}: names a {named} model, expected {expect_kind}")
        return build_model(named, ModelConfig(pretrained=False)).eval()
    meta, state, _ = load_checkpoint(path)
    kind = meta["kind"]
    if expect_kind is not None and kind != expect_kind:
        raise CheckpointError(f"{path}: holds a {kind} model, expected {expect_kind}")
    if not isinstance(meta["config"].get("model"), dict):
        raise CheckpointError(f"{path}: no model config recorded (not a distilvpr model checkpoint)")
    try:
        cfg = ModelConfig(**{**meta["config"]["model"], "pretrained": False})
        with torch.device("meta"):  # shapes only: nothing is allocated for a config the file cannot back
            expected = {k: v.shape for k, v in build_model(kind, cfg).state_dict().items()}
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path / META_FILE}: recorded model config is invalid ({e})") from None
    _check_shapes(Path(path), kind, expected, state)
    model = build_model(kind, cfg)
    model.load_state_dict(state, strict=True)
    model.cfg = ModelConfig(**meta["config"]["model"])
    return model.eval()


def model_identity(checkpoint_dir: str | Path) -> tuple[str, str]:
    """``(name, sha256)`` of a checkpoint's weights: the map's embedding-space tag.

    The name is the checkpoint kind and folder name; the hash is the one recorded for
    ``model.safetensors`` in ``checkpoint.json`` (verified when the checkpoint is loaded). A classical kind
    named instead of a folder (:func:`classical_kind`) is ``<kind>:builtin`` with the sha256 of its config.
    """
    named = classical_kind(checkpoint_dir)
    if named is not None:
        import hashlib

        from .config import ModelConfig

        grid = ModelConfig(pretrained=False).scan_context.model_dump_json()
        return f"{named}:builtin", hashlib.sha256(f"{named}:{grid}".encode()).hexdigest()
    meta = read_checkpoint_meta(checkpoint_dir)
    sha256 = meta["sha256"].get(MODEL_FILE)
    if not isinstance(sha256, str):
        raise CheckpointError(f"{checkpoint_dir}: {META_FILE} records no sha256 for {MODEL_FILE}")
    return f"{meta['kind']}:{Path(checkpoint_dir).name}", sha256
