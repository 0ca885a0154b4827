"""Real-camera check on VPR-Bench Corridor, next to 10 published methods scored by the same code.

Corridor (``shared/data/corridor``, see its README) has 111 query and 111 reference images of an
indoor corridor and ±2-frame ground truth. It is used for evaluation only, never for training.

Our model embeds both image sets; the similarity is the cosine (inner product of L2-normalised
descriptors). :func:`~.metrics.similarity_matrix_metrics` then gives R@1, R@5, PR-AUC, max F1 and
recall at 100 % precision, for our similarity matrix and for each peer's published matrix alike.

Models:

* a ``camera_student`` checkpoint (or model): its descriptor;
* a ``teacher``: its ``"image"`` head, the 256-d image branch (Corridor has no LiDAR; the teacher fuses
  by concatenation, so that head is exactly what its camera sees);
* ``"lite0-imagenet"`` (:data:`ZERO_SHOT_LITE0`): a zero-shot baseline without place training, the
  ImageNet EfficientNet-Lite0 trunk (stride 16, 112 channels, the encoder's own input normalisation)
  pooled with GeM (p = 3) at 320x240: the image encoder's parts without its (randomly initialised)
  1x1 projection, so nothing in the baseline is random.

With ``rerank_top_k`` > 0 each query's top-k references are also re-ranked by 2D-2D geometric verification
(:mod:`~distilvpr_ros.verification.two_view`: local features + RANSAC inliers of a homography); the
re-ranked metrics sit beside the plain ones under ``<key>_reranked``.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.readers.vprbench import VPRBenchDataset
from ..models.image import Lite0Trunk, Normalize
from ..models.pooling import GeM
from ..models.vpr import InputSpec
from ..models.checkpoint import load_model
from ..utils.results import make_run_dir, write_json
from ..verification.two_view import TwoViewConfig, rerank_similarity
from ..models.inference import embed_images, input_spec_of
from .metrics import recall_at_n, similarity_matrix_metrics, top1_precision_recall
from .plots import plot_bars, plot_pr
from .report import markdown_table, to_jsonable

#: The Corridor folder beside the repository (``../shared/data/corridor``); override with --root.
CORRIDOR_ROOT = Path(__file__).resolve().parents[3] / "shared" / "data" / "corridor"
#: Name that selects the zero-shot ImageNet Lite0 + GeM baseline instead of a checkpoint.
ZERO_SHOT_LITE0 = "lite0-imagenet"
ZERO_SHOT_IMAGE_SIZE = (320, 240)
#: Metric keys of every row of the Corridor table.
CORRIDOR_KEYS = ("recall@1", "recall@5", "pr_auc", "max_f1", "recall@100p")
#: Candidates per query re-ranked by two-view verification by default (0: off).
RERANK_TOP_K = 10


class ZeroShotLite0(nn.Module):
    """ImageNet EfficientNet-Lite0 trunk + GeM: ``B x 3 x H x W`` in [0, 1] → ``{"fused": B x 112}``."""

    kind = ZERO_SHOT_LITE0

    def __init__(self, image_size: tuple[int, int] = ZERO_SHOT_IMAGE_SIZE):
        super().__init__()
        self.trunk = Lite0Trunk(image_size, pretrained=True)
        self.normalize = Normalize(self.trunk.mean, self.trunk.std)
        self.pool = GeM()
        self.input_spec = InputSpec(("image",), self.trunk.out_channels, image_size=image_size)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"fused": self.pool(self.trunk(self.normalize(image)))}


def peer_recalls(dataset: VPRBenchDataset, n: int = 1) -> dict[str, float]:
    """Recall@n of each peer method of a VPR-Bench dataset, from its published similarity matrix."""
    return {name: recall_at_n(sim, dataset.ground_truth, ns=(n,))[f"recall@{n}"]
            for name, sim in dataset.peer_similarity().items()}


def corridor_model(model_or_checkpoint: Any) -> tuple[Any, str, str]:
    """``(model, head, display name)`` for a model, a checkpoint folder or :data:`ZERO_SHOT_LITE0`."""
    if isinstance(model_or_checkpoint, str) and model_or_checkpoint == ZERO_SHOT_LITE0:
        model: Any = ZeroShotLite0()
        name = "Lite0-ImageNet+GeM zero-shot"
    elif isinstance(model_or_checkpoint, (str, Path)):
        model = load_model(model_or_checkpoint)
        name = f"{model.kind} ({Path(model_or_checkpoint).name})"
    else:
        model = model_or_checkpoint
        name = str(getattr(model, "kind", type(model).__name__))
    inputs = input_spec_of(model).inputs
    if "image" not in inputs:
        raise ValueError(f"Corridor has camera images only; a model with inputs {list(inputs)} cannot run on it")
    head = "image" if "cloud" in inputs else "fused"
    return model, head, name


def corridor_markdown(rows: list[dict], ours: str | tuple[str, ...]) -> str:
    """The Corridor table, sorted by R@1, our row(s) in bold and marked."""
    ours = (ours,) if isinstance(ours, str) else ours
    shown = [{**row, "method": f"**{row['method']} (ours)**" if row["method"] in ours else row["method"]}
             for row in rows]
    return ("# VPR-Bench Corridor (111 queries, 111 references, ground truth ±2 frames)\n\n"
            "Every row is computed by the same code from a query × reference similarity matrix "
            "(peers: the matrices published by VPR-Bench).\n\n" + markdown_table(shown, ["method", *CORRIDOR_KEYS]))


def run_corridor(model_or_checkpoint: Any, root: Path = CORRIDOR_ROOT, out_dir: Path | None = None, *,
                 batch_size: int = 32, results_root: Path = Path("results"), progress: bool = True,
                 rerank_top_k: int = RERANK_TOP_K, two_view: TwoViewConfig = TwoViewConfig()) -> dict:
    """Score a camera model on Corridor next to the peers; write the result folder and return the metrics.

    Writes into ``out_dir`` (default: a fresh ``<results_root>/corridor/<timestamp>/``): ``corridor.json``
    (our metrics with the stable keys at the top level, ``peers``, ``ranking`` and ``config``),
    ``corridor.md``, ``corridor.png`` (R@1 bars, ours highlighted), ``corridor_pr.png`` (PR curves)
    and ``similarity.npy`` (our query × reference similarity). With ``rerank_top_k`` > 0 also our metrics
    after two-view re-ranking of the top-k (``recall@1_reranked`` ..., ``rerank`` with its settings, a
    ``<name> + 2D-2D re-rank`` row in the table and plots) and ``inliers.npy`` (queries × top-k, descriptor order).
    """
    model, head, name = corridor_model(model_or_checkpoint)
    dataset = VPRBenchDataset(Path(root))
    queries = embed_images(model, dataset.query_images(), batch_size, progress, head, desc="embed queries")
    refs = embed_images(model, dataset.ref_images(), batch_size, progress, head, desc="embed references")
    matrices = {name: queries @ refs.T}
    reranked_name = f"{name} + 2D-2D re-rank"
    inliers = None
    if rerank_top_k > 0:
        ext = two_view.extractor()
        q_feats = [ext.extract(img) for img in dataset.query_images()]
        r_feats = [ext.extract(img) for img in dataset.ref_images()]
        matrices[reranked_name], inliers = rerank_similarity(matrices[name], q_feats, r_feats, rerank_top_k, two_view)
    matrices.update(dataset.peer_similarity())
    metrics = {method: similarity_matrix_metrics(sim, dataset.ground_truth) for method, sim in matrices.items()}
    ranking = sorted(metrics, key=lambda method: -metrics[method]["recall@1"])
    rows = [{"method": method, **metrics[method]} for method in ranking]
    plain_ranking = [method for method in ranking if method != reranked_name]

    out = Path(out_dir) if out_dir is not None else make_run_dir(results_root, "corridor")
    out.mkdir(parents=True, exist_ok=True)
    result = {
        "method": name,
        **metrics[name],
        "rank": plain_ranking.index(name) + 1,
        **({f"{key}_reranked": value for key, value in metrics[reranked_name].items()} if inliers is not None else {}),
        **({"rank_reranked": [m for m in ranking if m != name].index(reranked_name) + 1}
           if inliers is not None else {}),
        "peers": {method: metrics[method] for method in ranking if method not in (name, reranked_name)},
        "ranking": plain_ranking,  # without the re-ranked row
        "config": {
            "model": str(model_or_checkpoint) if isinstance(model_or_checkpoint, (str, Path)) else name,
            "model_kind": str(getattr(model, "kind", type(model).__name__)),
            "head": head,
            "image_size": list(input_spec_of(model).image_size),
            "root": str(root),
            "similarity": "cosine",
        },
        "rerank": {"top_k": int(rerank_top_k), **(asdict(two_view) if inliers is not None else {})},
    }
    write_json(out / "corridor.json", to_jsonable(result))
    (out / "corridor.md").write_text(corridor_markdown(rows, (name, reranked_name)))
    np.save(out / "similarity.npy", matrices[name].astype(np.float32))
    if inliers is not None:
        np.save(out / "inliers.npy", inliers)
    plot_bars({method: metrics[method]["recall@1"] for method in ranking}, out / "corridor.png", highlight=name,
              title="VPR-Bench Corridor: Recall@1", xlabel="Recall@1")
    curves = {}
    for method in ranking:
        pr = top1_precision_recall(matrices[method], dataset.ground_truth)
        curves[method] = (pr["precision"], pr["recall"], pr["auc"])
    plot_pr(curves, out / "corridor_pr.png", title="VPR-Bench Corridor: precision-recall of top-1 matches",
            highlight=name)
    return result
