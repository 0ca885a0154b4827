"""The fused teacher with the polar LiDAR branch: fused vs. image head vs. LiDAR head, and fusion alternatives.

Protocol: the package's own cross-run evaluation (``evaluation.evaluate.evaluate_sequences``: every ordered
pair of runs, correct within 25 m, AR@1 = mean over pairs) with the ``same_direction`` /
``opposite_direction`` subsets and the per-condition breakdown. Every teacher is embedded once per frame
and all three heads are kept (``fused``, ``cloud``, ``image``; L2-normalised).

* **Selection on the validation region only** (the teacher's ``val_conditions``): each teacher's
  validation AR@1 per head, and of ``weighted_fusion`` of its two heads for cloud weights ``--weights``
  (the cosine of fused descriptors is ``w cos(cloud) + (1 - w) cos(image)``; ``w = 0.5`` is the trained
  ``normalized_concat``). The weight with the best validation AR@1 is kept, then scored on test.
* **Test region**: fused, image and LiDAR heads and the val-chosen weighting, for every teacher given.

Recipes (``RECIPES``; each is ``config/teacher_polar.yaml`` plus overrides) are trained with ``--train``
into ``--runs/<recipe>_seed<N>`` unless ``best/`` exists there:

* ``nc``: one stage, 30 fused epochs, normalised concatenation;
* ``two_stage``: 30 LiDAR-only epochs (``teacher.lidar_warmup_epochs``) then 8 fused epochs, LiDAR lr 1e-4;
* ``two_stage_learned``: the same with ``fusion: learned_concat`` (a learned LiDAR share);
* ``two_stage_concat``: the same with plain ``concat`` (the paper's fusion);
* ``two_stage_frozen``: ``two_stage`` with ``teacher.lidar_freeze``: the fused epochs keep the LiDAR branch as
  the warm-up (or ``--lidar-init``) left it, so the teacher's LiDAR head is that LiDAR model;
* ``two_stage_allcond``: ``two_stage`` whose LiDAR warm-up (20 epochs) reads every condition's scans
  (``--lidar-init`` of a LiDAR student trained with ``data.train_conditions=null data.val_conditions=null``);
* ``demo``: what ``config/demo.yaml`` trains (the demo's budget; the BEV teacher);
* ``demo_polar``: the polar teacher at about the demo's budget (12 LiDAR-only epochs at lr 2e-3, then 4 fused
  epochs, ``learned_concat``), measured for the demo switch.

``--lidar-init`` may name each seed's own LiDAR model with ``{seed}`` in the path. ``--submap-m 20`` also
scores every head on 20 m centred submaps (the LiDAR input of each frame is the scans within ±10 m of
travel, ``data.submap.SubmapSequence`` with the run's poses, capped at 60k points as in
``benchmarks/lidar_teacher.py``; the fusion weight is chosen again on validation submaps). Teachers trained
at several seeds get a mean ± std table per recipe and head.

``--whiten`` also scores the whitened fusion (``model.fusion: whitened_concat``, ``models.whitening``): each
head centred on the mean of the training region's descriptors (the teacher's train conditions) and
PCA-whitened (``--whiten-settings power:shrinkage``; power 0 = centring only), then weighted concatenation;
the setting and w are chosen on validation, and the whitened LiDAR and image heads alone are scored too.
``--desc-cache`` keeps every teacher's train / val / test head descriptors (npz), ``--export-whitened`` writes
``<run>/best_whitened`` (the statistics as model buffers, so ``evaluate``, ``build-map``, the nodes and ONNX
export retrieve with the same descriptor).

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python benchmarks/teacher_fusion.py --world data/world_default \\
        --runs /tmp/teachers --recipes nc two_stage --seeds 1 --train --out docs/results/teacher
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from distilvpr_ros.data.submap import SubmapConfig, SubmapSequence
from distilvpr_ros.data.synthetic import load_synthetic, read_world_meta
from distilvpr_ros.evaluation.evaluate import evaluate_sequences
from distilvpr_ros.evaluation.report import markdown_table
from distilvpr_ros.models import ModelConfig, build_model
from distilvpr_ros.models.checkpoint import load_model, read_checkpoint_meta, save_model_checkpoint
from distilvpr_ros.models.inference import model_inputs, run_in_batches
from distilvpr_ros.models.vpr import l2_normalize, weighted_fusion
from distilvpr_ros.models.whitening import apply_whitening, fit_whitening
from distilvpr_ros.training.config import TrainConfig
from distilvpr_ros.utils.results import write_json

SUBSETS = ("same_direction", "opposite_direction")
HEADS = ("fused", "cloud", "image")
TARGETS = {"recall@1": 0.80, "same_direction": 0.92, "opposite_direction": 0.70, "fog": 0.60}
BASE_CONFIG = Path(__file__).resolve().parents[1] / "config" / "teacher_polar.yaml"
DEMO_CONFIG = Path(__file__).resolve().parents[1] / "config" / "demo.yaml"
TWO_STAGE = {"teacher.lidar_warmup_epochs": 30, "optim.epochs": 8, "optim.milestones": [5],
             "optim.cloud_lr": 1e-4}
RECIPES: dict[str, dict] = {
    "nc": {},
    "two_stage": dict(TWO_STAGE),
    "two_stage_learned": {**TWO_STAGE, "model.fusion": "learned_concat"},
    "two_stage_concat": {**TWO_STAGE, "model.fusion": "concat"},
    # the polar demo teacher measured for the demo switch (demo image recipe, 12 LiDAR-only + 4 fused epochs)
    "demo_polar": {"teacher.lidar_warmup_epochs": 12, "teacher.lidar_warmup_lr": 2e-3, "optim.epochs": 4,
                   "optim.milestones": [3], "optim.cloud_lr": 1e-4, "model.fusion": "learned_concat"},
    # the LiDAR warm-up on every condition's LiDAR (the camera still trains on day/dusk/fog/autumn only)
    "two_stage_allcond": {**TWO_STAGE, "teacher.lidar_warmup_epochs": 20},
    # the fused epochs leave the LiDAR branch as it starts (the teacher's LiDAR head = the LiDAR model)
    "two_stage_frozen": {**TWO_STAGE, "teacher.lidar_freeze": True},
}


def demo_overrides() -> dict:
    """``config/demo.yaml``'s ``default.teacher`` (the demo's own recipe)."""
    import yaml

    return dict(yaml.safe_load(DEMO_CONFIG.read_text())["default"]["teacher"])


def recipe_config(recipe: str, world: Path, out: Path, seed: int, threads: int, cache: Path | None,
                  lidar_init: Path | None = None) -> TrainConfig:
    if recipe == "demo":
        return TrainConfig.from_yaml(None, {**demo_overrides(), "data.root": str(world), "out_dir": str(out),
                                            "seed": seed, "threads": threads, "progress": False,
                                            "feature_cache.dir": None if cache is None else str(cache)})
    overrides = dict(RECIPES[recipe])
    if lidar_init is not None and "teacher.lidar_warmup_epochs" in overrides:
        overrides["teacher.lidar_init"] = str(lidar_init).replace("{seed}", str(seed))
    return TrainConfig.from_yaml(BASE_CONFIG, {**overrides, "data.root": str(world), "out_dir": str(out),
                                               "seed": seed, "threads": threads, "progress": False,
                                               "feature_cache.dir": None if cache is None else str(cache)})


def train(recipe: str, world: Path, runs: Path, seed: int, threads: int, cache: Path | None,
          lidar_init: Path | None = None) -> Path:
    """Train (or reuse) one teacher; returns its run folder."""
    from distilvpr_ros.training.trainer import train_teacher

    out = runs / f"{recipe}_seed{seed}"
    if (out / "best" / "checkpoint.json").is_file():
        return out
    cfg = recipe_config(recipe, world, out, seed, threads, cache, lidar_init)
    started = time.perf_counter()
    train_teacher(cfg)
    (out / "train_seconds.txt").write_text(f"{time.perf_counter() - started:.1f}\n")
    return out


class Frames:
    """The frames of some runs; each input spec's model inputs are built once, a run at a time (the clouds,
    submaps included, are not kept)."""

    def __init__(self, sequences):
        self.sequences = sequences
        self._feeds: dict[str, list[dict[str, np.ndarray]]] = {}

    def feeds(self, spec) -> list[dict[str, np.ndarray]]:
        key = json.dumps([spec.inputs, spec.image_size, None if spec.bev is None else spec.bev.model_dump_json()])
        if key not in self._feeds:
            feeds = []
            for seq in self.sequences:
                run = [seq[i] for i in range(len(seq))]
                feeds.append(model_inputs(spec, [s.image for s in run], [s.cloud for s in run]))
            self._feeds[key] = feeds
        return self._feeds[key]


def embed_heads(model, frames: Frames, batch: int = 64) -> dict[str, list[np.ndarray]]:
    """``head -> per-run L2-normalised descriptors`` of every head the model outputs, one forward per frame."""
    per_head: dict[str, list[np.ndarray]] = {}
    for feed in frames.feeds(model.input_spec):
        count = len(next(iter(feed.values())))

        def step(items: range) -> dict[str, np.ndarray]:
            outputs = model(**{k: torch.from_numpy(v[items.start:items.stop]) for k, v in feed.items()})
            return {h: o.float().numpy() for h, o in outputs.items()}
        batches = run_in_batches(model, count, batch, step)
        for head in batches[0]:
            per_head.setdefault(head, []).append(l2_normalize(np.concatenate([b[head] for b in batches])))
    return per_head


def cached_heads(model, frames: Frames, cache: Path | None) -> dict[str, list[np.ndarray]]:
    """``embed_heads``, read from / written to the npz ``cache`` (no pickle) when given."""
    if cache is not None and cache.is_file():
        with np.load(cache, allow_pickle=False) as f:
            runs = int(f["runs"])
            return {h: [f[f"{h}_{i}"] for i in range(runs)] for h in HEADS if f"{h}_0" in f}
    heads = embed_heads(model, frames)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(cache.name + ".tmp.npz")
        np.savez(tmp, runs=len(frames.sequences),
                 **{f"{h}_{i}": x for h, per_run in heads.items() for i, x in enumerate(per_run)})
        tmp.replace(cache)
    return heads


def summary(metrics: dict) -> dict:
    return {"recall@1": metrics["recall@1"], "recall@5": metrics["recall@5"],
            "num_queries": metrics["num_queries"], "num_pairs": metrics["num_pairs"],
            **{name: metrics["subsets"][name]["recall@1"] for name in SUBSETS},
            "per_condition": {c: r["recall@1"] for c, r in metrics["per_condition"].items()}}


def scored(descs, frames: Frames, cfg: TrainConfig) -> dict:
    return summary(evaluate_sequences(descs, frames.sequences, cfg.ground_truth, query_subsets=SUBSETS))


def budget(run: Path, lidar_init: Path | None = None) -> dict:
    """Epochs, steps and seconds of a run folder (and of its LiDAR warm-up), from ``history.json``."""
    def of(folder: Path) -> dict:
        history = json.loads((folder / "history.json").read_text())
        return {"epochs": len(history), "steps": int(sum(r["steps"] for r in history)),
                "seconds": float(sum(r["seconds"] for r in history)),
                "best_epoch": int(read_checkpoint_meta(folder / "best")["epoch"]),
                "best_val_recall@1": float(max(r["val/recall@1"] for r in history))}
    out = {"fused": of(run)}
    if (run / "lidar_warmup" / "history.json").is_file():
        out["lidar_warmup"] = of(run / "lidar_warmup")
    elif lidar_init is not None and (Path(lidar_init).parent / "history.json").is_file():
        out["lidar_warmup"] = {**of(Path(lidar_init).parent), "from": str(lidar_init)}
    if (run / "train_seconds.txt").is_file():
        out["wall_seconds"] = float((run / "train_seconds.txt").read_text())
    return out


def export_reweighted(model, run: Path, weight: float) -> Path:
    """``<run>/best_w<weight>``: the same weights as ``best`` with ``fusion: weighted_concat`` at ``weight``
    (its fused head retrieves as ``weighted_fusion`` of the two heads; the choice of fixed weight (a))."""
    meta = read_checkpoint_meta(run / "best")
    model_cfg = model.cfg.model_copy(update={"fusion": "weighted_concat", "fusion_cloud_weight": weight})
    reweighted = build_model("teacher", ModelConfig.model_validate(model_cfg.model_dump()))
    reweighted.load_state_dict(model.state_dict())
    config = {**meta["config"], "model": model_cfg.model_dump(mode="json")}
    out = run / f"best_w{weight:.2f}"
    save_model_checkpoint(out, reweighted, config=config, epoch=meta["epoch"],
                          metrics={**meta["metrics"], "val_chosen_cloud_weight": weight})
    return out


def measure(name: str, run: Path, val: Frames, test: Frames, weights: list[float], export_weighted: bool,
            submaps: tuple[Frames, Frames] | None = None, whiten: "Whitening | None" = None) -> dict:
    """Every head of the teacher in ``run/best`` (and with ``submaps``, (val, test) submap frames, again on them;
    with ``whiten``, the whitened fusion too)."""
    model = load_model(run / "best", expect_kind="teacher").eval()
    cfg = TrainConfig.model_validate(json.loads(json.dumps(read_checkpoint_meta(run / "best")["config"])))
    heads = None
    if whiten is not None:
        tag = name.replace(" ", "_")
        heads = {split: cached_heads(model, frames,
                                     None if whiten.cache is None else whiten.cache / f"{tag}_{split}.npz")
                 for split, frames in (("train", whiten.train), ("val", val), ("test", test))}
    out = measure_heads(model, cfg, val, test, weights, None if heads is None else (heads["val"], heads["test"]))
    if whiten is not None:
        out["whitened"], fitted = measure_whitened(model, cfg, run, heads, val, test, weights, whiten)
    if submaps is not None:
        sub_heads = None
        if whiten is not None:
            sub_heads = {split: cached_heads(model, frames, None if whiten.cache is None else
                                             whiten.cache / f"{tag}_submap_{split}.npz")
                         for split, frames in zip(("val", "test"), submaps)}
        out["submap"] = measure_heads(model, cfg, *submaps, weights,
                                      None if sub_heads is None else (sub_heads["val"], sub_heads["test"]))
        if whiten is not None:
            out["submap"]["whitened"] = score_fitted(cfg, sub_heads, *submaps, out["whitened"], fitted)
    reweighted = None
    if cfg.model.fusion in ("normalized_concat", "weighted_concat") and export_weighted:
        reweighted = str(export_reweighted(model, run, out["val"]["chosen_weight"]))
    return {"name": name, "run": str(run), "checkpoint": str(run / "best"), "fusion": cfg.model.fusion,
            "reweighted_checkpoint": reweighted,
            "learned_cloud_weight": model.cloud_weight if cfg.model.fusion == "learned_concat" else None,
            **out, "budget": budget(run, cfg.teacher.lidar_init), "seed": cfg.seed, "threads": cfg.threads}


def measure_heads(model, cfg: TrainConfig, val: Frames, test: Frames, weights: list[float],
                  heads: tuple[dict, dict] | None = None) -> dict:
    """Validation AR@1 of each head and of the weight sweep, the chosen weight, and the test scores
    (``heads``: the (val, test) head descriptors, already embedded)."""
    val_heads, test_heads = heads if heads is not None else (embed_heads(model, val), embed_heads(model, test))
    val_full = {head: scored(val_heads[head], val, cfg) for head in HEADS}
    val_scores = {head: m["recall@1"] for head, m in val_full.items()}
    details = {}
    for w in weights:
        descs = [weighted_fusion(c, i, w) for c, i in zip(val_heads["cloud"], val_heads["image"])]
        details[f"{w:.2f}"] = scored(descs, val, cfg)
    sweep = {w: m["recall@1"] for w, m in details.items()}
    fusable = [k for k in sweep if float(k) < 1.0]  # w = 1 drops the camera: not a fused teacher
    chosen = max(fusable, key=lambda k: (sweep[k], -abs(float(k) - 0.5)))
    test_scores = {head: scored(test_heads[head], test, cfg) for head in HEADS}
    weighted = [weighted_fusion(c, i, float(chosen)) for c, i in zip(test_heads["cloud"], test_heads["image"])]
    test_scores[f"weighted w={chosen} (val-chosen)"] = scored(weighted, test, cfg)
    return {"val": {"heads": val_scores, "weighted_sweep": sweep, "chosen_weight": float(chosen),
                    "head_details": val_full, "weighted_details": details}, "test": test_scores}


class Whitening:
    """What the whitened fusion needs: the training-region frames the statistics are fitted on, the
    ``(power, shrinkage)`` settings chosen from on validation, the descriptor cache, whether to export."""

    def __init__(self, train: Frames, settings: list[tuple[float, float]], cache: Path | None, export: bool):
        self.train, self.settings, self.cache, self.export = train, settings, cache, export


def whitened(heads: dict[str, list[np.ndarray]], stats: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    return {b: [apply_whitening(x, *stats[b]) for x in heads[b]] for b in ("cloud", "image")}


def measure_whitened(model, cfg: TrainConfig, run: Path, heads: dict[str, dict], val: Frames, test: Frames,
                     weights: list[float], whiten: Whitening) -> dict:
    """Each branch centred + PCA-whitened with statistics of the training region's descriptors
    (``models.whitening``), then weighted concatenation. (power, shrinkage) and w are chosen on validation
    (w = 1, the whitened LiDAR head alone, chooses its own setting); test scores the chosen ones."""
    train_all = {b: np.concatenate(heads["train"][b]) for b in ("cloud", "image")}
    sweep: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, dict]] = {}
    fitted = {}
    for power, shrinkage in whiten.settings:
        key = f"p{power:g}_s{shrinkage:g}"
        fitted[key] = {b: fit_whitening(train_all[b], power, shrinkage) for b in ("cloud", "image")}
        v = whitened(heads["val"], fitted[key])
        details[key] = {f"{w:.2f}": scored([weighted_fusion(c, i, w) for c, i in zip(v["cloud"], v["image"])],
                                           val, cfg) for w in weights}
        details[key]["image"] = scored(v["image"], val, cfg)
        sweep[key] = {k: m["recall@1"] for k, m in details[key].items()}
    fused_keys = [(key, w) for key in sweep for w in sweep[key] if w != "image" and float(w) < 1.0]
    chosen, chosen_w = max(fused_keys, key=lambda kw: (sweep[kw[0]][kw[1]], -abs(float(kw[1]) - 0.5)))
    lidar_key = max(sweep, key=lambda key: sweep[key]["1.00"])
    image_key = max(sweep, key=lambda key: sweep[key]["image"])
    t_fused, t_lidar, t_image = (whitened(heads["test"], fitted[k]) for k in (chosen, lidar_key, image_key))
    test_scores = {
        "cloud whitened": scored(t_lidar["cloud"], test, cfg),
        "image whitened": scored(t_image["image"], test, cfg),
        "whitened fused (val-chosen)": scored(
            [weighted_fusion(c, i, float(chosen_w)) for c, i in zip(t_fused["cloud"], t_fused["image"])], test, cfg),
    }
    # the plain (unwhitened) fusion at the whitened one's w, to separate the whitening from the weight
    test_scores["plain fused at that w"] = scored(
        [weighted_fusion(c, i, float(chosen_w)) for c, i in zip(heads["test"]["cloud"], heads["test"]["image"])],
        test, cfg)
    settings = {"cloud whitened": lidar_key, "image whitened": image_key, "whitened fused (val-chosen)": chosen,
                "plain fused at that w": "none"}
    val_scores = {"cloud whitened": sweep[lidar_key]["1.00"], "image whitened": sweep[image_key]["image"],
                  "whitened fused (val-chosen)": sweep[chosen][chosen_w], "plain fused at that w": float("nan")}
    val_details = {"cloud whitened": details[lidar_key]["1.00"], "image whitened": details[image_key]["image"],
                   "whitened fused (val-chosen)": details[chosen][chosen_w]}
    exported = None
    if whiten.export:
        power, shrinkage = next(ps for ps in whiten.settings if f"p{ps[0]:g}_s{ps[1]:g}" == chosen)
        conditions = sorted({seq.meta(0)["condition"] for seq in whiten.train.sequences})
        exported = str(export_whitened(model, run, float(chosen_w), fitted[chosen], power, shrinkage,
                                       len(train_all["cloud"]), cfg.data.train_region, conditions))
    result = {"val": {"sweep": sweep, "chosen_setting": chosen, "chosen_weight": float(chosen_w),
                      "heads": val_scores, "details": val_details},
              "settings": settings, "test": test_scores, "train_frames": int(len(train_all["cloud"])),
              "fit_conditions": sorted({seq.meta(0)["condition"] for seq in whiten.train.sequences}),
              "exported_checkpoint": exported}
    return result, {head: fitted[setting] for head, setting in settings.items() if setting != "none"}


def score_fitted(cfg: TrainConfig, heads: dict[str, dict], val: Frames, test: Frames, single: dict,
                 fitted: dict) -> dict:
    """Other inputs of the same frames (20 m submaps) with the single-scan statistics, settings and w as they
    are (what ``<run>/best_whitened`` does with a submap input): nothing is chosen again."""
    w = single["val"]["chosen_weight"]
    out = {"val": {"heads": {}, "chosen_weight": w}, "settings": {}, "test": {}}
    for head, setting in single["settings"].items():
        if head == "plain fused at that w":
            continue
        for split in ("val", "test"):
            wh = whitened(heads[split], fitted[head])
            descs = wh["cloud"] if head == "cloud whitened" else wh["image"] if head == "image whitened" else \
                [weighted_fusion(c, i, w) for c, i in zip(wh["cloud"], wh["image"])]
            metrics = scored(descs, val if split == "val" else test, cfg)
            if split == "val":
                out["val"]["heads"][head] = metrics["recall@1"]
            else:
                out["test"][head] = metrics
        out["settings"][head] = setting + " (scan stats)"
    return out


def export_whitened(model, run: Path, weight: float, stats: dict, power: float, shrinkage: float,
                    train_frames: int, region: str, conditions: list[str]) -> Path:
    """``<run>/best_whitened``: the weights of ``best`` with ``fusion: whitened_concat`` at ``weight`` and the
    fitted statistics as buffers (so evaluate, build-map, the nodes and export all use the whitened fusion)."""
    meta = read_checkpoint_meta(run / "best")
    model_cfg = model.cfg.model_copy(update={"fusion": "whitened_concat", "fusion_cloud_weight": weight})
    out_model = build_model("teacher", ModelConfig.model_validate(model_cfg.model_dump()))
    missing, unexpected = out_model.load_state_dict(model.state_dict(), strict=False)
    if unexpected or any("whiten" not in k for k in missing):
        raise RuntimeError(f"weights do not fit: missing {missing}, unexpected {unexpected}")
    for branch in ("cloud", "image"):
        out_model.set_whitening(branch, *stats[branch])
    config = {**meta["config"], "model": model_cfg.model_dump(mode="json")}
    out = run / "best_whitened"
    whitening = {"power": power, "shrinkage": shrinkage, "fitted_on": f"region {region}, conditions "
                 f"{conditions}, {train_frames} frames", "val_chosen_cloud_weight": weight}
    save_model_checkpoint(out, out_model, config=config, epoch=meta["epoch"],
                          metrics={**meta["metrics"], "whitening": whitening})
    return out


def measure_lidar(name: str, run: Path, val: Frames, test: Frames) -> dict:
    """A LiDAR-only model (the two-stage recipe's first stage): its one head on val and test."""
    model = load_model(run / "best", expect_kind="lidar_student").eval()
    cfg = TrainConfig.model_validate(read_checkpoint_meta(run / "best")["config"])
    val_heads, test_heads = embed_heads(model, val), embed_heads(model, test)
    val_full = scored(val_heads["fused"], val, cfg)
    return {"name": name, "run": str(run), "checkpoint": str(run / "best"), "fusion": None,
            "reweighted_checkpoint": None, "learned_cloud_weight": None,
            "val": {"heads": {"cloud": val_full["recall@1"]}, "weighted_sweep": {}, "chosen_weight": float("nan"),
                    "head_details": {"cloud": val_full}},
            "test": {"cloud": scored(test_heads["fused"], test, cfg)}, "budget": budget(run), "seed": cfg.seed,
            "threads": cfg.threads}


def inputs_of(r: dict) -> list[tuple[str, dict]]:
    """``(input label, {"val": ..., "test": ...})`` of one measured teacher: single scans, then submaps."""
    return [("single scan", r)] + ([(SUBMAP_LABEL, r["submap"])] if r.get("submap") else [])


def rows(results: list[dict]) -> list[dict]:
    out = []
    for r in results:
        for label, part in inputs_of(r):
            for head, m in part["test"].items():
                val = part["val"]["heads"][head] if head in HEADS else part["val"]["weighted_sweep"][
                    f"{part['val']['chosen_weight']:.2f}"]
                out.append({"teacher": r["name"], "input": label, "head": head, "AR@1": m["recall@1"],
                            "same dir.": m["same_direction"], "opposite": m["opposite_direction"],
                            **m["per_condition"], "val AR@1": val})
    return out


def recipe_of(name: str) -> str:
    """``two_stage_frozen seed 8`` -> ``two_stage_frozen``."""
    head, _, seed = name.rpartition(" seed ")
    return head if head and seed.isdigit() else name


def seed_summary(results: list[dict]) -> list[dict]:
    """Mean ± std (population) over the seeds of each recipe, per input and head; the val-chosen weighting is
    one head whatever weight each seed chose (the weights are listed)."""
    groups: dict[tuple[str, str, str], list[tuple[dict, float, dict | None]]] = {}
    chosen: dict[tuple[str, str], list[float]] = {}
    for r in results:
        for label, part in inputs_of(r):
            for head, m in part["test"].items():
                weighted = head not in HEADS
                val = part["val"]["weighted_sweep"][f"{part['val']['chosen_weight']:.2f}"] if weighted else \
                    part["val"]["heads"][head]
                key = (recipe_of(r["name"]), label, "weighted (val-chosen w)" if weighted else head)
                val_m = part["val"].get("weighted_details", {}).get(f"{part['val']['chosen_weight']:.2f}") \
                    if weighted else part["val"].get("head_details", {}).get(head)
                groups.setdefault(key, []).append((m, val, val_m))
                if weighted:
                    chosen.setdefault(key[:2], []).append(part["val"]["chosen_weight"])

    def pm(values: list[float]) -> str:
        return f"{np.mean(values):.3f}" + (f" ± {np.std(values):.3f}" if len(values) > 1 else "")
    out = []
    for (recipe, label, head), items in groups.items():
        ms = [m for m, _, _ in items]
        val_ms = [v for _, _, v in items if v is not None]
        weights = chosen.get((recipe, label)) if head.startswith("weighted") else None
        out.append({"teacher": recipe, "input": label, "head": head, "seeds": len(items),
                    "AR@1": pm([m["recall@1"] for m in ms]), "same dir.": pm([m["same_direction"] for m in ms]),
                    "opposite": pm([m["opposite_direction"] for m in ms]),
                    "fog": pm([m["per_condition"].get("fog", float("nan")) for m in ms]),
                    "val AR@1": pm([v for _, v, _ in items]),
                    "val same": pm([v["same_direction"] for v in val_ms]) if val_ms else "",
                    "val opp.": pm([v["opposite_direction"] for v in val_ms]) if val_ms else "",
                    "w": "" if weights is None else "/".join(f"{w:.2f}" for w in weights)})
    return out


CONDITIONS = ("day", "dusk", "night", "fog", "rain", "autumn", "winter")
SUBMAP_LABEL = "20 m submap"


def write_report(results: list[dict], out: Path, command: str, load: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "results.json", {"results": results, "targets_lidar_head": TARGETS, "command": command,
                                      "load_average": load})
    header = ["teacher", "input", "head", "AR@1", "same dir.", "opposite", *CONDITIONS, "val AR@1"]
    summary_rows = seed_summary(results)
    several = any(row["seeds"] > 1 for row in summary_rows)
    lines = ["# The fused teacher with the polar LiDAR branch (default world, test region)", "",
             "Cross-run AR@1 (correct within 25 m) over every ordered pair of the 8 runs of the test region; "
             "`val AR@1` on the validation region (the teacher's val conditions), the only figure any choice "
             "below was made with.", ""]
    if several:
        lines += ["## Mean ± std over seeds (test region)", "",
                  markdown_table(summary_rows, ["teacher", "input", "head", "seeds", "AR@1", "same dir.", "opposite",
                                                "fog", "val AR@1", "val same", "val opp.", "w"]), "",
                  "## Per teacher", ""]
    lines += [markdown_table(rows(results), header), "",
              "Targets (issue 11) for the LiDAR head: AR@1 >= 0.80, same >= 0.92, opposite >= 0.70, fog >= 0.60; "
              "the fused teacher >= its LiDAR head.", "", "## Validation sweep of the LiDAR weight w "
              "(cosine = w cos(cloud) + (1 - w) cos(image), from the two heads)", ""]
    weights = sorted({w for r in results for w in r["val"]["weighted_sweep"]})
    sweep_rows = [{"teacher": r["name"], "input": label,
                   **{f"w={w}": part["val"]["weighted_sweep"].get(w) for w in weights},
                   "chosen": part["val"]["chosen_weight"]}
                  for r in results for label, part in inputs_of(r) if part["val"]["weighted_sweep"]]
    lines += [markdown_table(sweep_rows, ["teacher", "input", *(f"w={w}" for w in weights), "chosen"],
                             {"chosen": ".2f"}), "", "## Training budget", ""]
    for r in results:
        b = r["budget"]
        stage = "fused" if r["fusion"] is not None else "LiDAR-only"
        parts = [f"{stage} {b['fused']['epochs']} epochs / {b['fused']['steps']} steps / {b['fused']['seconds']:.0f} s "
                 f"(best epoch {b['fused']['best_epoch']})"]
        if "lidar_warmup" in b:
            w = b["lidar_warmup"]
            source = f" (`{w['from']}`)" if "from" in w else ""
            parts.insert(0, f"LiDAR warm-up{source} {w['epochs']} epochs / {w['steps']} steps / {w['seconds']:.0f} s")
        learned = "" if r["learned_cloud_weight"] is None else f"; learned w = {r['learned_cloud_weight']:.3f}"
        lines.append(f"- {r['name']} (seed {r['seed']}, {r['threads']} torch thread(s), fusion {r['fusion']}"
                     f"{learned}): " + "; ".join(parts) + f"; checkpoint `{r['checkpoint']}`")
    lines += whitened_report(results)
    lines += ["", f"Load average while training/measuring: {load}", "", f"Command: `{command}`", ""]
    (out / "results.md").write_text("\n".join(lines))


def whitened_report(results: list[dict]) -> list[str]:
    """The whitened fusion's section: per teacher, and mean ± std over the teachers, beside the plain heads."""
    measured = [r for r in results if r.get("whitened")]
    if not measured:
        return []
    plain = {"cloud": "cloud", "image": "image"}
    per_teacher, groups = [], {}
    for r, input_label, part in ((r, lab, part) for r in measured for lab, part in inputs_of(r) if "whitened" in part):
        wh = part["whitened"]
        entries = [(head, part["test"][head], part["val"]["heads"][head], "none") for head in plain]
        plain_key = next(k for k in part["test"] if k not in HEADS)
        entries.append((f"fused plain, val-chosen w = {part['val']['chosen_weight']:.2f}", part["test"][plain_key],
                        part["val"]["weighted_sweep"][f"{part['val']['chosen_weight']:.2f}"], "none"))
        for head, m in wh["test"].items():
            label = head if head != "whitened fused (val-chosen)" else \
                f"whitened fused, val-chosen w = {wh['val']['chosen_weight']:.2f}"
            if head == "plain fused at that w":
                label = f"fused plain at w = {wh['val']['chosen_weight']:.2f}"
            entries.append((label, m, wh["val"]["heads"][head], wh["settings"][head]))
        for i, (label, m, val, setting) in enumerate(entries):
            row = {"teacher": r["name"], "input": input_label, "head": label, "whitening": setting,
                   "AR@1": m["recall@1"],
                   "same dir.": m["same_direction"], "opposite": m["opposite_direction"],
                   "fog": m["per_condition"].get("fog", float("nan")), "val AR@1": val}
            per_teacher.append(row)
            groups.setdefault((recipe_of(r["name"]), input_label, i), []).append(row)

    def pm(values: list[float]) -> str:
        if all(np.isnan(values)):
            return "–"
        return f"{np.mean(values):.3f}" + (f" ± {np.std(values):.3f}" if len(values) > 1 else "")
    summary_rows = []
    for (recipe, input_label, _), items in groups.items():
        head = items[0]["head"]
        if len({row["head"] for row in items}) > 1:  # the chosen w differs between seeds
            head = head.split(" = ")[0] + " = " + "/".join(row["head"].split(" = ")[-1] for row in items)
        summary_rows.append({"teacher": recipe, "input": input_label, "head": head, "seeds": len(items),
                             "whitening": "/".join(row["whitening"] for row in items),
                             **{k: pm([row[k] for row in items]) for k in
                                ("AR@1", "same dir.", "opposite", "fog", "val AR@1")}})
    columns = ["teacher", "input", "head", "whitening", "AR@1", "same dir.", "opposite", "fog", "val AR@1"]
    return ["", "## Whitened fusion (statistics of the training region's descriptors)", "",
            "Each head L2-normalised, centred on its training-region mean and PCA-whitened (`pP_sS`: eigenvalues "
            "shrunk by S towards their mean, scaled by their power -P/2; p0 = centring only), L2-normalised again, "
            "then weighted concatenation. The setting and w were chosen on validation (the whitened LiDAR / image "
            "head alone choose their own setting); test was never used to choose. Statistics fitted on "
            f"{measured[0]['whitened']['train_frames']} frames of the training region, conditions "
            f"{', '.join(measured[0]['whitened']['fit_conditions'])}.", "",
            markdown_table(summary_rows, ["teacher", "input", "head", "seeds", *columns[3:]]), "",
            markdown_table(per_teacher, columns), ""]


def main() -> None:
    import os
    import sys

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, default=Path("data/world_default"))
    p.add_argument("--runs", type=Path, default=Path("/tmp/teachers"), help="run folders <recipe>_seed<N>")
    p.add_argument("--recipes", nargs="*", default=["nc", "two_stage"], help=f"of {[*RECIPES, 'demo']}")
    p.add_argument("--extra", nargs="*", default=[], help="more teacher run folders, as name=path")
    p.add_argument("--lidar", nargs="*", default=[], help="LiDAR-only run folders (lidar_student), as name=path")
    p.add_argument("--seeds", type=int, nargs="+", default=[1])
    p.add_argument("--train", action="store_true", help="train missing runs (otherwise skip them)")
    p.add_argument("--train-only", action="store_true", help="train the missing runs, measure nothing")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lidar-init", type=Path, default=None,
                   help="two-stage recipes: start from this LiDAR checkpoint (a 128-d polar lidar_student trained "
                   "like the warm-up) instead of training their own warm-up")
    p.add_argument("--cache", type=Path, default=None, help="feature_cache.dir of the training runs")
    p.add_argument("--weights", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.98, 1.0])
    p.add_argument("--out", type=Path, default=Path("docs/results/teacher"))
    p.add_argument("--submap-m", type=float, default=0.0,
                   help="also score every teacher on centred submaps of this length (m; 0: single scans only)")
    p.add_argument("--export-weighted", action="store_true",
                   help="also save <run>/best_w<w>: the checkpoint with fusion weighted_concat at the val-chosen w")
    p.add_argument("--whiten", action="store_true",
                   help="also score the whitened fusion: each head centred + PCA-whitened with statistics of the "
                   "training region's descriptors (the teacher's train conditions), (power, shrinkage) and w chosen "
                   "on validation")
    p.add_argument("--whiten-settings", nargs="+", default=["0:0", "0.5:0", "1:0", "1:0.1", "1:0.5"],
                   help="power:shrinkage pairs of the whitening chosen from on validation (0:0 = centring only)")
    p.add_argument("--whiten-all-conditions", action="store_true",
                   help="fit the statistics on every run of the training region (also the conditions the teacher "
                   "never trained on; descriptors only, no labels) instead of the teacher's train conditions")
    p.add_argument("--desc-cache", type=Path, default=None,
                   help="with --whiten: cache each teacher's train/val/test head descriptors here (npz)")
    p.add_argument("--export-whitened", action="store_true",
                   help="with --whiten: save <run>/best_whitened, fusion whitened_concat with the fitted statistics "
                   "at the val-chosen setting and w")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    runs: list[tuple[str, Path]] = []
    for recipe in args.recipes:
        for seed in args.seeds:
            folder = args.runs / f"{recipe}_seed{seed}"
            if args.train:
                folder = train(recipe, args.world, args.runs, seed, args.threads, args.cache, args.lidar_init)
            if (folder / "best" / "checkpoint.json").is_file():
                runs.append((f"{recipe} seed {seed}", folder))
    if args.train_only:
        return
    runs += [(item.split("=", 1)[0], Path(item.split("=", 1)[1])) for item in args.extra]
    folders = [folder for _, folder in runs] + [Path(item.split("=", 1)[1]) for item in args.lidar]
    first = TrainConfig.model_validate(read_checkpoint_meta(folders[0] / "best")["config"])
    val = Frames([s for s in load_synthetic(args.world, regions={first.data.val_region})
                  if first.data.val_conditions is None or s.meta(0)["condition"] in first.data.val_conditions])
    test = Frames(load_synthetic(args.world, regions={"test"}))
    submaps = None
    if args.submap_m > 0:  # as benchmarks/lidar_teacher.py's SUBMAP (centred, at most 60k points)
        sub = SubmapConfig(length_m=args.submap_m, window="centred", max_points=60000)
        base_T_lidar = np.asarray(read_world_meta(args.world)["calibration"]["T_base_lidar"])
        submaps = tuple(Frames([SubmapSequence(s, sub, base_T_lidar) for s in frames.sequences])
                        for frames in (val, test))
    whiten = None
    if args.whiten:
        train_frames = Frames([s for s in load_synthetic(args.world, regions={first.data.train_region})
                               if first.data.train_conditions is None or args.whiten_all_conditions
                               or s.meta(0)["condition"] in first.data.train_conditions])
        settings = [(float(a), float(b)) for a, b in (item.split(":") for item in args.whiten_settings)]
        whiten = Whitening(train_frames, settings, args.desc_cache, args.export_whitened)
    results = []
    for item in args.lidar:
        results.append(measure_lidar(item.split("=", 1)[0], Path(item.split("=", 1)[1]), val, test))
    for name, folder in runs:
        results.append(measure(name, folder, val, test, args.weights, args.export_weighted, submaps, whiten))
        print(json.dumps({"name": name, "test": {h: m["recall@1"] for h, m in results[-1]["test"].items()},
                          "val": results[-1]["val"]}), flush=True)
        if results[-1].get("whitened"):
            print(json.dumps({"name": name, "whitened test": {h: m["recall@1"] for h, m in
                                                              results[-1]["whitened"]["test"].items()}}), flush=True)
    load = " ".join(f"{x:.1f}" for x in os.getloadavg())
    write_report(results, args.out, "PYTHONPATH=$PWD nice -n 10 .venv/bin/python " + " ".join(sys.argv), load)


if __name__ == "__main__":
    main()
