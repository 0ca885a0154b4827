"""Several towns: the seed-varied ``town`` preset, worlds kept apart when read together, multi-town training."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from distilvpr_ros.config import GroundTruthConfig
from distilvpr_ros.data.errors import DataError
from distilvpr_ros.data.ground_truth import TrainingGroundTruth, cross_run_pairs
from distilvpr_ros.data.samplers import PairBatchSampler
from distilvpr_ros.data.sources import filter_sequences, open_sequences
from distilvpr_ros.data.synthetic import WORLD_SPACING_M, load_synthetic, load_worlds
from distilvpr_ros.data.world.config import PRESETS, load_world_config
from distilvpr_ros.data.world.generate import generate_world, world_town
from distilvpr_ros.training.config import DataConfig, TrainConfig
from distilvpr_ros.training.data import frames_fingerprint, open_split

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def two_worlds(tiny_world, tmp_path_factory):
    """The session's tiny world (seed 7) and a second tiny town (seed 8), both starting at the map origin."""
    other = tmp_path_factory.mktemp("towns") / "tiny_s8"
    generate_world(other, load_world_config("tiny", None, 8), write_bags=False, progress=False)
    return tiny_world, other


# --- the town preset ------------------------------------------------------------------------------------


def test_town_preset_draws_the_look_of_the_town_from_the_seed(tmp_path):
    a, b = load_world_config("town", None, 1), load_world_config("town", None, 2)
    assert a.town != b.town and a.town == load_world_config("town", None, 1).town
    assert (a.town.block_size_m, a.town.facade_kinds) != (b.town.block_size_m, b.town.facade_kinds)
    assert [r.condition.name for r in a.runs] == ["day", "day", "dusk", "night", "rain"]
    # The YAML file still wins over the drawn values; its seed draws the town when no --seed is given.
    f = tmp_path / "w.yaml"
    f.write_text("seed: 2\ntown:\n  tree_probability: 0.9\n")
    c = load_world_config("town", f, None)
    assert c.town.tree_probability == 0.9 and c.town.block_size_m == b.town.block_size_m
    # The other presets vary only the random layout with the seed: their parameters stay the preset's.
    for preset in ("tiny", "default", "large"):
        assert load_world_config(preset, None, 3).town == PRESETS[preset].town


def test_town_layouts_of_different_seeds_differ():
    towns = [world_town(load_world_config("town", None, s)) for s in (11, 12)]
    (xa, ya), (xb, yb) = [(t.grid.xs, t.grid.ys) for t in towns]
    assert len(xa) == len(xb) and not np.allclose(np.diff(xa), np.diff(xb), atol=1.0)
    heights = [t.buildings[:, 4] for t in towns]
    assert len(heights[0]) != len(heights[1]) or not np.allclose(heights[0], heights[1])
    assert towns[0].crowns.triangles.shape != towns[1].crowns.triangles.shape  # different tree counts


def test_all_is_a_reserved_region_name():
    with pytest.raises(ValueError, match="reserved"):
        load_world_config("tiny", None, None).regions.model_validate({"fractions": {"all": 1.0}})


# --- reading several worlds -----------------------------------------------------------------------------


def test_one_world_reads_as_before(tiny_world):
    alone = load_worlds([tiny_world], {"train"})
    before = load_synthetic(tiny_world, {"train"})
    assert [s.run for s in alone] == [s.run for s in before]
    assert all(np.array_equal(a.poses, b.poses) for a, b in zip(alone, before))
    assert "world" not in alone[0].meta(0)
    assert frames_fingerprint(alone) == frames_fingerprint(before)
    everything = open_sequences("synthetic", tiny_world, region="all")
    assert [len(s) for s in everything] == [len(s) for s in load_synthetic(tiny_world)]


def test_worlds_are_kept_apart(two_worlds):
    a, b = two_worlds
    seqs = load_worlds([a, b])
    n_a = len(load_synthetic(a))
    assert [s.run.split("/")[0] for s in seqs] == [a.name] * n_a + [b.name] * (len(seqs) - n_a)
    assert seqs[n_a].meta(0)["world"] == b.name and seqs[n_a].run_id == load_synthetic(b)[0].run
    # World b is moved by the spacing; its meta keeps its own UTM.
    raw_b = load_synthetic(b)[0]
    assert np.allclose(seqs[n_a].poses[:, 0, 3], raw_b.poses[:, 0, 3] + WORLD_SPACING_M)
    assert seqs[n_a].meta(0)["easting"] == raw_b.meta(0)["easting"]

    world = np.concatenate([[s.meta(0)["world"]] * len(s) for s in seqs])
    raw = np.concatenate([np.asarray(s.poses)[:, :2, 3] for s in load_synthetic(a) + load_synthetic(b)])
    gt_cfg = GroundTruthConfig()
    # The two tiny towns overlap in their own map frames: read naively, they would share places.
    naive = TrainingGroundTruth.from_positions(raw, gt_cfg)
    assert any((world[p] != world[i]).any() for i, p in enumerate(naive.positives))
    gt = TrainingGroundTruth.from_positions(np.concatenate([np.asarray(s.poses)[:, :2, 3] for s in seqs]), gt_cfg)
    assert sum(len(p) for p in gt.positives) > 0
    assert all((world[p] == world[i]).all() for i, p in enumerate(gt.positives))
    assert all((world[p] == world[i]).all() for i, p in enumerate(gt.non_negatives))
    # Cross-run evaluation: a query never has a true match in another town.
    for pair in cross_run_pairs(seqs, gt_cfg):
        if seqs[pair.query].meta(0)["world"] != seqs[pair.database].meta(0)["world"]:
            assert not any(len(m) for m in pair.true_matches)
    # The pair sampler draws positives from the same town only.
    sampler = PairBatchSampler(gt, batch_size=8, seed=0, drop_last=False)
    pairs = [(batch[k], batch[k + 1]) for batch in sampler for k in range(0, len(batch), 2)]
    assert pairs and all(world[i] == world[j] for i, j in pairs)


