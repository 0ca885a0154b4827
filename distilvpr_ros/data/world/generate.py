"""Generate the synthetic world: dataset folders plus one ROS 2 bag per run.

Layout written under ``out_dir`` (``world.json`` last, so its presence means the world is complete)::

    world.json                      version, config, seed, UTM origin, calibration, regions, runs
    runs/<run_id>/images/000000.png RGB camera images
    runs/<run_id>/clouds/000000.npy float32 N x 6 (x, y, z, intensity, ring, time), LiDAR frame, returns only
    runs/<run_id>/poses.csv         per-frame pose and facts (CSV_COLUMNS)
    runs/<run_id>/run.json          run id, condition, direction, lane, start time, counts
    bags/<run_id>/                  rosbag2 folder: image + camera_info at the frame stamp t, the cloud at
                                    t + lidar.stamp_offset_s, odometry at twice the frame rate
                                    (interpolated), GPS fixes at the frame rate; with ``odometry_drift`` set,
                                    drifting odometry (:mod:`.drift`) on its own topic at the same stamps

The same config and seed give the same bytes for images, clouds and CSV files: every random draw
comes from ``np.random.default_rng`` seeded with (seed, stream, run index[, frame index]).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import utm
from tqdm import tqdm

from ..geometry import interpolate_poses, pose_to_xyz_quat
from .config import WorldConfig
from .drift import DriftedOdometry, simulate_drift
from .layout import (BAGS_DIR, CLOUDS_DIR, CSV_COLUMNS, IMAGES_DIR, POSES_CSV, RUN_JSON, RUNS_DIR, WORLD_JSON,
                     WORLD_VERSION, frame_name)
from .render import CameraFrame, LidarFrame, PinholeCamera, Renderer, SpinningLidar
from .runs import Polyline, Trajectory, make_trajectory, region_bounds, town_route
from .town import Town, build_town
from .traffic import Traffic, make_traffic

# Random streams (second element of every seed sequence).
STREAM_TOWN, STREAM_TRAJECTORY, STREAM_TRAFFIC, STREAM_PARKING, STREAM_FRAME, STREAM_DRIFT = range(6)
_CHUNK = 16  # frames rendered concurrently before they are written to the bag


def _rng(cfg: WorldConfig, stream: int, *more: int) -> np.random.Generator:
    return np.random.default_rng([cfg.seed, stream, *more])


def world_town(cfg: WorldConfig) -> Town:
    """The town of a config (deterministic in the seed)."""
    return build_town(cfg.town, _rng(cfg, STREAM_TOWN))


def world_trajectories(cfg: WorldConfig, town: Town, route: Polyline) -> list[Trajectory]:
    """Trajectories of all runs of a config along the town's route (deterministic in the seed)."""
    return [make_trajectory(cfg, route, town.grid, i, _rng(cfg, STREAM_TRAJECTORY, i)) for i in range(len(cfg.runs))]


def calibration(cfg: WorldConfig) -> dict:
    """Camera intrinsics and the sensor extrinsics as written to ``world.json``."""
    cam, lidar = PinholeCamera(cfg.camera), SpinningLidar(cfg.lidar)
    return {
        "K": cam.K.tolist(), "width": cam.width, "height": cam.height,
        "T_base_camera": cam.T_base_camera.tolist(), "T_base_lidar": lidar.T_base_lidar.tolist(),
        "lidar": {"beams": cfg.lidar.beams, "columns": cfg.lidar.columns, "vfov_deg": list(cfg.lidar.vfov_deg),
                  "max_range_m": cfg.lidar.max_range_m, "sweep_period_s": cfg.lidar.sweep_period_s,
                  "stamp_offset_s": cfg.lidar.stamp_offset_s},
        "frames": {"base": "base_link", "camera": "camera_optical (z forward, x right, y down)",
                   "lidar": "lidar (x forward, y left, z up)"},
    }


