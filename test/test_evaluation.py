"""Evaluation: embedding, cross-run AR@N with query subsets, the evaluate command, Corridor, plots, reports."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from distilvpr_ros.data.readers.vprbench import VPRBenchDataset
from distilvpr_ros.data.synthetic import load_synthetic
from distilvpr_ros.evaluation.corridor import ZERO_SHOT_LITE0, corridor_model, run_corridor
from distilvpr_ros.models.inference import embed_images, embed_sequences
from distilvpr_ros.evaluation.evaluate import RECALL_KEYS, evaluate_sequences, run_evaluate
from distilvpr_ros.evaluation.metrics import similarity_matrix_metrics
from distilvpr_ros.models.vpr import l2_normalize
from distilvpr_ros.evaluation.plots import plot_bars, plot_match_grid, plot_pr, plot_recall_at_n, plot_trajectory
from distilvpr_ros.evaluation.report import markdown_table, mean_std_table, to_jsonable
from distilvpr_ros.models import ModelConfig, build_model, image_to_tensor
from distilvpr_ros.models.checkpoint import save_model_checkpoint
from tiny_models import TINY

CORRIDOR = Path(__file__).resolve().parents[2] / "shared" / "data" / "corridor"
#: Recall@1 of the peers as published in shared/data/corridor/README.md.
CORRIDOR_PEER_R1 = {
    "HybridNet": 0.901, "AMOSNet": 0.847, "denseVLAD": 0.703, "AlexNet_VPR": 0.685, "NetVLAD": 0.676,
    "CoHOG": 0.622, "ap-gem-r101": 0.532, "HOG": 0.477, "RegionVLAD": 0.432, "CALC": 0.324,
}
STABLE_KEYS = {*RECALL_KEYS, "num_pairs", "num_queries"}


@pytest.fixture(scope="module")
def world(tiny_world):
    return tiny_world


@pytest.fixture(scope="module")
def tiny_student():
    torch.manual_seed(0)
    return build_model("camera_student", ModelConfig(**TINY)).eval()


def grid_descriptors(xy: np.ndarray, cell_m: float = 5.0, extent_m: float = 1000.0) -> np.ndarray:
    """A 'model' that knows where it is: soft one-hot of the 5 m grid cell around each position."""
    centres = np.arange(-extent_m, extent_m, cell_m)
    gx = np.exp(-((xy[:, :1] - centres) / cell_m) ** 2)
    gy = np.exp(-((xy[:, 1:2] - centres) / cell_m) ** 2)
    return l2_normalize((gx[:, :, None] * gy[:, None, :]).reshape(len(xy), -1))


# --- cross-run AR@N --------------------------------------------------------------------------------


def test_position_model_is_perfect_and_random_model_is_not(world):
    runs = load_synthetic(world)  # every region: ~20 frames per run, so chance is low
    perfect = evaluate_sequences([grid_descriptors(r.poses[:, :2, 3]) for r in runs], runs)
    assert STABLE_KEYS <= set(perfect)
    assert all(perfect[key] == 1.0 for key in RECALL_KEYS)
    assert perfect["num_pairs"] == len(runs) * (len(runs) - 1)
    assert perfect["recall_curve"] == [1.0] * 25
    rng = np.random.default_rng(0)
    descs = [l2_normalize(rng.normal(size=(len(r), 64))) for r in runs]
    random = evaluate_sequences(descs, runs)
    assert random["recall@1"] < 0.5
    assert random["recall@1"] <= random["recall@5"] <= random["recall@25"]
    for n in (1, 5, 25):
        assert random[f"recall@{n}"] == pytest.approx(reference_average_recall(descs, runs, n)), n


def reference_average_recall(descs, runs, n, correct_m=25.0):
    """AR@n written out: per ordered (database, query) run pair, the share of queries with a true match
    (within correct_m) among their n most similar database frames; the mean over pairs."""
    per_pair = []
    for d, database in enumerate(runs):
        for q, query in enumerate(runs):
            if q == d:
                continue
            db_xy, q_xy = database.poses[:, :2, 3], query.poses[:, :2, 3]
            hits = []
            for i in range(len(query)):
                true = set(np.flatnonzero(np.linalg.norm(db_xy - q_xy[i], axis=1) <= correct_m).tolist())
                if true:
                    hits.append(bool(true & set(np.argsort(-(descs[d] @ descs[q][i]))[:n].tolist())))
            if hits:
                per_pair.append(np.mean(hits))
    return float(np.mean(per_pair))


class FakeRun:
    """A straight 100 m drive with known per-frame meta (no sensor data)."""

    def __init__(self, run: str, direction: int, condition: str, dynamic: list[float], y: float = 0.0):
        self.run = run
        self.timestamps = np.arange(10, dtype=float)
        self.poses = np.tile(np.eye(4), (10, 1, 1))
        self.poses[:, 0, 3] = np.arange(10) * 10.0
        self.poses[:, 1, 3] = y
        self._meta = [dict(direction=direction, condition=condition, dynamic_fraction=d) for d in dynamic]

    def __len__(self):
        return 10

    def meta(self, i):
        return self._meta[i]


def one_hot(cells) -> np.ndarray:
    return np.eye(10, dtype=np.float32)[np.asarray(cells)]


@pytest.fixture()
def known_runs():
    """Runs 'day' and 'night' drive east and describe their place exactly; 'fog' drives west and its
    descriptors point 50 m away, so every pair involving it has R@1 = 0. Even 'night' frames are
    occluded (0.3); odd ones sit exactly on the threshold (0.15, not occluded)."""
    runs = [
        FakeRun("day", +1, "day", [0.0] * 10),
        FakeRun("night", +1, "night", [0.3, 0.15] * 5, y=1.0),
        FakeRun("fog", -1, "fog", [0.0] * 10, y=2.0),
    ]
    descs = [one_hot(range(10)), one_hot(range(10)), one_hot((np.arange(10) + 5) % 10)]
    return runs, descs


def test_query_subsets_counts_and_values(known_runs):
    runs, descs = known_runs
    m = evaluate_sequences(descs, runs, query_subsets=["same_direction", "opposite_direction", "occluded"])
    assert m["recall@1"] == pytest.approx(2 / 6) and m["num_pairs"] == 6 and m["num_queries"] == 60
    same, opposite, occluded = (m["subsets"][k] for k in ("same_direction", "opposite_direction", "occluded"))
    assert (same["recall@1"], same["num_pairs"], same["num_queries"]) == (1.0, 2, 20)
    assert (opposite["recall@1"], opposite["num_pairs"], opposite["num_queries"]) == (0.0, 4, 40)
    # occluded night queries against day (all right) and fog (all wrong)
    assert (occluded["recall@1"], occluded["num_pairs"], occluded["num_queries"]) == (0.5, 2, 10)
    assert STABLE_KEYS <= set(same)


def test_per_condition_and_per_pair(known_runs):
    runs, descs = known_runs
    m = evaluate_sequences(descs, runs)
    assert m["subsets"] == {}
    assert {c: r["recall@1"] for c, r in m["per_condition"].items()} == {"day": 0.5, "night": 0.5, "fog": 0.0}
    assert m["per_condition"]["fog"]["num_queries"] == 20
    pair = next(p for p in m["pairs"] if (p["database"], p["query"]) == ("day", "night"))
    assert pair["recall@1"] == 1.0 and pair["query_condition"] == "night" and pair["num_queries"] == 10


def test_database_filter_and_custom_subset(known_runs):
    runs, descs = known_runs
    m = evaluate_sequences(descs, runs, database_filter=lambda seq: seq.run != "fog",
                           query_subsets={"first_half": lambda q, db: q["direction"] > 0 and db["direction"] > 0})
    assert m["num_pairs"] == 4 and m["recall@1"] == 0.5
    assert all(p["database"] != "fog" for p in m["pairs"])
    assert m["subsets"]["first_half"]["num_pairs"] == 2 and m["subsets"]["first_half"]["recall@1"] == 1.0


def test_subset_errors(known_runs):
    runs, descs = known_runs
    with pytest.raises(ValueError, match="unknown query subsets"):
        evaluate_sequences(descs, runs, query_subsets=["sideways"])
    with pytest.raises(ValueError, match="5 descriptors for 10 frames"):
        evaluate_sequences([descs[0][:5]] + descs[1:], runs)
    for run in runs:
        run._meta = [{} for _ in range(10)]
    with pytest.raises(ValueError, match="needs per-frame meta"):
        evaluate_sequences(descs, runs, query_subsets=["occluded"])


# --- embedding -------------------------------------------------------------------------------------


def test_embed_sequences_normalised_batch_independent_and_mode_restored(world, tiny_student):
    runs = load_synthetic(world, regions={"test"})
    tiny_student.train()
    a = embed_sequences(tiny_student, runs, batch_size=32, progress=False)
    b = embed_sequences(tiny_student, runs, batch_size=3, progress=False)
    assert tiny_student.training
    assert [len(d) for d in a] == [len(r) for r in runs]
    for x, y in zip(a, b):
        assert x.dtype == np.float32 and x.shape[1] == 32
        np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
        np.testing.assert_allclose(x, y, atol=1e-5)
    # the same as the model's own embed on the preprocessed first frame
    first = image_to_tensor(runs[0][0].image, tiny_student.input_spec.image_size)[None]
    np.testing.assert_allclose(a[0][:1], tiny_student.embed(image=first), atol=1e-5)


def test_embed_lidar_student_and_teacher_heads(world):
    runs = load_synthetic(world, regions={"test"})[:1]
    lidar = build_model("lidar_student", ModelConfig(**TINY))
    assert embed_sequences(lidar, runs, progress=False)[0].shape == (len(runs[0]), 32)
    teacher = build_model("teacher", ModelConfig(**TINY)).eval()
    fused, = embed_sequences(teacher, runs, progress=False)
    image_head, = embed_sequences(teacher, runs, progress=False, head="image")
    assert fused.shape[1] == 32 and image_head.shape[1] == 16
    images = [runs[0][i].image for i in range(len(runs[0]))]
    np.testing.assert_allclose(embed_images(teacher, images, head="image", progress=False), image_head, atol=1e-5)
    with pytest.raises(ValueError, match="head='image'"):
        embed_images(teacher, images, progress=False)
    with pytest.raises(ValueError, match="no 'cloud' head"):
        embed_sequences(build_model("camera_student", ModelConfig(**TINY)), runs, progress=False, head="cloud")


def test_embed_images_with_onnx_runner(tmp_path, tiny_student, world):
    from distilvpr_ros.models.export import OnnxRunner, export_onnx

    runner = OnnxRunner(export_onnx(tiny_student, tmp_path / "student.onnx"))
    run = load_synthetic(world, regions={"test"})[0]
    images = [run[i].image for i in range(len(run))]
    np.testing.assert_allclose(embed_images(runner, images, progress=False),
                               embed_images(tiny_student, images, progress=False), atol=1e-4)


# --- the evaluate command --------------------------------------------------------------------------


def test_run_evaluate_writes_every_file(world, tiny_student, tmp_path):
    checkpoint = save_model_checkpoint(tmp_path / "ckpt", tiny_student)
    out = tmp_path / "eval"
    returned = run_evaluate(checkpoint, world, out_dir=out, batch_size=8)
    for name in ("metrics.json", "metrics.md", "recall_at_n.png", "matches.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    written = json.loads((out / "metrics.json").read_text())
    assert STABLE_KEYS <= set(written) and written["num_pairs"] == 6
    assert written["config"]["model_kind"] == "camera_student" and written["config"]["region"] == "test"
    assert set(written["subsets"]) == {"same_direction", "opposite_direction", "occluded"}
    assert written["recall@1"] == pytest.approx(returned["recall@1"])
    assert "| all queries |" in (out / "metrics.md").read_text()
    assert written["config"]["visibility"]["source"] == "world ray casting" and 0 <= written["chance@1"] <= 1
    assert 0 < written["visible"]["num_queries"] <= written["num_queries"]
    assert "Visible subset (world ray casting)" in (out / "metrics.md").read_text()
    default = run_evaluate(checkpoint, world, results_root=tmp_path / "results", progress=False)
    assert (tmp_path / "results" / "evaluate" / "latest" / "metrics.json").is_file()
    assert default["recall@1"] == pytest.approx(returned["recall@1"])


def test_evaluate_command_reads_bags(tiny_student, tmp_path):
    """``distilvpr evaluate --source bags``: the same frames driven twice; every query finds its own frame."""
    from distilvpr_ros.cli import main
    from test_rosbag_io import write_basic_bag

    for name in ("drive_a", "drive_b"):
        write_basic_bag(tmp_path / "bags" / name, "mcap")
    checkpoint = save_model_checkpoint(tmp_path / "ckpt", tiny_student)
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--source", "bags", "--root", str(tmp_path / "bags"),
                 "--sequences", "drive_a", "drive_b", "--out", str(out), "--batch-size", "3"]) == 0
    written = json.loads((out / "metrics.json").read_text())
    assert written["config"]["source"] == "bags" and written["config"]["runs"] == ["drive_a", "drive_b"]
    assert written["num_pairs"] == 2 and written["num_queries"] == 8
    assert written["recall@1"] == 1.0 and written["subsets"] == {}
    assert written["config"]["visibility"]["source"] == "pose proxy" and written["visible"]["num_queries"] == 8
    assert main(["evaluate", "--checkpoint", str(checkpoint), "--source", "bags", "--root", str(tmp_path)]) == 2


# --- Corridor --------------------------------------------------------------------------------------

needs_corridor = pytest.mark.skipif(not CORRIDOR.is_dir(), reason="shared/data/corridor is not present")


@needs_corridor
def test_corridor_peers_match_the_published_table():
    dataset = VPRBenchDataset(CORRIDOR)
    got = {name: similarity_matrix_metrics(sim, dataset.ground_truth)["recall@1"]
           for name, sim in dataset.peer_similarity().items()}
    assert {name: round(r1, 3) for name, r1 in got.items()} == CORRIDOR_PEER_R1


@needs_corridor
def test_run_corridor_with_a_tiny_model(tiny_student, tmp_path):
    result = run_corridor(tiny_student, CORRIDOR, out_dir=tmp_path, progress=False)
    for name in ("corridor.json", "corridor.md", "corridor.png", "corridor_pr.png", "similarity.npy"):
        assert (tmp_path / name).is_file() and (tmp_path / name).stat().st_size > 0, name
    written = json.loads((tmp_path / "corridor.json").read_text())
    assert {"recall@1", "recall@5", "pr_auc", "max_f1", "method", "rank"} <= set(written)
    assert len(written["ranking"]) == 11 and len(written["peers"]) == 10
    assert written["peers"]["HybridNet"]["recall@1"] == pytest.approx(0.901, abs=5e-4)
    similarity = np.load(tmp_path / "similarity.npy")  # our R@1 and rank, recomputed by hand
    truth = VPRBenchDataset(CORRIDOR).ground_truth
    r1 = np.mean([int(np.argmax(row)) in refs for row, refs in zip(similarity, truth)])
    assert result["recall@1"] == pytest.approx(r1)
    assert result["rank"] == 1 + sum(peer["recall@1"] > r1 for peer in written["peers"].values())
    table = (tmp_path / "corridor.md").read_text()
    assert "(ours)**" in table and table.index("HybridNet") < table.index("CALC")
    # re-ranking is on by default: its metrics sit beside the plain ones, its inliers are saved
    assert {f"{k}_reranked" for k in ("recall@1", "recall@5", "pr_auc", "max_f1")} <= set(written)
    assert written["rerank"]["top_k"] == 10 and np.load(tmp_path / "inliers.npy").shape == (111, 10)
    assert "2D-2D re-rank (ours)**" in table


@needs_corridor
def test_run_corridor_without_reranking_is_unchanged(tiny_student, tmp_path):
    plain = run_corridor(tiny_student, CORRIDOR, out_dir=tmp_path / "off", progress=False, rerank_top_k=0)
    on = run_corridor(tiny_student, CORRIDOR, out_dir=tmp_path / "on", progress=False, rerank_top_k=3)
    assert not any(k.endswith("_reranked") for k in plain) and not (tmp_path / "off" / "inliers.npy").exists()
    assert {k: v for k, v in on.items() if not k.endswith("_reranked") and k != "rerank"} == \
        {k: v for k, v in plain.items() if k != "rerank"}


def test_corridor_model_heads(tmp_path):
    teacher = build_model("teacher", ModelConfig(**TINY))
    assert corridor_model(teacher)[1] == "image"
    checkpoint = save_model_checkpoint(tmp_path / "student", build_model("camera_student", ModelConfig(**TINY)))
    model, head, name = corridor_model(checkpoint)
    assert head == "fused" and model.kind == "camera_student" and "student" in name
    with pytest.raises(ValueError, match="camera images only"):
        corridor_model(build_model("lidar_student", ModelConfig(**TINY)))


def test_zero_shot_lite0_baseline_is_deterministic():
    a, _, _ = corridor_model(ZERO_SHOT_LITE0)
    b, head, _ = corridor_model(ZERO_SHOT_LITE0)
    image = (np.random.default_rng(0).uniform(size=(120, 160, 3)) * 255).astype(np.uint8)
    da, db = (embed_images(m, [image], progress=False) for m in (a, b))
    assert head == "fused" and da.shape == (1, 112)
    np.testing.assert_allclose(da, db, atol=1e-6)


@pytest.mark.slow
@needs_corridor
def test_zero_shot_lite0_on_corridor(tmp_path):
    result = run_corridor(ZERO_SHOT_LITE0, CORRIDOR, out_dir=tmp_path, progress=False)
    assert result["recall@1"] == pytest.approx(0.694, abs=0.01)


# --- plots and reports -----------------------------------------------------------------------------


def assert_png(path: Path):
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000


def test_plots_write_pngs(tmp_path):
    rng = np.random.default_rng(0)
    assert_png(plot_recall_at_n({"a": np.linspace(0.5, 1, 25), "b": np.linspace(0.2, 0.9, 25)}, tmp_path / "r.png"))
    assert_png(plot_pr({"ours": ([1.0, 0.8, 0.7], [0.1, 0.5, 0.7], 0.6), "peer": ([0.5, 0.4], [0.2, 0.4], 0.2)},
                       tmp_path / "pr.png", highlight="ours"))
    image = (rng.uniform(size=(48, 64, 3)) * 255).astype(np.uint8)
    assert_png(plot_match_grid([(image, image, True, "3.0 m"), (image, image, False, "80.0 m"),
                                (image, image, False, "40.0 m")], tmp_path / "m.png"))
    xy = np.c_[np.linspace(0, 100, 50), np.sin(np.linspace(0, 3, 50)) * 20]
    assert_png(plot_trajectory(xy, [(40, 2, True), (45, 30, False)], tmp_path / "t.png"))
    assert_png(plot_trajectory(xy, [(0, 1, True)], tmp_path / "t2.png", db_xy=xy[::2] + 1.0))
    assert_png(plot_bars({"ours": 0.7, "peer": 0.6, "nan": float("nan")}, tmp_path / "b.png", highlight="ours"))


def test_markdown_and_mean_std_tables():
    table = markdown_table([{"name": "a", "r": 0.51234, "n": 3}, {"name": "b", "r": float("nan")}],
                           ["name", "r", "n"], fmt={"r": ".2f"})
    assert table.splitlines() == ["| name | r | n |", "|---|---|---|", "| a | 0.51 | 3 |", "| b | – | – |"]
    seeds = {"ours": [{"recall@1": 0.5}, {"recall@1": 0.6}], "single": [{"recall@1": 0.4}]}
    lines = mean_std_table(seeds, ["recall@1"]).splitlines()
    assert lines[0] == "| method | recall@1 | seeds |"
    assert lines[2] == f"| ours | 0.550 ± {np.std([0.5, 0.6], ddof=1):.3f} | 2 |"
    assert lines[3] == "| single | 0.400 | 1 |"


def test_to_jsonable_is_strict_json():
    value = to_jsonable({"a": np.float32(0.5), "b": float("nan"), "c": np.arange(2), "d": (np.int64(3), math.inf)})
    assert value == {"a": 0.5, "b": None, "c": [0, 1], "d": [3, None]}
    json.dumps(value, allow_nan=False)
