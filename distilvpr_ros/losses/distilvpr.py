"""DistilVPR distillation losses: self-agent (S), cross-agent (C) and both (SC).

Follows the official code as described in ``reference/distilvpr.md``:

* §3.2 self-agent relations ("rkdg", DistilVPR-S), on **raw** descriptors, each compared with
  smooth-L1 (β = 1, mean over entries) against the teacher's, weights 1/1/1:
  Euclidean distances divided by the mean of their positive entries (RKD distance); triplet angles
  (RKD angle) or, with ``spherical="cosine"``, the pairwise cosine matrix (the unused ``rkdg2``);
  Poincaré distances of proj(expmap0(x)), divided by the mean of their positive entries.
* §3.3 cross-agent relations (DistilVPR-C), on **L2-normalised** descriptors, no mean normalisation:
  for r ∈ {Euclidean distance, cosine, Poincaré distance} the matrices R^ss = r(ŝ, ŝ),
  R^st = r(ŝ, t̂), R^tt = r(t̂, t̂); "st2ss" is MSE(R^ss, sg R^st) (weights 0.1/0.1/0.1), "tt2st" is
  MSE(R^st, sg R^tt) (weight 0 in the released commands).
* §3.5 total: λ_S·L_self + L_cross (λ_S = 10 on Oxford, 1 on Boreas); the trainer adds the task loss.

Weights are given as (Euclidean, spherical, hyperbolic) triples. A manifold left out of ``manifolds``
or given weight 0 is not computed (ablations of §6, Table 5).

**Pair weights** (our addition, ``distill.relation_pairs``): every loss accepts an optional B×B
``pair_weights`` W ≥ 0. Each B×B relation entry (i, j) then enters its smooth-L1/MSE mean with weight
W_ij (a weighted mean: Σ W·ℓ / Σ W), each triplet angle at vertex a between b and c with weight
W_ab·W_ac, and the RKD mean normalisation averages only the entries of positive weight. A pair of
weight 0 therefore neither contributes to a term nor receives any gradient from it. Without pair
weights (``relation_pairs: all``) the maths is exactly the reference's.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F

from .base import DistillLoss, to_floats
from .manifolds import (
    DEFAULT_CURVATURE,
    pairwise_cosine,
    pairwise_euclidean,
    pairwise_poincare,
    to_poincare,
    triplet_angles,
)

MANIFOLDS = ("euclidean", "spherical", "hyperbolic")
SPHERICAL_RELATIONS = ("angle", "cosine")
VARIANTS = ("s", "c", "sc")
SMOOTH_L1_BETA = 1.0
DEFAULT_SELF_WEIGHTS = (1.0, 1.0, 1.0)  # rkdg function defaults (§3.2)
DEFAULT_CROSS_WEIGHTS = (0.1, 0.1, 0.1)  # README st2ss weights (§3.3)
DEFAULT_TT2ST_WEIGHTS = (0.0, 0.0, 0.0)  # tt2st is off in the released commands (§3.3)
OXFORD_SELF_WEIGHT = 10.0  # λ_S (§3.5)


def _per_manifold(weights: Iterable[float], what: str) -> dict[str, float]:
    weights = tuple(float(w) for w in weights)
    if len(weights) != len(MANIFOLDS):
        raise ValueError(f"{what} needs one weight per manifold {MANIFOLDS}, got {weights}")
    return dict(zip(MANIFOLDS, weights))


def _check_manifolds(manifolds: Iterable[str]) -> frozenset[str]:
    manifolds = frozenset(manifolds)
    unknown = manifolds - set(MANIFOLDS)
    if unknown:
        raise ValueError(f"unknown manifolds {sorted(unknown)}; valid: {MANIFOLDS}")
    return manifolds


def mean_normalise(d: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Divide a non-negative distance matrix by the mean of its positive entries (RKD).

    With ``weights``, only the entries of positive weight count towards the mean. A matrix without
    (such) positive entries (all points identical) is returned unchanged.
    """
    positive = d > 0
    if weights is not None:
        positive = positive & (weights > 0)
    count = positive.sum()
    mean = torch.where(positive, d, 0.0).sum() / count.clamp_min(1)
    return d / torch.where(count > 0, mean, torch.ones_like(mean))


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Σ W·v / Σ W (weights broadcast to ``values``); 0 when every weight is 0."""
    weights = weights.expand_as(values)
    return (values * weights).sum() / weights.sum().clamp_min(torch.finfo(values.dtype).tiny)


def angle_weights(pair_weights: torch.Tensor) -> torch.Tensor:
    """Weight of the triplet angle A[a, b, c] (vertex a): W_ab·W_ac, as a B×B×B tensor."""
    return pair_weights.unsqueeze(2) * pair_weights.unsqueeze(1)


class SelfAgentLoss(DistillLoss):
    """DistilVPR-S: Σ_m w_m·smoothL1(ψ_m(s), sg ψ_m(t)) over the enabled manifolds m (§3.2).

    As in the reference (§3.4), the hyperbolic term maps *raw* descriptors into the ball. With c = 0.1,
    descriptors of norm above about 10 all land on the projection radius, nearly every pairwise
    distance hits the artanh clamp (≈ 38.6), the mean-normalised matrices become all-ones off the
    diagonal and this term (and its gradient) vanishes. It is informative only for smaller norms.
    """

    def __init__(
        self,
        weights: Iterable[float] = DEFAULT_SELF_WEIGHTS,
        manifolds: Iterable[str] = MANIFOLDS,
        curvature: float = DEFAULT_CURVATURE,
        spherical: str = "angle",
    ):
        super().__init__()
        if spherical not in SPHERICAL_RELATIONS:
            raise ValueError(f"spherical must be one of {SPHERICAL_RELATIONS}, got {spherical!r}")
        enabled = _check_manifolds(manifolds)
        self.weights = {m: w for m, w in _per_manifold(weights, "self-agent").items() if m in enabled and w != 0}
        self.curvature = curvature
        self.spherical = spherical

    def relation(self, manifold: str, x: torch.Tensor, pair_weights: torch.Tensor | None = None) -> torch.Tensor:
        """The relation tensor ψ_m(x) of one descriptor set (``pair_weights``: which pairs the RKD mean
        normalisation averages over)."""
        if manifold == "euclidean":
            return mean_normalise(pairwise_euclidean(x), pair_weights)
        if manifold == "spherical":
            return triplet_angles(x) if self.spherical == "angle" else pairwise_cosine(x)
        return mean_normalise(pairwise_poincare(to_poincare(x, self.curvature), c=self.curvature), pair_weights)

    def entry_weights(self, manifold: str, pair_weights: torch.Tensor) -> torch.Tensor:
        """Weights of the entries of ψ_m: the pair weights, or W_ab·W_ac for triplet angles."""
        if manifold == "spherical" and self.spherical == "angle":
            return angle_weights(pair_weights)
        return pair_weights

    def terms(self, student: torch.Tensor, teacher: torch.Tensor,
              pair_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Unweighted smooth-L1 term of every enabled manifold (pair-weighted means with ``pair_weights``)."""
        teacher = teacher.detach()
        if pair_weights is None:
            return {
                m: F.smooth_l1_loss(self.relation(m, student), self.relation(m, teacher), beta=SMOOTH_L1_BETA)
                for m in self.weights
            }
        pair_weights = pair_weights.to(student.dtype)
        terms = {}
        for m in self.weights:
            entries = F.smooth_l1_loss(self.relation(m, student, pair_weights), self.relation(m, teacher, pair_weights),
                                       beta=SMOOTH_L1_BETA, reduction="none")
            terms[m] = weighted_mean(entries, self.entry_weights(m, pair_weights))
        return terms

    def weighted_terms(self, student, teacher, pair_weights=None) -> dict[str, torch.Tensor]:
        """Each term times its weight (they sum to the loss), keyed "self/<m>"."""
        return {f"self/{m}": self.weights[m] * v for m, v in self.terms(student, teacher, pair_weights).items()}

    def forward(self, student, teacher, pos_mask=None, neg_mask=None, pair_weights=None):
        terms = self.terms(student, teacher, pair_weights)
        loss = sum((self.weights[m] * value for m, value in terms.items()), student.new_zeros(()))
        return loss, to_floats({f"self/{m}": v for m, v in terms.items()})