class RunRenderer:
    """Renders the frames of one run: its traffic, parked cars and condition (thread-safe per frame)."""

    def __init__(self, cfg: WorldConfig, town: Town, route: Polyline, traj: Trajectory, run_index: int):
        self.cfg, self.traj, self.run_index = cfg, traj, run_index
        self.traffic: Traffic = make_traffic(cfg, route, town.grid, traj, _rng(cfg, STREAM_TRAFFIC, run_index))
        self.parked = town.parked_for_run(cfg.town, _rng(cfg, STREAM_PARKING, run_index))
        self.renderer = Renderer(cfg, town, traj.run.condition, self.parked, self.traffic.materials)
        self.poses = traj.poses()

    @staticmethod
    def for_run(cfg: WorldConfig, run_index: int) -> "RunRenderer":
        """The renderer of run ``run_index`` of ``cfg``, built from scratch (tests, benchmarks)."""
        town = world_town(cfg)
        route = town_route(town.grid, cfg.corner_radius_m)
        return RunRenderer(cfg, town, route, world_trajectories(cfg, town, route)[run_index], run_index)

    def render(self, k: int) -> tuple[CameraFrame, LidarFrame]:
        """Camera and LiDAR frame ``k`` with the run's moving objects and sensor noise."""
        rng = _rng(self.cfg, STREAM_FRAME, self.run_index, k)
        dyn = self.renderer.dynamic_scene(self.traffic.mesh_at(self.traj, k))
        return self.renderer.render_camera(self.poses[k], dyn, rng), self.renderer.render_lidar(self.poses[k], dyn, rng)


def _write_frame(rr: RunRenderer, run_dir: Path, k: int) -> tuple[np.ndarray, np.ndarray, float]:
    cam, lidar = rr.render(k)
    cv2.imwrite(str(run_dir / IMAGES_DIR / f"{frame_name(k)}.png"), cv2.cvtColor(cam.image, cv2.COLOR_RGB2BGR))
    np.save(run_dir / CLOUDS_DIR / f"{frame_name(k)}.npy", lidar.cloud)
    return cam.image, lidar.cloud, cam.dynamic_fraction


def _write_csv(path: Path, traj: Trajectory, poses: np.ndarray, dyn_frac: np.ndarray, cfg: WorldConfig) -> None:
    g = cfg.geo
    lines = [",".join(CSV_COLUMNS)]
    for k in range(len(traj)):
        xyz, q = pose_to_xyz_quat(poses[k])
        lines.append(
            f"{k},{traj.timestamps[k]:.6f},{g.easting0 + xyz[0]:.4f},{g.northing0 + xyz[1]:.4f},{traj.yaw[k]:.6f},"
            f"{xyz[0]:.4f},{xyz[1]:.4f},{xyz[2]:.4f},{q[0]:.8f},{q[1]:.8f},{q[2]:.8f},{q[3]:.8f},"
            f"{traj.run.direction},{traj.run.lane},{traj.run.condition.name},{dyn_frac[k]:.6f},{traj.region[k]},"
            f"{traj.speed[k]:.4f}"
        )
    path.write_text("\n".join(lines) + "\n")


class _BagSink:
    """Writes one run's messages in time order: odom at 2x the frame rate, camera, GPS, LiDAR."""

    def __init__(self, path: Path, storage: str, cfg: WorldConfig, traj: Trajectory, poses: np.ndarray,
                 run_index: int = 0):
        from ..rosbag_io import BagWriter

        self.writer = BagWriter(path, storage=storage)
        self.cfg, self.traj, self.poses = cfg, traj, poses
        self.K = PinholeCamera(cfg.camera).K
        g = cfg.geo
        self.lat, self.lon = utm.to_latlon(g.easting0 + traj.xy[:, 0], g.northing0 + traj.xy[:, 1],
                                           g.utm_zone_number, g.utm_zone_letter)
        t = traj.timestamps
        self.yaw_rate = np.gradient(np.unwrap(traj.yaw), t) if len(t) > 1 else np.zeros(len(t))
        self.drift: DriftedOdometry | None = None
        if cfg.odometry_drift is not None:
            self.drift = odometry_drift(cfg, traj, poses, run_index)

    def write(self, k: int, image: np.ndarray, cloud: np.ndarray) -> None:
        w, t, cfg = self.writer, self.traj.timestamps, self.cfg
        w.write_odom(t[k], self.poses[k], self.traj.speed[k], self.yaw_rate[k])
        self._write_drift(2 * k, t[k], self.traj.speed[k], self.yaw_rate[k])
        w.write_image(t[k], image)
        w.write_camera_info(t[k], self.K, cfg.camera.width, cfg.camera.height)
        w.write_gps(t[k], self.lat[k], self.lon[k], cfg.geo.altitude0)
        w.write_cloud(t[k] + cfg.lidar.stamp_offset_s, cloud)
        if k + 1 < len(t):
            tm = round(0.5 * (t[k] + t[k + 1]), 6)
            pose = interpolate_poses(np.array([tm]), t, self.poses)[0]
            speed = 0.5 * (self.traj.speed[k] + self.traj.speed[k + 1])
            yaw_rate = 0.5 * (self.yaw_rate[k] + self.yaw_rate[k + 1])
            w.write_odom(tm, pose, speed, yaw_rate)
            self._write_drift(2 * k + 1, tm, speed, yaw_rate)

    def _write_drift(self, j: int, t: float, speed: float, yaw_rate: float) -> None:
        """Odometry message ``j`` (:func:`odometry_stamps`) of the drifting odometry, when the world has one."""
        d = self.drift
        if d is not None:
            self.writer.write_odom(t, d.poses[j], speed * (1 + d.scale_error[j]), yaw_rate + d.yaw_bias[j],
                                   topic=self.cfg.odometry_drift.topic)

    def close(self) -> None:
        self.writer.close()


