"""Relation geometry for DistilVPR: Euclidean, spherical and hyperbolic (Poincaré-ball) relations.

The Poincaré-ball operations follow the hyptorch code (Khrulkov et al.) that the official DistilVPR
repository ships, with its numerical guards, as described in ``reference/distilvpr.md`` §3.4:

* curvature −c with c = 0.1 by default (not learnable);
* ``expmap0``: tanh(√c·‖u‖)·u/(√c·‖u‖), ‖u‖ clamped at ≥ 1e-5, the tanh argument clamped to ±15;
* ``project``: points farther than (1 − 1e-3)/√c from the origin are rescaled to that radius;
* ``mobius_add``: the closed form with +1e-5 added to the denominator;
* ``artanh``: argument clamped to [−1 + 1e-5, 1 − 1e-5]; its backward is 1/(1 − x²) evaluated at the
  clamped value and passed straight through the clamp (the hyptorch custom autograd function), so the
  gradient stays finite and non-zero even when points sit on the ball boundary;
* the Poincaré distance d_c(x, y) = (2/√c)·artanh(√c·‖(−x) ⊕_c y‖), computed pairwise with a batched
  Möbius addition (B×B×D memory).

The Euclidean and RKD relations follow §3.2: squared distances clamped at ≥ 1e-12 before the square
root, zero diagonal; triplet angles cos∠(x_b − x_a, x_c − x_a) from L2-normalised difference vectors
(a zero vector when b = a).

Every relation takes (B, D) inputs. With one argument it is the self-relation of a set (B×B, exactly
zero self-distance on the diagonal); with two it relates the rows of ``x`` to the rows of ``y``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DEFAULT_CURVATURE = 0.1
EXPMAP_MIN_NORM = 1e-5  # ‖u‖ clamp in expmap0 and project (hyptorch)
TANH_CLAMP = 15.0  # tanh argument clamp (hyptorch)
BALL_EPS = 1e-3  # projection radius is (1 - BALL_EPS)/√c
MOBIUS_DENOM_EPS = 1e-5  # added to the Möbius-addition denominator (hyptorch)
ARTANH_EPS = 1e-5  # artanh argument clamped to [-1 + ARTANH_EPS, 1 - ARTANH_EPS]
SQ_DIST_MIN = 1e-12  # squared Euclidean distance clamp before the square root (RKD pdist)
NORMALIZE_EPS = 1e-12  # F.normalize default, as in the RKD angle code
COINCIDENT_REL_SQ = 1e-12  # triplet_angles: squared distance / largest squared norm of the centred batch
COSINE_EPS = 1e-8  # norm floor of the pairwise cosine similarity (torch.cosine_similarity default)


class _Artanh(torch.autograd.Function):
    """artanh with a clamped argument and the backward 1/(1 − x²) at the clamped value (hyptorch)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        x = x.clamp(-1.0 + ARTANH_EPS, 1.0 - ARTANH_EPS)
        ctx.save_for_backward(x)
        return 0.5 * (torch.log1p(x) - torch.log1p(-x))

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad_output / (1.0 - x * x)


def artanh(x: torch.Tensor) -> torch.Tensor:
    """Inverse hyperbolic tangent, clamped to [−1 + 1e-5, 1 − 1e-5], with a finite gradient everywhere."""
    return _Artanh.apply(x)


