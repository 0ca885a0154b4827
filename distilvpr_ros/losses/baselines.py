"""Knowledge-distillation baselines on final descriptors, and the registry of all distillation losses.

The DistilVPR baselines follow the decompiled ``.pyc`` files of the official repository as described in
``reference/distilvpr.md`` §3.6 (how the authors weighted and called them is unknown, so every weight
here is a documented choice):

* KD (Hinton et al.): descriptors as logits, KL(softmax(t/T) ‖ softmax(s/T))·T², summed over
  dimensions and averaged over the batch; T = 1.
* AFD: attention A = softmax_row(s·tᵀ) on raw descriptors; loss = mean_i Σ_j A_ij·‖n(s_j) − n(t_i)‖
  (the index pattern is the one §3.6 gives), n = l2 / identity / softmax normalisation.
* EPC-Net: feature mimicking, MSE(n(s), sg n(t)) with n = l2 by default.
* RKD (Park et al., CVPR 2019): the distance and angle terms of §3.2 (no hyperbolic term). Weights
  λ_D = 25, λ_A = 50, the values the RKD paper uses for its classification experiments (its
  metric-learning experiments use 1 and 2; DistilVPR's own self-agent term uses 1 and 1).
* CSD: on L2-normalised descriptors, MSE(t̂·ŝᵀ, t̂·t̂ᵀ).
* LSD-Net: on L2-normalised descriptors, MSE of student vs teacher distances over positive pairs, the
  same over negative pairs, and MSE of the matrices of dot products between positive-pair and
  negative-pair difference vectors; each unordered pair counts once, the three parts weigh 1.
* MKD (multi-level logit KD, Jin et al., CVPR 2023): KD + class-correlation loss
  ‖P_sᵀP_s − P_tᵀP_t‖²_F / D + batch-correlation loss ‖P_sP_sᵀ − P_tP_tᵀ‖²_F / B of the softmax
  outputs P (T = 1), each weighing 1.

Two further relational baselines that the DistilVPR code does not ship:

* PKT (Passalis & Tefas, ECCV 2018): cosine kernels (cos + 1)/2, row-normalised into conditional
  probabilities, KL(teacher ‖ student) averaged over all B² entries with ε = 1e-7 (as their code).
* SP (Tung & Mori, ICCV 2019): row-L2-normalised Gram matrices, ‖G_t − G_s‖²_F / B².

``make_distill_loss(name, **kw)`` builds any of them, the DistilVPR variants "s", "c", "sc", or "none".
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from .base import DistillLoss, to_floats
from .distilvpr import DistilVPRLoss, SelfAgentLoss
from .manifolds import pairwise_cosine, pairwise_euclidean

DEFAULT_TEMPERATURE = 1.0  # KD and MKD (§3.6)
RKD_DISTANCE_WEIGHT = 25.0  # Park et al., classification setting
RKD_ANGLE_WEIGHT = 50.0
PKT_EPS = 1e-7  # Passalis & Tefas' code

NORMALISATIONS = {
    "l2": lambda x: F.normalize(x, dim=1),
    "identity": lambda x: x,
    "softmax": lambda x: F.softmax(x, dim=1),
}
CRITERIA = {"mse": F.mse_loss, "l1": F.l1_loss, "smooth_l1": F.smooth_l1_loss}


def _choose(table: dict, key: str, what: str):
    if key not in table:
        raise ValueError(f"unknown {what} {key!r}; valid: {sorted(table)}")
    return table[key]


def _kd(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Hinton KD on descriptors as logits: KL(softmax(t/T) ‖ softmax(s/T))·T², batch mean."""
    log_p_s = F.log_softmax(student / temperature, dim=1)
    p_t = F.softmax(teacher / temperature, dim=1)
    return F.kl_div(log_p_s, p_t, reduction="batchmean") * temperature**2


class NoDistillLoss(DistillLoss):
    """No distillation: a zero attached to the student graph (so ``backward`` works on it alone)."""

    def forward(self, student, teacher, pos_mask=None, neg_mask=None):
        return (student * 0).sum(), {}


class KDLoss(DistillLoss):
    def __init__(self, temperature: float = DEFAULT_TEMPERATURE):
        super().__init__()
        self.temperature = temperature

    def forward(self, student, teacher, pos_mask=None, neg_mask=None):
        loss = _kd(student, teacher.detach(), self.temperature)
        return loss, to_floats({"kd": loss})


class AFDLoss(DistillLoss):
    def __init__(self, norm: str = "l2"):
        super().__init__()
        self.norm = _choose(NORMALISATIONS, norm, "normalisation")

    def forward(self, student, teacher, pos_mask=None, neg_mask=None):
        teacher = teacher.detach()
        attention = F.softmax(student @ teacher.t(), dim=1)  # A[i, j]
        dist = pairwise_euclidean(self.norm(teacher), self.norm(student))  # ‖n(t_i) − n(s_j)‖
        loss = (attention * dist).sum(dim=1).mean()
        return loss, to_floats({"afd": loss})


class EPCLoss(DistillLoss):
    def __init__(self, norm: str = "l2", criterion: str = "mse"):
        super().__init__()
        self.norm = _choose(NORMALISATIONS, norm, "normalisation")
        self.criterion = _choose(CRITERIA, criterion, "criterion")

    def forward(self, student, teacher, pos_mask=None, neg_mask=None):
        loss = self.criterion(self.norm(student), self.norm(teacher.detach()))
        return loss, to_floats({"epc": loss})


