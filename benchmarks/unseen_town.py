"""Camera students of the default world on a town no run trained or selected on (issue 12: "a town never used").

Every checkpoint named by ``--models NAME=GLOB`` (one checkpoint folder per seed, e.g.
``'no KD=/work/ckpt/pd5/work/seed*/camera__no_KD/best'``) is embedded on every run of ``--town`` (a ``town``
preset world, ``distilvpr generate --preset town --seed 16 --no-bags``) and scored as
``benchmarks/towns_experiment.py`` scores its test town: AR@1 over all ordered run pairs, same-direction AR@1
overall and per query condition, the mean of the unseen conditions (night, rain), beside the chance level and
the zero-shot ImageNet Lite0 + GeM row. Mean +- std over the checkpoints of a name.

    .venv/bin/python benchmarks/unseen_town.py --town /tmp/towns/town_s16 --out docs/results/distilvpr/unseen_town \\
        --models 'no KD=/work/ckpt/pd5/work/seed*/camera__no_KD/best' ...
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import glob  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

from distilvpr_experiment import MemorySequence  # noqa: E402  (benchmarks/ is on sys.path as a script)
from towns_experiment import CONDITIONS, chance_row, test_metrics  # noqa: E402
from distilvpr_ros.data.synthetic import load_worlds  # noqa: E402
from distilvpr_ros.evaluation.corridor import ZeroShotLite0  # noqa: E402
from distilvpr_ros.evaluation.report import mean_std_table, to_jsonable  # noqa: E402
from distilvpr_ros.models.checkpoint import load_model  # noqa: E402
from distilvpr_ros.training.config import TrainConfig  # noqa: E402
from distilvpr_ros.utils.results import write_json  # noqa: E402

KEYS = ["test/recall@1", "same_direction/recall@1", "unseen_same_direction/recall@1",
        *[f"same_direction/{c}/recall@1" for c in CONDITIONS]]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--town", type=Path, required=True, help="a generated world no model trained or selected on")
    p.add_argument("--models", nargs="+", required=True, metavar="NAME=GLOB", help="checkpoint folders per name")
    p.add_argument("--image-size", type=int, nargs=2, default=[160, 120], help="of the zero-shot row")
    p.add_argument("--out", type=Path, default=Path("docs/results/distilvpr/unseen_town"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    t0, load = time.time(), list(os.getloadavg())
    gt = TrainConfig.from_yaml(None, {"data": {"root": str(args.town)}}).ground_truth
    test = [MemorySequence(s) for s in load_worlds([args.town])]
    zero_shot = ZeroShotLite0(tuple(args.image_size))
    rows: dict[str, list[dict]] = {"chance": [chance_row(test, gt)],
                                   "zero-shot ImageNet Lite0 + GeM": [test_metrics(zero_shot, test, gt)]}
    checkpoints: dict[str, list[str]] = {}
    for spec in args.models:
        name, pattern = spec.split("=", 1)
        paths = sorted(glob.glob(pattern))
        if not paths:
            raise SystemExit(f"{name}: no checkpoint matches {pattern}")
        checkpoints[name] = paths
        for path in paths:
            rows.setdefault(name, []).append(test_metrics(load_model(path), test, gt))
            print(name, path, {k: round(rows[name][-1][k], 3) for k in KEYS[:3]}, flush=True)
    table = mean_std_table(rows, KEYS)
    result = {"town": str(args.town), "checkpoints": checkpoints, "results": rows,
              "load_average_before": load, "wall_s": time.time() - t0}
    args.out.mkdir(parents=True, exist_ok=True)
    write_json(args.out / "results.json", to_jsonable(result))
    text = (f"# Default-world camera students on a never-used town ({args.town.name}, every run, all pairs)\n\n"
            + table + f"\n\n{time.time() - t0:.0f} s.\n")
    (args.out / "results.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
