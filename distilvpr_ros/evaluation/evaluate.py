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
one condition, so this is the query run's), is reported with the same keys as the overall result, and
every block also gives ``chance@1``: the AR@1 of a random ranking (closed form,
:func:`~.metrics.chance_recall_at_n`, averaged like the recalls).

**Visible subset** (a forward 90-degree camera cannot match places it sees from behind). With
``visible`` (:class:`~distilvpr_ros.data.visibility.VisibleStructure`: a world's ray-cast ground truth,
or a pose-only proxy) a database frame is a *visible match* of a query when it sees at least 10 % of
the query's visible structure. A query of a pair counts in the *visible subset* when at least one of
its true matches (within ``correct_m``) is a visible match: a camera can solve it. There a retrieval is
correct as everywhere else (``visible``: any true match within ``correct_m``), or, *strictly*, only when
it is a visible match within ``correct_m`` (``visible.strict``; with the world's ground truth and its
10 % threshold, same-direction frames more than ~15 m apart rarely qualify, so the strict rule is a
tighter radius, not only a subset). Reported overall, per query condition and split by direction
(standard rule), with the share of queries in it and the AR@1 ceiling it implies for a camera on all
queries. The camera's headline metrics are same-direction and visible-subset AR@1 by query condition
(:func:`headline`).
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
from ..data.visibility import VisibilityConfig, VisibleStructure
from ..models.checkpoint import load_model
from ..models.inference import embed_sequences
from ..utils.results import make_run_dir, write_json
from .metrics import RECALL_NS, average_recalls, chance_recall_at_n, recall_at_n, top_k
from .plots import plot_match_grid, plot_recall_at_n
from .report import format_value, markdown_table, to_jsonable

#: The stable metric keys of every result block (overall, each subset, each condition, each pair).
RECALL_KEYS = tuple(f"recall@{n}" for n in RECALL_NS) + ("recall@1%",)
#: Chance level: AR@1 of a ranking drawn at random (closed form, :func:`~.metrics.chance_recall_at_n`).
CHANCE_KEY = "chance@1"
#: Recall@N curve length (``recall_curve`` holds AR@1 .. AR@25).
CURVE_MAX_N = 25
#: A query is occluded when more than this fraction of its image shows moving traffic.
OCCLUSION_THRESHOLD = 0.15
UNKNOWN_CONDITION = "unknown"
#: Examples of each kind (correct / wrong) drawn in ``matches.png``.
MATCH_EXAMPLES = 4

#: ``predicate(query frame meta, meta of its nearest true match in the database run) -> keep``.
SubsetPredicate = Callable[[dict, dict], bool]
#: ``visible(query sequence index, database sequence index) -> (Q, D) bool``: shares visible structure.
VisibleMatches = Callable[[int, int], np.ndarray]
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
    """Recall@1..25, Recall@1 % and chance AR@1 of the kept query rows (NaN recalls when none is evaluable)."""
    keep = list(keep)
    truth = [true_matches[i] for i in keep]
    out = recall_at_n(similarity[keep], truth, ns=range(1, CURVE_MAX_N + 1))
    counts = [len(t) for t in truth if len(t)]
    out[CHANCE_KEY] = float(np.mean(chance_recall_at_n(counts, similarity.shape[1]))) if counts else float("nan")
    return out


def _summary(per_pair: Sequence[dict]) -> dict:
    """AR@N over pairs with the stable keys, chance AR@1, the Recall@N curve and counts."""
    averaged = average_recalls(per_pair) if per_pair else {}
    out = {key: averaged.get(key, float("nan")) for key in RECALL_KEYS}
    chance = np.array([p[CHANCE_KEY] for p in per_pair if p["num_queries"] > 0], dtype=float)
    out[CHANCE_KEY] = float(chance.mean()) if len(chance) else float("nan")
    out["recall_curve"] = [averaged.get(f"recall@{n}", float("nan")) for n in range(1, CURVE_MAX_N + 1)]
    out["num_pairs"] = int(averaged.get("num_pairs", 0))
    out["num_queries"] = int(sum(p["num_queries"] for p in per_pair))
    return out


def _run_condition(metas: Sequence[dict]) -> str:
    counts = Counter(m.get("condition", UNKNOWN_CONDITION) for m in metas)
    return counts.most_common(1)[0][0] if counts else UNKNOWN_CONDITION