def _generate_run(out_dir: Path, cfg: WorldConfig, i: int, *, bag_storage: str, write_bags: bool,
                  town: Town | None = None, route: Polyline | None = None, trajs: list[Trajectory] | None = None,
                  bar: tqdm | None = None) -> dict:
    """Render run ``i`` into ``runs/<id>`` (and ``bags/<id>``); returns its ``run.json`` contents.

    Called in-process (town, route and trajectories passed in) or in a worker process (rebuilt from
    ``cfg``; there each process ray-casts on one thread so the processes do not oversubscribe cores).
    """
    if town is None:
        render = cfg.render.model_copy(update={"threads": 1})
        cfg = cfg.model_copy(update={"render": render})
        town = world_town(cfg)
        route = town_route(town.grid, cfg.corner_radius_m)
        trajs = world_trajectories(cfg, town, route)
    traj = trajs[i]
    run_dir, bag_dir = out_dir / RUNS_DIR / traj.run_id, out_dir / BAGS_DIR / traj.run_id
    for d in (run_dir, bag_dir):
        if d.exists():
            shutil.rmtree(d)
    rr = RunRenderer(cfg, town, route, traj, i)
    (run_dir / IMAGES_DIR).mkdir(parents=True)
    (run_dir / CLOUDS_DIR).mkdir(parents=True)
    frame = functools.partial(_write_frame, rr, run_dir)
    bag_dir.parent.mkdir(parents=True, exist_ok=True)
    sink = _BagSink(bag_dir, bag_storage, cfg, traj, rr.poses, i) if write_bags else None
    dyn_frac = np.zeros(len(traj))
    try:
        with ThreadPoolExecutor(max(1, cfg.render.workers)) as pool:
            for c0 in range(0, len(traj), _CHUNK):
                ks = range(c0, min(c0 + _CHUNK, len(traj)))
                for k, (image, cloud, frac) in zip(ks, pool.map(frame, ks)):
                    dyn_frac[k] = frac
                    if sink is not None:
                        sink.write(k, image, cloud)
                    if bar is not None:
                        bar.update(1)
    finally:
        if sink is not None:
            sink.close()
    _write_csv(run_dir / POSES_CSV, traj, rr.poses, dyn_frac, cfg)
    meta = _run_meta(traj, i, rr)
    (run_dir / RUN_JSON).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def generate_world(out_dir: Path, cfg: WorldConfig, *, bag_storage: str = "mcap", write_bags: bool = True,
                   progress: bool = True) -> dict:
    """Render every run of ``cfg`` into ``out_dir``; returns a summary (counts, timings, paths).

    Existing ``runs/<id>`` and ``bags/<id>`` folders of this config's runs are replaced; nothing
    else in ``out_dir`` is touched.
    """
    t_start = time.perf_counter()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / WORLD_JSON).unlink(missing_ok=True)
    town = world_town(cfg)
    route = town_route(town.grid, cfg.corner_radius_m)
    trajs = world_trajectories(cfg, town, route)
    bounds = region_bounds(cfg, town.grid)
    total = sum(len(t) for t in trajs)
    bar = tqdm(total=total, desc="rendering world", unit="frame", disable=not progress)
    job = functools.partial(_generate_run, out_dir, cfg, bag_storage=bag_storage, write_bags=write_bags)
    if cfg.render.processes > 1 and len(trajs) > 1:
        # Whole runs in parallel processes, each rebuilding the (deterministic) town; the bar moves per run.
        with ProcessPoolExecutor(min(cfg.render.processes, len(trajs))) as pool:
            runs_meta = []
            for meta in pool.map(job, range(len(trajs))):
                runs_meta.append(meta)
                bar.update(meta["frames"])
    else:
        runs_meta = [job(i, town=town, route=route, trajs=trajs, bar=bar) for i in range(len(trajs))]
    bar.close()
    region_counts: dict[str, int] = {}
    for traj in trajs:
        for r, n in zip(*np.unique(traj.region, return_counts=True)):
            region_counts[str(r)] = region_counts.get(str(r), 0) + int(n)

    g = cfg.geo
    grid = town.grid
    world = {
        "version": WORLD_VERSION,
        "config": cfg.model_dump(mode="json"),
        "seed": cfg.seed,
        "map_frame": "local map frame: x east, y north, z up (m); UTM = origin + (x, y)",
        "utm": {"zone_number": g.utm_zone_number, "zone_letter": g.utm_zone_letter, "easting0": g.easting0,
                "northing0": g.northing0, "altitude0": g.altitude0},
        "calibration": calibration(cfg),
        "regions": [{**b, "easting_min": g.easting0 + b["x_min"], "easting_max": g.easting0 + b["x_max"]}
                    for b in bounds],
        "town": {"streets_x": grid.xs.tolist(), "streets_y": grid.ys.tolist(), "street_half_width": grid.half_width,
                 "extent": list(grid.extent), "buildings": len(town.buildings)},
        "cloud_fields": ["x", "y", "z", "intensity", "ring", "time"],
        "runs": [{k: m[k] for k in ("run_id", "condition", "direction", "lane", "frames", "start_time")}
                 for m in runs_meta],
    }
    (out_dir / WORLD_JSON).write_text(json.dumps(world, indent=2) + "\n")
    seconds = time.perf_counter() - t_start
    return {
        "out_dir": str(out_dir), "seed": cfg.seed, "runs": len(trajs), "frames": total,
        "frames_per_region": region_counts, "bags": write_bags, "seconds": round(seconds, 2),
        "frames_per_second": round(total / seconds, 2),
    }


