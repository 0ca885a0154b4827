"""The figures the demo adds to a localization replay: PR curve, latency histogram and match examples."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def replay_plots(out: Path, bag: Path, map_bag: Path, map_path: Path, metrics: dict) -> None:
    """``pr.png`` (top-1 PR with AUC and max F1), ``latency.png`` and ``matches.png`` (queries of the replayed
    bag beside the map keyframes the node ranked first, from the mapping bag) of a localization replay."""
    from ..evaluation.metrics import precision_recall
    from ..evaluation.plots import plot_latency, plot_match_grid, plot_pr
    from ..evaluation.replay_metrics import pick_match_examples
    from ..mapping.database import PlaceDatabase
    from ..pipeline.offline import open_bag_sequence

    q = dict(np.load(out / "replay" / "queries.npz"))
    answered = q["answered"]
    if answered.any():
        pr = precision_recall(q["top1_score"][answered], q["top1_correct"][answered], q["has_match"][answered])
        curve = {"localization node, top-1 score": (pr["precision"], pr["recall"], pr["auc"])}
    else:
        curve = {}
    plot_pr(curve, out / "pr.png", highlight=list(curve),
            title=f"Localization replay: top-1 PR (AUC {metrics['pr_auc']:.3f}, max F1 {metrics['max_f1']:.3f})")
    plot_latency(q["latency_s"][answered] * 1e3, out / "latency.png",
                 title=f"Localization node: image published -> candidates received ({metrics['answered']} frames)")
    db = PlaceDatabase.load(map_path)
    map_seq = open_bag_sequence(map_bag)
    query_seq = open_bag_sequence(bag)
    pairs = []
    for i, kf, ok in pick_match_examples(q):
        qi = int(np.argmin(np.abs(query_seq.timestamps - q["stamps"][i])))
        mi = int(np.argmin(np.abs(map_seq.timestamps - db.stamps[kf])))
        distance = float(np.hypot(*(q["query_xy"][i] - db.positions[kf][:2])))
        pairs.append((query_seq.image(qi), map_seq.image(mi), ok, f"{distance:.1f} m"))
    plot_match_grid(pairs, out / "matches.png",
                    title=f"{query_seq.run} query -> top-1 map keyframe ({map_seq.run}), distance to the query")
