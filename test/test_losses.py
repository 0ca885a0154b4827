"""Tests of distilvpr_ros.losses: manifold maths, DistilVPR relations, KD baselines, task triplet loss.

Oracles: geoopt (Poincaré ball), torchdistill's RKD / PKT / SP / KD loss modules, and
pytorch-metric-learning's BatchHardMiner; the rest is checked against explicit loops.
"""

from __future__ import annotations

import itertools

import geoopt
import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.miners import BatchHardMiner
from torchdistill.losses import mid_level as td

from distilvpr_ros.losses import (
    DISTILL_METHODS,
    BatchHardTripletLoss,
    CrossAgentLoss,
    DistilVPRLoss,
    MultiHeadTripletLoss,
    SelfAgentLoss,
    make_distill_loss,
    mine_batch_hard,
)
from distilvpr_ros.losses import manifolds as M
from distilvpr_ros.losses.distilvpr import MANIFOLDS, mean_normalise

C = 0.1
B, D = 12, 16


def pair_masks(batch: int, non_negative: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Places of two samples each (pos = same place); the next ``non_negative`` places are neither."""
    place = torch.arange(batch) // 2
    pos = (place[:, None] == place[None, :]) & ~torch.eye(batch, dtype=torch.bool)
    gap = (place[:, None] - place[None, :]).abs()
    neg = gap > non_negative
    return pos, neg


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def inside_ball(gen, n, d=D, radius=0.6):
    """Random float64 points of norm < radius/√c."""
    x = torch.randn(n, d, generator=gen, dtype=torch.float64)
    scale = torch.rand(n, 1, generator=gen, dtype=torch.float64) * radius / C**0.5
    return F.normalize(x, dim=1) * scale


# ---------------------------------------------------------------- manifolds vs geoopt


def test_poincare_maths_match_geoopt(gen):
    ball = geoopt.PoincareBall(c=C)  # curvature -c; dist includes the 2/√c factor
    x, y = inside_ball(gen, B), inside_ball(gen, B)
    u = torch.randn(B, D, generator=gen, dtype=torch.float64) * 2
    # geoopt guards tanh/artanh slightly differently (~3e-7 relative); our Möbius addition adds 1e-5
    # to a denominator of order 1 (~1e-5 relative).
    tol = dict(rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(M.expmap0(u, C), ball.expmap0(u, project=False), rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(M.mobius_add(x, y, C), ball.mobius_add(x, y, project=False), **tol)
    torch.testing.assert_close(M.poincare_distance(x, y, C), ball.dist(x, y), **tol)
    loop = torch.stack([torch.stack([ball.dist(x[i], y[j]) for j in range(B)]) for i in range(B)])
    torch.testing.assert_close(M.pairwise_poincare(x, y, C), loop, **tol)
    self_loop = torch.stack([torch.stack([ball.dist(x[i], x[j]) for j in range(B)]) for i in range(B)])
    torch.testing.assert_close(M.pairwise_poincare(x, c=C), self_loop, **tol)
    assert torch.all(M.pairwise_poincare(x, c=C).diagonal() == 0)


def test_pairwise_mobius_matches_rowwise(gen):
    x, y = inside_ball(gen, 5), inside_ball(gen, 7)
    pairwise = M.mobius_add_pairwise(x, y, C)
    for i, j in itertools.product(range(5), range(7)):
        torch.testing.assert_close(pairwise[i, j], M.mobius_add(x[i], y[j], C))


def test_project_and_expmap_constants(gen):
    radius = (1 - 1e-3) / C**0.5
    assert M.ball_radius(C) == pytest.approx(radius)
    far = torch.randn(B, D, generator=gen, dtype=torch.float64) * 1e3
    torch.testing.assert_close(M.project(far, C).norm(dim=1), torch.full((B,), radius, dtype=torch.float64))
    near = inside_ball(gen, B)
    assert torch.equal(M.project(near, C), near)
    # Unit vectors map to norm tanh(√c)/√c (§3.4); huge vectors saturate at 1/√c, then project to the radius.
    unit = F.normalize(far, dim=1)
    expected = torch.tanh(torch.tensor(C**0.5, dtype=torch.float64)) / C**0.5
    torch.testing.assert_close(M.expmap0(unit, C).norm(dim=1), expected.expand(B))
    torch.testing.assert_close(M.to_poincare(far * 1e6, C).norm(dim=1), torch.full((B,), radius, dtype=torch.float64))
    assert torch.equal(M.expmap0(torch.zeros(2, D), C), torch.zeros(2, D))


def test_artanh_clamp_and_backward():
    x = torch.tensor([-2.0, -0.5, 0.0, 0.3, 1.0, 3.0], dtype=torch.float64, requires_grad=True)
    y = M.artanh(x)
    edge = 1 - M.ARTANH_EPS
    clamped = x.detach().clamp(-edge, edge)
    torch.testing.assert_close(y, torch.atanh(clamped))
    y.sum().backward()
    torch.testing.assert_close(x.grad, 1 / (1 - clamped**2))  # straight through the clamp, finite


def test_euclidean_cosine_angle_relations(gen):
    x = torch.randn(B, D, generator=gen, dtype=torch.float64)
    y = torch.randn(B + 3, D, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(M.pairwise_euclidean(x, y), torch.cdist(x, y))
    self_dist = M.pairwise_euclidean(x)
    assert torch.all(self_dist.diagonal() == 0)
    torch.testing.assert_close(self_dist, torch.cdist(x, x))
    cosine = F.cosine_similarity(x[:, None, :], y[None, :, :], dim=-1)
    torch.testing.assert_close(M.pairwise_cosine(x, y), cosine)
    angles = M.triplet_angles(x[:5])
    for a, b, c in itertools.product(range(5), repeat=3):
        e_ab = F.normalize(x[b] - x[a], dim=0)
        e_ac = F.normalize(x[c] - x[a], dim=0)
        torch.testing.assert_close(angles[a, b, c], e_ab @ e_ac)
    assert torch.all(angles[torch.arange(5), torch.arange(5)] == 0)  # e_aa = 0


def test_mean_normalise():
    d = torch.tensor([[0.0, 2.0], [4.0, 0.0]])
    torch.testing.assert_close(mean_normalise(d), d / 3.0)
    assert torch.equal(mean_normalise(torch.zeros(3, 3)), torch.zeros(3, 3))


# ---------------------------------------------------------------- finite gradients, every loss


def degenerate_batches(gen) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    s = torch.randn(B, D, generator=gen)
    t = torch.randn(B, D, generator=gen)
    duplicated = s.clone()
    duplicated[1] = duplicated[0]
    return {
        "random": (s, t * 3),
        "huge": (s * 1e6, t * 1e6),
        "boundary": (F.normalize(s, dim=1) * M.ball_radius(C), F.normalize(t, dim=1) / C**0.5),
        "identical": (s[:1].expand(B, D), t[:1].expand(B, D)),
        "zeros": (torch.zeros(B, D), torch.zeros(B, D)),
        "duplicates": (duplicated, t),
        "student_is_teacher": (s, s),
    }


@pytest.mark.parametrize("method", DISTILL_METHODS)
def test_every_distill_loss_has_finite_gradients(gen, method):
    loss_fn = make_distill_loss(method)
    pos, neg = pair_masks(B)
    for name, (s, t) in degenerate_batches(gen).items():
        student = s.clone().requires_grad_(True)
        teacher = t.clone().requires_grad_(True)
        loss, terms = loss_fn(student, teacher, pos_mask=pos, neg_mask=neg)
        loss.backward()
        assert torch.isfinite(loss), (method, name)
        assert torch.isfinite(student.grad).all(), (method, name)
        assert teacher.grad is None, (method, name)  # the teacher never gets gradients
        assert all(isinstance(v, float) for v in terms.values())


def test_task_loss_has_finite_gradients(gen):
    pos, neg = pair_masks(B)
    loss_fn = MultiHeadTripletLoss()
    for name, (s, t) in degenerate_batches(gen).items():
        fused = s.clone().requires_grad_(True)
        cloud = t.clone().requires_grad_(True)
        loss, _ = loss_fn({"fused": fused, "cloud": cloud}, pos, neg)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(fused.grad).all() and torch.isfinite(cloud.grad).all(), name


def test_poincare_distance_gradients_at_and_over_boundary(gen):
    raw = torch.randn(B, D, generator=gen) * 1e4
    raw[1] = raw[0]  # a duplicate pair
    x = raw.clone().requires_grad_(True)
    dist = M.pairwise_poincare(M.to_poincare(x, C), c=C)
    dist.sum().backward()
    assert torch.isfinite(dist).all() and torch.isfinite(x.grad).all()
    on_boundary = (F.normalize(torch.randn(B, D, generator=gen), dim=1) / C**0.5).requires_grad_(True)
    dist = M.pairwise_poincare(on_boundary, M.project(-on_boundary, C), c=C)
    dist.sum().backward()
    assert torch.isfinite(dist).all() and torch.isfinite(on_boundary.grad).all()


# ---------------------------------------------------------------- baselines vs torchdistill


def io(x: torch.Tensor) -> dict:
    return {"out": {"output": x}}


def test_rkd_matches_torchdistill(gen):
    s = torch.randn(B, D, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(B, D, generator=gen, dtype=torch.float64) * 4
    ours, terms = make_distill_loss("rkd")(s, t)
    oracle = td.RKDLoss("out", "out", dist_factor=25.0, angle_factor=50.0, reduction="mean")(io(s), io(t))
    torch.testing.assert_close(ours, oracle)
    (g_ours,) = torch.autograd.grad(ours, s)
    (g_oracle,) = torch.autograd.grad(oracle, s)
    torch.testing.assert_close(g_ours, g_oracle)
    assert set(terms) == {"rkd/distance", "rkd/angle"}


def test_pkt_kd_match_torchdistill_and_sp_by_hand(gen):
    s = torch.randn(B, D, generator=gen, dtype=torch.float64)
    t = torch.randn(B, D, generator=gen, dtype=torch.float64) * 2
    pkt = td.PKTLoss("out", "output", "out", "output")(io(s.clone()), io(t.clone()))
    # torchdistill divides by (‖x‖ + 1e-7), we by max(‖x‖, 1e-8): equal to ~1e-7 relative.
    torch.testing.assert_close(make_distill_loss("pkt")(s, t)[0], pkt, rtol=1e-5, atol=1e-9)
    # SP is checked against a loop: torchdistill's SPKDLoss calls normalize(G, 1), i.e. p=1, an L1 row
    # normalisation, where Tung & Mori normalise the Gram rows by their L2 norm.
    g_s, g_t = s @ s.t(), t @ t.t()
    sp = sum(((g_t[i] / g_t[i].norm() - g_s[i] / g_s[i].norm()) ** 2).sum() for i in range(B)) / B**2
    torch.testing.assert_close(make_distill_loss("sp")(s, t)[0], sp)
    for temperature in (1.0, 4.0):
        # torchdistill's KDLoss with alpha=0 returns the soft KL only, without the T² factor.
        kd = td.KDLoss("out", "output", "out", "output", temperature=temperature, alpha=0.0)(io(s), io(t))
        torch.testing.assert_close(make_distill_loss("kd", temperature=temperature)(s, t)[0], kd * temperature**2)


def test_other_baselines_against_loops(gen):
    s = torch.randn(6, D, generator=gen, dtype=torch.float64)
    t = torch.randn(6, D, generator=gen, dtype=torch.float64)
    s_hat, t_hat = F.normalize(s, dim=1), F.normalize(t, dim=1)
    # AFD: mean_i Σ_j softmax_j(s_i·t_j)·‖ŝ_j − t̂_i‖
    afd = sum(
        torch.softmax(s[i] @ t.t(), dim=0)[j] * (s_hat[j] - t_hat[i]).norm() for i in range(6) for j in range(6)
    ) / 6
    torch.testing.assert_close(make_distill_loss("afd")(s, t)[0], afd)
    torch.testing.assert_close(make_distill_loss("epc")(s, t)[0], ((s_hat - t_hat) ** 2).mean())
    torch.testing.assert_close(make_distill_loss("csd")(s, t)[0], ((t_hat @ s_hat.t() - t_hat @ t_hat.t()) ** 2).mean())
    p_s, p_t = torch.softmax(s, dim=1), torch.softmax(t, dim=1)
    kd = (p_t * (p_t.log() - p_s.log())).sum() / 6
    mkd = kd + ((p_s.t() @ p_s - p_t.t() @ p_t) ** 2).sum() / D + ((p_s @ p_s.t() - p_t @ p_t.t()) ** 2).sum() / 6
    torch.testing.assert_close(make_distill_loss("mkd")(s, t)[0], mkd)


def test_lsd_against_loops(gen):
    s = torch.randn(8, D, generator=gen, dtype=torch.float64)
    t = torch.randn(8, D, generator=gen, dtype=torch.float64)
    pos, neg = pair_masks(8, non_negative=1)
    s_hat, t_hat = F.normalize(s, dim=1), F.normalize(t, dim=1)
    pos_pairs = [(i, j) for i in range(8) for j in range(i + 1, 8) if pos[i, j]]
    neg_pairs = [(i, j) for i in range(8) for j in range(i + 1, 8) if neg[i, j]]

    def dist_mse(pairs):
        errors = [((s_hat[i] - s_hat[j]).norm() - (t_hat[i] - t_hat[j]).norm()) ** 2 for i, j in pairs]
        return torch.stack(errors).mean()

    structure = torch.stack(
        [
            ((s_hat[j] - s_hat[i]) @ (s_hat[l] - s_hat[k]) - (t_hat[j] - t_hat[i]) @ (t_hat[l] - t_hat[k])) ** 2
            for (i, j) in pos_pairs
            for (k, l) in neg_pairs
        ]
    ).mean()
    loss, terms = make_distill_loss("lsd")(s, t, pos_mask=pos, neg_mask=neg)
    assert terms["lsd/positive"] == pytest.approx(float(dist_mse(pos_pairs)))
    assert terms["lsd/negative"] == pytest.approx(float(dist_mse(neg_pairs)))
    assert terms["lsd/structure"] == pytest.approx(float(structure))
    torch.testing.assert_close(loss, dist_mse(pos_pairs) + dist_mse(neg_pairs) + structure)
    with pytest.raises(ValueError, match="pos_mask"):
        make_distill_loss("lsd")(s, t)


# ---------------------------------------------------------------- DistilVPR structure


def test_self_agent_against_geoopt_and_torchdistill(gen):
    s = torch.randn(B, D, generator=gen, dtype=torch.float64) * 0.3  # small enough not to saturate
    t = torch.randn(B, D, generator=gen, dtype=torch.float64) * 0.2
    ball = geoopt.PoincareBall(c=C)

    def hyperbolic(x):
        p = ball.projx(ball.expmap0(x))
        g = ball.dist(p[:, None, :], p[None, :, :]).fill_diagonal_(0)
        return g / g[g > 0].mean()

    loss, terms = SelfAgentLoss()(s, t)
    expected_h = F.smooth_l1_loss(hyperbolic(s), hyperbolic(t))
    assert terms["self/hyperbolic"] == pytest.approx(float(expected_h), rel=1e-3)
    rkd = td.RKDLoss("out", "out", dist_factor=1.0, angle_factor=1.0, reduction="mean")(io(s), io(t))
    assert terms["self/euclidean"] + terms["self/spherical"] == pytest.approx(float(rkd), rel=1e-9)
    assert float(loss) == pytest.approx(sum(terms.values()))
    cos_terms = SelfAgentLoss(spherical="cosine", manifolds={"spherical"})(s, t)[1]
    expected_cos = F.smooth_l1_loss(M.pairwise_cosine(s), M.pairwise_cosine(t))
    assert cos_terms == {"self/spherical": pytest.approx(float(expected_cos))}


def test_self_agent_scale_invariance(gen):
    s = torch.randn(B, D, generator=gen, dtype=torch.float64)
    t = torch.randn(B, D, generator=gen, dtype=torch.float64)
    loss_fn = SelfAgentLoss(manifolds={"euclidean", "spherical"})
    base = loss_fn(s, t)[1]
    for alpha, beta in ((7.0, 7.0), (0.01, 30.0)):
        scaled = loss_fn(alpha * s, beta * t)[1]
        assert scaled == {k: pytest.approx(v, rel=1e-9) for k, v in base.items()}


def test_cross_agent_zero_when_student_is_teacher(gen):
    s = torch.randn(B, D, generator=gen)
    loss, terms = CrossAgentLoss()(s, s * 3)  # same direction, so same relations after L2 normalisation
    assert set(terms) == {f"cross/st2ss/{m}" for m in MANIFOLDS}
    # Not exactly 0: the cross relations' diagonal holds √1e-12 and rounding residues, not exact zeros.
    assert float(loss) < 1e-8


def test_cross_agent_against_loops(gen):
    s = torch.randn(6, D, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(6, D, generator=gen, dtype=torch.float64)
    ball = geoopt.PoincareBall(c=C)
    s_hat, t_hat = F.normalize(s.detach(), dim=1), F.normalize(t, dim=1)
    p_s, p_t = ball.expmap0(s_hat), ball.expmap0(t_hat)
    rel = {
        "euclidean": lambda a, b: (a - b).norm(),
        "spherical": lambda a, b: a @ b,
        "hyperbolic": lambda a, b: ball.dist(a, b),
    }
    points = {"euclidean": (s_hat, t_hat), "spherical": (s_hat, t_hat), "hyperbolic": (p_s, p_t)}
    loss_fn = CrossAgentLoss(tt2st_weights=(0.2, 0.3, 0.4))
    _, terms = loss_fn(s, t)

    def matrix(m, x, y):
        return torch.stack([torch.stack([rel[m](x[i], y[j]) for j in range(6)]) for i in range(6)])

    for m in MANIFOLDS:
        ps, pt = points[m]
        r_ss, r_st, r_tt = matrix(m, ps, ps), matrix(m, ps, pt), matrix(m, pt, pt)
        for rr in (r_ss, r_tt):
            if m != "spherical":
                rr.fill_diagonal_(0)
        assert terms[f"cross/st2ss/{m}"] == pytest.approx(float(F.mse_loss(r_ss, r_st)), rel=1e-3)
        assert terms[f"cross/tt2st/{m}"] == pytest.approx(float(F.mse_loss(r_st, r_tt)), rel=1e-3)


def test_total_is_weighted_sum_and_variants(gen):
    s = torch.randn(B, D, generator=gen, dtype=torch.float64) * 0.3
    t = torch.randn(B, D, generator=gen, dtype=torch.float64) * 0.3
    self_weights, cross_weights, tt2st = (1.0, 2.0, 3.0), (0.1, 0.2, 0.3), (0.5, 0.0, 0.7)
    loss_fn = DistilVPRLoss(
        "sc", self_weight=10.0, cross_weights=cross_weights, tt2st_weights=tt2st, self_weights=self_weights
    )
    total, terms = loss_fn(s, t)
    expected = 10.0 * sum(w * terms[f"self/{m}"] for w, m in zip(self_weights, MANIFOLDS))
    expected += sum(w * terms[f"cross/st2ss/{m}"] for w, m in zip(cross_weights, MANIFOLDS))
    expected += sum(w * terms.get(f"cross/tt2st/{m}", 0.0) for w, m in zip(tt2st, MANIFOLDS))
    assert float(total) == pytest.approx(expected) == pytest.approx(terms["distill"])
    assert "cross/tt2st/spherical" not in terms  # weight 0: not computed

    self_keys = {f"self/{m}" for m in MANIFOLDS}
    cross_keys = {f"cross/st2ss/{m}" for m in MANIFOLDS}
    assert set(make_distill_loss("s")(s, t)[1]) == self_keys | {"distill"}
    assert set(make_distill_loss("c")(s, t)[1]) == cross_keys | {"distill"}
    assert set(make_distill_loss("sc")(s, t)[1]) == self_keys | cross_keys | {"distill"}
    ablation = make_distill_loss("sc", manifolds={"hyperbolic"})(s, t)[1]
    assert set(ablation) == {"self/hyperbolic", "cross/st2ss/hyperbolic", "distill"}
    assert make_distill_loss("sc", self_weight=1.0)(s, t)[0] < make_distill_loss("sc")(s, t)[0]


def test_registry_and_argument_errors(gen):
    assert set(DISTILL_METHODS) == {"none", "s", "c", "sc", "kd", "afd", "epc", "rkd", "csd", "lsd", "mkd", "pkt", "sp"}
    with pytest.raises(ValueError, match="valid: none, s, c, sc"):
        make_distill_loss("fitnet")
    with pytest.raises(ValueError):
        DistilVPRLoss(manifolds={"lorentz"})
    with pytest.raises(ValueError):
        DistilVPRLoss(cross_weights=(0.1, 0.1))
    with pytest.raises(ValueError):
        SelfAgentLoss(spherical="geodesic")
    s = torch.randn(4, D, generator=gen, requires_grad=True)
    zero, terms = make_distill_loss("none")(s, torch.randn(4, D))
    assert zero.item() == 0.0 and terms == {} and zero.requires_grad


# ---------------------------------------------------------------- task loss


def test_batch_hard_mining_matches_pml_miner(gen):
    embeddings = torch.randn(16, D, generator=gen)
    labels = torch.arange(16) % 5  # groups of 3-4 samples
    same = labels[:, None] == labels[None, :]
    a, p, n = mine_batch_hard(embeddings, same, ~same)
    a_ref, p_ref, n_ref = BatchHardMiner(distance=LpDistance(normalize_embeddings=False))(embeddings, labels)
    order = torch.argsort(a_ref)
    assert torch.equal(a, a_ref[order]) and torch.equal(p, p_ref[order]) and torch.equal(n, n_ref[order])


def test_mining_excludes_non_negatives_and_drops_incomplete_anchors():
    # 1-D points: 0 and 1 are positives; 2 (close) is a non-negative of 0 only; 3 is far; 4 has no positive.
    x = torch.tensor([[0.0], [1.0], [0.5], [5.0], [10.0]])
    pos = torch.zeros(5, 5, dtype=torch.bool)
    pos[0, 1] = pos[1, 0] = True
    pos[2, 3] = pos[3, 2] = True
    neg = torch.ones(5, 5, dtype=torch.bool)
    neg[pos] = False
    neg[0, 2] = neg[2, 0] = False  # the non-negative zone
    a, p, n = mine_batch_hard(x, pos, neg)
    assert a.tolist() == [0, 1, 2, 3]  # 4 has no positive
    assert p.tolist() == [1, 0, 3, 2]
    assert n.tolist() == [3, 2, 1, 1]  # anchor 0 skips 2 (non-negative) and takes 3


def test_triplet_loss_value_by_hand(gen):
    embeddings = torch.randn(10, 3, generator=gen, dtype=torch.float64)
    pos, neg = pair_masks(10, non_negative=1)
    loss, terms = BatchHardTripletLoss()(embeddings.clone().requires_grad_(True), pos, neg)
    d = torch.cdist(embeddings, embeddings)
    values = []
    for i in range(10):
        positives, negatives = pos[i].nonzero().flatten(), neg[i].nonzero().flatten()
        j = positives[d[i, positives].argmax()]
        k = negatives[d[i, negatives].argmin()]
        values.append(max(0.0, float(d[i, j] - min(d[i, k], d[j, k]) + 0.2)))
    active = [v for v in values if v > 0]
    assert terms["num_triplets"] == 10 and terms["num_active_triplets"] == len(active)
    assert float(loss) == pytest.approx(sum(active) / len(active))

    heads = {"fused": embeddings, "cloud": embeddings * 2, "image": embeddings * 3}
    total, head_terms = MultiHeadTripletLoss()(heads, pos, neg)
    cloud = BatchHardTripletLoss()(embeddings * 2, pos, neg)[0]
    assert float(total) == pytest.approx(0.5 * float(loss) + 0.5 * float(cloud))
    assert "triplet/image" not in head_terms  # weight 0
    student, student_terms = MultiHeadTripletLoss({"fused": 0.5})(embeddings, pos, neg)
    assert float(student) == pytest.approx(0.5 * float(loss)) == pytest.approx(student_terms["task"])


def test_triplet_loss_without_triplets_is_a_differentiable_zero(gen):
    x = torch.randn(6, D, generator=gen, requires_grad=True)
    nothing = torch.zeros(6, 6, dtype=torch.bool)
    loss, terms = BatchHardTripletLoss()(x, nothing, ~nothing)
    assert float(loss) == 0.0 and loss.grad_fn is not None and terms["num_triplets"] == 0
    loss.backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def test_gram_forms_match_the_direct_forms(gen):
    """``triplet_angles`` and ``mobius_norm_pairwise`` use Gram-matrix forms (issue 12, step time); they
    equal the direct B×B×D computations, for raw-scale descriptors too (points on the ball's edge)."""
    for scale in (0.05, 1.0, 30.0):
        x = torch.randn(B, D, generator=gen, dtype=torch.float64) * scale
        diff = x.unsqueeze(0) - x.unsqueeze(1)
        unit = F.normalize(diff, p=2, dim=2, eps=M.NORMALIZE_EPS)
        assert torch.allclose(M.triplet_angles(x), torch.bmm(unit, unit.transpose(1, 2)), atol=1e-10)
        p, q = M.to_poincare(x, C), M.to_poincare(torch.randn(B + 2, D, generator=gen, dtype=torch.float64), C)
        direct = M.mobius_add_pairwise(-p, q, C).norm(dim=-1)
        assert torch.allclose(M.mobius_norm_pairwise(-p, q, C), direct, rtol=1e-9, atol=1e-12)
    x32 = (torch.randn(64, 256, generator=gen) + 3) * 5
    x32[1] = x32[0] + 1e-2 * torch.randn(256, generator=gen)  # a near-duplicate: the cancelling case
    unit = F.normalize(x32.double().unsqueeze(0) - x32.double().unsqueeze(1), p=2, dim=2)
    ref = torch.bmm(unit, unit.transpose(1, 2))  # the direct form in float64
    assert (M.triplet_angles(x32).double() - ref).abs().max() < 1e-6