class _Block:
    """The per-pair results of one set of queries (with its own truth), overall and per query condition."""

    def __init__(self):
        self.pairs: list[dict] = []
        self.conditions: dict[str, list[dict]] = {}

    def add(self, similarity: np.ndarray, truth: Sequence[np.ndarray], keep: Sequence[int],
            conditions: Sequence[str]) -> dict:
        """Score the kept queries of one pair (``conditions``: per query frame); returns the pair's result."""
        result = _recalls(similarity, truth, keep)
        self.pairs.append(result)
        kept = [conditions[i] for i in keep]
        for condition in sorted(set(kept)):
            rows = [i for i, c in zip(keep, kept) if c == condition]
            self.conditions.setdefault(condition, []).append(_recalls(similarity, truth, rows))
        return result

    def summary(self, per_condition: bool = True) -> dict:
        out = _summary(self.pairs)
        if per_condition:
            out["per_condition"] = {c: _summary(results) for c, results in sorted(self.conditions.items())}
        return out


def _share(part: dict, whole: dict) -> float:
    return part["num_queries"] / whole["num_queries"] if whole["num_queries"] else float("nan")


def headline(metrics: dict) -> dict:
    """AR@1 all / same direction / opposite direction / visible subset and chance, overall and per query
    condition, from an :func:`evaluate_sequences` result (absent subsets are left out)."""
    blocks = {"all": metrics}
    subsets = metrics.get("subsets", {})
    for name in ("same_direction", "opposite_direction"):
        if name in subsets:
            blocks[name] = subsets[name]
    if metrics.get("visible"):
        blocks["visible"] = metrics["visible"]
        blocks["visible_strict"] = metrics["visible"]["strict"]
    out = {CHANCE_KEY: metrics[CHANCE_KEY], **{name: block["recall@1"] for name, block in blocks.items()}}
    out["per_condition"] = {
        c: {**{name: block.get("per_condition", {}).get(c, {}).get("recall@1", float("nan"))
               for name, block in blocks.items()}, CHANCE_KEY: result[CHANCE_KEY]}
        for c, result in metrics.get("per_condition", {}).items()}
    return out


