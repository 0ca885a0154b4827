"""Cross-run retrieval evaluation (PointNetVLAD / DistilVPR protocol) with query subsets.

Each run serves in turn as the database for the queries of every other run (ordered pairs, see
:func:`~distilvpr_ros.data.ground_truth.cross_run_pairs`); a retrieval is correct within
``GroundTruthConfig.correct_m`` (25 m); queries without a true match are skipped. Similarity is the
inner product of L2-normalised descriptors (cosine). Per pair :func:`~.metrics.recall_at_n` gives
Recall@N and Recall@1 %; AR@N is their mean over pairs (:func:`~.metrics.average_recalls`).

Query subsets (MutualVPR asks how view changes and occlusion hurt) keep, per pair, only the queries for
which ``predicate(query_meta, database_meta)`` holds, where ``database_meta`` is the per-frame meta of
the query's *nearest* true match in the database run:

* ``same_direction`` / ``opposite_direction``: the query drives the same / the opposite way as that
  database frame (``meta["direction"]``, +1/-1);
* ``occluded``: more than 15 % of the query image is covered by moving traffic
  (``meta["dynamic_fraction"]`` > :data:`OCCLUSION_THRESHOLD`).

Every subset, and each query condition (``meta["condition"]`` of the query frame; a synthetic run has
one condition, so this is the query run's), is reported with the same keys as the overall result.
Per-frame meta comes from ``seq.meta(i)`` (no sensor data is loaded); sequences without it give
empty meta, so their condition is "unknown" and subsets needing meta fail with a clear error.

:func:`run_evaluate` is the command: checkpoint + sequences of any data source (a synthetic world region,
ROS 2 bags, Oxford, Boreas, KITTI; :func:`~distilvpr_ros.data.sources.open_sequences`) →
``results/evaluate/<timestamp>/`` with ``metrics.json``, ``metrics.md``, ``recall_at_n.png`` and ``matches.png``.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

from ..config import GroundTruthConfig
from ..data.ground_truth import RunPair, cross_run_pairs
from ..data.sample import Sequence as SampleSequence
from ..data.sources import open_sequences
from ..data.submap import SubmapConfig, with_submaps
from ..models.checkpoint import load_model
from ..models.inference import embed_sequences
from ..utils.results import make_run_dir, write_json
from .metrics import RECALL_NS, average_recalls, recall_at_n, top_k
from .plots import plot_match_grid, plot_recall_at_n
from .report import markdown_table, to_jsonable

#: The stable metric keys of every result block (overall, each subset, each condition, each pair).
RECALL_KEYS = tuple(f"recall@{n}" for n in RECALL_NS) + ("recall@1%",)
#: Recall@N curve length (``recall_curve`` holds AR@1 .. AR@25).
CURVE_MAX_N = 25
#: A query is occluded when more than this fraction of its image shows moving traffic.
OCCLUSION_THRESHOLD = 0.15
UNKNOWN_CONDITION = "unknown"
#: Examples of each kind (correct / wrong) drawn in ``matches.png``.
MATCH_EXAMPLES = 4

#: ``predicate(query frame meta, meta of its nearest true match in the database run) -> keep``.
SubsetPredicate = Callable[[dict, dict], bool]
#: Selects the runs that may serve as the database (e.g. only daytime runs: a map built in daylight).
DatabaseFilter = Callable[[SampleSequence], bool]


def same_direction(query_meta: dict, database_meta: dict) -> bool:
    """The query drives the same way as its nearest true match."""
    return query_meta["direction"] == database_meta["direction"]


def opposite_direction(query_meta: dict, database_meta: dict) -> bool:
    """The query drives the opposite way to its nearest true match."""
    return query_meta["direction"] == -database_meta["direction"]


def occluded(threshold: float = OCCLUSION_THRESHOLD) -> SubsetPredicate:
    """Predicate: more than ``threshold`` of the query image shows moving traffic."""
    def predicate(query_meta: dict, database_meta: dict) -> bool:
        return query_meta["dynamic_fraction"] > threshold
    return predicate


#: Built-in query subsets, selectable by name in :func:`evaluate_sequences`.
QUERY_SUBSETS: dict[str, SubsetPredicate] = {
    "same_direction": same_direction,
    "opposite_direction": opposite_direction,
    "occluded": occluded(),
}


def frame_metas(sequence: SampleSequence) -> list[dict]:
    """Per-frame meta from ``sequence.meta(i)`` when the sequence has it, else empty dicts."""
    meta = getattr(sequence, "meta", None)
    return [meta(i) for i in range(len(sequence))] if callable(meta) else [{} for _ in range(len(sequence))]


def evaluation_pairs(sequences: Sequence[SampleSequence], gt_cfg: GroundTruthConfig | None = None,
                     database_filter: DatabaseFilter | None = None) -> list[RunPair]:
    """The ordered (database, query) run pairs evaluated, optionally only with accepted database runs."""
    pairs = cross_run_pairs(list(sequences), gt_cfg)
    if database_filter is None:
        return pairs
    return [pair for pair in pairs if database_filter(sequences[pair.database])]


def _resolve_subsets(query_subsets: Iterable[str] | Mapping[str, SubsetPredicate] | None
                     ) -> dict[str, SubsetPredicate]:
    if query_subsets is None:
        return {}
    if isinstance(query_subsets, Mapping):
        return dict(query_subsets)
    unknown = [name for name in query_subsets if name not in QUERY_SUBSETS]
    if unknown:
        raise ValueError(f"unknown query subsets {unknown}; built-in ones are {sorted(QUERY_SUBSETS)}")
    return {name: QUERY_SUBSETS[name] for name in query_subsets}


def _nearest_true_match(pair: RunPair, query_xy: np.ndarray, database_xy: np.ndarray) -> np.ndarray:
    """Per query frame, the database index of its closest true match (-1 without one)."""
    nearest = np.full(len(pair.true_matches), -1, dtype=np.int64)
    for i, matches in enumerate(pair.true_matches):
        if len(matches):
            distances = np.linalg.norm(database_xy[matches] - query_xy[i], axis=1)
            nearest[i] = matches[int(np.argmin(distances))]
    return nearest


def _recalls(similarity: np.ndarray, true_matches: Sequence[np.ndarray], keep: Sequence[int]) -> dict:
    """Recall@1..25 and Recall@1 % of the kept query rows (NaN recalls when none is evaluable)."""
    keep = list(keep)
    return recall_at_n(similarity[keep], [true_matches[i] for i in keep], ns=range(1, CURVE_MAX_N + 1))


def _summary(per_pair: Sequence[dict]) -> dict:
    """AR@N over pairs with the stable keys, the Recall@N curve and counts."""
    averaged = average_recalls(per_pair) if per_pair else {}
    out = {key: averaged.get(key, float("nan")) for key in RECALL_KEYS}
    out["recall_curve"] = [averaged.get(f"recall@{n}", float("nan")) for n in range(1, CURVE_MAX_N + 1)]
    out["num_pairs"] = int(averaged.get("num_pairs", 0))
    out["num_queries"] = int(sum(p["num_queries"] for p in per_pair))
    return out


def _run_condition(metas: Sequence[dict]) -> str:
    counts = Counter(m.get("condition", UNKNOWN_CONDITION) for m in metas)
    return counts.most_common(1)[0][0] if counts else UNKNOWN_CONDITION


def evaluate_sequences(descs: Sequence[np.ndarray], sequences: Sequence[SampleSequence],
                       gt_cfg: GroundTruthConfig | None = None, *,
                       database_filter: DatabaseFilter | None = None,
                       query_subsets: Iterable[str] | Mapping[str, SubsetPredicate] | None = None) -> dict:
    """Cross-run AR@N of L2-normalised descriptors (one array per sequence, rows aligned with frames).

    Args:
        descs: ``len(seq) x D`` descriptors per sequence (e.g. from :func:`~.embed.embed_sequences`).
        sequences: the runs, with poses (and ``meta(i)`` for subsets and the condition breakdown).
        gt_cfg: ground truth; a retrieval is correct within ``correct_m``.
        database_filter: only runs it accepts serve as the database (all runs still give queries).
        query_subsets: names from :data:`QUERY_SUBSETS` or ``name → predicate``.

    Returns:
        ``recall@1, @5, @10, @20, @25, @1%`` (AR over pairs), ``recall_curve`` (AR@1..25), ``num_pairs``,
        ``num_queries`` (evaluable queries summed over pairs); ``subsets.<name>`` and
        ``per_condition.<query condition>`` with the same keys; ``pairs``: per ordered pair the run names
        and conditions, the recall keys and ``num_queries``.
    """
    if len(descs) != len(sequences):
        raise ValueError(f"{len(descs)} descriptor arrays for {len(sequences)} sequences")
    for desc, seq in zip(descs, sequences):
        if len(desc) != len(seq):
            raise ValueError(f"run {seq.run}: {len(desc)} descriptors for {len(seq)} frames")
    subsets = _resolve_subsets(query_subsets)
    metas = [frame_metas(seq) for seq in sequences]
    positions = [np.asarray(seq.poses)[:, :2, 3] for seq in sequences]
    pair_results, subset_results = [], {name: [] for name in subsets}
    condition_results: dict[str, list[dict]] = {}
    pairs = evaluation_pairs(sequences, gt_cfg, database_filter)
    for pair in pairs:
        q_meta, db_meta = metas[pair.query], metas[pair.database]
        similarity = np.asarray(descs[pair.query]) @ np.asarray(descs[pair.database]).T
        evaluable = pair.evaluable
        result = _recalls(similarity, pair.true_matches, evaluable)
        pair_results.append(result)
        if subsets:
            nearest = _nearest_true_match(pair, positions[pair.query], positions[pair.database])
            for name, predicate in subsets.items():
                try:
                    keep = [i for i in evaluable if predicate(q_meta[i], db_meta[nearest[i]])]
                except KeyError as err:
                    raise ValueError(f"query subset {name!r} needs per-frame meta {err} (runs "
                                     f"{sequences[pair.query].run}, {sequences[pair.database].run})") from None
                subset_results[name].append(_recalls(similarity, pair.true_matches, keep))
        conditions = [q_meta[i].get("condition", UNKNOWN_CONDITION) for i in evaluable]
        for condition in sorted(set(conditions)):
            keep = [i for i, c in zip(evaluable, conditions) if c == condition]
            condition_results.setdefault(condition, []).append(_recalls(similarity, pair.true_matches, keep))
    out = _summary(pair_results)
    out["subsets"] = {name: _summary(results) for name, results in subset_results.items()}
    out["per_condition"] = {c: _summary(results) for c, results in sorted(condition_results.items())}
    out["pairs"] = [
        {
            "database": sequences[pair.database].run,
            "query": sequences[pair.query].run,
            "database_condition": _run_condition(metas[pair.database]),
            "query_condition": _run_condition(metas[pair.query]),
            **{key: result[key] for key in RECALL_KEYS},
            "num_queries": int(result["num_queries"]),
        }
        for pair, result in zip(pairs, pair_results)
    ]
    return out


@dataclass(frozen=True)
class Top1Match:
    """The best database frame retrieved for one evaluable query of one run pair."""

    query_run: int  # index into the sequences
    query_index: int
    database_run: int
    database_index: int
    distance_m: float  # planar distance between the query and the retrieved frame
    correct: bool  # the retrieved frame is a true match (within correct_m)


def top1_matches(descs: Sequence[np.ndarray], sequences: Sequence[SampleSequence],
                 pairs: Sequence[RunPair]) -> list[Top1Match]:
    """Top-1 retrieval of every evaluable query of every pair (for match grids and error analysis)."""
    matches = []
    for pair in pairs:
        evaluable = pair.evaluable
        if not len(evaluable):
            continue
        similarity = np.asarray(descs[pair.query])[evaluable] @ np.asarray(descs[pair.database]).T
        best = top_k(similarity, 1)[:, 0]
        query_xy = np.asarray(sequences[pair.query].poses)[evaluable, :2, 3]
        database_xy = np.asarray(sequences[pair.database].poses)[best, :2, 3]
        distances = np.linalg.norm(query_xy - database_xy, axis=1)
        for i, j, distance in zip(evaluable, best, distances):
            matches.append(Top1Match(pair.query, int(i), pair.database, int(j), float(distance),
                                     bool(j in set(pair.true_matches[i].tolist()))))
    return matches


def pick_examples(matches: Sequence[Top1Match], per_kind: int = MATCH_EXAMPLES, seed: int = 0) -> list[Top1Match]:
    """Up to ``per_kind`` correct then up to ``per_kind`` wrong matches, drawn reproducibly at random."""
    rng = np.random.default_rng(seed)
    chosen = []
    for ok in (True, False):
        kind = [m for m in matches if m.correct == ok]
        picks = rng.choice(len(kind), size=min(per_kind, len(kind)), replace=False) if kind else []
        chosen += [kind[k] for k in sorted(picks)]
    return chosen


def plot_examples(examples: Sequence[Top1Match], sequences: Sequence[SampleSequence], path: Path) -> Path:
    """``matches.png``: each example query beside its top-1 match, framed green (correct) or red (wrong)."""
    pairs = []
    for m in examples:
        query_seq, database_seq = sequences[m.query_run], sequences[m.database_run]
        caption = f"{m.distance_m:.1f} m\n{query_seq.run} → {database_seq.run}"
        pairs.append((query_seq[m.query_index].image, database_seq[m.database_index].image, m.correct, caption))
    return plot_match_grid(pairs, path, title="Query → top-1 database match (distance to the query)")


def metrics_markdown(metrics: dict, title: str = "Cross-run evaluation") -> str:
    """``metrics.md``: config lines, then overall / subset / per-condition AR@N, then the per-pair table."""
    columns = ["set", *RECALL_KEYS, "num_pairs", "num_queries"]
    rows = [{"set": "all queries", **metrics}]
    rows += [{"set": f"subset: {name}", **result} for name, result in metrics.get("subsets", {}).items()]
    rows += [{"set": f"condition: {name}", **result} for name, result in metrics.get("per_condition", {}).items()]
    config = metrics.get("config", {})
    lines = [f"# {title}", ""]
    lines += [f"- {key}: `{value}`" for key, value in config.items() if not isinstance(value, dict)]
    lines += ["", "AR@N: mean over ordered (database, query) run pairs; a retrieval is correct within "
              f"{config.get('ground_truth', {}).get('correct_m', '?')} m.", "", markdown_table(rows, columns)]
    if metrics.get("pairs"):
        pair_columns = ["database", "query", "query_condition", "recall@1", "recall@1%", "num_queries"]
        lines += ["## Run pairs", "", markdown_table(metrics["pairs"], pair_columns)]
    return "\n".join(lines)


def run_evaluate(checkpoint: Path, root: Path, region: str = "test", out_dir: Path | None = None,
                 batch_size: int = 32, head: str = "fused", *, source: str = "synthetic", sequences: Iterable[str] = (),
                 images_root: Path | None = None, gt_cfg: GroundTruthConfig | None = None,
                 query_subsets: Iterable[str] = tuple(QUERY_SUBSETS), results_root: Path = Path("results"),
                 progress: bool = True, submap: SubmapConfig | None = None) -> dict:
    """Evaluate a checkpoint on the runs of a data source and write the result folder.

    ``source`` (``open_sequences``): ``synthetic`` reads the frames of ``region`` of the world at ``root``;
    ``bags``, ``oxford``, ``boreas`` and ``kitti`` read the named ``sequences`` under ``root`` (Oxford images
    from ``images_root``). Query subsets that need per-frame meta (direction, occlusion) exist only in
    synthetic worlds; other sources get the overall and per-pair results. ``submap`` (``length_m`` > 0): every
    cloud is replaced by its LiDAR submap over the run's poses (``data.submap.with_submaps``).

    Writes into ``out_dir`` (default: a fresh ``<results_root>/evaluate/<timestamp>/`` with a ``latest``
    link): ``metrics.json`` (the dict returned, with ``config``: checkpoint, model kind, source, region or
    sequences, world or root, head, batch size, ground truth), ``metrics.md``, ``recall_at_n.png`` and
    ``matches.png``.
    """
    gt_cfg = gt_cfg or GroundTruthConfig()
    synthetic = source == "synthetic"
    model = load_model(checkpoint)
    runs = open_sequences(source, Path(root), region=region if synthetic else None, names=sequences,
                          images_root=images_root)
    if not synthetic:
        query_subsets = ()
    runs = with_submaps(runs, submap)
    descs = embed_sequences(model, runs, batch_size=batch_size, progress=progress, head=head)
    metrics = evaluate_sequences(descs, runs, gt_cfg, query_subsets=query_subsets)
    where = {"region": region, "world": str(root)} if synthetic else {"sequences": list(sequences), "root": str(root)}
    metrics["config"] = {
        "checkpoint": str(checkpoint),
        "model_kind": model.kind,
        "source": source,
        **where,
        "head": head,
        "batch_size": batch_size,
        "submap": (submap or SubmapConfig()).model_dump(),
        "runs": [seq.run for seq in runs],
        "occlusion_threshold": OCCLUSION_THRESHOLD,
        "ground_truth": gt_cfg.model_dump(),
    }
    out = Path(out_dir) if out_dir is not None else make_run_dir(results_root, "evaluate")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", to_jsonable(metrics))
    (out / "metrics.md").write_text(metrics_markdown(metrics))
    curves = {"all queries": metrics["recall_curve"]}
    curves.update({name: result["recall_curve"] for name, result in metrics["subsets"].items()
                   if result["num_queries"]})
    data_name = f"{region} region" if synthetic else source
    plot_recall_at_n(curves, out / "recall_at_n.png",
                     title=f"Cross-run Recall@N ({model.kind}, {head} head, {data_name})")
    examples = pick_examples(top1_matches(descs, runs, evaluation_pairs(runs, gt_cfg)))
    plot_examples(examples, runs, out / "matches.png")
    return metrics
