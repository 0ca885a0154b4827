"""The main job on the embedded default: what ``make demo`` runs.

Today the demo runs the data stage — generate (or reuse) the synthetic camera+LiDAR world, draw its
preview, read it back through the same reader training uses, and check the place ground truth.
The later stages exist as commands of their own but are not chained into the demo yet (issue 6);
the report lists them with their commands.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from .config import GroundTruthConfig
from .data.ground_truth import TrainingGroundTruth, cross_run_pairs
from .utils.results import make_run_dir, write_json

PENDING_STAGES = [
    "train the teacher (camera+LiDAR): `distilvpr train-teacher`",
    "distil the camera-only student: `distilvpr distill`",
    "build the map through the mapping node: `distilvpr build-map` (offline) / `mapping_node`",
    "localize a bag of another condition through the localization node: `distilvpr replay`",
    "evaluate + report with the Corridor check: `distilvpr evaluate`, `distilvpr corridor`",
]


# Render settings that change how fast a world is made, not what is in it.
_EXECUTION_KNOBS = ("threads", "workers", "processes")


def _content_config(config: dict) -> dict:
    """A world config without the execution knobs, in JSON form (what decides the generated files)."""
    config = json.loads(json.dumps(config, default=str))
    for knob in _EXECUTION_KNOBS:
        config.get("render", {}).pop(knob, None)
    return config


def ensure_world(data_root: Path, preset: str, progress: bool = True) -> Path:
    """Generate the preset's world under ``data_root`` unless an identical one is already there."""
    from .data.world.config import load_world_config
    from .data.world.generate import generate_world

    cfg = load_world_config(preset, None, None)
    out = data_root / f"world_{preset}"
    meta = out / "world.json"
    if meta.is_file():
        try:
            if _content_config(json.loads(meta.read_text()).get("config", {})) == _content_config(cfg.model_dump()):
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
    from .data.synthetic import load_synthetic

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


def run_demo(quick: bool = False, results_root: Path = Path("results"), data_root: Path = Path("data")) -> Path:
    from .data.world.preview import make_preview

    t0 = time.time()
    preset = "tiny" if quick else "default"
    world = ensure_world(Path(data_root), preset)
    preview = make_preview(world)
    gt_cfg = GroundTruthConfig()
    summary = {
        "preset": preset,
        "world": str(world),
        "ground_truth": ground_truth_summary(world, gt_cfg),
        "ground_truth_config": gt_cfg.model_dump(),
        "stages_run": ["generate world", "preview", "read back + ground truth"],
        "stages_pending": PENDING_STAGES,
    }
    out = make_run_dir(results_root, "demo")
    shutil.copy(preview, out / "preview.png")
    summary["seconds"] = round(time.time() - t0, 1)
    write_json(out / "summary.json", summary)
    lines = [
        f"# distilvpr demo ({preset} world)",
        "",
        f"World: `{world}` — preview below. Elapsed: {summary['seconds']} s.",
        "",
        "| region | runs | frames | mean positives / frame | cross-run pairs | queries with a true match |",
        "|---|---|---|---|---|---|",
    ]
    for region, s in summary["ground_truth"].items():
        lines.append(
            f"| {region} | {s['runs']} | {s['frames']} | {s.get('mean_positives_per_frame', 0):.1f} | "
            f"{s.get('cross_run_pairs', 0)} | {s.get('queries_with_a_true_match', '-')} |"
        )
    lines += ["", "Not yet chained into the demo (run them by hand):", ""] + [f"- {s}" for s in PENDING_STAGES]
    lines += ["", "![preview](preview.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
    print("\n".join(lines[:-2]))
    print(f"\n[demo] report: {out / 'report.md'}")
    return out