def evaluate_sequences(descs: Sequence[np.ndarray], sequences: Sequence[SampleSequence],
                       gt_cfg: GroundTruthConfig | None = None, *,
                       database_filter: DatabaseFilter | None = None,
                       query_subsets: Iterable[str] | Mapping[str, SubsetPredicate] | None = None,
                       visible: VisibleMatches | None = None) -> dict:
    """Cross-run AR@N of L2-normalised descriptors (one array per sequence, rows aligned with frames).

    Args:
        descs: ``len(seq) x D`` descriptors per sequence (e.g. from :func:`~.embed.embed_sequences`).
        sequences: the runs, with poses (and ``meta(i)`` for subsets and the condition breakdown).
        gt_cfg: ground truth; a retrieval is correct within ``correct_m``.
        database_filter: only runs it accepts serve as the database (all runs still give queries).
        query_subsets: names from :data:`QUERY_SUBSETS` or ``name → predicate``.
        visible: ``visible(query index, database index) -> (Q, D) bool`` over all frames of the two sequences:
            the database frame shares visible structure with the query (e.g.
            :meth:`~distilvpr_ros.data.visibility.VisibleStructure.matches`). Adds the ``visible`` block.

    Returns:
        ``recall@1, @5, @10, @20, @25, @1%`` (AR over pairs), ``chance@1`` (AR@1 of a random ranking, in
        closed form), ``recall_curve`` (AR@1..25), ``num_pairs``, ``num_queries`` (evaluable queries summed
        over pairs); ``subsets.<name>`` and ``per_condition.<query condition>`` with the same keys (each
        subset also with its own ``per_condition``); ``pairs``: per ordered pair the run names and
        conditions, the recall keys, ``chance@1`` and ``num_queries``.

        With ``visible``, ``visible`` holds the visible subset (module doc) with the same keys and
        ``per_condition``, ``strict`` (the same queries, correct only at a visible match), its
        ``same_direction`` / ``opposite_direction`` parts (when the sequences have direction meta), ``share``
        (the fraction of evaluable queries, summed over pairs, in the visible subset: ``all``,
        ``same_direction``, ``opposite_direction``) and ``ceiling@1`` (the mean over pairs of that fraction:
        the AR@1 on all queries of a model that solves exactly the visible ones). Without it ``visible`` is
        None. ``headline``: :func:`headline`.
    """
    if len(descs) != len(sequences):
        raise ValueError(f"{len(descs)} descriptor arrays for {len(sequences)} sequences")
    for desc, seq in zip(descs, sequences):
        if len(desc) != len(seq):
            raise ValueError(f"run {seq.run}: {len(desc)} descriptors for {len(seq)} frames")
    subsets = _resolve_subsets(query_subsets)
    metas = [frame_metas(seq) for seq in sequences]
    positions = [np.asarray(seq.poses)[:, :2, 3] for seq in sequences]
    overall = _Block()
    subset_blocks = {name: _Block() for name in subsets}
    directions = all("direction" in m for ms in metas for m in ms)
    visible_blocks, strict = {"visible": _Block()}, _Block()
    if directions:
        visible_blocks.update(same_direction=_Block(), opposite_direction=_Block())
    ceiling, direction_queries = [], {name: 0 for name in visible_blocks if name != "visible"}
    pair_results = []
    pairs = evaluation_pairs(sequences, gt_cfg, database_filter)
    for pair in pairs:
        q_meta, db_meta = metas[pair.query], metas[pair.database]
        similarity = np.asarray(descs[pair.query]) @ np.asarray(descs[pair.database]).T
        evaluable = pair.evaluable
        conditions = [m.get("condition", UNKNOWN_CONDITION) for m in q_meta]
        pair_results.append(overall.add(similarity, pair.true_matches, evaluable, conditions))
        nearest = None
        if subsets or (visible is not None and directions):
            nearest = _nearest_true_match(pair, positions[pair.query], positions[pair.database])
        for name, predicate in subsets.items():
            try:
                keep = [i for i in evaluable if predicate(q_meta[i], db_meta[nearest[i]])]
            except KeyError as err:
                raise ValueError(f"query subset {name!r} needs per-frame meta {err} (runs "
                                 f"{sequences[pair.query].run}, {sequences[pair.database].run})") from None
            subset_blocks[name].add(similarity, pair.true_matches, keep, conditions)
        if visible is None:
            continue
        sees = np.asarray(visible(pair.query, pair.database), dtype=bool)
        truth = [m[sees[i, m]] for i, m in enumerate(pair.true_matches)]
        keep = [i for i in evaluable if len(truth[i])]
        visible_blocks["visible"].add(similarity, pair.true_matches, keep, conditions)
        strict.add(similarity, truth, keep, conditions)
        if len(evaluable):
            ceiling.append(len(keep) / len(evaluable))
        if directions:
            for name, predicate in (("same_direction", same_direction), ("opposite_direction", opposite_direction)):
                direction_queries[name] += sum(1 for i in evaluable if predicate(q_meta[i], db_meta[nearest[i]]))
                rows = [i for i in keep if predicate(q_meta[i], db_meta[nearest[i]])]
                visible_blocks[name].add(similarity, pair.true_matches, rows, conditions)
    out = overall.summary(per_condition=False)
    out["subsets"] = {name: block.summary() for name, block in subset_blocks.items()}
    out["per_condition"] = overall.summary()["per_condition"]
    out["visible"] = None
    if visible is not None:
        vis = visible_blocks["visible"].summary()
        vis.update({name: block.summary() for name, block in visible_blocks.items() if name != "visible"})
        share = {"all": _share(vis, out)}
        share.update({name: _share(vis[name], {"num_queries": direction_queries[name]}) for name in direction_queries})
        vis["share"] = share
        vis["strict"] = strict.summary()
        vis["ceiling@1"] = float(np.mean(ceiling)) if ceiling else float("nan")
        out["visible"] = vis
    out["headline"] = headline(out)
    out["pairs"] = [
        {
            "database": sequences[pair.database].run,
            "query": sequences[pair.query].run,
            "database_condition": _run_condition(metas[pair.database]),
            "query_condition": _run_condition(metas[pair.query]),
            **{key: result[key] for key in (*RECALL_KEYS, CHANCE_KEY)},
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


def headline_markdown(metrics: dict) -> str:
    """Table: AR@1 all / same / opposite / visible and chance, overall and per query condition (:func:`headline`)."""
    head = metrics.get("headline") or headline(metrics)
    names = [n for n in ("all", "same_direction", "opposite_direction", "visible", "visible_strict") if n in head]
    columns = {"set": "query condition", CHANCE_KEY: "chance AR@1", **{n: f"AR@1 {n.replace('_', ' ')}" for n in names}}
    rows = [{"set": "all conditions", **head}]
    rows += [{"set": c, **r} for c, r in head.get("per_condition", {}).items()]
    return markdown_table(rows, columns)


def metrics_markdown(metrics: dict, title: str = "Cross-run evaluation") -> str:
    """``metrics.md``: config lines, the headline (AR@1 by subset and condition, chance), then overall / subset /
    visible / per-condition AR@N, then the per-pair table."""
    columns = ["set", *RECALL_KEYS, CHANCE_KEY, "num_pairs", "num_queries"]
    rows = [{"set": "all queries", **metrics}]
    rows += [{"set": f"subset: {name}", **result} for name, result in metrics.get("subsets", {}).items()]
    visible = metrics.get("visible")
    if visible:
        rows.append({"set": "visible subset", **visible})
        rows += [{"set": f"visible subset: {name}", **visible[name]}
                 for name in ("same_direction", "strict", "opposite_direction") if name in visible]
    rows += [{"set": f"condition: {name}", **result} for name, result in metrics.get("per_condition", {}).items()]
    config = metrics.get("config", {})
    lines = [f"# {title}", ""]
    lines += [f"- {key}: `{value}`" for key, value in config.items() if not isinstance(value, dict)]
    correct_m = config.get("ground_truth", {}).get("correct_m", "?")
    lines += ["", "AR@N: mean over ordered (database, query) run pairs; a retrieval is correct within "
              f"{correct_m} m. Chance: AR@1 of a random ranking.", ""]
    if visible:
        source = (config.get("visibility") or {}).get("source", "?")
        share = ", ".join(f"{name.replace('_', ' ')} {format_value(value)}" for name, value in visible["share"].items())
        lines += [f"Visible subset ({source}): a query counts when a database frame within {correct_m} m sees "
                  "at least 10 % of its visible structure (strict: only such frames are correct). Share of the "
                  f"queries in it: {share}; AR@1 ceiling on all queries for a model that solves exactly those: "
                  f"{format_value(visible['ceiling@1'])}.", ""]
    lines += [headline_markdown(metrics), markdown_table(rows, columns)]
    if metrics.get("pairs"):
        pair_columns = ["database", "query", "query_condition", "recall@1", CHANCE_KEY, "recall@1%", "num_queries"]
        lines += ["## Run pairs", "", markdown_table(metrics["pairs"], pair_columns)]
    return "\n".join(lines)


def run_evaluate(checkpoint: Path, root: Path, region: str = "test", out_dir: Path | None = None,
                 batch_size: int = 32, head: str = "fused", *, source: str = "synthetic", sequences: Iterable[str] = (),
                 images_root: Path | None = None, gt_cfg: GroundTruthConfig | None = None,
                 query_subsets: Iterable[str] = tuple(QUERY_SUBSETS), results_root: Path = Path("results"),
                 visibility: VisibilityConfig | None = VisibilityConfig(), progress: bool = True) -> dict:
    """Evaluate a checkpoint on the runs of a data source and write the result folder.

    ``source`` (``open_sequences``): ``synthetic`` reads the frames of ``region`` of the world at ``root``;
    ``bags``, ``oxford``, ``boreas`` and ``kitti`` read the named ``sequences`` under ``root`` (Oxford images
    from ``images_root``). Query subsets that need per-frame meta (direction, occlusion) exist only in
    synthetic worlds; other sources get the overall and per-pair results.

    ``visibility`` (None: off) adds the visible subset: from the world's ray-cast ground truth for a synthetic
    world (its cache beside the world, computed on first use, ~20 s for the default world), from the pose proxy
    for other sources (:class:`~distilvpr_ros.data.visibility.VisibleStructure`).

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
    structure = (VisibleStructure.from_sequences(runs, visibility, progress=progress)
                 if visibility is not None else None)
    descs = embed_sequences(model, runs, batch_size=batch_size, progress=progress, head=head)
    metrics = evaluate_sequences(descs, runs, gt_cfg, query_subsets=query_subsets,
                                 visible=structure.matches if structure is not None else None)
    where = {"region": region, "world": str(root)} if synthetic else {"sequences": list(sequences), "root": str(root)}
    metrics["config"] = {
        "checkpoint": str(checkpoint),
        "model_kind": model.kind,
        "source": source,
        **where,
        "head": head,
        "batch_size": batch_size,
        "runs": [seq.run for seq in runs],
        "occlusion_threshold": OCCLUSION_THRESHOLD,
        "ground_truth": gt_cfg.model_dump(),
        "visibility": structure.describe() if structure is not None else None,
    }
    out = Path(out_dir) if out_dir is not None else make_run_dir(results_root, "evaluate")
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "metrics.json", to_jsonable(metrics))
    (out / "metrics.md").write_text(metrics_markdown(metrics))
    curves = {"all queries": metrics["recall_curve"]}
    curves.update({name: result["recall_curve"] for name, result in metrics["subsets"].items()
                   if result["num_queries"]})
    if metrics["visible"] and metrics["visible"]["num_queries"]:
        curves["visible"] = metrics["visible"]["recall_curve"]
    data_name = f"{region} region" if synthetic else source
    plot_recall_at_n(curves, out / "recall_at_n.png",
                     title=f"Cross-run Recall@N ({model.kind}, {head} head, {data_name})")
    examples = pick_examples(top1_matches(descs, runs, evaluation_pairs(runs, gt_cfg)))
    plot_examples(examples, runs, out / "matches.png")
    return metrics
