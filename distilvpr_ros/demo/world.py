"""The demo's synthetic world: generated once under the data root, and what its ground truth holds."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from ..config import GroundTruthConfig
from ..data.ground_truth import TrainingGroundTruth, cross_run_pairs

# Render settings that change how fast a world is made, not what is in it.
_EXECUTION_KNOBS = ("threads", "workers", "processes")


def content_config(config: dict) -> dict:
    """A world config without the execution knobs, in JSON form (what decides the generated files)."""
    config = json.loads(json.dumps(config, default=str))
    for knob in _EXECUTION_KNOBS:
        config.get("render", {}).pop(knob, None)
    return config


def preset_config(preset: str) -> dict:
    """The content config (:func:`content_config`) of a world preset."""
    from ..data.world.config import load_world_config

    return content_config(load_world_config(preset, None, None).model_dump())


def world_folder(data_root: Path, preset: str) -> Path:
    return data_root / f"world_{preset}"


def ensure_world(data_root: Path, preset: str, progress: bool = True) -> Path:
    """Generate the preset's world under ``data_root`` unless an identical one is already there."""
    from ..data.world.config import load_world_config
    from ..data.world.generate import generate_world

    cfg = load_world_config(preset, None, None)
    out = world_folder(data_root, preset)
    meta = out / "world.json"
    if meta.is_file():
        try:
            if content_config(json.loads(meta.read_text()).get("config", {})) == content_config(cfg.model_dump()):
                print(f"[demo] reusing {out} (same config)")
                return out
        except json.JSONDecodeError:
            pass
        print(f"[demo] {out} was made with another config or is incomplete: regenerating")
        shutil.rmtree(out)
    print(f"[demo] generating the '{preset}' synthetic world into {out}")
    generate_world(out, cfg, progress=progress)
    return out


def ground_truth_summary(world: Path, gt_cfg: GroundTruthConfig) -> dict:
    """Per-region frame counts, training positives and cross-run evaluation pairs."""
    from ..data.synthetic import load_synthetic

    summary = {}
    for region in ("train", "val", "test"):
        seqs = [s for s in load_synthetic(world, regions={region}) if len(s)]
        if not seqs:
            summary[region] = {"runs": 0, "frames": 0}
            continue
        positions = np.concatenate([s.poses[:, :2, 3] for s in seqs])
        gt = TrainingGroundTruth.from_positions(positions, gt_cfg)
        pairs = cross_run_pairs(seqs, gt_cfg)
        n_q = sum(len(p.true_matches) for p in pairs)
        n_eval = sum(len(p.evaluable) for p in pairs)
        summary[region] = {
            "runs": len(seqs),
            "frames": int(len(positions)),
            "mean_positives_per_frame": float(np.mean([len(p) for p in gt.positives])),
            "cross_run_pairs": len(pairs),
            "queries_with_a_true_match": f"{n_eval}/{n_q}",
        }
    return summary
