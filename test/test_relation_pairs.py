"""Pair-restricted DistilVPR relations (``distill.relation_pairs``) and the night/rain appearance
augmentation (issue 12).

Oracles: the unweighted reference losses (all-ones weights and sub-batches must reproduce them) and
explicit loops over the kept pairs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from distilvpr_ros.losses import CrossAgentLoss, DistilVPRLoss, SelfAgentLoss
from distilvpr_ros.losses.distilvpr import MANIFOLDS, mean_normalise
from distilvpr_ros.training.appearance import AppearanceAugment, gaussian_blur, line_kernel
from distilvpr_ros.training.augment import ImageAugment
from distilvpr_ros.training.config import AugmentConfig, DistillConfig
from distilvpr_ros.training.relation_pairs import RelationPairs, frame_headings, same_direction

B, D = 8, 16


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(3)


def _batch(gen, scale=0.3):
    s = torch.randn(B, D, generator=gen, dtype=torch.float64) * scale
    t = torch.randn(B, D, generator=gen, dtype=torch.float64) * scale
    return s, t


def _losses():
    return [SelfAgentLoss(), SelfAgentLoss(spherical="cosine"), CrossAgentLoss(tt2st_weights=(0.2, 0.3, 0.4)),
            DistilVPRLoss("sc")]


@pytest.mark.parametrize("loss_index", range(4))
def test_all_ones_weights_reproduce_the_reference(gen, loss_index):
    s, t = _batch(gen)
    loss_fn = _losses()[loss_index]
    ref, ref_terms = loss_fn(s, t)
    ones, ones_terms = loss_fn(s, t, pair_weights=torch.ones(B, B, dtype=torch.float64))
    assert float(ones) == pytest.approx(float(ref), rel=1e-12)
    assert ones_terms == {k: pytest.approx(v, rel=1e-12) for k, v in ref_terms.items()}


def test_mean_normalise_with_weights_averages_kept_entries_only():
    d = torch.tensor([[0.0, 1.0, 4.0], [1.0, 0.0, 9.0], [4.0, 9.0, 0.0]])
    w = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(mean_normalise(d, w), d / 1.0)
    assert torch.allclose(mean_normalise(d, torch.ones(3, 3)), mean_normalise(d))


def test_block_mask_equals_the_loss_of_the_kept_sub_batch(gen):
    """Weights 1 inside a group of frames and 0 elsewhere: each relation is the reference relation of
    the group alone, so the loss equals the unweighted loss of the sub-batch (up to the diagonal's
    share in the cross-agent MSE, also equal since the group keeps its own diagonal)."""
    s, t = _batch(gen)
    keep = torch.tensor([0, 2, 3, 6])
    w = torch.zeros(B, B, dtype=torch.float64)
    w[keep[:, None], keep[None, :]] = 1.0
    for loss_fn in _losses():
        full, terms = loss_fn(s, t, pair_weights=w)
        sub, sub_terms = loss_fn(s[keep], t[keep])
        assert float(full) == pytest.approx(float(sub), rel=1e-9)
        assert terms == {k: pytest.approx(v, rel=1e-9, abs=1e-15) for k, v in sub_terms.items()}


def test_weighted_terms_against_loops(gen):
    """A general weight matrix: each term is Σ W·ℓ / Σ W over the entries (angles: W_ab·W_ac)."""
    s, t = _batch(gen)
    w = torch.rand(B, B, generator=gen, dtype=torch.float64)
    w = (w + w.T) / 2
    loss_fn = SelfAgentLoss(manifolds={"euclidean", "spherical"})
    _, terms = loss_fn(s, t, pair_weights=w)
    ds, dt = torch.cdist(s, s), torch.cdist(t, t)
    keep = (w > 0) & (ds > 0)
    ds, dt = ds / ds[keep].mean(), dt / dt[keep].mean()
    num = den = 0.0
    for i in range(B):
        for j in range(B):
            num += float(w[i, j] * F.smooth_l1_loss(ds[i, j], dt[i, j]))
            den += float(w[i, j])
    assert terms["self/euclidean"] == pytest.approx(num / den, rel=1e-6)

    def unit(x, a, b):
        return F.normalize(x[b] - x[a], dim=0) if a != b else torch.zeros(D, dtype=x.dtype)

    num = den = 0.0
    for a in range(B):
        for b in range(B):
            for c in range(B):
                weight = float(w[a, b] * w[a, c])
                diff = F.smooth_l1_loss(unit(s, a, b) @ unit(s, a, c), unit(t, a, b) @ unit(t, a, c))
                num += weight * float(diff)
                den += weight
    assert terms["self/spherical"] == pytest.approx(num / den, rel=1e-6)


def test_masked_out_frame_gets_no_gradient_and_does_not_change_the_loss(gen):
    """Frame 5 shares no kept pair with any other frame: moving it changes nothing, its gradient is 0,
    while the others still get gradients; with all pairs it gets a gradient."""
    s, t = _batch(gen)
    w = torch.ones(B, B, dtype=torch.float64)
    w[5, :] = w[:, 5] = 0.0
    w[5, 5] = 1.0
    loss_fn = DistilVPRLoss("sc")
    s = s.clone().requires_grad_(True)
    loss, _ = loss_fn(s, t, pair_weights=w)
    (grad,) = torch.autograd.grad(loss, s)
    assert torch.allclose(grad[5], torch.zeros(D, dtype=grad.dtype), atol=1e-12)
    assert grad[[0, 1, 2, 3, 4, 6, 7]].abs().sum() > 0
    # Moving frame 5 leaves every self-agent term unchanged (the cross-agent MSE still holds its diagonal
    # entry R^ss_55 vs sg R^st_55: a frame with itself, whose value moves but which has no gradient).
    moved = s.detach().clone()
    moved[5] += torch.randn(D, generator=gen, dtype=torch.float64)
    before, after = loss_fn(s.detach(), t, pair_weights=w)[1], loss_fn(moved, t, pair_weights=w)[1]
    for m in MANIFOLDS:
        assert after[f"self/{m}"] == pytest.approx(before[f"self/{m}"], rel=1e-9)
    assert loss_fn(moved, t)[1]["self/euclidean"] != pytest.approx(loss_fn(s.detach(), t)[1]["self/euclidean"])
    (grad_all,) = torch.autograd.grad(loss_fn(s, t)[0], s)
    assert grad_all[5].abs().sum() > 0


def test_other_weight_interpolates(gen):
    s, t = _batch(gen)
    inside = torch.rand(B, B, generator=gen) > 0.5
    inside = inside | inside.T | torch.eye(B, dtype=torch.bool)
    loss_fn = DistilVPRLoss("sc")
    values = [float(loss_fn(s, t, pair_weights=torch.where(inside, 1.0, w).double())[0]) for w in (0.0, 0.5, 1.0)]
    assert values[2] == pytest.approx(float(loss_fn(s, t)[0]), rel=1e-12)
    assert len(set(values)) == 3


# ------------------------------------------------------------------ masks from poses

def _yaw_pose(x, y, yaw):
    pose = np.eye(4)
    pose[:2, :2] = [[np.cos(yaw), -np.sin(yaw)], [np.sin(yaw), np.cos(yaw)]]
    pose[:2, 3] = x, y
    return pose


class _Seq:
    def __init__(self, poses):
        self.poses = np.stack(poses)

    def __len__(self):
        return len(self.poses)


def test_pose_masks_on_a_hand_made_batch():
    # 0 and 1: same place, same way; 2: same place, the other way; 3: 20 m on, 80° off; 4: 200 m away, same way
    poses = [_yaw_pose(0, 0, 0.1), _yaw_pose(3, 0, 0.0), _yaw_pose(2, 1, np.pi), _yaw_pose(20, 0, np.radians(80)),
             _yaw_pose(200, 0, -0.1)]
    seqs = [_Seq(poses[:3]), _Seq(poses[3:])]
    headings = frame_headings(seqs)
    assert headings == pytest.approx([0.1, 0.0, np.pi, np.radians(80), -0.1])
    sd = same_direction(headings)
    assert sd[0].tolist() == [True, True, False, True, True]
    assert sd[2].tolist() == [False, False, True, False, False]
    assert sd[3, 2] == (abs(np.pi - np.radians(80)) <= np.pi / 2)  # 100° apart: not same direction

    cfg = DistillConfig(method="sc", relation_pairs="same_direction", relation_other_weight=0.25)
    pairs = RelationPairs.from_config(cfg, seqs)
    w = pairs.weights([0, 2, 4, 2])
    assert w.shape == (4, 4)
    assert w[0].tolist() == [1.0, 0.25, 1.0, 0.25]
    assert torch.diagonal(w).tolist() == [1.0] * 4
    assert RelationPairs.from_config(DistillConfig(method="sc"), seqs).weights([0, 1]) is None
    # not a generated world: the pose proxy of data.visibility (within 25 m, headings within 90 degrees)
    visible = RelationPairs.from_config(DistillConfig(method="sc", relation_pairs="visible"), seqs)
    assert visible.mask([0, 1, 2, 3, 4])[0].tolist() == [True, True, False, True, False]
    near = RelationPairs.from_config(DistillConfig(method="sc", relation_pairs="visible", relation_visible_m=10), seqs)
    assert near.mask([0, 1, 2, 3, 4])[0].tolist() == [True, True, False, False, False]
    with pytest.raises(ValueError, match="needs a visibility_fn"):
        RelationPairs("visible", np.zeros((5, 2)), headings)
    # a plugged-in mask receives the batch's (sequence, position) frames
    got = []

    def world_mask(frames):
        got.append(frames.tolist())
        return np.zeros((len(frames),) * 2, dtype=bool)
    plugged = RelationPairs.from_config(DistillConfig(method="sc", relation_pairs="visible"), seqs, world_mask)
    assert plugged.mask([1, 3]).tolist() == [[True, False], [False, True]]
    assert got == [[[0, 1], [1, 0]]]


def test_relation_pairs_config_needs_a_relational_method():
    with pytest.raises(ValueError, match="needs method s, c or sc"):
        DistillConfig(method="rkd", relation_pairs="same_direction")
    with pytest.raises(ValueError):
        DistillConfig(method="sc", relation_pairs="nearby")


# ------------------------------------------------------------------ appearance augmentation

def _image(gen):
    return torch.rand(3, 48, 64, generator=gen)


def test_appearance_off_by_default_keeps_the_old_draws(gen):
    image = _image(gen)
    cfg = AugmentConfig()
    assert not AppearanceAugment(cfg).enabled
    a = ImageAugment(cfg)(image, np.random.default_rng(5))
    explicit = ImageAugment(cfg)
    rng = np.random.default_rng(5)
    b = explicit.erase(explicit.color_jitter(image, rng), rng)
    assert torch.equal(a, b)


def test_night_darkens_and_rain_lowers_contrast_and_adds_streaks(gen):
    image = _image(gen) * 0.5 + 0.25
    night = AppearanceAugment(AugmentConfig(night_p=1.0, noise_sigma=0.0, cast=0.0))
    dark = night(image, np.random.default_rng(0))
    assert dark.mean() < 0.5 * image.mean()
    assert dark.min() >= 0 and dark.max() <= 1
    flat = torch.full((3, 48, 64), 0.3)
    rain = AppearanceAugment(AugmentConfig(rain_p=1.0, streak_density=(0.01, 0.01)))
    wet = rain(flat, np.random.default_rng(1))
    assert (wet > 0.3 + 0.1).float().mean() > 0.01  # streak pixels are brighter than the veiled background
    veiled = AppearanceAugment(AugmentConfig(rain_p=1.0, streak_density=(0.0, 0.0)))(image, np.random.default_rng(2))
    assert veiled.std() < image.std()
    same = AppearanceAugment(AugmentConfig(night_p=1.0, rain_p=1.0))
    assert torch.equal(same(image, np.random.default_rng(9)), same(image, np.random.default_rng(9)))


def test_blur_and_line_kernel():
    image = torch.zeros(1, 21, 21)
    image[0, 10, 10] = 1.0
    blurred = gaussian_blur(image, 1.0)
    assert float(blurred.sum()) == pytest.approx(1.0, rel=1e-5)
    assert float(blurred[0, 10, 10]) == pytest.approx(1 / (2 * np.pi), rel=0.05)
    vertical = line_kernel(5, 0.0)
    assert vertical[:, 2].tolist() == [1.0] * 5 and float(vertical.sum()) == 5.0
    assert torch.equal(gaussian_blur(image, 0.0), image)