class RKDLoss(DistillLoss):
    """RKD = the self-agent Euclidean (distance) and spherical (angle) terms, weighted λ_D, λ_A."""

    def __init__(self, distance_weight: float = RKD_DISTANCE_WEIGHT, angle_weight: float = RKD_ANGLE_WEIGHT):
        super().__init__()
        self.relations = SelfAgentLoss(weights=(distance_weight, angle_weight, 0.0), spherical="angle")

    def forward(self, student, teacher, pos_mask=None, neg_mask=None):
        loss, terms = self.relations(student, teacher)
        names = {"self/euclidean": "rkd/distance", "self/spherical": "rkd/angle"}
        return loss, {names[k]: v for k, v in terms.items()}


class CSDLoss(DistillLoss):
    def forward(self, student, teacher, pos_mask=None, neg_mask=None):
        s = F.normalize(student, dim=1)
        t = F.normalize(teacher.detach(), dim=1)
        loss = F.mse_loss(t @ s.t(), t @ t.t())
        return loss, to_floats({"csd": loss})


class LSDLoss(DistillLoss):
    """LSD-Net; needs the geographic ``pos_mask`` and ``neg_mask`` (B×B bool, symmetrised here)."""

    def forward(self, student, teacher, pos_mask=None, neg_mask=None):
        if pos_mask is None or neg_mask is None:
            raise ValueError("LSD distillation needs pos_mask and neg_mask")
        s = F.normalize(student, dim=1)
        t = F.normalize(teacher.detach(), dim=1)
        upper = torch.ones_like(pos_mask, dtype=torch.bool).triu(diagonal=1)
        pos = (pos_mask | pos_mask.t()) & upper
        neg = (neg_mask | neg_mask.t()) & upper
        d_s, d_t = pairwise_euclidean(s), pairwise_euclidean(t)
        pi, pj = pos.nonzero(as_tuple=True)
        ni, nj = neg.nonzero(as_tuple=True)
        terms = {
            "lsd/positive": self._mse(d_s[pi, pj], d_t[pi, pj], student),
            "lsd/negative": self._mse(d_s[ni, nj], d_t[ni, nj], student),
            "lsd/structure": self._mse(
                (s[pj] - s[pi]) @ (s[nj] - s[ni]).t(), (t[pj] - t[pi]) @ (t[nj] - t[ni]).t(), student
            ),
        }
        return sum(terms.values()), to_floats(terms)

    @staticmethod
    def _mse(a: torch.Tensor, b: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
        """MSE, or a graph-attached zero when the batch has no such pairs."""
        return F.mse_loss(a, b) if a.numel() else (student * 0).sum()


class MKDLoss(DistillLoss):
    def __init__(self, temperature: float = DEFAULT_TEMPERATURE):
        super().__init__()
        self.temperature = temperature

    def forward(self, student, teacher, pos_mask=None, neg_mask=None):
        teacher = teacher.detach()
        p_s = F.softmax(student / self.temperature, dim=1)
        p_t = F.softmax(teacher / self.temperature, dim=1)
        batch, dim = p_s.shape
        terms = {
            "mkd/kd": _kd(student, teacher, self.temperature),
            "mkd/class": (p_s.t() @ p_s - p_t.t() @ p_t).pow(2).sum() / dim,
            "mkd/batch": (p_s @ p_s.t() - p_t @ p_t.t()).pow(2).sum() / batch,
        }
        return sum(terms.values()), to_floats(terms)


class PKTLoss(DistillLoss):
    @staticmethod
    def _conditional(x: torch.Tensor) -> torch.Tensor:
        kernel = (pairwise_cosine(x) + 1.0) / 2.0
        return kernel / kernel.sum(dim=1, keepdim=True)

    def forward(self, student, teacher, pos_mask=None, neg_mask=None):
        p_s = self._conditional(student)
        p_t = self._conditional(teacher.detach())
        loss = (p_t * torch.log((p_t + PKT_EPS) / (p_s + PKT_EPS))).mean()
        return loss, to_floats({"pkt": loss})


class SPLoss(DistillLoss):
    @staticmethod
    def _gram(x: torch.Tensor) -> torch.Tensor:
        return F.normalize(x @ x.t(), dim=1)

    def forward(self, student, teacher, pos_mask=None, neg_mask=None):
        batch = student.shape[0]
        loss = (self._gram(teacher.detach()) - self._gram(student)).pow(2).sum() / batch**2
        return loss, to_floats({"sp": loss})


_FACTORIES = {
    "none": NoDistillLoss,
    "s": functools.partial(DistilVPRLoss, variant="s"),
    "c": functools.partial(DistilVPRLoss, variant="c"),
    "sc": functools.partial(DistilVPRLoss, variant="sc"),
    "kd": KDLoss,
    "afd": AFDLoss,
    "epc": EPCLoss,
    "rkd": RKDLoss,
    "csd": CSDLoss,
    "lsd": LSDLoss,
    "mkd": MKDLoss,
    "pkt": PKTLoss,
    "sp": SPLoss,
}
DISTILL_METHODS = tuple(_FACTORIES)


def make_distill_loss(name: str, **kw) -> DistillLoss:
    """Build a distillation loss by name (case-insensitive); ``kw`` go to its constructor."""
    key = name.lower()
    if key not in _FACTORIES:
        raise ValueError(f"unknown distillation method {name!r}; valid: {', '.join(DISTILL_METHODS)}")
    return _FACTORIES[key](**kw)