def _tanh(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(-TANH_CLAMP, TANH_CLAMP).tanh()


def ball_radius(c: float = DEFAULT_CURVATURE) -> float:
    """Radius to which ``project`` pulls points back: (1 − 1e-3)/√c."""
    return (1.0 - BALL_EPS) / c**0.5


def expmap0(u: torch.Tensor, c: float = DEFAULT_CURVATURE) -> torch.Tensor:
    """Exponential map at the origin of the Poincaré ball of curvature −c (rows of ``u``)."""
    sqrt_c = c**0.5
    u_norm = u.norm(dim=-1, keepdim=True).clamp_min(EXPMAP_MIN_NORM)
    return _tanh(sqrt_c * u_norm) * u / (sqrt_c * u_norm)


def project(x: torch.Tensor, c: float = DEFAULT_CURVATURE) -> torch.Tensor:
    """Rescale the rows of ``x`` that lie beyond (1 − 1e-3)/√c back onto that radius."""
    norm = x.norm(dim=-1, keepdim=True).clamp_min(EXPMAP_MIN_NORM)
    max_norm = ball_radius(c)
    return torch.where(norm > max_norm, x / norm * max_norm, x)


def to_poincare(x: torch.Tensor, c: float = DEFAULT_CURVATURE) -> torch.Tensor:
    """P(x) = project(expmap0(x)): how descriptors enter the ball (§3.2, §3.3)."""
    return project(expmap0(x, c), c)


def mobius_add(x: torch.Tensor, y: torch.Tensor, c: float = DEFAULT_CURVATURE) -> torch.Tensor:
    """Möbius addition x ⊕_c y along the last dimension (broadcasting), with +1e-5 in the denominator."""
    xy = (x * y).sum(dim=-1, keepdim=True)
    x2 = x.pow(2).sum(dim=-1, keepdim=True)
    y2 = y.pow(2).sum(dim=-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    denom = 1 + 2 * c * xy + c**2 * x2 * y2
    return num / (denom + MOBIUS_DENOM_EPS)


def mobius_add_pairwise(x: torch.Tensor, y: torch.Tensor, c: float = DEFAULT_CURVATURE) -> torch.Tensor:
    """(x_i ⊕_c y_j) for all pairs: (B, D) and (C, D) → (B, C, D), the hyptorch batched form."""
    xy = x @ y.t()  # B x C
    x2 = x.pow(2).sum(dim=-1, keepdim=True)  # B x 1
    y2 = y.pow(2).sum(dim=-1, keepdim=True).t()  # 1 x C
    num = (1 + 2 * c * xy + c * y2).unsqueeze(2) * x.unsqueeze(1) + (1 - c * x2).unsqueeze(2) * y.unsqueeze(0)
    denom = 1 + 2 * c * xy + c**2 * x2 * y2
    return num / (denom.unsqueeze(2) + MOBIUS_DENOM_EPS)


def poincare_distance(x: torch.Tensor, y: torch.Tensor, c: float = DEFAULT_CURVATURE) -> torch.Tensor:
    """Row-wise Poincaré distance (2/√c)·artanh(√c·‖(−x) ⊕_c y‖) of points already in the ball."""
    sqrt_c = c**0.5
    return 2.0 / sqrt_c * artanh(sqrt_c * mobius_add(-x, y, c).norm(dim=-1))


def pairwise_poincare(x: torch.Tensor, y: torch.Tensor | None = None, c: float = DEFAULT_CURVATURE) -> torch.Tensor:
    """Poincaré distance matrix d_c(x_i, y_j) of points already in the ball, (B, D) × (C, D) → (B, C).

    Without ``y`` it is the self-distance matrix of ``x`` and its diagonal is set to exactly 0. The
    batched Möbius addition leaves a rounding residue there: about 1e-7 for points well inside the
    ball, but 0.1–1 in float32 for points projected onto the boundary (raw descriptors), where the
    denominator (1 − c‖x‖²)² + 1e-5 is tiny. Left in, that residue would count among the "positive
    entries" of the mean normalisation and be matched as if it were a relation.
    """
    sqrt_c = c**0.5
    other = x if y is None else y
    dist = 2.0 / sqrt_c * artanh(sqrt_c * mobius_norm_pairwise(-x, other, c))
    return dist if y is not None else _zero_diagonal(dist)


def mobius_norm_pairwise(x: torch.Tensor, y: torch.Tensor, c: float = DEFAULT_CURVATURE) -> torch.Tensor:
    """‖x_i ⊕_c y_j‖ for all pairs, (B, D) × (C, D) → (B, C): the norm of ``mobius_add_pairwise`` without
    its (B, C, D) tensor. With α = 1 + 2c⟨x,y⟩ + c‖y‖², β = 1 − c‖x‖², the numerator αx + βy has
    ‖·‖² = α²‖x‖² + 2αβ⟨x,y⟩ + β²‖y‖², all from the Gram matrix: O(BCD) for one product plus O(BC),
    instead of several (B, C, D) passes (issue 12: the distillation step's cost). Computed in float64
    (the sum cancels for nearby points) and returned in the inputs' dtype.
    """
    dtype = x.dtype
    x, y = x.double(), y.double()
    xy = x @ y.t()
    x2 = x.pow(2).sum(dim=-1, keepdim=True)
    y2 = y.pow(2).sum(dim=-1, keepdim=True).t()
    alpha = 1 + 2 * c * xy + c * y2
    beta = 1 - c * x2
    num_sq = (alpha.pow(2) * x2 + 2 * alpha * beta * xy + beta.pow(2) * y2).clamp_min(0.0)
    denom = 1 + 2 * c * xy + c**2 * x2 * y2 + MOBIUS_DENOM_EPS
    # sqrt with a zero (sub)gradient at 0, like Tensor.norm of a zero vector
    norm = torch.where(num_sq > 0, num_sq, torch.ones_like(num_sq)).sqrt() * (num_sq > 0)
    return (norm / denom).to(dtype)


def pairwise_euclidean(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """‖x_i − y_j‖₂ via the Gram expansion, squared value clamped at ≥ 1e-12 (RKD ``pdist``).

    Without ``y`` it is the self-distance matrix of ``x`` with an exactly zero diagonal.
    """
    other = x if y is None else y
    sq = x.pow(2).sum(dim=1, keepdim=True) + other.pow(2).sum(dim=1).unsqueeze(0) - 2 * x @ other.t()
    dist = sq.clamp_min(SQ_DIST_MIN).sqrt()
    return dist if y is not None else _zero_diagonal(dist)


def pairwise_cosine(x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """Cosine similarity ⟨x_i, y_j⟩/(‖x_i‖‖y_j‖), each norm floored at 1e-8 (zero rows give 0)."""
    other = x if y is None else y
    return F.normalize(x, dim=1, eps=COSINE_EPS) @ F.normalize(other, dim=1, eps=COSINE_EPS).t()


def triplet_angles(x: torch.Tensor) -> torch.Tensor:
    """RKD angle tensor A[a, b, c] = ⟨e_ab, e_ac⟩ with e_ab = (x_b − x_a)/‖x_b − x_a‖ (0 when b = a); B×B×B.

    Computed from the Gram matrix G of the centred batch (angles do not depend on the origin):
    ⟨x_b − x_a, x_c − x_a⟩ = G_bc − G_ab − G_ac + G_aa and ‖x_b − x_a‖² = G_aa + G_bb − 2G_ab. That is
    O(B³ + B²D) instead of the B×B×D difference tensor and its O(B³D) product (issue 12: the
    distillation step's cost). The B³ part runs in float64 because the four-term sum cancels, so the
    result matches the direct form to float32 rounding. Points closer than 1e-6 of the batch's spread
    count as coincident: their e_ab is 0, as the direct form's for b = a.
    """
    dtype = x.dtype
    centred = x.double() - x.double().mean(dim=0, keepdim=True)
    gram = centred @ centred.t()
    sq = torch.diagonal(gram)
    dist_sq = (sq[:, None] + sq[None, :] - 2 * gram).clamp_min(0.0)
    coincident = dist_sq <= COINCIDENT_REL_SQ * sq.max()  # the diagonal always
    norm = torch.where(coincident, torch.ones_like(dist_sq), dist_sq).sqrt()
    inner = gram.unsqueeze(0) - gram.unsqueeze(2) - gram.unsqueeze(1) + sq[:, None, None]
    angles = inner / (norm.unsqueeze(2) * norm.unsqueeze(1))
    angles = angles.masked_fill(coincident.unsqueeze(2) | coincident.unsqueeze(1), 0.0)
    return angles.clamp(-1.0, 1.0).to(dtype)


def _zero_diagonal(m: torch.Tensor) -> torch.Tensor:
    eye = torch.eye(m.shape[0], dtype=torch.bool, device=m.device)
    return m.masked_fill(eye, 0.0)