def test_caches_key_by_world(two_worlds):
    a, b = two_worlds
    keys = {frames_fingerprint(load_worlds(roots)) for roots in ([a], [b], [a, b], [b, a])}
    assert len(keys) == 4


def test_the_same_world_twice_is_refused(two_worlds, tmp_path):
    a, b = two_worlds
    with pytest.raises(DataError, match="same world"):
        load_worlds([a, b, a])
    copy = tmp_path / "copy_of_a"
    copy.mkdir()
    shutil.copy(a / "world.json", copy / "world.json")
    with pytest.raises(DataError, match="same world"):
        load_worlds([a, copy])
    renamed = tmp_path / b.name
    renamed.mkdir()
    meta = json.loads((a / "world.json").read_text())
    (renamed / "world.json").write_text(json.dumps({**meta, "seed": 99}))
    with pytest.raises(DataError, match="distinct folder names"):
        load_worlds([b, renamed])


def test_run_filter_takes_run_ids_across_worlds(two_worlds):
    a, b = two_worlds
    seqs = load_worlds([a, b])
    first = seqs[0].run_id
    assert [s.run for s in filter_sequences(seqs, [first], None)] == [f"{a.name}/{first}", f"{b.name}/{first}"]
    assert [s.run for s in filter_sequences(seqs, [f"{b.name}/{first}"], None)] == [f"{b.name}/{first}"]


# --- configuration and training -------------------------------------------------------------------------


def test_multi_world_data_config(two_worlds, tmp_path):
    a, b = two_worlds
    single = DataConfig(root=a)
    assert single.roots("train") == a and single.roots("val") == a and single.train_roots == []
    cfg = TrainConfig.from_yaml(None, {"data.train_roots": [str(a), str(b)], "data.val_root": str(b),
                                       "data.train_region": "all", "data.val_region": "val"}).data
    assert cfg.roots("train") == [a, b] and cfg.roots("val") == b and cfg.root is None
    train, val = open_split(cfg, "train"), open_split(cfg, "val")
    assert sum(map(len, train)) == sum(map(len, load_synthetic(a))) + sum(map(len, load_synthetic(b)))
    assert [s.run for s in val] == [s.run for s in load_synthetic(b, {"val"})]
    with pytest.raises(ValueError, match="source: synthetic"):
        DataConfig(source="bags", train_roots=[a])
    f = tmp_path / "train.yaml"
    f.write_text(f"data:\n  train_roots: [{a}, {b}]\n  val_root: {b}\n")
    assert TrainConfig.from_yaml(f).data.train_roots == [a, b]
    with pytest.raises(ValueError, match="data.root is not set"):
        open_split(DataConfig(train_roots=[a]), "val")


def test_two_town_training_run(two_worlds, tmp_path):
    from distilvpr_ros.models.checkpoint import load_model
    from distilvpr_ros.training import trainer

    a, b = two_worlds
    cfg = TrainConfig.from_yaml(None, {
        "data.train_roots": [str(a), str(b)], "data.val_root": str(b), "data.train_region": "train",
        "model.image_size": [64, 48], "model.pretrained": False, "model.image_backbone": "resnet18",
        "model.student_dim": 32, "distill.student": "camera_student", "distill.method": "none",
        "optim.batch_size": 8, "optim.epochs": 1, "threads": 1, "eval_batch_size": 32, "progress": False,
        "out_dir": str(tmp_path / "run")})
    run = trainer.train_student(cfg)
    history = json.loads((run / trainer.HISTORY_FILE).read_text())
    assert len(history) == 1 and history[0]["val/num_pairs"] == len(load_synthetic(b, {"val"})) * (
        len(load_synthetic(b, {"val"})) - 1)
    assert load_model(run / "best", expect_kind="camera_student") is not None
