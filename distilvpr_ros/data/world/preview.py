"""``preview.png`` of a generated world: a town map with the runs, and a contact sheet.

The map shows buildings, the region bands and every run's trajectory coloured by region. Below,
one row per run: the same few places (nearest frames to places picked on the first run), each as
the camera image beside a bird's-eye view of the LiDAR cloud (coloured by height).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from ..synthetic import load_synthetic, read_world_meta  # noqa: E402
from .config import WorldConfig  # noqa: E402
from .generate import world_town  # noqa: E402

REGION_COLORS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:green", "gap": "0.6"}
_PLACES = 3
_BEV_RANGE_M = 40.0


def make_preview(out_dir: Path, places: int = _PLACES) -> Path:
    """Draw ``out_dir/preview.png`` and return its path."""
    out_dir = Path(out_dir)
    meta = read_world_meta(out_dir)
    cfg = WorldConfig.model_validate(meta["config"])
    runs = load_synthetic(out_dir)
    town = world_town(cfg)

    ref = runs[0]
    picks = np.linspace(0, len(ref) - 1, places + 2).round().astype(int)[1:-1]
    targets = ref.poses[picks, :2, 3]

    fig = plt.figure(figsize=(3.0 * 2 * places, 5.5 + 1.9 * len(runs)), dpi=90)
    grid = fig.add_gridspec(1 + len(runs), 2 * places, height_ratios=[5.5] + [1.9] * len(runs),
                            hspace=0.25, wspace=0.05)
    _draw_map(fig.add_subplot(grid[0, :]), meta, town, runs, targets)
    for r, run in enumerate(runs):
        d = np.linalg.norm(run.poses[:, None, :2, 3] - targets[None], axis=2)
        for j, i in enumerate(d.argmin(axis=0)):
            s = run[int(i)]
            ax_img, ax_bev = fig.add_subplot(grid[1 + r, 2 * j]), fig.add_subplot(grid[1 + r, 2 * j + 1])
            ax_img.imshow(s.image)
            ax_img.set_xticks([])
            ax_img.set_yticks([])
            ax_img.set_title(f"{run.run} #{s.meta['frame']} ({s.meta['region']}, dir {s.meta['direction']:+d}, "
                             f"lane {s.meta['lane']})", fontsize=7, loc="left")
            _draw_bev(ax_bev, s.cloud)
            ax_bev.set_title(f"LiDAR {len(s.cloud)} pts, place {chr(65 + j)}", fontsize=7, loc="left")
    path = out_dir / "preview.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path


def _draw_map(ax, meta: dict, town, runs, targets: np.ndarray) -> None:
    for x0, y0, x1, y1, h in town.buildings:
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, color=plt.cm.Greys(0.25 + 0.5 * h / 40), lw=0))
    for b in meta["regions"]:
        ax.axvspan(b["x_min"], b["x_max"], color=REGION_COLORS.get(b["name"], "0.8"), alpha=0.07)
        ax.text((b["x_min"] + b["x_max"]) / 2, town.grid.extent[3] + 3, b["name"], ha="center", fontsize=9,
                color=REGION_COLORS.get(b["name"], "k"))
    for run in runs:
        xy = run.poses[:, :2, 3]
        regions = np.array([run.meta(i)["region"] for i in range(len(run))])
        for name, color in REGION_COLORS.items():
            m = regions == name
            ax.scatter(xy[m, 0], xy[m, 1], s=3, color=color, lw=0)
    for j, (x, y) in enumerate(targets):
        ax.annotate(chr(65 + j), (x, y), fontsize=11, weight="bold", color="crimson",
                    xytext=(4, 4), textcoords="offset points")
        ax.plot(x, y, "o", color="crimson", ms=5)
    conds = ", ".join(f"{r['run_id']}" for r in meta["runs"])
    ax.set_title(f"Town map (local frame, m; UTM zone {meta['utm']['zone_number']}{meta['utm']['zone_letter']} "
                 f"origin E{meta['utm']['easting0']:.0f} N{meta['utm']['northing0']:.0f}) — frames coloured by "
                 f"region — runs: {conds}", fontsize=9)
    x0, y0, x1, y1 = town.grid.extent
    ax.set_xlim(x0 - 5, x1 + 5)
    ax.set_ylim(y0 - 5, y1 + 10)
    ax.set_aspect("equal")
    ax.tick_params(labelsize=7)


def _draw_bev(ax, cloud: np.ndarray) -> None:
    near = (np.abs(cloud[:, 0]) < _BEV_RANGE_M) & (np.abs(cloud[:, 1]) < _BEV_RANGE_M)
    c = cloud[near]
    ax.set_facecolor("black")
    ax.scatter(-c[:, 1], c[:, 0], s=1.2, c=np.clip(c[:, 2], -2.0, 6.0), cmap="turbo", lw=0)
    ax.plot(0, 0, "w^", ms=4)
    ax.set_xlim(-_BEV_RANGE_M, _BEV_RANGE_M)
    ax.set_ylim(-_BEV_RANGE_M, _BEV_RANGE_M)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