def odometry_stamps(t: np.ndarray) -> np.ndarray:
    """Stamps of a run's odometry messages: every frame stamp and the midpoint after it (2x the frame rate)."""
    mid = np.round(0.5 * (t[:-1] + t[1:]), 6)
    return np.insert(t, np.arange(1, len(t)), mid) if len(t) > 1 else t.copy()


def odometry_drift(cfg: WorldConfig, traj: Trajectory, poses: np.ndarray, run_index: int) -> DriftedOdometry:
    """Drifting odometry of run ``run_index`` at :func:`odometry_stamps` (seeded by the world seed and the run)."""
    if cfg.odometry_drift is None:
        raise ValueError("the world config has no odometry_drift section")
    stamps = odometry_stamps(traj.timestamps)
    return simulate_drift(interpolate_poses(stamps, traj.timestamps, poses), stamps, cfg.odometry_drift,
                          [cfg.seed, STREAM_DRIFT, run_index])


def _run_meta(traj: Trajectory, index: int, rr: RunRenderer) -> dict:
    c = traj.run.condition
    start = float(traj.timestamps[0])
    return {
        "run_id": traj.run_id, "index": index,
        "condition": {"name": c.name, "time_of_day": c.time_of_day, "weather": c.weather, "season": c.season},
        "direction": traj.run.direction, "lane": traj.run.lane, "speed_mps": traj.run.speed_mps, "laps": traj.run.laps,
        "start_time": start,
        "start_time_utc": dt.datetime.fromtimestamp(start, dt.timezone.utc).isoformat(),
        "frames": len(traj), "path_length_m": round(traj.path.length, 2),
        "moving_vehicles": int(rr.traffic.is_car.sum()), "pedestrians": int((~rr.traffic.is_car).sum()),
        "parked_vehicles": int(rr.parked.sum()),
    }