class CrossAgentLoss(DistillLoss):
    """DistilVPR-C: Σ_m w_m·MSE(R^ss_m, sg R^st_m) + Σ_m w'_m·MSE(R^st_m, sg R^tt_m) (§3.3)."""

    def __init__(
        self,
        st2ss_weights: Iterable[float] = DEFAULT_CROSS_WEIGHTS,
        tt2st_weights: Iterable[float] = DEFAULT_TT2ST_WEIGHTS,
        manifolds: Iterable[str] = MANIFOLDS,
        curvature: float = DEFAULT_CURVATURE,
    ):
        super().__init__()
        enabled = _check_manifolds(manifolds)
        self.weights = {
            direction: {m: w for m, w in _per_manifold(ws, direction).items() if m in enabled and w != 0}
            for direction, ws in (("st2ss", st2ss_weights), ("tt2st", tt2st_weights))
        }
        self.curvature = curvature

    def relation(self, manifold: str, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """r_m(x_i, y_j) of unit-norm descriptors; the self-relation of ``x`` without ``y``."""
        if manifold == "euclidean":
            return pairwise_euclidean(x, y)
        if manifold == "spherical":
            return pairwise_cosine(x, y)
        c = self.curvature
        return pairwise_poincare(to_poincare(x, c), None if y is None else to_poincare(y, c), c=c)

    def terms(self, student: torch.Tensor, teacher: torch.Tensor,
              pair_weights: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Unweighted MSE term of every enabled (direction, manifold), keyed "st2ss/<m>", "tt2st/<m>"
        (pair-weighted means with ``pair_weights``)."""
        s = F.normalize(student, dim=1)
        t = F.normalize(teacher.detach(), dim=1)
        if pair_weights is None:
            mse = F.mse_loss
        else:
            pair_weights = pair_weights.to(student.dtype)

            def mse(x, y):
                return weighted_mean(F.mse_loss(x, y, reduction="none"), pair_weights)
        terms = {}
        for m in MANIFOLDS:
            st2ss, tt2st = m in self.weights["st2ss"], m in self.weights["tt2st"]
            if not (st2ss or tt2st):
                continue
            r_st = self.relation(m, s, t)
            if st2ss:
                terms[f"st2ss/{m}"] = mse(self.relation(m, s), r_st.detach())
            if tt2st:
                terms[f"tt2st/{m}"] = mse(r_st, self.relation(m, t))
        return terms

    def weight(self, key: str) -> float:
        direction, manifold = key.split("/")
        return self.weights[direction][manifold]

    def weighted_terms(self, student, teacher, pair_weights=None) -> dict[str, torch.Tensor]:
        """Each term times its weight (they sum to the loss), keyed "cross/<direction>/<m>"."""
        return {f"cross/{k}": self.weight(k) * v for k, v in self.terms(student, teacher, pair_weights).items()}

    def forward(self, student, teacher, pos_mask=None, neg_mask=None, pair_weights=None):
        terms = self.terms(student, teacher, pair_weights)
        loss = sum((self.weight(k) * v for k, v in terms.items()), student.new_zeros(()))
        return loss, to_floats({f"cross/{k}": v for k, v in terms.items()})


class DistilVPRLoss(DistillLoss):
    """DistilVPR distillation objective λ_S·L_self + L_cross (§3.5), without the task loss.

    ``variant`` picks DistilVPR-S ("s": self-agent only), -C ("c": cross-agent only) or -SC ("sc").
    ``manifolds`` restricts both agents to a subset of {"euclidean", "spherical", "hyperbolic"}.
    ``self_weights`` are the per-manifold self-agent weights inside L_self (1, 1, 1 in the code).

    ``forward`` returns the total and the unweighted terms, keyed "self/<m>", "cross/st2ss/<m>" and
    "cross/tt2st/<m>", so that total = λ_S·Σ w^S_m·self/m + Σ w^C_m·cross/st2ss/m + Σ w^T_m·cross/tt2st/m;
    "distill" holds the total.
    """

    def __init__(
        self,
        variant: str = "sc",
        self_weight: float = OXFORD_SELF_WEIGHT,
        cross_weights: Iterable[float] = DEFAULT_CROSS_WEIGHTS,
        manifolds: Iterable[str] = MANIFOLDS,
        curvature: float = DEFAULT_CURVATURE,
        spherical: str = "angle",
        tt2st_weights: Iterable[float] = DEFAULT_TT2ST_WEIGHTS,
        self_weights: Iterable[float] = DEFAULT_SELF_WEIGHTS,
    ):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        self.variant = variant
        self.self_weight = float(self_weight)
        self.self_agent = None
        if "s" in variant and self_weight:
            self.self_agent = SelfAgentLoss(self_weights, manifolds, curvature, spherical)
        self.cross_agent = None
        if "c" in variant:
            self.cross_agent = CrossAgentLoss(cross_weights, tt2st_weights, manifolds, curvature)

    def weighted_terms(self, student, teacher, pair_weights=None) -> dict[str, torch.Tensor]:
        """Each term with all its factors (λ_S·w^S_m·self/m, w^C_m·cross/st2ss/m, ...): they sum to the
        loss. For per-term gradient norms (``distill.grad_norm_every``)."""
        out = {}
        if self.self_agent is not None:
            out.update({k: self.self_weight * v for k, v in
                        self.self_agent.weighted_terms(student, teacher, pair_weights).items()})
        if self.cross_agent is not None:
            out.update(self.cross_agent.weighted_terms(student, teacher, pair_weights))
        return out

    def forward(self, student, teacher, pos_mask=None, neg_mask=None, pair_weights=None):
        """``pair_weights``: optional B×B pair weights of every relational term (module doc)."""
        total = student.new_zeros(())
        terms: dict[str, float] = {}
        if self.self_agent is not None:
            self_loss, self_terms = self.self_agent(student, teacher, pair_weights=pair_weights)
            total = total + self.self_weight * self_loss
            terms.update(self_terms)
        if self.cross_agent is not None:
            cross_loss, cross_terms = self.cross_agent(student, teacher, pair_weights=pair_weights)
            total = total + cross_loss
            terms.update(cross_terms)
        terms["distill"] = float(total.detach())
        return total, terms
