"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a folder::

    model.safetensors      model state dict (the only file deployment needs)
    train_state.safetensors optimizer/scheduler tensors, flattened (for resuming)
    checkpoint.json        format version, model kind + config, epoch, metrics, the non-tensor
                           optimizer/scheduler state, and the sha256 of both tensor files

It is written into a temporary sibling folder and renamed into place, so a crash never leaves a
half-written checkpoint under the final name. Loading verifies the hashes and refuses files that
do not match with a clear message.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..utils.fileio import sha256_file

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
    """Write a checkpoint folder atomically. ``train_state``: e.g. optimizer/scheduler state dicts."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(tmp / MODEL_FILE))
    tensors: dict[str, torch.Tensor] = {}
    structure = _flatten(train_state or {}, "s", tensors)
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
    if path.exists():
        old = path.with_name(f".{path.name}.old{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)
    return path


def read_checkpoint_meta(path: str | Path) -> dict:
    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise CheckpointError(f"{path}: not a checkpoint (no {META_FILE})")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_file}: corrupt JSON ({e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{meta_file}: format version {meta.get('format_version')} not supported "
                              f"(this package reads {FORMAT_VERSION})")
    return meta


def load_checkpoint(path: str | Path, *, with_train_state: bool = False) -> tuple[dict, dict[str, torch.Tensor], dict]:
    """Return (meta, model state dict, train state) after verifying file hashes."""
    path = Path(path)
    meta = read_checkpoint_meta(path)
    files = [MODEL_FILE] + ([STATE_FILE] if with_train_state else [])
    for name in files:
        f = path / name
        if not f.is_file():
            raise CheckpointError(f"{f}: missing")
        if sha256_file(f) != meta["sha256"].get(name):
            raise CheckpointError(f"{f}: checksum mismatch (file corrupt or replaced)")
    state = load_file(str(path / MODEL_FILE))
    train_state = _unflatten(meta["train_state"], load_file(str(path / STATE_FILE))) if with_train_state else {}
    return meta, state, train_state


def save_model_checkpoint(path: str | Path, model, **kw) -> Path:
    """Checkpoint a :mod:`distilvpr_ros.models` network; its kind and ModelConfig go into the JSON."""
    config = dict(kw.pop("config", {}))
    config["model"] = model.cfg.model_dump(mode="json")
    return save_checkpoint(path, model, kind=model.kind, config=config, **kw)


def load_model(path: str | Path, expect_kind: str | None = None):
    """Rebuild a network from a checkpoint folder (in eval mode); refuses a mismatched kind."""
    from .config import ModelConfig
    from .vpr import build_model

    meta, state, _ = load_checkpoint(path)
    if expect_kind is not None and meta["kind"] != expect_kind:
        raise CheckpointError(f"{path}: holds a {meta['kind']} model, expected {expect_kind}")
    if "model" not in meta["config"]:
        raise CheckpointError(f"{path}: no model config recorded (not a distilvpr model checkpoint)")
    cfg = ModelConfig(**{**meta["config"]["model"], "pretrained": False})
    model = build_model(meta["kind"], cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit a {meta['kind']} built from its config "
                              f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    model.cfg = ModelConfig(**meta["config"]["model"])
    return model.eval()


def model_identity(checkpoint_dir: str | Path) -> tuple[str, str]:
    """``(name, sha256)`` of a checkpoint's weights: the map's embedding-space tag.

    The name is the checkpoint kind and folder name; the hash is the one recorded for
    ``model.safetensors`` in ``checkpoint.json`` (verified when the checkpoint is loaded).
    """
    meta = read_checkpoint_meta(checkpoint_dir)
    return f"{meta.get('kind', 'model')}:{Path(checkpoint_dir).name}", meta["sha256"][MODEL_FILE]
