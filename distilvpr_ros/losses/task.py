"""VPR task loss: MinkLoc-style batch-hard triplet with geographic masks (``reference/distilvpr.md`` §3.1).

Positives and negatives come from geography, not labels, so mining takes explicit B×B masks:
``pos_mask[i, j]`` for places within the positive radius (10 m), ``neg_mask[i, j]`` for true negatives
(beyond the non-negative radius, 50 m; the zone between is in neither). On **detached, unnormalised**
descriptors and Euclidean distance, each anchor takes its farthest positive and its closest negative;
anchors lacking either are dropped; the diagonal is never a positive or a negative.

The loss is pytorch-metric-learning's ``TripletMarginLoss(margin=0.2, swap=True)`` on unnormalised
Euclidean distances with ``AvgNonZeroReducer``: the mean over the non-zero terms of
max(0, d(a,p) − min(d(a,n), d(p,n)) + 0.2).

A batch without any valid triplet gives a zero attached to the embeddings' graph (``backward`` works)
and ``terms["num_triplets"] == 0``; the reference skips such batches, which a trainer can do by testing
that count.

``MultiHeadTripletLoss`` weighs the heads of a multi-modal model: 0.5·fused + 0.5·cloud (+ 0·image) for
the teacher; heads absent from the input are skipped, so a student that only outputs "fused" gets
0.5·L_trip(s), the student task loss of §3.1.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import TripletMarginLoss
from pytorch_metric_learning.reducers import AvgNonZeroReducer

TRIPLET_MARGIN = 0.2
TEACHER_HEAD_WEIGHTS = {"fused": 0.5, "cloud": 0.5, "image": 0.0}
STUDENT_HEAD_WEIGHTS = {"fused": 0.5}


def mine_batch_hard(
    embeddings: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Batch-hard (anchor, positive, negative) indices from geographic masks, on detached embeddings."""
    with torch.no_grad():
        dist = torch.cdist(embeddings, embeddings)
        off_diagonal = ~torch.eye(len(dist), dtype=torch.bool, device=dist.device)
        pos = pos_mask.to(dist.device).bool() & off_diagonal
        neg = neg_mask.to(dist.device).bool() & off_diagonal
        hardest_pos = dist.masked_fill(~pos, -torch.inf).argmax(dim=1)
        hardest_neg = dist.masked_fill(~neg, torch.inf).argmin(dim=1)
        keep = pos.any(dim=1) & neg.any(dim=1)
        anchors = keep.nonzero(as_tuple=True)[0]
    return anchors, hardest_pos[anchors], hardest_neg[anchors]


class BatchHardTripletLoss(torch.nn.Module):
    """``forward(embeddings, pos_mask, neg_mask) -> (loss, terms)``; terms are floats for logging:
    triplet (the loss), num_triplets (mined), num_active_triplets (non-zero terms, the ones averaged)."""

    def __init__(self, margin: float = TRIPLET_MARGIN, swap: bool = True):
        super().__init__()
        self.loss_fn = TripletMarginLoss(
            margin=margin,
            swap=swap,
            distance=LpDistance(normalize_embeddings=False),
            reducer=AvgNonZeroReducer(collect_stats=True),
        )

    def forward(self, embeddings: torch.Tensor, pos_mask: torch.Tensor, neg_mask: torch.Tensor):
        triplets = mine_batch_hard(embeddings, pos_mask, neg_mask)
        loss = self.loss_fn(embeddings, indices_tuple=triplets)
        terms = {
            "triplet": float(loss.detach()),
            "num_triplets": len(triplets[0]),
            "num_active_triplets": self.loss_fn.reducer.num_past_filter,  # the loss keeps its own copy
        }
        return loss, terms


class MultiHeadTripletLoss(torch.nn.Module):
    """Σ_head w_head·L_trip(embeddings[head]) over the weighted heads present in ``embeddings``.

    ``embeddings`` is a dict of (B, D) tensors keyed by head, or one tensor (taken as "fused"). Terms are
    keyed "<name>/<head>" for each head's triplet terms, plus "task" for the weighted total.
    """

    def __init__(self, weights: Mapping[str, float] = TEACHER_HEAD_WEIGHTS, margin: float = TRIPLET_MARGIN):
        super().__init__()
        self.weights = {head: float(w) for head, w in weights.items() if w != 0}
        self.triplet = BatchHardTripletLoss(margin=margin)

    def forward(self, embeddings, pos_mask: torch.Tensor, neg_mask: torch.Tensor):
        if isinstance(embeddings, torch.Tensor):
            embeddings = {"fused": embeddings}
        heads = [head for head in self.weights if head in embeddings]
        if not heads:
            raise ValueError(f"none of the weighted heads {sorted(self.weights)} in {sorted(embeddings)}")
        total, terms = 0.0, {}
        for head in heads:
            loss, head_terms = self.triplet(embeddings[head], pos_mask, neg_mask)
            total = total + self.weights[head] * loss
            terms.update({f"{name}/{head}": value for name, value in head_terms.items()})
        terms["task"] = float(total.detach())
        return total, terms
